"""All Ray Train glue: the per-worker training loop, checkpoints, metrics, and `fit` for the jobs.

Training code proper lives in the tasks (`raytrain.train.smtc_task`, `raytrain.train.stmae_task`), which know
nothing about Ray. Each worker streams its own deterministic clip plan (`raytrain.data.plan`), so a worker
group restarted after a failure, or a run resubmitted under the same name, resumes at the checkpointed step
and sees exactly the clips it would have seen.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

from raytrain.config import TRAIN_CONFIGS, RunConfig, from_dict, to_dict
from raytrain.data.pipeline import DataHealth, clip_batches
from raytrain.data.plan import ClipSource, StreamConfig
from raytrain.runtime import load_checkpoint_state, remove_stale_checkpoint_folders, run_dir, write_checkpoint
from raytrain.train.smtc_task import SMTCTask
from raytrain.train.stmae_task import STMAETask
from shards.pack import read_index

log = logging.getLogger("raytrain.train")

TASKS: dict[str, type] = {"smtc": SMTCTask, "stmae": STMAETask}
FAILURE_ENV = "RAYTRAIN_INJECT_FAILURE"  # "step:rank:marker" — kill that worker once (fault-tolerance tests)
# In-training validation: validate(job, task, cfg) -> {"val_jf": ..., ...}, run on rank 0 at every checkpoint.
Validate = Callable[[str, Any, Any], dict[str, float]]


def stream_config(job: str, cfg: Any, rank: int, world_size: int) -> StreamConfig:
    common = dict(kind=job, seed=cfg.seed, rank=rank, world_size=world_size, batch_size=cfg.batch_size,
                  steps=cfg.steps, clips_per_video=cfg.clips_per_video, num_frames=cfg.num_frames)
    if job == "smtc":
        return StreamConfig(size=cfg.resolution, gap=cfg.gap, **common)
    return StreamConfig(size=cfg.crop, max_skip=tuple(cfg.max_skip), max_skip_at=tuple(cfg.max_skip_at),
                        max_objects=cfg.max_objects, finetune_at=cfg.finetune_at, **common)


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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job = config["job"]
    cfg = from_dict(TRAIN_CONFIGS[job], config["cfg"])
    validate: Validate | None = config["validate"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if ctx.get_local_rank() == 0:
        remove_stale_checkpoint_folders()  # left on this node by workers killed mid-checkpoint
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    task = TASKS[job](cfg, device)

    step, starts = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = load_checkpoint_state(d)
        task.load_state_dict(state["task"])
        step, starts = int(state["step"]), list(state["starts"])
        if rank == 0:
            log.info("[%s] resuming %s from step %d", job, config["name"], step)
    starts.append(step)  # where each (re)start of the run began

    source = ray.put(ClipSource.from_index(cfg.data, read_index(cfg.data)))
    health = DataHealth.remote()
    batches = clip_batches(source, stream_config(job, cfg, rank, world), step, health, device,
                           cfg.decode_workers)

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(config["tensorboard_dir"], purge_step=step + 1)  # drop events past the checkpoint

    sums: dict[str, float] = defaultdict(float)
    n, wait, t0 = 0, 0.0, time.perf_counter()
    while step < cfg.steps:
        t_wait = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t_wait
        _maybe_fail(step, rank)
        for k, v in task.train_step(batch, step).items():
            sums[k] += v
        n += 1
        step += 1
        if step % cfg.log_every and step % cfg.checkpoint_every and step != cfg.steps:
            continue
        elapsed = time.perf_counter() - t0
        metrics = {k: v / n for k, v in sums.items()}
        metrics.update(clips_per_s=n * cfg.batch_size / elapsed, data_wait=wait / elapsed)
        metrics = _mean_over_ranks(metrics, device)
        metrics["clips_per_s"] *= world
        skipped = ray.get(health.snapshot.remote())["counts"]
        metrics.update(step=step, **{f"skipped_{k}": v for k, v in skipped.items()})
        checkpoint = None
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if rank == 0:
                if cfg.val_data and validate is not None:
                    metrics.update(validate(job, task, cfg))
                checkpoint = ray.train.Checkpoint.from_directory(write_checkpoint({"task": task.state_dict(), "step": step,
                                               "sampler": {"seed": cfg.seed, "world_size": world,
                                                           "batch_size": cfg.batch_size},
                                               "starts": starts, "config": to_dict(cfg), "job": job}))
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"train/{k}", v, step)
            writer.flush()
            # Logged, not printed: Ray Train sends a worker's print to the console twice.
            log.info("[%s] step %d/%d %s", job, step, cfg.steps,
                     " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step"))
        # The temp folder is removed once Train has copied it to storage: a long run must not fill the disk.
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)
        sums.clear()
        n, wait, t0 = 0, 0.0, time.perf_counter()
    if writer is not None:
        writer.close()


def make_trainer(job: str, cfg: RunConfig, callbacks: list | None = None,
                 validate: Validate | None = None) -> TorchTrainer:
    """The TorchTrainer of a training job (DDP over `cfg.num_workers` workers); `validate` scores the model
    on `cfg.val_data` at every checkpoint."""
    storage, name = run_dir(cfg, job)
    local = "://" not in storage
    tb_dir = os.path.join(storage, name, "tensorboard") if local else str(
        Path("~/ray_results").expanduser() / name / "tensorboard")
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    env = {k: os.environ[k] for k in (FAILURE_ENV,) if k in os.environ}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "cfg": to_dict(cfg), "name": name, "tensorboard_dir": tb_dir,
                           "validate": validate},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=callbacks, worker_runtime_env={"env_vars": env},
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3)),
    )


def fit(job: str, cfg: RunConfig, validate: Validate | None = None) -> ray.train.Result:
    """Train `job` ("smtc" or "stmae") on Ray Train; resumes if the run name already has checkpoints."""
    if not cfg.data:
        raise ValueError("--data: no shard folder given")
    return make_trainer(job, cfg, validate=validate).fit()
