"""All Ray Train glue: the per-worker training loop, checkpoints, metrics, and `fit` for the jobs.

Training code proper lives in the tasks (`raytrain.train.smtc_task`, `raytrain.train.stmae_task`), which know
nothing about Ray. Each worker streams its slice of one deterministic global clip stream (`raytrain.data.plan`),
which depends on the global batch, not on the number of workers: a worker group restarted after a failure
(by an elastic Train, on fewer workers), or a run resubmitted under the same name on any number of workers,
resumes at the checkpointed step and trains on exactly the clips the run would have trained on.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

from raytrain.checkpoints import (CheckpointError, load_checkpoint, newest_state, remove_stale_checkpoint_folders,
                                  write_checkpoint)
from raytrain.config import RunConfig, from_dict, to_dict
from raytrain.data.pipeline import BLOCK_BYTES_ENV, DECODE_LOCALITY_ENV, DataHealth, clip_batches
from raytrain.data.plan import StreamConfig, rank_index, sampler_state, stream_config, stream_mismatch
from raytrain.data.sources import load_source
from raytrain.method import Method
from raytrain.runtime import run_dir, run_location, take_fatal, write_fatal
from raytrain.train.progress import progress_line
from raytrain.train.validation import (keep_mode, merged_curve, pending_metric, validate_start,
                                       validation_config)

log = logging.getLogger("raytrain.train")

FAILURE_ENV = "RAYTRAIN_INJECT_FAILURE"  # "step:rank:marker" — kill that worker once (fault-tolerance tests)
# Where S3-compatible storage is (MinIO, a loopback test server): passed to the workers, which read shards and
# checkpoints. Credentials are not passed: nodes get them from their own environment or instance role.
S3_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
CLIP_LOG_ENV = "RAYTRAIN_CLIP_LOG"  # a folder: each rank appends the clips of every batch it trains on (audits)
# A folder: each rank appends when it starts and ends, and the seconds each report held it (validation on rank 0,
# the checkpoint, the report's barrier) (bench/validation_stall.py).
TIMING_LOG_ENV = "RAYTRAIN_TIMING_LOG"
# How often an elastic run (--min_workers) checks for room for more workers (Ray Train's default: 60 s).
RESIZE_INTERVAL_ENV = "RAYTRAIN_RESIZE_INTERVAL_S"


def resume_point(run: str, rank: int) -> tuple[str, dict[str, Any]] | None:
    """(location, state) of the newest intact checkpoint in the run folder on storage, the same on every rank;
    None for a fresh run.

    Storage, not `ray.train.get_checkpoint()`, decides: Train may hand a restarted group no checkpoint, or an
    older one, when a worker dies right after a report (seen: a restart from step 0 with the step-4 checkpoint
    persisted). Rank 0 picks the checkpoint (naming those it skipped) and the others load the same one.
    """
    found = newest_state(run, log.warning) if rank == 0 else None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        where = [found[0] if found else None]
        dist.broadcast_object_list(where, src=0)
        if rank != 0 and where[0] is not None:
            found = where[0], load_checkpoint(where[0])
    return found


def _log_clips(step: int, rank: int, world: int, batch: dict[str, Any]) -> None:
    folder = os.environ.get(CLIP_LOG_ENV)
    if folder:
        with open(os.path.join(folder, f"rank{rank}-pid{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "rank": rank, "world_size": world,
                                "positions": batch["position"].tolist(), "videos": batch["video_ordinal"].tolist(),
                                "frames": batch["frame_idx"].tolist()}) + "\n")


def _log_timing(rank: int, event: str, **fields: Any) -> None:
    folder = os.environ.get(TIMING_LOG_ENV)
    if folder:
        with open(os.path.join(folder, f"rank{rank}-pid{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps({"rank": rank, "event": event, "t": time.time(), **fields}) + "\n")


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


def _maybe_fail(step: int, rank: int) -> None:
    spec = os.environ.get(FAILURE_ENV)
    if not spec:
        return
    at, who, marker = spec.split(":", 2)
    if step == int(at) and rank == int(who) and not os.path.exists(marker):
        Path(marker).write_text(f"killed rank {rank} at step {step}\n")
        log.warning("injected failure: killing rank %d at step %d", rank, step)
        os._exit(1)


def route_logs(verbose: bool) -> None:
    """raytrain's log lines to stdout (forwarded to the driver's console) through a handler of their own.

    Unless `verbose`, Ray's lines that repeat at every report or stream start stay off the console (Ray
    Data's keep going to its log files): Train's "Reporting training result" (its logger is named after
    its file, so `RunConfig.logging_config` does not reach it), Ray Data's per-Dataset INFO lines and its
    notice that progress bars are off.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("raytrain")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
    if verbose:
        return
    from ray.train.v2._internal.execution import context as train_context

    train_context.logger.setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    for h in logging.getLogger("ray.data").handlers:
        if isinstance(h, logging.StreamHandler):  # the console; Ray Data's file handlers are not streams
            h.setLevel(logging.WARNING)


