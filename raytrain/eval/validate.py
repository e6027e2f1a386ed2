"""In-training validation: J&F on the first few DAVIS val videos, run on rank 0 at every checkpoint.

- SMTC: label propagation (preset A) with the features of the student's encoder (`task.model.encoder`).
- STMAE: semi-supervised VOS of `task.model` from the first-frame masks (memory every 5 frames, top-k 30), at
  the videos' own resolution (480p for DAVIS).

Numbers are fractions in [0, 1] (as in the official CSV files), averaged over objects as the DAVIS evaluator
does. Serial, in the training process, on the task's device; the model is switched to eval mode and back.
"""
from __future__ import annotations

from typing import Any

from raytrain.eval.davis import combine
from raytrain.eval.propagation import SMTC_A, propagation_video
from raytrain.eval.vos import VOSSettings, VOSVideo, segment_video
from shards.layout import list_videos


def validate(job: str, task: Any, cfg: Any) -> dict[str, float]:
    """{"val_jf", "val_j", "val_f"} of `task.model` on the first `cfg.val_videos` videos of `cfg.val_data`."""
    if job not in ("smtc", "stmae"):
        raise ValueError(f"validate: unknown job {job!r}")
    videos = list_videos(cfg.val_data, "davis", "val")[:max(cfg.val_videos, 1)]
    if not videos:
        raise ValueError(f"--val_data {cfg.val_data}: no videos in ImageSets/2017/val.txt")
    model = task.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if job == "smtc":
            scores = [propagation_video(model.encoder, v, device, SMTC_A).scores for v in videos]
        else:
            settings = VOSSettings(size=0, amp=device.type == "cuda")
            scores = [segment_video(model, VOSVideo(v, "D17"), device, settings).scores for v in videos]
    finally:
        model.train(was_training)
    missing = [v.id for v, s in zip(videos, scores) if s is None]
    if missing:
        raise ValueError(f"--val_data {cfg.val_data}: videos without annotations for every frame: {', '.join(missing)}")
    report = combine(scores)
    return {"val_jf": report.jf_mean, "val_j": report.j_mean, "val_f": report.f_mean}
