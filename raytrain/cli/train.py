"""The training jobs: `jobs/train_smtc.py` and `jobs/train_stmae.py` -> `main(method, argv)`."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from raytrain.checkpoints import CheckpointError, load_checkpoint, read_manifest, storage_uri
from raytrain.cli.checks import check_resources, check_training
from raytrain.config import global_batch, given_fields, scaled_lr, with_small
from raytrain.method import Method
from raytrain.runtime import run_dir, run_location
from raytrain.train.loop import fatal_error, fit, tensorboard_dir
from raytrain.train.validation import keep_mode, merged_curve
from shards.cache import synthetic_shards, synthetic_videos
from shards.cluster import init_ray
from shards.errors import UserError

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


def run_lines(method: Method, cfg: Any) -> list[str]:
    """What a run trains with, printed at its start: the global batch and the learning rate, and warnings."""
    lr = f"lr {scaled_lr(cfg):.4g}"
    if cfg.lr_scaling == "linear":
        lr += f" (--lr {cfg.lr:g} x {global_batch(cfg)} / {cfg.REFERENCE_BATCH}, the recipe's global batch)"
    elif global_batch(cfg) != cfg.REFERENCE_BATCH:
        lr += (f" (the upstream recipe trains {method.name} at a global batch of {cfg.REFERENCE_BATCH}; "
               f"--lr_scaling linear scales --lr with the batch)")
    workers = f"{cfg.num_workers} worker{'s' if cfg.num_workers > 1 else ''}"
    return [f"global batch {global_batch(cfg)} clips per step ({workers} x {global_batch(cfg) // cfg.num_workers}), "
            f"{lr}"] + \
        [f"warning: {line}" for line in method.advice(cfg)]


def best_checkpoint(result: Any, metric: str) -> tuple[str, float, int] | None:
    """(location, value, step) of the kept checkpoint with the best `metric` (checkpoints whose validation failed
    or has not arrived do not count); None when none reported it."""
    scored = [(c, m) for c, m in result.best_checkpoints or [] if isinstance(m.get(metric), (int, float))
              and math.isfinite(m[metric])]
    if not scored:
        return None
    pick = (min if keep_mode(metric) == "min" else max)(scored, key=lambda cm: cm[1][metric])
    return storage_uri(pick[0].filesystem, pick[0].path), float(pick[1][metric]), int(pick[1].get("step", -1))


def main(method: Method, argv: Sequence[str] | None = None) -> None:
    """`python jobs/train_<method>.py [flags]`: train on Ray Train and print where the results are."""
    cfg, small = with_small(method.config, argv, method.small)
    if not cfg.data:
        print(f"no --data given: training on synthetic data with a small configuration ({small})", flush=True)
    check_training(method, cfg)  # before Ray starts: flags, --data, --val_data, weights, the run being resumed
    for line in run_lines(method, cfg):
        print(line, flush=True)
    init_ray(extra_cpus=cfg.num_workers + 1)
    check_resources(cfg)
    if not cfg.data:
        cfg = dataclasses.replace(cfg, data=synthetic_shards(*method.synthetic, seed=cfg.seed))
        if "val_data" not in given_fields(method.config, argv):
            cfg = dataclasses.replace(cfg, val_data=synthetic_videos("davis", cfg.seed))
    result = fit(method, cfg)
    why = fatal_error(method, cfg)
    if why:
        raise UserError(why)
    storage, name = run_dir(cfg, method.name)
    where = storage_uri(result.checkpoint.filesystem, result.checkpoint.path) if result.checkpoint else None
    state = last_state(where) if where else {}
    print(f"\nfinished {name} at step {state.get('step', '?')} of {cfg.steps}")
    for line in summary(merged_curve(state.get("curve", []), run_location(cfg, method.name))):
        print(line)
    if cfg.val_data:
        which = f"the first {cfg.val_videos}" if cfg.val_videos else "all"
        print(f"         (J&F on {which} val videos of {cfg.val_data})")
    best = best_checkpoint(result, cfg.keep_metric)
    if best is not None:
        print(f"best:       {best[0]}  ({cfg.keep_metric} {best[1]:.4f} at step {best[2]})")
    print(f"checkpoint: {where}  (newest, for resume)")
    where_tb = tensorboard_dir(run_location(cfg, method.name))
    print(f"logs:       {storage_uri(result.filesystem, result.path)}  (TensorBoard: tensorboard --logdir {where_tb}"
          + (", on the rank-0 node)" if "://" in storage else ")"))