def _gather(value: int) -> list[int]:
    """`value` of every rank, in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _resume(task: Any, where: str, state: dict[str, Any], cfg: Any, scfg: StreamConfig) -> int | None:
    """Load a checkpoint's state into `task` and check that its clip stream goes on; returns where this rank's
    stream resumes (`clip_batches`'s `start_clip`; None: at the checkpoint step's planned clips). A
    CheckpointError says why it cannot resume."""
    try:
        task.load_state_dict(state["task"])
    except (RuntimeError, KeyError, ValueError) as e:  # e.g. --allow_config_change with another shape
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        what = "; ".join(lines[1:4] or lines[:1]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
        raise CheckpointError(f"checkpoint {where}: does not fit the model these flags build ({what})") from None
    saved = state.get("sampler") or {}
    why = stream_mismatch(state.get("sampler"), cfg)
    if why and not cfg.allow_config_change:
        raise CheckpointError(f"checkpoint {where}: cannot continue its clip stream: {why}. Resume with the "
                              f"flags it was trained with, or --allow_config_change to go on from step "
                              f"{state['step']} with this version's stream")
    next_clips = saved.get("next_clip") or []
    if not why and saved.get("world_size") == scfg.world_size and len(next_clips) == scfg.world_size:
        return int(next_clips[scfg.rank])
    planned = [int(state["step"]) * saved.get("batch_size", 0)] * len(next_clips)
    if next_clips != planned and scfg.rank == 0:
        log.warning("checkpoint %s: its stream had closed up behind damaged clips (each rank %s clips on from "
                    "the planned ones); on another number of workers it resumes at step %d's planned clips",
                    where, [int(n) - p for n, p in zip(next_clips, planned)], state["step"])
    return None


def fatal_error(method: Method, cfg: RunConfig) -> str | None:
    """Why the run's workers stopped without training on (a checkpoint they cannot resume from), or None; read
    once, after `fit`."""
    return take_fatal(run_location(cfg, method.name))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    method: Method = config["method"]
    cfg = from_dict(method.config, config["cfg"])
    validate = method.validate if cfg.val_data else None
    off_path = validate is not None and cfg.val_async  # each checkpoint validated by a Ray task of its own
    route_logs(cfg.verbose)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if ctx.get_local_rank() == 0:
        remove_stale_checkpoint_folders()  # left on this node by workers killed mid-checkpoint
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    task = method.task(cfg, device)

    step, starts, curve, start_clip = 0, [], [], None  # curve: the loss and validation metrics (rank 0)
    found = resume_point(config["run"], rank)
    scfg = stream_config(method, cfg, rank, world)
    if found is not None:
        where, state = found
        try:
            start_clip = _resume(task, where, state, cfg, scfg)
        except CheckpointError as e:
            # A retry would load the same checkpoint and fail the same way: end the run with the reason instead
            # (the driver raises it, `fatal_error`), not after --max_failures restarts.
            if rank == 0:
                write_fatal(config["run"], str(e))
            return
        step, starts, curve = int(state["step"]), list(state["starts"]), list(state.get("curve", []))
        if rank == 0:
            log.info("[%s] resuming %s from step %d (%s)", method.name, config["name"], step, where)
    if step >= cfg.steps:
        # Nothing left to train. Report where the run ended all the same: a Tune trial restored after its run
        # finished (but before Tune heard of it) must still hand Tune its last result and metric.
        last = merged_curve(curve, config["run"])[-1] if curve else {}
        ray.train.report({**last, "step": step})
        return
    starts.append(step)  # where each (re)start of the run began

    health = DataHealth.remote()
    batches = clip_batches(config["source"], scfg, step, health, device, cfg.decode_workers, start_clip=start_clip)
    next_clip = start_clip if start_clip is not None else step * scfg.batch_size  # in this rank's stream

    first = None
    if step == 0:  # a fresh run: the task may set itself up from its first batch (STMAE: BatchNorm statistics)
        first = next(batches)
        task.start(first)

    _log_timing(rank, "begin", step=step)
    writer, start_val = None, None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(config["tensorboard_dir"], purge_step=step + 1)  # drop events past the checkpoint
        if step == 0 and off_path:  # where the run starts from, scored while training goes on
            start_val = validate_start(method, cfg, config["cfg"], task.state_dict(), config["run"],
                                       config["tensorboard_dir"])
        elif step == 0 and validate is not None:
            t_held = time.perf_counter()
            val = validate(task, cfg)
            _log_timing(rank, "held", step=0, held_s=time.perf_counter() - t_held)
            curve.append({"step": 0, **val})
            for k, v in val.items():
                writer.add_scalar(f"train/{k}", v, 0)
            log.info(progress_line(method.name, 0, cfg.steps, val))

    sums: dict[str, float] = defaultdict(float)
    n, wait, t0 = 0, 0.0, time.perf_counter()
    first_step, started = step, t0
    while step < cfg.steps:
        t_wait = time.perf_counter()
        if first is not None:
            batch, first = first, None
        else:
            batch = next(batches)
        wait += time.perf_counter() - t_wait
        _maybe_fail(step, rank)
        _log_clips(step, rank, world, batch)
        next_clip = rank_index(scfg, int(batch["position"][-1])) + 1
        for k, v in task.train_step(batch, step).items():
            sums[k] += v
        n += 1
        step += 1
        if step % cfg.log_every and step % cfg.checkpoint_every and step != cfg.steps:
            continue
        elapsed = time.perf_counter() - t0
        metrics = {k: v / n for k, v in sums.items()}
        metrics.update(clips_per_s=n * scfg.batch_size / elapsed, data_wait=wait / elapsed)
        metrics = _mean_over_ranks(metrics, device)
        metrics["clips_per_s"] *= world
        skipped = ray.get(health.snapshot.remote())["counts"]
        metrics.update(step=step, **{f"skipped_{k}": v for k, v in skipped.items()})
        t_held = time.perf_counter()
        checkpoint = None
        at_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
        next_clips = _gather(next_clip) if at_checkpoint else []
        if rank == 0 and at_checkpoint and validate is not None and not off_path:
            metrics.update(validate(task, cfg))
        if rank == 0:
            curve.append({k: v for k, v in metrics.items() if k in ("step", "loss") or k.startswith("val_")})
        if rank == 0 and at_checkpoint:
            checkpoint = ray.train.Checkpoint.from_directory(write_checkpoint(
                {"task": task.state_dict(), "step": step, "curve": curve, "starts": starts, "config": to_dict(cfg),
                 "sampler": sampler_state(cfg, world, next_clips), "job": method.name}))
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"train/{k}", v, step)
            writer.flush()
            eta = (time.perf_counter() - started) / (step - first_step) * (cfg.steps - step)
            # Logged, not printed: Ray Train sends a worker's print to the console twice.
            log.info(progress_line(method.name, step, cfg.steps, metrics, eta))
        # The temp folder is removed once Train has copied it to storage: a long run must not fill the disk.
        if checkpoint is not None and off_path:
            metrics = pending_metric(metrics, cfg.keep_metric)
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True,
                         validation=checkpoint is not None and off_path)
        _log_timing(rank, "held", step=step, held_s=time.perf_counter() - t_held)
        sums.clear()
        n, wait, t0 = 0, 0.0, time.perf_counter()
    _log_timing(rank, "end", step=step)
    if writer is not None:
        writer.close()
    if start_val is not None:  # training is over: nothing waits on it but this worker's exit
        try:
            ray.get(start_val, timeout=cfg.val_timeout_s or None)
        except Exception as e:  # noqa: BLE001 - printed by the task itself; the run's end does not depend on it
            log.warning("[%s] validation of step 0 did not finish: %s", method.name, type(e).__name__)


def tensorboard_dir(run: str) -> str:
    """Where TensorBoard's local files go: the run folder's `tensorboard/` where it is local, else on the rank-0
    node under `~/ray_results/<scheme>/<bucket>/<path>/<name>/tensorboard` (one folder per run and trial)."""
    if "://" not in run:
        return os.path.join(run, "tensorboard")
    return str(Path("~/ray_results").expanduser().joinpath(*run.replace("://", "/").split("/"), "tensorboard"))


def make_trainer(method: Method, cfg: RunConfig, callbacks: list | None = None) -> TorchTrainer:
    """The TorchTrainer of a training run of `method` (DDP over `cfg.num_workers` workers, or elastic down to
    `cfg.min_workers`), validating on `cfg.val_data` at every checkpoint when given. The sources of `cfg.data`
    are read here, once, and shared with the workers through the object store."""
    storage, name = run_dir(cfg, method.name)
    run = run_location(cfg, method.name)
    tb_dir = tensorboard_dir(run)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    env = {k: os.environ[k] for k in (FAILURE_ENV, CLIP_LOG_ENV, TIMING_LOG_ENV, *S3_SETTINGS) if k in os.environ}
    workers = (cfg.min_workers, cfg.num_workers) if 0 < cfg.min_workers < cfg.num_workers else cfg.num_workers
    env.update({k: os.environ[k] for k in (DECODE_LOCALITY_ENV, BLOCK_BYTES_ENV) if k in os.environ})
    elastic = ({"elastic_resize_monitor_interval_s": float(os.environ[RESIZE_INTERVAL_ENV])}
               if isinstance(workers, tuple) and os.environ.get(RESIZE_INTERVAL_ENV) else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"method": method, "cfg": to_dict(cfg), "name": name, "run": run,
                           "tensorboard_dir": tb_dir, "source": ray.put(load_source(cfg.data))},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources, **elastic),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=callbacks, worker_runtime_env={"env_vars": env},
            logging_config=ray.train.LoggingConfig(log_level="INFO" if cfg.verbose else "WARNING"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=checkpoint_config(cfg)),
        validation_config=(validation_config(method, cfg, to_dict(cfg), run, tb_dir)
                           if cfg.val_data and cfg.val_async else None),
    )


def checkpoint_config(cfg: RunConfig) -> ray.train.CheckpointConfig:
    """The best `--num_to_keep` checkpoints by `--keep_metric`, and the newest (Train always keeps it); the newest
    `--num_to_keep` + 1 when the run does not report that metric (a val_* metric without --val_data)."""
    if cfg.keep_metric.startswith("val_") and not cfg.val_data:
        return ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep + 1)
    return ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep, checkpoint_score_attribute=cfg.keep_metric,
                                      checkpoint_score_order=keep_mode(cfg.keep_metric))


def fit(method: Method, cfg: RunConfig) -> ray.train.Result:
    """Train `method` on Ray Train; resumes if the run name already has checkpoints."""
    if not cfg.data:
        raise ValueError("--data: no shard folder given")
    take_fatal(run_location(cfg, method.name))  # a reason left by an earlier submission is not this one's
    return make_trainer(method, cfg).fit()
