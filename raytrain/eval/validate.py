"""In-training validation: J&F on the DAVIS val videos (the first `--val_videos`, or all), at every checkpoint.

- SMTC: label propagation (preset A) with the features of the student's encoder (`task.model.encoder`):
  `val_jf`, `val_j`, `val_f`; and unsupervised object discovery (official DAVIS protocol) with the whole
  student (slots included): `val_disc_jf`, `val_disc_j`, `val_disc_f`. Discovery runs at the training
  resolution (height `resolution`, width 5/3 of it, as upstream's 480 x 800) and is scored against
  `Annotations_unsupervised` where the folder has them. With the encoder's learning rate at x0 for
  `grad_iter` steps and x0.01 after, propagation moves little in a short run; discovery shows the slots.
- STMAE: semi-supervised VOS of `task.model` from the first-frame masks (memory every 5 frames, top-k 30), at
  the videos' own resolution (480p for DAVIS): `val_jf`, `val_j`, `val_f`.

Numbers are fractions in [0, 1] (as in the official CSV files), averaged over objects as the DAVIS evaluator
does. Serial, on the task's device; the model is switched to eval mode and back. It runs in a Ray task of its own
on each checkpoint while training goes on (`raytrain.train.validation`), or with `--no-val_async` on rank 0 in
the training loop.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from raytrain.eval.davis import combine
from raytrain.eval.discovery import DiscoverySettings, discover_video
from raytrain.eval.propagation import SMTC_A, propagation_video
from raytrain.eval.vos import VOSSettings, VOSVideo, segment_video
from shards.layout import list_videos


def _metrics(prefix: str, scores: list, videos: list, root: str) -> dict[str, float]:
    missing = [v.id for v, s in zip(videos, scores) if s is None]
    if missing:
        raise ValueError(f"--val_data {root}: videos without annotations for every frame: {', '.join(missing)}")
    report = combine(scores)
    return {f"{prefix}_jf": report.jf_mean, f"{prefix}_j": report.j_mean, f"{prefix}_f": report.f_mean}


def discovery_size(resolution: int) -> tuple[int, int]:
    """Discovery input (H, W) for a model trained at `resolution`: upstream's 3:5, width a multiple of 16."""
    return resolution, max(16, round(resolution * 5 / 3 / 16) * 16)


def _videos(cfg: Any, unsupervised: bool = False) -> list:
    """The first `cfg.val_videos` val videos of `cfg.val_data` (0: all of them)."""
    videos = list_videos(cfg.val_data, "davis", "val", unsupervised=unsupervised)[:cfg.val_videos or None]
    if not videos:
        raise ValueError(f"--val_data {cfg.val_data}: no videos in ImageSets/2017/val.txt")
    return videos


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[torch.device]:
    """The model in eval mode (its device given), back in its own mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def validate_smtc(task: Any, cfg: Any) -> dict[str, float]:
    """SMTC's validation metrics of `task.model` on the first `cfg.val_videos` videos of `cfg.val_data`."""
    videos = _videos(cfg)
    with _evaluating(task.model) as device:
        scores = [propagation_video(task.model.encoder, v, device, SMTC_A).scores for v in videos]
        out = _metrics("val", scores, videos, cfg.val_data)
        unsup = _videos(cfg, unsupervised=True)
        if all(v.annotations for v in unsup):
            settings = DiscoverySettings(size=discovery_size(cfg.resolution), seed=cfg.seed)
            scores = [discover_video(task.model, v, device, settings).scores for v in unsup]
            out |= _metrics("val_disc", scores, unsup, cfg.val_data)
    return out


def validate_stmae(task: Any, cfg: Any) -> dict[str, float]:
    """STMAE's validation metrics of `task.model` on the first `cfg.val_videos` videos of `cfg.val_data`."""
    videos = _videos(cfg)
    with _evaluating(task.model) as device:
        settings = VOSSettings(size=cfg.val_size, amp=device.type == "cuda")
        scores = [segment_video(task.model, VOSVideo(v, "D17"), device, settings).scores for v in videos]
    return _metrics("val", scores, videos, cfg.val_data)
