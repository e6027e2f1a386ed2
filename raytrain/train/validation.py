"""Validation off the training path: each checkpoint is scored in a Ray task of its own while training goes on.

Ray Train 2.60's alpha `ValidationConfig` schedules it: rank 0 reports a checkpoint with `validation=True`, the
controller queues `validate_checkpoint` for it (one in flight, the others wait their turn), merges the metrics it
returns into that checkpoint's reported metrics (so `CheckpointConfig` ranks and keeps checkpoints by them and
`Result.best_checkpoints` carries them), cancels it after `--val_timeout_s`, marks a failed or timed-out one and
goes on training, and waits for the last one before `fit` returns. The workers are never told the result, so
the task itself records it: `<run>/curve/step_<NNNNNNNN>.json` (the metrics, or the error), the scalars in
TensorBoard at the checkpoint's step, and the progress line on the console as it arrives. The start of a fresh
run (step 0, no checkpoint) is scored by `validate_start`, a plain Ray task on the initial weights. With
`--val_tasks n`, that task hands every n-th video to each of n Ray tasks of its own, each with `--val_cpus` (and
a GPU with `--val_use_gpu`), and joins their scores in the order one task would score them (the same numbers).
"""
from __future__ import annotations

import json
import logging
import math
import posixpath
import traceback
from typing import Any

import pyarrow.fs as pafs
import ray
import torch

from raytrain.checkpoints import CheckpointError, join, load_checkpoint, read_manifest, storage_uri
from raytrain.config import from_dict
from raytrain.method import Method
from raytrain.train.progress import progress_line
from shards.errors import storage_problem
from shards.layout import resolve

log = logging.getLogger("raytrain.train")

CURVE_DIR = "curve"


def keep_mode(metric: str) -> str:
    """"min" for a loss, "max" for anything else (J&F)."""
    return "min" if metric.startswith("loss") else "max"


def record_location(run: str, step: int) -> str:
    return join(join(run, CURVE_DIR), f"step_{step:08d}.json")


def write_record(run: str, record: dict[str, Any]) -> None:
    """Write one validation record (its "step" and metrics, or its "error") to `<run>/curve/`."""
    fs, path = resolve(record_location(run, int(record["step"])))
    fs.create_dir(posixpath.dirname(path), recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)  # an object store's PUT is whole or nothing already
    with fs.open_output_stream(path + ".tmp" if local else path) as f:
        f.write(json.dumps(record).encode())
    if local:
        fs.move(path + ".tmp", path)


def read_records(run: str) -> list[dict[str, Any]]:
    """Every validation record of a run folder, by step (none: empty)."""
    fs, path = resolve(join(run, CURVE_DIR))
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        records = []
        for info in infos:
            if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
                with fs.open_input_stream(info.path) as f:
                    records.append(json.loads(f.read()))
    except (OSError, ValueError) as e:
        log.warning("%s: cannot read the validation records (%s)", run, storage_problem(e))
        return []
    return sorted(records, key=lambda r: r["step"])


def merged_curve(curve: list[dict[str, Any]], run: str) -> list[dict[str, Any]]:
    """A checkpoint's curve (loss and any synchronous validation, by step) with the run's validation records
    (those up to the checkpoint's last step) merged in at their steps."""
    by_step = {int(c["step"]): dict(c) for c in curve}
    last = max(by_step, default=0)
    for r in read_records(run):
        if "error" not in r and r["step"] <= last:
            by_step.setdefault(int(r["step"]), {"step": r["step"]}).update(r)
    return [by_step[s] for s in sorted(by_step)]


