"""STMAE semi-supervised VOS evaluation on DAVIS-16/17 and YouTube-VOS 2018/2019 (upstream `eval.py`).

Each video is segmented by `raytrain.eval.stmae_vos.propagate_video` (memory every `mem_every` frames, top-k
`top_k`, shorter side `size`); `segment_video` is the per-video work for `raytrain.eval.distributed`.

- D16 (`--data` = a DAVIS-2016 folder: `JPEGImages/480p`, `Annotations/480p` with 0/255 masks; sequences from
  `ImageSets/2016/val.txt` or `imset`): the object is id 1 while propagating and written back as 255. Scored
  with `raytrain.eval.davis` semi-supervised rules, the ground truth's 255 read as object 1.
- D17 (a DAVIS-2017 folder, split `val`): only frame 0's mask is given; masks are written to
  `<out>/<seq>/<frame>.png` with the palette of the sequence's first annotation and scored with
  `raytrain.eval.davis` (sequences without annotations for every frame, e.g. test-dev, are written only).
- Y18 / Y19 (a YouTube-VOS folder with `valid/{JPEGImages,Annotations,meta.json}`; frames are taken from
  `valid_all_frames/JPEGImages` when that folder exists): every object's mask is given in the frame where it
  first appears; output only for the frames `valid/meta.json` lists for some object, as
  `<out>/Annotations/<video>/<frame>.png` with the first annotation's palette, zipped with `Annotations/` as
  the archive root for the evaluation server (no public ground truth: nothing is scored here).

Deviations from upstream:
- Void (255) in a DAVIS-2017 first-frame mask counts as background (upstream would track it as an object,
  which the evaluator then rejects).
"""
from __future__ import annotations

import json
import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pyarrow.fs import FileType

from raytrain.eval.davis import VOID, score_semi
from raytrain.eval.video_io import Frames, VideoResult, encode_png, read_ground_truth, read_png
from raytrain.eval.stmae_vos import propagate_video
from raytrain.models.stmae import STMAE
from shards.layout import Video, list_videos, resolve
from shards.palettes import DAVIS_PALETTE, YTVOS_PALETTE

DATASETS = ("D16", "D17", "Y18", "Y19")


@dataclass
class VOSVideo:
    """One video to segment: the video, its dataset and (YouTube-VOS) the frames to write."""

    video: Video
    dataset: str
    keep: list[str] | None = None  # frames to output (None: all)

    @property
    def id(self) -> str:
        return self.video.id


@dataclass(frozen=True)
class VOSSettings:
    mem_every: int = 5
    top_k: int = 30
    size: int = 480  # shorter side; <= 0: original size
    amp: bool = True  # bf16 autocast (CUDA only)
    max_mem_frames: int = 0  # memory frames kept besides those with given masks (0: unbounded)


def is_youtube(dataset: str) -> bool:
    return dataset in ("Y18", "Y19")


def mask_folder(dataset: str) -> str:
    """Where the masks go inside the output folder."""
    return "Annotations" if is_youtube(dataset) else ""


def _read_text(root: str, relative: str) -> str:
    fs, base = resolve(root)
    path = posixpath.join(base, relative)
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read().decode()
    except FileNotFoundError:
        raise FileNotFoundError(f"{root}: {relative} not found") from None


def list_vos_videos(dataset: str, root: str, split: str = "val", imset: str = "") -> list[VOSVideo]:
    """The videos of a dataset (see the module docstring for the expected folders)."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset == "D17":
        return [VOSVideo(v, dataset) for v in list_videos(root, "davis", split)]
    if dataset == "D16":
        if imset:
            names = Path(imset).read_text().split()
        else:
            names = _read_text(root, "ImageSets/2016/val.txt").split()
        videos = {v.id: v for v in list_videos(root, "davis", "all")}
        missing = [n for n in names if n not in videos]
        if missing:
            raise FileNotFoundError(f"{root}: sequences of the DAVIS-2016 list without frames: "
                                    f"{', '.join(missing[:5])}")
        return [VOSVideo(videos[n], dataset) for n in sorted(set(names))]
    fs, base = resolve(root)
    all_frames = fs.get_file_info(posixpath.join(base, "valid_all_frames", "JPEGImages")).type == FileType.Directory
    videos = list_videos(root, "ytvos", "valid_all_frames" if all_frames else "valid")
    try:
        meta = json.loads(_read_text(root, "valid/meta.json"))["videos"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{root}/valid/meta.json: not a YouTube-VOS meta.json: {e!r}") from e
    out = []
    for v in videos:
        if v.id not in meta:
            raise ValueError(f"{root}/valid/meta.json has no entry for video {v.id!r}")
        keep = sorted({f for obj in meta[v.id]["objects"].values() for f in obj["frames"]})
        absent = [f for f in keep if f not in v.frames]
        if absent:
            raise ValueError(f"video {v.id!r}: meta.json asks for frames without images: {', '.join(absent[:5])}")
        if not v.annotations:
            raise ValueError(f"video {v.id!r}: no annotation PNG in {root}/valid/Annotations/{v.id}")
        out.append(VOSVideo(v, dataset, keep))
    return out


def given_masks(item: VOSVideo) -> tuple[dict[int, np.ndarray], list[int] | None]:
    """Frame index -> given id map, and the palette of the first annotation."""
    video = item.video
    frames = sorted(video.annotations) if is_youtube(item.dataset) else video.frames[:1]
    given, palette = {}, None
    for f in frames:
        ids, pal = read_png(video, f)
        if item.dataset == "D16":
            ids = (ids > 0).astype(np.uint8)
        elif item.dataset == "D17":
            ids = np.where(ids == VOID, 0, ids).astype(np.uint8)
        given[video.frames.index(f)] = ids
        palette = pal if palette is None else palette
    return given, palette


@torch.inference_mode()
def segment_video(model: STMAE, item: VOSVideo, device: torch.device, settings: VOSSettings) -> VideoResult:
    """Segment one video and score it when every frame has ground truth (DAVIS)."""
    video = item.video
    given, palette = given_masks(item)
    if palette is None and item.dataset != "D16":  # D16 grey-level annotations are written back as such
        palette = list(YTVOS_PALETTE if is_youtube(item.dataset) else DAVIS_PALETTE)
    preds = propagate_video(model, Frames(video), given, mem_every=settings.mem_every, top_k=settings.top_k,
                            size=settings.size, max_mem_frames=settings.max_mem_frames, device=device,
                            amp=settings.amp and device.type == "cuda")
    scores = None
    if not is_youtube(item.dataset):
        gt = read_ground_truth(video)
        if gt is not None:
            if item.dataset == "D16":
                gt = (gt > 0).astype(np.uint8)
            scores = score_semi(gt, np.stack(preds), video.id, video.frames)
    scale = 255 if item.dataset == "D16" else 1
    keep = set(item.keep) if item.keep is not None else None
    masks = {f: encode_png(p * scale, palette) for f, p in zip(video.frames, preds) if keep is None or f in keep}
    return VideoResult(video.id, masks, scores)


def write_submission(results: Sequence[VideoResult], path: str | Path) -> Path:
    """Zip the results' masks as `Annotations/<video>/<frame>.png` (the archive root is `Annotations/`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for result in results:
            for frame, png in result.masks.items():
                z.writestr(f"Annotations/{result.name}/{frame}.png", png)
    tmp.replace(path)
    return path
