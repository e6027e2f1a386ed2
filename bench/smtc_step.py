"""SMTC training-step throughput and the batched Hungarian matching against scipy.

1. One `SMTCTask.train_step` at the upstream model configuration (4 frames, 256^2, 16 slots x 4 instances):
   clips/s and peak memory, on the CPU (float32) and, when available, CUDA (bf16 autocast).
   CPU peak memory is the growth of the process's max RSS over the timed steps (ru_maxrss); CUDA's is
   torch.cuda.max_memory_allocated. "process CPU s/step" (all threads) next to the wall time shows how much
   other load on the machine slowed the run.
2. `batched_assignment` vs `scipy.optimize.linear_sum_assignment` in a Python loop (what upstream does) on the
   problems of one upstream step: 32 clips x 16 semantic slots x 16 frame pairs, P = 4 (8192 problems).
   The assignments are checked to be identical; times are the best of 5 runs.

Usage: python bench/smtc_step.py [--cpu_batch 2] [--cuda_batch 2 32] [--steps 2] [--warmup 1] [--json FILE]
--cpu_batch 0 skips the CPU row; --resolution/--num_slots/--num_instance/--num_frames shrink the model (the
CPU smoke run of bench/gpu_check.sh); --json appends every row as one JSON line.
"""
from __future__ import annotations

import argparse
import logging
import resource
import statistics
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from bench.tables import best_time, save_json, table
from raytrain.config import SMTCConfig
from raytrain.matching import batched_assignment
from raytrain.train.smtc_task import SMTCTask

UPSTREAM = dict(num_frames=4, resolution=256, num_slots=16, num_instance=4, num_iterations=3, grad_iter=0)


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_step(device: torch.device, batch: int, steps: int, model: dict | None = None,
               warmup: int = 1) -> dict[str, float | str]:
    model = model or UPSTREAM
    task = SMTCTask(SMTCConfig(batch_size=batch, **model), device)
    t, s = model["num_frames"], model["resolution"]
    frames = torch.randint(0, 256, (batch, t, 3, s, s), dtype=torch.uint8, device=device)
    for step in range(warmup):  # allocates the optimizer state (and lets cuDNN pick its kernels)
        task.train_step({"frames": frames}, step)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _maxrss_mib()
    times = []
    cpu_start = time.process_time()
    for step in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        task.train_step({"frames": frames}, step)  # returns .item()-ed metrics, so the step has finished
        times.append(time.perf_counter() - t0)
    cpu_per_step = (time.process_time() - cpu_start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _maxrss_mib() - rss_before
    sec = statistics.median(times)
    return {"device": device.type, "precision": "bf16 autocast" if cuda else "fp32", "batch": batch,
            "s/step": sec, "clips/s": batch / sec, "images/s": batch * t / sec, "process CPU s/step": cpu_per_step,
            "peak MiB": peak, "memory": "max_memory_allocated" if cuda else "maxrss growth"}


def bench_matching(device: torch.device, repeats: int = 5) -> dict[str, float | str]:
    cost = torch.rand(32, 16, 16, 4, 4, generator=torch.Generator().manual_seed(0))  # clips, slots, pairs, P, P
    flat = cost.reshape(-1, 4, 4).numpy()
    ref = np.stack([linear_sum_assignment(c)[1] for c in flat])
    scipy_s = best_time(lambda: [linear_sum_assignment(c) for c in flat], repeats, warmup=0)
    on_device = cost.to(device)
    cols = batched_assignment(on_device)  # also builds the permutation table

    def batched() -> None:
        batched_assignment(on_device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ours = best_time(batched, repeats, warmup=0)
    where = f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else device.type
    return {"device": where, "problems": flat.shape[0], "scipy loop ms": 1e3 * scipy_s,
            "batched ms": 1e3 * ours, "speed-up": scipy_s / ours,
            "same assignments": bool((cols.reshape(-1, 4).cpu().numpy() == ref).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu_batch", type=int, default=2)
    parser.add_argument("--cuda_batch", type=int, nargs="+", default=[2, 32])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    for name in ("num_frames", "resolution", "num_slots", "num_instance"):
        parser.add_argument(f"--{name}", type=int, default=UPSTREAM[name])
    parser.add_argument("--json", default="", help="append each row as a JSON line to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the random-init warning is expected here
    model = {**UPSTREAM, **{k: getattr(args, k) for k in ("num_frames", "resolution", "num_slots", "num_instance")}}

    rows = [bench_step(torch.device("cpu"), args.cpu_batch, args.steps, model, args.warmup)] if args.cpu_batch else []
    if torch.cuda.is_available():
        rows += [bench_step(torch.device("cuda"), b, args.steps, model, args.warmup) for b in args.cuda_batch]
    save_json(args.json, rows, bench="smtc_step")
    print(f"## SMTC train step ({model['num_frames']} frames, {model['resolution']}^2, {model['num_slots']} slots x "
          f"{model['num_instance']} instances, torch threads {torch.get_num_threads()})\n")
    print(table(rows) if rows else "(no device row: --cpu_batch 0 and no GPU)")
    print("\n## Batched Hungarian vs scipy linear_sum_assignment loop (one upstream step, P = 4)\n")
    threads = torch.get_num_threads()
    rows = []
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        rows.append(bench_matching(torch.device("cpu")))
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        rows.append(bench_matching(torch.device("cuda")))
    save_json(args.json, rows, bench="matching")
    print(table(rows))


if __name__ == "__main__":
    main()
