"""Scoring a folder of predictions for the benchmarks beyond DAVIS-2017 (`python -m raytrain.eval score --task
pck|vip|fg-iou`), with the metrics of `keypoints`, `parts` and `foreground`.

- `pck`: `<list index>.npy` per JHMDB video (2 x 15 x T grid coordinates on eval_pck's 40 x 40 grid).
- `vip`: `<video>/<frame>.png` class ids for every labelled frame (nearest-resized to the label size if it
  differs, as eval_vip.py does).
- `fg-iou`: `<sequence>/<frame>.png` foregrounds (0/255 or 0/1) for every annotated frame; files of frames
  without an annotation (FBMS) are allowed and not scored.

Every expected file must be there and nothing else may be: a missing file, or a stray one (CRW's
`_blend.jpg` files, a sequence that is not in the set), is refused with one line naming it, before any scoring.
"""
from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from PIL import Image

from raytrain.eval.foreground import FrameIoUs, binary, iou, mean_iou, read_mask
from raytrain.eval.keypoints import pck, pck_distances
from raytrain.eval.parts import NUM_CLASSES, check_prediction, confusion, miou
from raytrain.eval.video_io import read_png
from shards.bench_layout import read_foreground, read_jhmdb, read_vip
from shards.errors import NotFound, UsageError, UserError
from shards.layout import _read, image_problem, resolve

SCORE_TASKS = ("pck", "vip", "fg-iou")


def _files(results: str) -> dict[str, str]:
    """{relative path: path} of every file under the results folder."""
    fs, base = resolve(results)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise NotFound(f"--results {results}: no such folder")
    return {posixpath.relpath(i.path, base): i.path for i in
            fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.type == pafs.FileType.File}


def _check_files(results: str, expected: set[str], allowed: set[str] = frozenset()) -> dict[str, str]:
    files = _files(results)
    missing = sorted(expected - set(files))
    if missing:
        raise NotFound(f"--results {results}: no prediction {missing[0]}"
                       + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""))
    stray = sorted(set(files) - expected - allowed)
    if stray:
        raise UserError(f"--results {results}: {stray[0]} is not a prediction of this set"
                        + (f" (and {len(stray) - 1} more such files)" if len(stray) > 1 else "")
                        + "; remove it (the reference scorers would score or trip over it)")
    return files


def _image(results: str, path: str, rel: str) -> np.ndarray:
    fs, _ = resolve(results)
    try:
        with Image.open(io.BytesIO(_read(fs, path))) as im:
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"--results {results}: {rel}: cannot decode it ({image_problem(e)})") from None


def score_pck(data: str, results: str, imset: str = "") -> dict[str, Any]:
    videos = read_jhmdb(data, imset)
    files = _check_files(results, {f"{v.index}.npy" for v in videos})
    fs, _ = resolve(results)
    distances = []
    for v in videos:
        rel = f"{v.index}.npy"
        try:
            pred = np.load(io.BytesIO(_read(fs, files[rel])), allow_pickle=False)
        except ValueError as e:
            raise UserError(f"--results {results}: {rel}: not a .npy array ({e})") from None
        if pred.shape != v.joints.shape:
            raise UserError(f"--results {results}: {rel}: shape {pred.shape}, expected {v.joints.shape} "
                            f"(2 x 15 x frames of {v.id})")
        distances.append(pck_distances(pred, v.joints, v.video.height, v.video.width))
    return pck(distances)


def score_vip(data: str, results: str, imset: str = "") -> dict[str, Any]:
    videos = read_vip(data, imset)
    files = _check_files(results, {f"{v.id}/{f}.png" for v in videos for f in v.frames})
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for v in videos:
        for frame in v.frames:
            rel = f"{v.id}/{frame}.png"
            pred = _image(results, files[rel], rel)
            gt = read_png(v, frame)[0]
            if pred.ndim == 3:  # eval_vip reads with cv2 and takes the last channel
                pred = pred[..., 0] if (pred == pred[..., :1]).all() else pred
            check_prediction(pred, f"--results {results}: {rel}")
            if pred.shape != gt.shape:
                pred = np.asarray(Image.fromarray(pred).resize(gt.shape[::-1], Image.NEAREST))
            hist += confusion(gt, pred)
    return miou(hist)


def score_foreground(data: str, dataset: str, results: str, imset: str = "") -> dict[str, Any]:
    videos = read_foreground(data, dataset, imset)
    expected = {f"{v.id}/{f}.png" for v in videos for f in v.annotations}
    others = {f"{v.id}/{f}.png" for v in videos for f in v.frames}
    files = _check_files(results, expected, others)
    scores = []
    for v in videos:
        ious = []
        for frame in v.annotations:
            rel = f"{v.id}/{frame}.png"
            pred, gt = binary(_image(results, files[rel], rel)), read_mask(v, frame)
            if pred.shape != gt.shape:
                raise UserError(f"--results {results}: {rel}: {pred.shape[1]}x{pred.shape[0]}, the annotation is "
                                f"{gt.shape[1]}x{gt.shape[0]}")
            ious.append(float(iou(torch.as_tensor(pred), torch.as_tensor(gt))))
        scores.append(FrameIoUs(v.id, tuple(v.annotations), tuple(ious)))
    return mean_iou(scores)


def score_benchmark(task: str, data: str, results: str, dataset: str = "", imset: str = "") -> dict[str, Any]:
    """Scores of a results folder for `task` (pck, vip, fg-iou) against the ground truth in `data`."""
    if task == "pck":
        return score_pck(data, results, imset)
    if task == "vip":
        return score_vip(data, results, imset)
    if task == "fg-iou":
        if not dataset:
            raise UsageError("--task fg-iou needs --dataset davis2016, segtrackv2 or fbms")
        return score_foreground(data, dataset, results, imset)
    raise UsageError(f"--task must be one of {', '.join(SCORE_TASKS)} here, got {task!r}")
