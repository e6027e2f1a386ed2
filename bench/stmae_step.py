"""STMAE training-step and inference throughput.

Training: one optimizer step of `STMAETask` at the upstream configuration (8 frames, 3 references, 384x384
crops, 3 objects) with synthetic clips; clips/s and peak memory (CPU: ru_maxrss of a fresh process per row;
CUDA: torch.cuda.max_memory_allocated, bf16 autocast). Baseline: the same step with every frame encoded
under autograd, as upstream does; raytrain encodes only frame 0 and each sample's references with autograd.

Inference: `propagate_video` on a synthetic 480x854 video with 2 objects (mem_every 5, top-k 30, size 480).

    python bench/stmae_step.py                 # CPU: batch 1, 1 step, 6-frame video (a few minutes)
    python bench/stmae_step.py --device cuda   # batch 1 2 8, 20-frame video

--num_frames/--num_ref_frames/--size/--video_size shrink the run (the CPU smoke run of bench/gpu_check.sh);
--json appends every row as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from bench.tables import save_json
from raytrain.config import STMAEConfig
from raytrain.eval.stmae_vos import propagate_video
from raytrain.models.stmae import STMAE
from raytrain.train.stmae_task import OneShotReconstruction, STMAETask


class EncodeAllWithGrad(OneShotReconstruction):
    """Upstream behaviour: keys of all T frames keep their autograd graph."""

    def encode(self, frames: torch.Tensor, refs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net.encode_key(frames)


def synthetic_batch(b: int, t: int, s: int, k: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (b, t, 3, s, s), dtype=torch.uint8, generator=g)
    masks = torch.zeros(b, t, s, s, dtype=torch.uint8)
    for i in range(k):
        y = x = s // 8 + i * s // 4
        for ti in range(t):
            masks[:, ti, y:y + s // 4, x + ti * 4:x + s // 4 + ti * 4] = i + 1
    return {"frames": frames.to(device), "masks": masks.to(device), "num_objects": torch.full((b,), k).to(device),
            "position": torch.arange(b)}


def train_row(variant: str, batch: int, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    cfg = STMAEConfig(num_frames=args.num_frames, num_ref_frames=args.num_ref_frames, max_objects=3, crop=args.size,
                      batch_size=batch, steps=1000)
    task = STMAETask(cfg, device)
    if variant == "upstream":
        task.recon = EncodeAllWithGrad(task.model)
    data = synthetic_batch(batch, args.num_frames, args.size, 3, device)
    task.start(data)
    for step in range(args.warmup):
        task.train_step(data, step)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        task.train_step(data, args.warmup + step)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    dt = (time.perf_counter() - t0) / args.steps
    cpu = (time.process_time() - c0) / args.steps
    return {"s_per_step": dt, "cpu_s_per_step": cpu, "clips_per_s": batch / dt, "peak_gib": peak}


def inference_row(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    h, w = args.video_size
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(args.video_frames)]
    first = np.zeros((h, w), np.uint8)  # two boxes, placed as on a 480 x 854 frame
    first[h * 100 // 480:h * 250 // 480, w * 100 // 854:w * 300 // 854] = 1
    first[h * 260 // 480:h * 420 // 480, w * 500 // 854:w * 700 // 854] = 2
    model = STMAE().to(device).eval()
    amp = device.type == "cuda"
    size = min(480, h)  # the shorter side frames are processed at
    propagate_video(model, frames[:2], {0: first}, device=device, amp=amp, size=size)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    propagate_video(model, frames, {0: first}, device=device, amp=amp, size=size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"frames_per_s": len(frames) / dt, "s": dt, "cpu_s": time.process_time() - c0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="CPU: 1; CUDA: 1 2 8")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--num_frames", type=int, default=8)
    p.add_argument("--num_ref_frames", type=int, default=3)
    p.add_argument("--video_size", type=int, nargs=2, default=[480, 854], metavar=("H", "W"))
    p.add_argument("--json", default="", help="append each row as a JSON line to this file")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (CPU 1, CUDA 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (CPU 0, CUDA 2)")
    p.add_argument("--video_frames", type=int, default=None, help="CPU 6, CUDA 20")
    p.add_argument("--variants", nargs="+", default=["upstream", "raytrain"], choices=("upstream", "raytrain"))
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or ([1, 2, 8] if cuda else [1])
    args.steps = args.steps or (5 if cuda else 1)
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 0)
    args.video_frames = args.video_frames or (20 if cuda else 6)
    if args.worker:
        print(json.dumps(train_row(args.worker[0], int(args.worker[1]), args)))
        return

    rows = []
    for batch in args.batch:
        for variant in args.variants:
            if cuda:
                r = train_row(variant, batch, args)
                torch.cuda.empty_cache()
            else:  # a fresh process per row: ru_maxrss is a process-lifetime peak
                cmd = [sys.executable, __file__, "--device", args.device, "--size", str(args.size), "--steps",
                       str(args.steps), "--warmup", str(args.warmup), "--num_frames", str(args.num_frames),
                       "--num_ref_frames", str(args.num_ref_frames), "--worker", variant, str(batch)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            rows.append((variant, batch, r))
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    mem = "peak GPU memory allocated" if cuda else "peak RSS"
    print(f"\nSTMAE training step ({name}; {args.num_frames} frames, {args.num_ref_frames} references, {args.size}^2, "
          f"3 objects{', bf16' if cuda else ', fp32'}; {args.steps} timed step(s) after {args.warmup} warm-up)\n")
    print(f"| encoding | batch | s/step | CPU s/step | clips/s | {mem} (GiB) | speed vs upstream | "
          "memory vs upstream |")
    print("|---|---|---|---|---|---|---|---|")
    base = {b: r for v, b, r in rows if v == "upstream"}
    for variant, batch, r in rows:
        label = ("upstream: all frames with autograd" if variant == "upstream"
                 else "raytrain: frame 0 + refs with autograd")
        ref = base.get(batch, r)  # without the upstream row: against itself
        print(f"| {label} | {batch} | {r['s_per_step']:.3f} | {r['cpu_s_per_step']:.1f} | {r['clips_per_s']:.3f} | "
              f"{r['peak_gib']:.2f} | {r['clips_per_s'] / ref['clips_per_s']:.2f}x | "
              f"{r['peak_gib'] / ref['peak_gib']:.2f}x |")
    inf = inference_row(args)
    save_json(args.json, [{"variant": variant, "batch": batch, "size": args.size, "num_frames": args.num_frames, **r}
                          for variant, batch, r in rows], bench="stmae_step", device=name)
    save_json(args.json, [{"height": args.video_size[0], "width": args.video_size[1], "frames": args.video_frames,
                           "amp": cuda, **inf}], bench="stmae_inference", device=name)
    print(f"\nSTMAE inference ({name}; {args.video_size[0]}x{args.video_size[1]}, {args.video_frames} frames, "
          "2 objects, mem_every 5, top-k 30"
          f"{', bf16' if cuda else ', fp32'})\n")
    print("| frames | seconds | CPU s | frames/s |\n|---|---|---|---|")
    print(f"| {args.video_frames} | {inf['s']:.2f} | {inf['cpu_s']:.1f} | {inf['frames_per_s']:.3f} |")
    print("\nCPU s: process CPU time (all threads); wall times on a shared machine vary with its load.")


if __name__ == "__main__":
    main()
