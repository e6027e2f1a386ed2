"""DAVIS-2017 semi-supervised and unsupervised evaluation of a folder of predicted PNGs.

Follows the official davis2017-evaluation toolkit (HEAD): the same frames, objects, void handling, matching,
statistics and CSV files, computed with `raytrain.eval.metrics`.

- Ground truth: `<gt_root>/Annotations/480p/<seq>/*.png` (semi-supervised) or
  `<gt_root>/Annotations_unsupervised/480p/<seq>/*.png` (unsupervised), or any folder given as `annotations`.
  Value 255 is void. The object count N is the largest id in the first GT frame; larger ids in later frames
  count as background.
- Semi-supervised: the first and last frames are not scored (their predictions are not read); void counts as
  background; a predicted id above N is an error; objects never predicted score as empty masks.
- Unsupervised: every frame is scored with void pixels excluded; at most `max_proposals` (20) predicted ids;
  one Hungarian assignment per sequence maximising (mean J + mean F) / 2 over proposal × object pairs. The
  per-object rows follow the matched proposals' order, as upstream's.
- Global numbers are plain means over objects; the CSV files are upstream's `global_results-<set>.csv` and
  `per-sequence_results-<set>.csv`, values written with "%.3f".

How it is computed: per frame, inside the bounding box of the frame's non-zero pixels, J of each object
against its predicted id (semi-supervised) comes from pixel counts, J of every (object, proposal) pair
(unsupervised) from one count of (GT id, predicted id) pixel pairs, and the boundary pixels of every id from
one pass over the same box (`metrics.label_boundaries`); F then looks each boundary's pixels up in the other's
dilated, bit-packed bitmap (`metrics.Boundary.matched`). Mask PNGs whose rows are stored unfiltered (what PIL
and the DAVIS annotations use) are inflated with zlib-ng, others decoded by PIL; `.png` and `.PNG` are read
alike (upstream reads `.png` only). Files are read through pyarrow filesystems, so the DAVIS root and the results may be
local folders or URIs (`s3://`, `file://`); `write_csv` writes to either.

Scoring is split so a distributed evaluator can score sequences anywhere: `per_sequence` (files) or
`score_semi` / `score_unsup` (arrays) return a `SequenceScores`; `combine` turns any list of them into the
global `Report`, and `write_csv` writes it. `evaluate_semi` / `evaluate_unsup` do all three in one process.

Deviations from upstream:
- The results CSV files are always recomputed and replaced atomically; upstream silently reuses existing
  ones.
- Bad input raises a `shards.errors.UserError` / `NotFound` (a ValueError / FileNotFoundError) naming the
  sequence, frame or file instead of printing a message and calling `sys.exit`.
"""
from __future__ import annotations

import io
import os
import posixpath
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Iterable, Sequence

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError
from scipy.optimize import linear_sum_assignment
from zlib_ng import zlib_ng

from raytrain.eval.metrics import Box, bound_pix, f_from_boundaries, frame_boxes, label_boundaries, statistics
from shards.errors import NotFound, UserError
from shards.layout import resolve

VOID = 255
SEMI = "semi-supervised"
UNSUP = "unsupervised"
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


@dataclass
class SequenceScores:
    """Per-frame J and F of one sequence: arrays [objects, scored frames], rows in CSV order."""

    sequence: str
    j: np.ndarray
    f: np.ndarray


@dataclass
class Report:
    """Global DAVIS numbers (means over objects) and the per-object rows of the per-sequence CSV."""

    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float
    objects: list[tuple[str, float, float]] = field(default_factory=list)  # (<seq>_<k>, J-Mean, F-Mean)

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2.0

    def as_dict(self) -> dict[str, float]:
        """The global row under the official column names."""
        values = (self.jf_mean, self.j_mean, self.j_recall, self.j_decay, self.f_mean, self.f_recall, self.f_decay)
        return dict(zip(GLOBAL_COLUMNS, values))


_PNG = b"\x89PNG\r\n\x1a\n"


