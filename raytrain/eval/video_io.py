"""The per-video contract of evaluation: `VideoResult` (what one video's work returns to the driver) and frame
and mask I/O through a video's filesystem (`Video.fs`: local folders, NFS, or any URI pyarrow understands).

Masks travel as PNG bytes, so only the driver writes outputs.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from raytrain.eval.davis import SequenceScores
from shards.errors import NotFound, UserError
from shards.layout import Video, image_problem


@dataclass
class VideoResult:
    """What one video's evaluation returns to the driver."""

    name: str
    masks: dict[str, bytes]  # frame name -> P-mode PNG of object ids, in frame order
    scores: SequenceScores | None  # per-object per-frame J and F (None: no ground truth to score)
    seconds: float = 0.0  # time spent in `work`
    extra: dict[str, bytes] = field(default_factory=dict)  # other files, by path relative to the output folder
    stats: Any = None  # the benchmarks' per-video numbers (keypoint distances, confusion matrix, frame IoUs)


def read_rgb(video: Video, index: int) -> np.ndarray:
    """Frame `index` of `video` as RGB uint8 [H, W, 3]."""
    try:
        with Image.open(io.BytesIO(video.read(video.jpegs[index]))) as im:
            return np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"video {video.id!r}, frame {video.frames[index]}: {video.jpegs[index]}: cannot decode "
                        f"it ({image_problem(e)})") from None


def read_clip(video: Video) -> torch.Tensor:
    """All frames of `video` as uint8 [T, 3, H, W]."""
    return torch.from_numpy(np.stack([read_rgb(video, i) for i in range(len(video.frames))])).permute(0, 3, 1, 2)


class Frames(Sequence):
    """A video's frames decoded on access (for per-frame consumers such as STMAE's propagation)."""

    def __init__(self, video: Video):
        self.video = video

    def __len__(self) -> int:
        return len(self.video.frames)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return read_rgb(self.video, index)


def read_png(video: Video, frame: str) -> tuple[np.ndarray, list[int] | None]:
    """The annotation of `frame` as an id map [H, W] and its palette (None when not a P-mode PNG)."""
    path = video.annotations.get(frame)
    if path is None:
        raise NotFound(f"video {video.id!r}: no annotation PNG for frame {frame}")
    try:
        with Image.open(io.BytesIO(video.read(path))) as im:
            palette = im.getpalette() if im.mode == "P" else None
            ids = np.array(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"video {video.id!r}, frame {frame}: {path}: cannot decode it ({image_problem(e)})") from None
    if ids.ndim != 2:
        raise UserError(f"video {video.id!r}, frame {frame}: {path}: expected a single-channel (P or L mode) PNG "
                        f"of object ids, got mode {im.mode}")
    return ids, palette


def missing_annotations(video: Video) -> list[str]:
    """The frames without an annotation PNG, for a video annotated beyond its first frame (partial ground truth,
    which cannot be scored); [] for complete ground truth and for none (at most frame 0, as in DAVIS test-dev)."""
    missing = [f for f in video.frames if f not in video.annotations]
    return [] if [f for f in video.frames if f in video.annotations] in ([], video.frames[:1]) else missing


def partial_ground_truth(videos: Sequence[Video]) -> str:
    """`seq: frames, ...` for the videos whose ground truth is partial (empty when none is)."""
    partial = {v.id: missing_annotations(v) for v in videos}
    return "; ".join(f"{name}: no annotation PNG for frame{'s' * (len(m) > 1)} {', '.join(m[:8])}"
                     + (f" and {len(m) - 8} more" if len(m) > 8 else "") for name, m in partial.items() if m)


def read_ground_truth(video: Video) -> np.ndarray | None:
    """Id maps [T, H, W] of every frame, or None when at most the first frame is annotated (DAVIS test-dev: no
    ground truth to score). Partial ground truth is an error naming the missing frames, and an annotation whose
    size differs from its frame's one naming the frame."""
    if any(f not in video.annotations for f in video.frames):
        partial = partial_ground_truth([video])
        if partial:
            raise UserError(f"video {partial}; a sequence is scored on every frame")
        return None
    maps = []
    for f in video.frames:
        ids = read_png(video, f)[0]
        if ids.shape != (video.height, video.width):
            raise UserError(f"video {video.id!r}, frame {f}: the annotation is {ids.shape[1]}x{ids.shape[0]}, the "
                            f"frames are {video.width}x{video.height}")
        maps.append(ids)
    return np.stack(maps)


def encode_png(ids: np.ndarray, palette: Sequence[int] | bytes | None) -> bytes:
    """A P-mode PNG of an id map with `palette` (an L-mode PNG when `palette` is None)."""
    im = Image.fromarray(np.asarray(ids, dtype=np.uint8))
    if palette is not None:
        im.putpalette(list(palette))  # L -> P, values unchanged
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> tuple[np.ndarray, list[int] | None]:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im), (im.getpalette() if im.mode == "P" else None)
