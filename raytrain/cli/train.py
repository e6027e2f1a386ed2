"""The training jobs: `jobs/train_smtc.py` and `jobs/train_stmae.py` -> `main(job, argv)`."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from raytrain.cli.checks import check_resources, check_training
from raytrain.config import SMALL_TRAIN, TRAIN_CONFIGS, given_fields, with_small
from raytrain.eval.validate import validate
from raytrain.checkpoints import CheckpointError, load_checkpoint, read_manifest, storage_uri
from raytrain.runtime import run_dir, run_location
from shards.cluster import init_ray
from raytrain.train.loop import fit, tensorboard_dir
from raytrain.train.validation import keep_mode, merged_curve
from shards.cache import synthetic_shards, synthetic_videos

# SMTC trains on unlabelled YouTube-VOS train frames, STMAE on DAVIS-17 train (first-frame masks only).
SYNTHETIC = {"smtc": ("ytvos", "train"), "stmae": ("davis", "train")}


HEADLINES = {"loss": "loss", "val_jf": "val J&F", "val_disc_jf": "discovery J&F"}


def summary(curve: list[dict[str, Any]]) -> list[str]:
    """The loss and validation J&F where the run started and where it ended."""
    lines = []
    for key, label in HEADLINES.items():
        points = [c for c in curve if key in c]
        if len(points) > 1:
            first, last = points[0], points[-1]
            lines.append(f"{label + ':':15s}{first[key]:.4f} (step {first['step']}) -> {last[key]:.4f} "
                         f"(step {last['step']}), {last[key] - first[key]:+.4f}")
    return lines


def last_state(where: str) -> dict[str, Any]:
    """The step and curve of the run's last checkpoint, from its manifest (small, on any storage); from the
    state itself for a checkpoint whose manifest predates the curve."""
    try:
        manifest = read_manifest(where)
        return manifest if manifest and "curve" in manifest else load_checkpoint(where)
    except CheckpointError as e:
        print(f"note: {e}", flush=True)  # the run itself finished; its summary cannot be read
        return {}


def best_checkpoint(result: Any, metric: str) -> tuple[str, float, int] | None:
    """(location, value, step) of the kept checkpoint with the best `metric` (checkpoints whose validation failed
    or has not arrived do not count); None when none reported it."""
    scored = [(c, m) for c, m in result.best_checkpoints or [] if isinstance(m.get(metric), (int, float))
              and math.isfinite(m[metric])]
    if not scored:
        return None
    pick = (min if keep_mode(metric) == "min" else max)(scored, key=lambda cm: cm[1][metric])
    return storage_uri(pick[0].filesystem, pick[0].path), float(pick[1][metric]), int(pick[1].get("step", -1))


def main(job: str, argv: Sequence[str] | None = None) -> None:
    """`python jobs/train_<job>.py [flags]`: train on Ray Train and print where the results are."""
    cls = TRAIN_CONFIGS[job]
    cfg, small = with_small(cls, argv, SMALL_TRAIN[job])
    if not cfg.data:
        print(f"no --data given: training on synthetic data with a small configuration ({small})", flush=True)
    check_training(job, cfg)  # before Ray starts: flags, --data, --val_data, weights, the run being resumed
    init_ray(extra_cpus=cfg.num_workers + 1)
    check_resources(cfg)
    if not cfg.data:
        cfg = dataclasses.replace(cfg, data=synthetic_shards(*SYNTHETIC[job], seed=cfg.seed))
        if "val_data" not in given_fields(cls, argv):
            cfg = dataclasses.replace(cfg, val_data=synthetic_videos("davis", cfg.seed))
    result = fit(job, cfg, validate=validate)
    storage, name = run_dir(cfg, job)
    where = storage_uri(result.checkpoint.filesystem, result.checkpoint.path) if result.checkpoint else None
    state = last_state(where) if where else {}
    print(f"\nfinished {name} at step {state.get('step', '?')} of {cfg.steps}")
    for line in summary(merged_curve(state.get("curve", []), run_location(cfg, job))):
        print(line)
    if cfg.val_data:
        which = f"the first {cfg.val_videos}" if cfg.val_videos else "all"
        print(f"         (J&F on {which} val videos of {cfg.val_data})")
    best = best_checkpoint(result, cfg.keep_metric)
    if best is not None:
        print(f"best:       {best[0]}  ({cfg.keep_metric} {best[1]:.4f} at step {best[2]})")
    print(f"checkpoint: {where}  (newest, for resume)")
    where_tb = tensorboard_dir(run_location(cfg, job))
    print(f"logs:       {storage_uri(result.filesystem, result.path)}  (TensorBoard: tensorboard --logdir {where_tb}"
          + (", on the rank-0 node)" if "://" in storage else ")"))
