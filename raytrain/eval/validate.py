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
on each checkpoint while training goes on (`raytrain.train.validation`; with `--val_tasks n`, n tasks each score
a share of the videos, `smtc_scores` / `stmae_scores`, and `join_scores` joins them), or with `--no-val_async`
on rank 0 in the training loop.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from raytrain.eval.davis import combine
from raytrain.eval.discovery import DiscoverySettings, discover_video
from raytrain.eval.propagation import SMTC_A, propagation_video
from raytrain.eval.vos import VOSSettings, VOSVideo, segment_video
from shards.layout import list_videos


Share = tuple[int, int]  # (i, n): the i-th of n parts of the val videos (every n-th video from the i-th)
ALL: Share = (0, 1)
Scores = dict[str, list]  # metric prefix ("val", "val_disc") -> the `SequenceScores` of each video, in order


def join_scores(parts: list[Scores]) -> dict[str, float]:
    """The metrics of the shares (0, n) .. (n-1, n) scored apart, given in that order: the videos are put back in
    the order one pass scores them, so the numbers are those of one pass."""
    out: dict[str, float] = {}
    for prefix in parts[0]:
        shares = [p[prefix] for p in parts]
        merged = [s for row in itertools.zip_longest(*shares) for s in row if s is not None]
        report = combine(merged)
        out |= {f"{prefix}_jf": report.jf_mean, f"{prefix}_j": report.j_mean, f"{prefix}_f": report.f_mean}
    return out


def _scored(scores: list, videos: list, root: str) -> list:
    missing = [v.id for v, s in zip(videos, scores) if s is None]
    if missing:
        raise ValueError(f"--val_data {root}: videos without annotations for every frame: {', '.join(missing)}")
    return scores


def discovery_size(resolution: int) -> tuple[int, int]:
    """Discovery input (H, W) for a model trained at `resolution`: upstream's 3:5, width a multiple of 16."""
    return resolution, max(16, round(resolution * 5 / 3 / 16) * 16)


def _videos(cfg: Any, unsupervised: bool = False, share: Share = ALL) -> list:
    """`share` of the first `cfg.val_videos` val videos of `cfg.val_data` (0: all of them)."""
    videos = list_videos(cfg.val_data, "davis", "val", unsupervised=unsupervised)[:cfg.val_videos or None]
    if not videos:
        raise ValueError(f"--val_data {cfg.val_data}: no videos in ImageSets/2017/val.txt")
    return videos[share[0]::share[1]]


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[torch.device]:
    """The model in eval mode (its device given), back in its own mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def smtc_scores(task: Any, cfg: Any, share: Share = ALL) -> Scores:
    """SMTC's per-video scores of `task.model` on `share` of the validation videos."""
    videos = _videos(cfg, share=share)
    with _evaluating(task.model) as device:
        out = {"val": _scored([propagation_video(task.model.encoder, v, device, SMTC_A).scores for v in videos],
                              videos, cfg.val_data)}
        unsup = _videos(cfg, unsupervised=True, share=share)
        if all(v.annotations for v in _videos(cfg, unsupervised=True)):
            settings = DiscoverySettings(size=discovery_size(cfg.resolution), seed=cfg.seed)
            out["val_disc"] = _scored([discover_video(task.model, v, device, settings).scores for v in unsup],
                                      unsup, cfg.val_data)
    return out


def stmae_scores(task: Any, cfg: Any, share: Share = ALL) -> Scores:
    """STMAE's per-video scores of `task.model` on `share` of the validation videos."""
    videos = _videos(cfg, share=share)
    with _evaluating(task.model) as device:
        settings = VOSSettings(size=cfg.val_size, amp=device.type == "cuda")
        scores = [segment_video(task.model, VOSVideo(v, "D17"), device, settings).scores for v in videos]
    return {"val": _scored(scores, videos, cfg.val_data)}