def _unfiltered_png(data: bytes) -> np.ndarray | None:
    """The ids of an 8-bit grey or palette, non-interlaced PNG whose rows are all stored unfiltered (what PIL
    and most mask writers produce for palette images), inflated with zlib-ng: several times faster than PIL
    on 480p masks. None for any other PNG, a bad chunk checksum or a stream that does not inflate to the
    image's size (PIL then decodes it or says what is wrong)."""
    if not data.startswith(_PNG):
        return None
    pos, size, idat = len(_PNG), None, []
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, end = data[pos + 4:pos + 8], pos + 8 + length
        if kind in (b"IHDR", b"IDAT") and zlib_ng.crc32(data[pos + 4:end]) != int.from_bytes(data[end:end + 4], "big"):
            return None
        if kind == b"IHDR":
            depth, color, _, _, interlace = data[pos + 16:pos + 21]
            if depth != 8 or color not in (0, 3) or interlace:
                return None
            size = int.from_bytes(data[pos + 12:pos + 16], "big"), int.from_bytes(data[pos + 8:pos + 12], "big")
        elif kind == b"IDAT":
            idat.append(data[pos + 8:end])
        elif kind == b"IEND":
            break
        pos = end + 4
    if size is None or not idat:
        return None
    try:
        raw = zlib_ng.decompress(b"".join(idat))
    except zlib_ng.error:
        return None
    height, width = size
    if len(raw) != height * (width + 1):
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)
    return None if rows[:, 0].any() else rows[:, 1:]  # each row starts with its filter type; 0 is none


def _decode_ids(data: bytes, where: str) -> np.ndarray:
    fast = _unfiltered_png(data)
    if fast is not None:
        return fast
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            ids = np.array(image)
    except (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError) as e:  # PIL's many kinds
        problem = "not an image file PIL can read" if isinstance(e, UnidentifiedImageError) else str(e)
        raise UserError(f"{where}: cannot read the PNG ({problem})") from None
    if ids.ndim != 2:
        raise UserError(f"{where}: expected a single-channel (P or L mode) PNG of object ids, got mode {mode}")
    return ids


def _read_file(fs: pafs.FileSystem, path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _read_all(fs: pafs.FileSystem, paths: Sequence[str]) -> list[bytes | None]:
    """Several files at once: remote stores answer many small requests in parallel much faster."""
    if len(paths) < 2 or isinstance(fs, pafs.LocalFileSystem):
        return [_read_file(fs, p) for p in paths]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda p: _read_file(fs, p), paths))


def _join(root: str | os.PathLike, *parts: str) -> str:
    """`root/parts` as a path or URI (pyarrow URIs keep their scheme)."""
    return "/".join([os.fspath(root).rstrip("/"), *parts])


def annotation_dir(gt_root: str | os.PathLike, task: str) -> str:
    """`<gt_root>/Annotations/480p` (semi-supervised) or `<gt_root>/Annotations_unsupervised/480p`."""
    if task not in (SEMI, UNSUP):
        raise ValueError(f"task must be {SEMI!r} or {UNSUP!r}, got {task!r}")
    return _join(gt_root, "Annotations" if task == SEMI else "Annotations_unsupervised", "480p")


def read_sequence_list(gt_root: str | os.PathLike, set_name: str, task: str = SEMI) -> list[str]:
    """Sequence names of `ImageSets/<year>/<set>.txt` in file order (2019 for unsupervised test sets, else 2017)."""
    year = "2019" if task == UNSUP and set_name in ("test-dev", "test-challenge") else "2017"
    uri = _join(gt_root, "ImageSets", year, f"{set_name}.txt")
    fs, path = resolve(uri)
    data = _read_file(fs, path)
    if data is None:
        raise NotFound(f"{uri}: sequence list for set {set_name!r} not found")
    return [line.strip() for line in data.decode().splitlines() if line.strip()]


def _pngs(fs: pafs.FileSystem, folder: str, uri: str) -> dict[str, str]:
    """Frame name -> path of the PNGs in a folder, `.png` or `.PNG` (any case); a frame stored under two
    spellings is refused, naming both."""
    out: dict[str, str] = {}
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        name = info.base_name
        if info.type != pafs.FileType.File or name[-4:].lower() != ".png":
            continue
        if name[:-4] in out:
            raise UserError(f"{uri}: frame {name[:-4]} is there twice ({posixpath.basename(out[name[:-4]])} and "
                            f"{name}); keep one")
        out[name[:-4]] = info.path
    return out


