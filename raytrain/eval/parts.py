"""VIP body-part propagation and mIoU, as CRW (ajabri/videowalk: test.py, eval_vip.py) computes them
(reference/eval-more.md §3).

- Labels: the classes present in frame 0, one-hot, bilinearly downsampled to the grid (the `VIP` preset's
  floor grid, SMTC's copy of CRW; CRW's own rounds up), propagated with
  `raytrain.eval.propagation.propagate_soft`, bilinearly upsampled, argmaxed and written as single-channel
  PNGs of class ids, `<video>/<frame>.png`. Frame 0's output is its downsampled ground truth upsampled
  again (CRW's), not the ground truth itself; no `_blend.jpg` files are written beside them.
- mIoU: one 20 x 20 confusion matrix (ground truth x prediction) over every frame of every video, frame 0
  included, ground-truth values outside 0..19 ignored; IoU per class = TP / (GT + Pred - TP), mIoU = the
  mean over the classes whose union is not empty (background counts; a class predicted but absent scores 0).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from raytrain.eval.propagation import VIP, Preset, _decode, _first_labels, encode_tokens, propagate_soft, vit_features
from raytrain.eval.video_io import VideoResult, encode_png, read_clip, read_png
from raytrain.models.vit import ViTEncoder
from shards.bench_synth import VIP_CLASSES
from shards.errors import UserError
from shards.layout import Video

NUM_CLASSES = len(VIP_CLASSES)  # 20: background and 19 parts


def confusion(gt: np.ndarray, pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """[n, n] counts of (ground truth, prediction) pairs; ground truth outside 0..n-1 is ignored."""
    keep = (gt >= 0) & (gt < n)
    return np.bincount(n * gt[keep].astype(np.int64) + pred[keep].astype(np.int64), minlength=n * n).reshape(n, n)


def miou(hist: np.ndarray) -> dict[str, float]:
    """mIoU, per-class IoU (NaN: empty union) and pixel accuracy of a confusion matrix."""
    tp = np.diag(hist).astype(np.float64)
    union = hist.sum(1) + hist.sum(0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / union
    return {"mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / max(hist.sum(), 1)),
            "per_class": {c: float(v) for c, v in zip(VIP_CLASSES, iou)}}


def check_prediction(pred: np.ndarray, where: str) -> None:
    """A prediction must be a single-channel map of class ids 0..19 (eval_vip stops in pdb above 20)."""
    if pred.ndim != 2:
        raise UserError(f"{where}: expected a single-channel PNG of class ids, got shape {pred.shape}")
    if pred.size and pred.max() >= NUM_CLASSES:
        raise UserError(f"{where}: class id {int(pred.max())} is not a VIP class (0..{NUM_CLASSES - 1})")


@torch.inference_mode()
def part_video(encoder: ViTEncoder, video: Video, device: torch.device, preset: Preset = VIP) -> VideoResult:
    """Propagate frame 0's parts through a VIP video; class-id PNGs and the video's confusion matrix."""
    frames = read_clip(video)
    feats = vit_features(partial(encode_tokens, encoder, preset), frames, preset, device=device)
    grid = tuple(feats.shape[-2:])
    first = read_png(video, video.frames[0])[0]
    soft, ids = _first_labels(first, preset, grid, feats.device)
    labels = propagate_soft(feats, soft, preset)
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    masks = {}
    for t, frame in enumerate(video.frames):
        pred = _decode(labels[t], grid, preset, ids, (video.height, video.width)).astype(np.uint8)
        gt = read_png(video, frame)[0]
        if gt.shape != pred.shape:
            raise UserError(f"video {video.id!r}, frame {frame}: labels {gt.shape} vs image {pred.shape}")
        check_prediction(pred, f"video {video.id!r}, frame {frame}")
        hist += confusion(gt, pred)
        masks[frame] = encode_png(pred, None)
    return VideoResult(video.id, masks, None, stats=hist)
