"""Where a training step's time goes, and whether channels-last or torch.compile shortens it.

For `--model smtc` (batch 32, 4 frames, 256², 16 x 4 slots) or `--model stmae` (batch 8, 8 frames, 3
references, 384²), bf16 autocast on CUDA:
1. torch.profiler over `--profile_steps` steps after warm-up: the top kernels by self device time (self CPU
   time on a CPU), in ms per step and as a share of the profiled device time;
2. trials, each on a fresh task: `eager`; `channels_last` (model weights, and STMAE's input frames, in
   channels-last memory format); `compile` (torch.compile of the student's forward and the teacher's for SMTC,
   of the reconstruction module for STMAE). s/step is the median of `--steps` timed steps; the first
   warm-up step's time (which holds the compilation) is reported beside it. The compile trials run last, so
   that a compilation that outlasts gpu_check's time cap leaves the other rows measured.
Rows go to stdout and, with --json, one JSON line each, written as soon as measured.

    python bench/gpu/gpu_profile.py --model smtc [stmae] [--json FILE]
    python bench/gpu/gpu_profile.py --model smtc stmae --tiny --device cpu --compile_backend eager   # CPU smoke run
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

from bench.tables import save_json
from raytrain.config import SMTCConfig, STMAEConfig
from raytrain.train.smtc_task import SMTCTask
from raytrain.train.stmae_task import STMAETask

SMTC_UPSTREAM = dict(batch_size=32, num_frames=4, resolution=256, num_slots=16, num_instance=4, grad_iter=0)
SMTC_TINY = dict(batch_size=2, num_frames=2, resolution=32, num_slots=4, num_instance=2, grad_iter=0)
STMAE_UPSTREAM = dict(batch_size=8, num_frames=8, num_ref_frames=3, max_objects=3, crop=384, steps=1000)
STMAE_TINY = dict(batch_size=1, num_frames=2, num_ref_frames=1, max_objects=3, crop=32, steps=1000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_task(model: str, tiny: bool, device: torch.device, trial: str, backend: str
              ) -> tuple[Any, dict[str, torch.Tensor]]:
    """A task set up for `trial` and a fixed random batch for it."""
    g = torch.Generator().manual_seed(0)
    if model == "smtc":
        cfg = SMTCConfig(**(SMTC_TINY if tiny else SMTC_UPSTREAM))
        task = SMTCTask(cfg, device)
        batch = {"frames": torch.randint(0, 256, (cfg.batch_size, cfg.num_frames, 3, cfg.resolution, cfg.resolution),
                                         dtype=torch.uint8, generator=g).to(device)}
        if trial == "channels_last":
            task.model.to(memory_format=torch.channels_last)
            task.teacher.to(memory_format=torch.channels_last)
        elif trial == "compile":
            task.net = torch.compile(task.net, backend=backend)
            task.teacher.forward = torch.compile(task.teacher.forward, backend=backend)
        return task, batch
    cfg = STMAEConfig(**(STMAE_TINY if tiny else STMAE_UPSTREAM))
    task = STMAETask(cfg, device)
    b, t, s = cfg.batch_size, cfg.num_frames, cfg.crop
    frames = torch.randint(0, 256, (b, t, 3, s, s), dtype=torch.uint8, generator=g)
    masks = torch.zeros(b, t, s, s, dtype=torch.uint8)
    masks[:, :, s // 8:s // 2, s // 8:s // 2] = 1
    masks[:, :, s // 2:7 * s // 8, s // 2:7 * s // 8] = 2
    if trial == "channels_last":
        task.model.to(memory_format=torch.channels_last)
        frames = frames.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(b, t, 3, s, s)
    elif trial == "compile":
        task.recon = torch.compile(task.recon, backend=backend)
    return task, {"frames": frames.to(device), "masks": masks.to(device), "num_objects": torch.full((b,), 2).to(device),
                  "position": torch.arange(b)}


def time_trial(make: Callable[[], tuple[Any, dict]], warmup: int, steps: int) -> dict[str, float]:
    """Median s/step of `steps` steps after `warmup` untimed ones, and the first warm-up step's time."""
    task, batch = make()
    first = 0.0
    for step in range(warmup):
        t0 = time.perf_counter()
        task.train_step(batch, step)
        first = first or time.perf_counter() - t0
    times = []
    for step in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        task.train_step(batch, step)  # returns .item()-ed metrics: the step has finished
        times.append(time.perf_counter() - t0)
    return {"s/step": statistics.median(times), "first step s": first}


def top_kernels(task: Any, batch: dict, device: torch.device, steps: int, top: int) -> list[dict[str, Any]]:
    """The `top` ops with the most self device time (CPU: self CPU time) over `steps` profiled steps."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(device)
    with profile(activities=activities) as prof:
        for step in range(steps):
            task.train_step(batch, 100 + step)
        _sync(device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    # On CUDA, the kernels themselves: aten ops carry their kernels' time too.
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0 and (
        not cuda or e.device_type == torch.autograd.DeviceType.CUDA)]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [{"kernel": e.key[:90], "ms/step": getattr(e, attr) / 1e3 / steps, "share": getattr(e, attr) / total,
             "calls/step": e.count / steps} for e in events[:top]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", choices=("smtc", "stmae"), required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny configuration (the CPU smoke run)")
    p.add_argument("--trials", nargs="+", default=["eager", "channels_last", "compile"],
                   choices=("eager", "channels_last", "compile"))
    p.add_argument("--compile_backend", default="inductor", help="torch.compile backend (eager: tracing only)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--profile_steps", type=int, default=2)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", default="", help="append each row as a JSON line to this file")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = torch.device(args.device)

    def emit(row: dict[str, Any]) -> None:
        row = {"bench": "profile", "device": device.type, **row}
        print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        save_json(args.json, [row])

    for model in args.model:
        task, batch = make_task(model, args.tiny, device, "eager", args.compile_backend)
        for step in range(args.warmup):
            task.train_step(batch, step)
        for row in top_kernels(task, batch, device, args.profile_steps, args.top):
            emit({"model": model, "section": "kernels", **row})
        del task, batch
    # Compilation last: if it outlasts the time cap, the other rows are in.
    order = sorted(args.trials, key=lambda t: t == "compile")
    for trial, model in ((t, m) for t in order for m in args.model):
        result = time_trial(lambda: make_task(model, args.tiny, device, trial, args.compile_backend),
                            args.warmup, args.steps)
        emit({"model": model, "section": "trial", "trial": trial, **result})
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