def read_gt(annotations: str | os.PathLike, sequence: str) -> tuple[np.ndarray, list[str]]:
    """All GT id maps of a sequence [T, H, W] and their frame names (sorted stems of its `.png` / `.PNG` files)."""
    uri = _join(annotations, sequence)
    fs, folder = resolve(uri)
    files = _pngs(fs, folder, uri)
    if not files:
        raise NotFound(f"{uri}: no ground-truth PNGs for sequence {sequence!r}")
    names = sorted(files)
    paths = [files[n] for n in names]
    frames = [_decode_ids(data, f"sequence {sequence!r}, frame {name}: ground truth {uri}/{posixpath.basename(p)}")
              for name, p, data in zip(names, paths, _read_all(fs, paths))]
    for path, m in zip(paths, frames):
        if m.shape != frames[0].shape:
            raise UserError(f"{uri}/{posixpath.basename(path)}: GT size {m.shape} differs from the sequence's "
                            f"first frame {frames[0].shape}")
    return np.stack(frames), names


def read_predictions(results_dir: str | os.PathLike, sequence: str, frame_ids: Sequence[str],
                     shape: tuple[int, int]) -> np.ndarray:
    """Predicted id maps `<results_dir>/<seq>/<frame>.png` (or `.PNG`) [T, H, W]; each must have the GT size."""
    uri = _join(results_dir, sequence)
    fs, folder = resolve(uri)
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        raise NotFound(f"{uri}: the results have no folder for sequence {sequence!r} "
                                f"(expected {sequence}/<frame>.png for each GT frame)")
    files = _pngs(fs, folder, uri)
    missing = [f for f in frame_ids if f not in files]
    if missing:
        raise NotFound(f"sequence {sequence!r}, frame {missing[0]}: {uri}/{missing[0]}.png not found (expected one "
                       "PNG per annotated frame, named as the GT)")
    out = []
    for frame, data in zip(frame_ids, _read_all(fs, [files[f] for f in frame_ids])):
        where = f"sequence {sequence!r}, frame {frame}: {uri}/{posixpath.basename(files[frame])}"
        if data is None:
            raise NotFound(f"{where} not found (expected one PNG per annotated frame, named as the GT)")
        ids = _decode_ids(data, where)
        if ids.shape != tuple(shape):
            raise UserError(f"{where}: prediction is {ids.shape[1]}x{ids.shape[0]} (WxH) but the ground truth "
                             f"is {shape[1]}x{shape[0]}; predictions must have the GT resolution")
        out.append(ids)
    return np.stack(out)


def _num_objects(first_gt: np.ndarray) -> int:
    ids = first_gt[first_gt != VOID]
    return int(ids.max()) if ids.size else 0


def _confusion(gt: np.ndarray, pred: np.ndarray, n_gt: int, n_pred: int, boxes: Sequence[Box | None]) -> np.ndarray:
    """Pixel counts [T, n_gt + 1, n_pred + 1] of (GT id, predicted id) per frame, counted inside each frame's box.

    Outside the boxes both maps are 0, and no score reads the (0, 0) cell, so it is left out there (as are
    void pixels, which the callers set to 0 in both maps).
    """
    cells = (n_gt + 1) * (n_pred + 1)
    dtype = np.uint8 if cells <= 256 else np.int64
    out = np.zeros((len(gt), n_gt + 1, n_pred + 1), dtype=np.int64)
    for t, box in enumerate(boxes):
        if box is not None:
            g, p = (m[t, box[0]:box[1], box[2]:box[3]].astype(dtype, copy=False) for m in (gt, pred))
            out[t] = np.bincount((g * dtype(n_pred + 1) + p).ravel(), minlength=cells).reshape(out.shape[1:])
    return out


def _object_jaccard(gt: np.ndarray, pred: np.ndarray, n: int, boxes: Sequence[Box | None]) -> np.ndarray:
    """J [n, T] of GT object k against predicted id k, counted inside each frame's box (`boxes` must hold every
    pixel of ids 1..n of both maps; other ids are background)."""
    out = np.ones((n, len(gt)))
    for t, box in enumerate(boxes):
        if box is not None:
            g, p = (m[t, box[0]:box[1], box[2]:box[3]] for m in (gt, pred))
            for k in range(1, n + 1):
                gk, pk = g == k, p == k
                union = np.count_nonzero(gk | pk)
                if union:
                    out[k - 1, t] = np.count_nonzero(gk & pk) / union
    return out


