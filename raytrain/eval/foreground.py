"""Single-foreground discovery (DAVIS-2016, SegTrack-v2, FBMS-59): SMTC's slot masks turned into one foreground
and scored by IoU (reference/eval-more.md §4).

Slot masks: every candidate map of `raytrain.eval.discovery.candidates` (semantic x instance slots,
p_sem[s] * p_inst[s, p]), nearest-upsampled to the annotation size as SMTC's `F.interpolate` does. The
cos >= 0.5 filter of multi-object discovery is not applied: here the ground truth selects the slots (SMTC's
`ensemble_hungarian_iou` is never called upstream, so which masks it was meant for is not established).

Foreground rules:
- `smtc` (SMTC's `ensemble_hungarian_iou`, utils.py:296-342): each slot min-max normalised; the slots whose IoU
  with the ground truth (at 0.5) beats their IoU with the background are kept; their unnormalised masks summed,
  min-max normalised, thresholded at 0.5. The ground truth picks the slots: an oracle union.
- `best-slot` (motion-grouping's `ensemble_hungarian_iou`, src/utils.py): the single slot whose mask, as it is
  (no normalisation: slot masks are a softmax over the slots), has the best IoU with the ground truth at 0.5.
IoU is SMTC's: intersection / (union + 1e-12), so an empty prediction of an empty ground truth scores 0 (OCLR's
`iou` gives 1 there).

Averaging: both are reported. `frame`: the mean over every scored frame of every sequence (motion-grouping);
`sequence`: per sequence, then over sequences (OCLR on DAVIS-2016 and SegTrack-v2). Which one SMTC's table uses
is not established. FBMS is scored on its annotated frames only (every 20th); the others on every frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raytrain.eval.discovery import DiscoverySettings, candidates, video_seed
from raytrain.eval.video_io import VideoResult, encode_png, read_clip, read_png
from raytrain.models.smtc import SMTC
from shards.errors import UserError
from shards.layout import Video

RULES = ("smtc", "best-slot")
THRESHOLD = 0.5


def iou(masks: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """SMTC's IoU of binary masks [..., H, W] with a binary ground truth [H, W]."""
    masks, gt = masks.float(), gt.float()
    inter = (masks * gt).sum((-2, -1))
    return inter / (masks.sum((-2, -1)) + gt.sum() - inter + 1e-12)


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(-2)
    low, high = flat.min(-1, keepdim=True)[0], flat.max(-1, keepdim=True)[0]
    return ((flat - low) / (high - low + 1e-10)).view_as(m)


def foreground(slots: torch.Tensor, gt: torch.Tensor, rule: str = "smtc") -> torch.Tensor:
    """One bool foreground [H, W] from slot masks [S, H, W] (at the annotation size) and the ground truth."""
    if rule not in RULES:
        raise ValueError(f"foreground rule must be one of {', '.join(RULES)}, got {rule!r}")
    if len(slots) == 0:
        return torch.zeros(gt.shape, dtype=torch.bool)
    if rule == "best-slot":
        return slots[int(iou(slots > THRESHOLD, gt).argmax())] > THRESHOLD
    norm = _minmax(slots.float())
    keep = iou(norm > THRESHOLD, gt) > iou(norm > THRESHOLD, ~gt.bool())
    return _minmax((slots.float() * keep[:, None, None]).sum(0)) > THRESHOLD


def read_mask(video: Video, frame: str) -> np.ndarray:
    """A 0/255 (or 0/1) annotation as bool [H, W]; RGB annotations use their first channel."""
    return binary(read_png(video, frame)[0])


def binary(values: np.ndarray) -> np.ndarray:
    """Foreground of a mask image: values above half its range (0/255 masks: > 127; 0/1 masks: > 0)."""
    values = values[..., 0] if values.ndim == 3 else values
    return values > (127 if values.max(initial=0) > 1 else 0)


@dataclass(frozen=True)
class FrameIoUs:
    """IoU of each scored frame of one sequence."""

    sequence: str
    frames: tuple[str, ...]
    ious: tuple[float, ...]


def mean_iou(scores: list[FrameIoUs]) -> dict[str, float]:
    """Mean IoU averaged per frame (over all scored frames) and per sequence (then over sequences)."""
    every = [v for s in scores for v in s.ious]
    return {"mIoU_per_frame": float(np.mean(every)) if every else float("nan"),
            "mIoU_per_sequence": float(np.mean([np.mean(s.ious) for s in scores if s.ious])) if every
            else float("nan"),
            "frames": len(every), "sequences": len(scores)}


def score_frames(video: Video, masks: dict[str, np.ndarray]) -> FrameIoUs:
    """IoU of predicted foregrounds (bool, by frame) against the annotated frames of `video`."""
    ious = []
    for frame in video.annotations:
        gt = read_mask(video, frame)
        if masks[frame].shape != gt.shape:
            raise UserError(f"sequence {video.id!r}, frame {frame}: mask {masks[frame].shape} vs annotation {gt.shape}")
        ious.append(float(iou(torch.as_tensor(masks[frame]), torch.as_tensor(gt))))
    return FrameIoUs(video.id, tuple(video.annotations), tuple(ious))


@torch.inference_mode()
def foreground_video(model: SMTC, video: Video, device: torch.device, settings: DiscoverySettings,
                     rule: str = "smtc") -> VideoResult:
    """SMTC's foreground on every annotated frame of a sequence: 0/255 PNGs and the frames' IoUs."""
    frames = read_clip(video)
    c = candidates(model, frames, size=settings.size, window=settings.window, iters=settings.iters,
                   seed=video_seed(settings.seed, video.id), batch=settings.batch, device=device)
    index = {f: i for i, f in enumerate(video.frames)}
    fgs = {}
    for frame in video.annotations:
        gt = torch.as_tensor(read_mask(video, frame))
        t = index[frame]
        slots = F.interpolate(c.soft[t][None].float().cpu(), size=tuple(gt.shape), mode="nearest")[0]
        fgs[frame] = foreground(slots, gt, rule).numpy()
    masks = {f: encode_png(np.where(m, 255, 0), None) for f, m in fgs.items()}
    return VideoResult(video.id, masks, None, stats=score_frames(video, fgs))