def _publish(method: str, cfg: Any, step: int, metrics: dict[str, float], run: str, tensorboard_dir: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    write_record(run, {"step": step, **metrics})
    writer = SummaryWriter(tensorboard_dir, filename_suffix=f".val{step}")
    for k, v in metrics.items():
        writer.add_scalar(f"train/{k}", v, step)
    writer.close()
    print(progress_line(method, step, cfg.steps, metrics), flush=True)


def score_state(method: Method, cfg_dict: dict[str, Any], task_state: dict[str, Any], step: int, run: str,
                tensorboard_dir: str) -> dict[str, float]:
    """Validate the model of a saved task state and publish the metrics (record, TensorBoard, console). A
    failure is printed and recorded, then raised (Train marks the checkpoint's validation failed)."""
    cfg = from_dict(method.config, cfg_dict)
    try:
        if cfg.val_tasks > 1:
            state = ray.put(task_state)
            score = ray.remote(_score_share).options(**_resources(cfg), max_retries=0)
            parts = ray.get([score.remote(method, cfg_dict, state, (i, cfg.val_tasks))
                             for i in range(cfg.val_tasks)])
            metrics = method.val_join(parts)
        else:
            metrics = method.validate(_task(method, cfg, task_state), cfg)
    except Exception as e:  # noqa: BLE001 - reported, recorded, and re-raised for Train's bookkeeping
        _failed(method.name, step, run, e)
        raise
    _publish(method.name, cfg, step, metrics, run, tensorboard_dir)
    return metrics


def _task(method: Method, cfg: Any, task_state: dict[str, Any]) -> Any:
    device = torch.device("cuda" if cfg.val_use_gpu and torch.cuda.is_available() else "cpu")
    task = method.task(cfg, device)
    task.load_state_dict(task_state)
    return task


def _score_share(method: Method, cfg_dict: dict[str, Any], task_state: dict[str, Any], share: tuple[int, int]
                 ) -> dict[str, list]:
    """The per-video scores of `share` of the validation videos (one of `--val_tasks` Ray tasks)."""
    cfg = from_dict(method.config, cfg_dict)
    return method.val_scores(_task(method, cfg, task_state), cfg, share)


def _resources(cfg: Any) -> dict[str, float]:
    """What a task that scores videos reserves: `--val_cpus`, and a GPU with `--val_use_gpu`."""
    return {"num_cpus": cfg.val_cpus, "num_gpus": 1 if cfg.val_use_gpu else 0}


def _coordinator(cfg: Any) -> dict[str, float]:
    """What the task that runs a validation reserves: a scorer's resources, or next to none where it only hands
    the videos to `--val_tasks` scoring tasks and waits for them."""
    return _resources(cfg) if cfg.val_tasks == 1 else {"num_cpus": 0.01, "num_gpus": 0}


def _failed(method: str, step: int, run: str, e: BaseException) -> None:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    print(f"[{method}] step {step}: validation failed: {line}", flush=True)
    write_record(run, {"step": step, "error": line, "traceback": traceback.format_exc()})


def validate_checkpoint(checkpoint: ray.train.Checkpoint, *, method: Method, cfg: dict[str, Any], run: str,
                        tensorboard_dir: str) -> dict[str, float]:
    """Train's validation function: the metrics of a reported checkpoint, read back from storage and verified. A
    checkpoint damaged on its way fails its validation, so that it ranks last by --keep_metric and is the first
    one deleted: it does not take the place of an intact one among the --num_to_keep."""
    location = storage_uri(checkpoint.filesystem, checkpoint.path)
    try:
        state = load_checkpoint(location)
    except CheckpointError as e:
        manifest = _manifest_or_none(location)
        _failed(method.name, int(manifest["step"]) if manifest else -1, run, e)
        raise
    return score_state(method, cfg, state["task"], int(state["step"]), run, tensorboard_dir)


def _manifest_or_none(location: str) -> dict[str, Any] | None:
    try:
        return read_manifest(location)
    except CheckpointError:
        return None


def validation_config(method: Method, cfg: Any, cfg_dict: dict[str, Any], run: str, tensorboard_dir: str
                      ) -> ray.train.ValidationConfig:
    """The trainer's `ValidationConfig`: `validate_checkpoint` on `--val_cpus` CPUs (and a GPU with
    `--val_use_gpu`), cancelled after `--val_timeout_s`."""
    from functools import partial

    fn = partial(validate_checkpoint, method=method, cfg=cfg_dict, run=run, tensorboard_dir=tensorboard_dir)
    return ray.train.ValidationConfig(
        fn=fn, task_config=ray.train.ValidationTaskConfig(timeout_s=cfg.val_timeout_s or None),
        ray_remote_kwargs={**_coordinator(cfg), "max_retries": 0})


def validate_start(method: Method, cfg: Any, cfg_dict: dict[str, Any], task_state: dict[str, Any], run: str,
                   tensorboard_dir: str) -> ray.ObjectRef:
    """Score the initial weights (step 0) in a Ray task; the caller goes on training."""
    remote = ray.remote(score_state).options(**_coordinator(cfg), max_retries=0)
    return remote.remote(method, cfg_dict, task_state, 0, run, tensorboard_dir)


def pending_metric(metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """`metrics` with `metric` as NaN until its validation arrives: Train ranks a checkpoint without the metric
    last (and logs an error for it), and never deletes one whose validation is pending."""
    return metrics if metric in metrics else {**metrics, metric: math.nan}