def _pair_jaccard(conf: np.ndarray) -> np.ndarray:
    """J [n_pred, n_gt, T] of every (proposal, object) pair from the confusion counts (ids from 1)."""
    inter = conf[:, 1:, 1:].transpose(2, 1, 0)
    gt_area = conf[:, 1:, :].sum(axis=2).T
    pred_area = conf[:, :, 1:].sum(axis=1).T
    union = gt_area[None] + pred_area[:, None] - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _check_ids(pred: np.ndarray, limit: int, sequence: str, frame_ids: Sequence[str], what: str) -> None:
    over = pred.reshape(len(pred), -1).max(axis=1) > limit
    if over.any():
        t = int(np.argmax(over))
        raise UserError(f"sequence {sequence!r}, frame {frame_ids[t]}: predicted id {int(pred[t].max())} {what}")


def score_semi(gt: np.ndarray, pred: np.ndarray, sequence: str = "",
               frame_ids: Sequence[str] | None = None) -> SequenceScores:
    """Semi-supervised scores of one sequence.

    gt: all annotated frames [T, H, W] (T ≥ 3; N = largest id in frame 0). pred: [T - 2, H, W] predictions of
    the middle frames, or [T, H, W] (first and last are then ignored). Void counts as background.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if len(gt) < 3:
        raise ValueError(f"sequence {sequence!r}: semi-supervised scoring needs at least 3 annotated frames, "
                         f"got {len(gt)}")
    if len(pred) == len(gt):
        pred = pred[1:-1]
    if len(pred) != len(gt) - 2 or pred.shape[1:] != gt.shape[1:]:
        raise ValueError(f"sequence {sequence!r}: predictions {pred.shape} do not match GT {gt.shape} "
                         "(expected the middle frames at GT resolution)")
    frame_ids = list(frame_ids) if frame_ids is not None else [str(i) for i in range(len(gt))]
    n = _num_objects(gt[0])
    gt = gt[1:-1]  # void and ids not in the first frame stay in: the confusion counts and boundaries ignore them
    _check_ids(pred, n, sequence, frame_ids[1:-1], f"is higher than the {n} object(s) in the first GT frame")
    boxes = frame_boxes(gt, pred)
    radius = bound_pix(gt.shape[1:])
    f = [f_from_boundaries(g, p, radius)
         for g, p in zip(label_boundaries(gt, n, boxes), label_boundaries(pred, n, boxes))]
    return SequenceScores(sequence, _object_jaccard(gt, pred, n, boxes), np.array(f).reshape(n, len(gt)))


def score_unsup(gt: np.ndarray, pred: np.ndarray, sequence: str = "", frame_ids: Sequence[str] | None = None,
                max_proposals: int = 20) -> SequenceScores:
    """Unsupervised scores of one sequence: gt and pred [T, H, W], every frame, void excluded, Hungarian matching."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if pred.shape != gt.shape:
        raise ValueError(f"sequence {sequence!r}: predictions {pred.shape} do not match GT {gt.shape}")
    frame_ids = list(frame_ids) if frame_ids is not None else [str(i) for i in range(len(gt))]
    _check_ids(pred, max_proposals, sequence, frame_ids, f"is more than the {max_proposals} proposals allowed")
    void = gt == VOID
    n_gt = _num_objects(gt[0])
    n_pred = max(int(pred.max()), n_gt)  # counted before void is cleared; too few: padded with empty ones
    gt, pred = gt * (gt <= n_gt), pred * ~void  # void (255) and ids not in the first frame are background
    boxes = frame_boxes(gt, pred)
    j = _pair_jaccard(_confusion(gt, pred, n_gt, n_pred, boxes))
    radius = bound_pix(gt.shape[1:])
    gt_b, pred_b = label_boundaries(gt, n_gt, boxes), label_boundaries(pred, n_pred, boxes)
    f = np.array([[f_from_boundaries(g, p, radius) for g in gt_b] for p in pred_b]).reshape(j.shape)
    rows, cols = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    return SequenceScores(sequence, j[rows, cols], f[rows, cols])


def per_sequence(gt_root: str | os.PathLike, results_dir: str | os.PathLike, sequence: str, task: str = SEMI,
                 annotations: str | os.PathLike | None = None, max_proposals: int = 20) -> SequenceScores:
    """Read one sequence's GT and predicted PNGs and score it (`task`: "semi-supervised" or "unsupervised")."""
    folder = os.fspath(annotations) if annotations is not None else annotation_dir(gt_root, task)
    gt, frame_ids = read_gt(folder, sequence)
    if task == SEMI:
        if len(gt) < 3:
            raise UserError(f"{_join(folder, sequence)}: semi-supervised scoring needs at least 3 annotated "
                             f"frames, got {len(gt)}")
        pred = read_predictions(results_dir, sequence, frame_ids[1:-1], gt.shape[1:])
        return score_semi(gt, pred, sequence, frame_ids)
    if task != UNSUP:
        raise ValueError(f"task must be {SEMI!r} or {UNSUP!r}, got {task!r}")
    pred = read_predictions(results_dir, sequence, frame_ids, gt.shape[1:])
    return score_unsup(gt, pred, sequence, frame_ids, max_proposals)


def combine(scores: Iterable[SequenceScores]) -> Report:
    """Global numbers over all objects of the given sequences (in order), as upstream computes them."""
    j_stats, f_stats, objects = [], [], []
    for s in scores:
        for k in range(len(s.j)):
            j_stats.append(statistics(s.j[k]))
            f_stats.append(statistics(s.f[k]))
            objects.append((f"{s.sequence}_{k + 1}", j_stats[-1][0], f_stats[-1][0]))
    if not objects:
        raise UserError("no objects to score: the first GT frame of every sequence is empty")
    # One 1-D mean per column, like upstream (a 2-D axis-0 mean can differ in the last bit).
    means = [float(np.mean([row[i] for row in stats])) for stats in (j_stats, f_stats) for i in range(3)]
    return Report(*means, objects=objects)


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else "%.3f" % x


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_uri(uri: str, text: str) -> None:
    fs, path = resolve(uri)
    with fs.open_output_stream(path, compression=None) as f:  # an object store replaces the object on close
        f.write(text.encode())


def write_csv(report: Report, results_dir: str | os.PathLike, set_name: str = "val") -> tuple[PurePath, PurePath]:
    """Write `global_results-<set>.csv` and `per-sequence_results-<set>.csv` (replacing any old ones) into a
    folder or a pyarrow URI."""
    names = f"global_results-{set_name}.csv", f"per-sequence_results-{set_name}.csv"
    row = ",".join(_fmt(v) for v in report.as_dict().values())
    lines = [",".join(SEQUENCE_COLUMNS)] + [f"{name},{_fmt(jm)},{_fmt(fm)}" for name, jm, fm in report.objects]
    texts = ",".join(GLOBAL_COLUMNS) + "\n" + row + "\n", "\n".join(lines) + "\n"
    if "://" in os.fspath(results_dir):
        fs, folder = resolve(os.fspath(results_dir))
        fs.create_dir(folder, recursive=True)
        for name, text in zip(names, texts):
            _write_uri(_join(results_dir, name), text)
        return PurePosixPath(folder, names[0]), PurePosixPath(folder, names[1])
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, text in zip(names, texts):
        _write_atomic(results_dir / name, text)
    return results_dir / names[0], results_dir / names[1]


def _evaluate(task: str, gt_root, results_dir, sequences, set_name, annotations, write, max_proposals) -> Report:
    if sequences is None:
        sequences = read_sequence_list(gt_root, set_name, task)
    report = combine(per_sequence(gt_root, results_dir, s, task, annotations, max_proposals) for s in sequences)
    if write:
        write_csv(report, results_dir, set_name)
    return report


def evaluate_semi(gt_root: str | os.PathLike, results_dir: str | os.PathLike, sequences: Sequence[str] | None = None,
                  set_name: str = "val", annotations: str | os.PathLike | None = None, write: bool = True) -> Report:
    """Semi-supervised DAVIS-2017 scores of `results_dir/<seq>/<frame>.png` (sequences default to the set list)."""
    return _evaluate(SEMI, gt_root, results_dir, sequences, set_name, annotations, write, 20)


def evaluate_unsup(gt_root: str | os.PathLike, results_dir: str | os.PathLike,
                   sequences: Sequence[str] | None = None, set_name: str = "val",
                   annotations: str | os.PathLike | None = None, write: bool = True,
                   max_proposals: int = 20) -> Report:
    """Unsupervised DAVIS-2017 scores (GT from Annotations_unsupervised unless `annotations` is given)."""
    return _evaluate(UNSUP, gt_root, results_dir, sequences, set_name, annotations, write, max_proposals)
