"""STMAE inference on long videos: memory and speed without and with `--max_mem_frames` K, and J&F of both.

    python bench/stmae_infer.py [--ks 5 10 20] [--frames 24] [--long 1000] [--jf-videos 3 --jf-frames 60
                                 --jf-height 120]

Random weights (seed 0), CPU, torch on every core. Each row of the first two tables runs in a process of its
own, so its peak RSS (`ru_maxrss`) is its own.

1. End to end: `propagate_video` on a synthetic 480x854 video (`shards.synth.write_davis`, 2 objects) of
   `--frames` frames. STMAE takes several CPU-seconds per 480p frame, so a 1,000-frame video is hours here;
   instead memory takes a frame at every frame (`mem_every` 1), so that after N frames it holds what
   upstream's `mem_every` 5 holds after 5N. Speed is the frames/s over the second half of the video.
2. The memory of a 1,000-frame 480p video (`--long`), upstream schedule (`mem_every` 5): `MaskMemory` fed
   with keys of the model's shape at 480p (1024 channels x 30 x 54) and 2 objects' masks, top-k 30, read at
   a few frames. This is the part of a frame's cost and memory that grows with the video; the rest (encoders
   and decoder) is the same at every frame and is table 1's K rows' cost.
3. J&F (DAVIS-2017 semi-supervised) on shorter synthetic videos, upstream schedule, unbounded and each K, and
   the share of pixels whose id differs from the unbounded run. With random weights J&F is that of an
   untrained model: what it shows is how far a bound moves the output.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from raytrain.eval import davis, vos
from raytrain.eval.stmae_vos import MaskMemory, propagate_video
from raytrain.eval.video_io import decode_png
from raytrain.models.stmae import STMAE
from shards.synth import write_davis

KEY_CHANNELS, GRID = 1024, (30, 54)  # f16 of a 480x854 frame, padded to 480x864


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Timed(Sequence):
    """Frames that record when each is fetched (`propagate_video` fetches frame t when it starts on it)."""

    def __init__(self, frames: list[np.ndarray]):
        self.frames, self.times = frames, []

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):  # type: ignore[override]
        self.times.append((time.perf_counter(), time.process_time()))
        return self.frames[i]


def _end_to_end(k: int, frames: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-stmae-"))
    write_davis(root, num_videos=1, num_frames=frames, height=480, max_objects=2, num_val=1, seed=0)
    (seq,) = davis.read_sequence_list(root, "val")
    rgb = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "JPEGImages" / "480p" / seq).glob("*"))]
    first = np.asarray(Image.open(root / "Annotations" / "480p" / seq / "00000.png"))
    first = np.where(first == davis.VOID, 0, first).astype(np.uint8)
    torch.manual_seed(0)
    model = STMAE().eval()
    timed, held, read = _Timed(rgb), [], MaskMemory.read

    def counting_read(memory: MaskMemory, query: torch.Tensor) -> torch.Tensor:
        held.append(len(memory.frames))
        return read(memory, query)

    MaskMemory.read = counting_read  # this process only
    propagate_video(model, timed, {0: first}, mem_every=1, max_mem_frames=k)
    times = timed.times + [(time.perf_counter(), time.process_time())]
    half, n = len(rgb) // 2, len(rgb) - len(rgb) // 2
    return {"fps": n / (times[-1][0] - times[half][0]), "cpu_s": (times[-1][1] - times[half][1]) / n,
            "peak_mib": _peak_mib(), "memory_frames": max(held)}


def _memory(k: int, frames: int, samples: list[int]) -> dict:
    torch.manual_seed(0)
    memory = MaskMemory(top_k=30, max_frames=k)
    rows, last = [], 0
    for t in range(frames):
        if t in samples:
            query = torch.randn(1, KEY_CHANNELS, *GRID)
            start, cpu = time.perf_counter(), time.process_time()
            memory.read(query)
            rows.append({"frame": t + 1, "held": len(memory.frames), "read_s": time.perf_counter() - start,
                         "cpu_s": time.process_time() - cpu, "peak_mib": _peak_mib()})
        if (t == 0 or t - last >= 5) and t != frames - 1:
            memory.add(torch.randn(1, KEY_CHANNELS, *GRID), torch.rand(2, *GRID), permanent=t == 0)
            last = t
    return {"rows": rows}


def _child(kind: str, k: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--k", str(k), "--frames", str(args.frames),
           "--long", str(args.long)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _jf(args: argparse.Namespace) -> list[tuple]:
    root = Path(tempfile.mkdtemp(prefix="bench-stmae-jf-"))
    write_davis(root, num_videos=args.jf_videos, num_frames=args.jf_frames, height=args.jf_height, max_objects=2,
                num_val=args.jf_videos, seed=1)
    items = vos.list_vos_videos("D17", str(root), "val")
    torch.manual_seed(0)
    model = STMAE().eval()
    rows, reference = [], None
    for k in [0] + args.ks:
        start = time.perf_counter()
        results = [vos.segment_video(model, item, torch.device("cpu"), vos.VOSSettings(size=0, max_mem_frames=k))
                   for item in items]
        seconds = time.perf_counter() - start
        masks = np.concatenate([np.stack([decode_png(png)[0] for png in r.masks.values()]) for r in results])
        reference = masks if reference is None else reference
        report = davis.combine([r.scores for r in results])
        rows.append((k, report.jf_mean, report.j_mean, report.f_mean, float((masks != reference).mean()),
                     seconds))
        print(f"J&F K={k or 'unbounded'}: {report.jf_mean:.4f} ({seconds:.0f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="memory bounds to compare")
    p.add_argument("--frames", type=int, default=24, help="table 1: frames of the 480p video")
    p.add_argument("--long", type=int, default=1000, help="table 2: frames of the long video")
    p.add_argument("--jf-videos", type=int, default=3)
    p.add_argument("--jf-frames", type=int, default=60)
    p.add_argument("--jf-height", type=int, default=120)
    p.add_argument("--child", choices=("e2e", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    samples = sorted({args.long // 4 - 1, args.long // 2 - 1, args.long - 1})
    if args.child:
        out = _end_to_end(args.k, args.frames) if args.child == "e2e" else _memory(args.k, args.long, samples)
        print(json.dumps(out))
        return

    name = lambda k: "unbounded" if k == 0 else f"K={k}"  # noqa: E731
    print(f"{os.cpu_count()} CPU cores, torch {torch.get_num_threads()} threads, random STMAE weights\n", flush=True)
    print(f"1. end to end, 480x854, {args.frames} frames, memory every frame (after N frames it holds what "
          f"mem_every 5 holds after 5N)\n")
    print("| memory | memory frames at the end | frames/s (second half) | CPU s/frame | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for k in [0] + args.ks:
        r = _child("e2e", k, args)
        print(f"| {name(k)} | {r['memory_frames']} | {r['fps']:.3f} | {r['cpu_s']:.1f} | {r['peak_mib']:.0f} |",
              flush=True)

    print(f"\n2. memory of a {args.long}-frame 480p video (mem_every 5, top-k 30, 2 objects), readout at frames "
          f"{', '.join(str(s + 1) for s in samples)}\n")
    print("| memory | frame | memory frames | readout s/frame | readout CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in [0] + args.ks:
        for row in _child("memory", k, args)["rows"]:
            print(f"| {name(k)} | {row['frame']} | {row['held']} | {row['read_s']:.2f} | {row['cpu_s']:.1f} | "
                  f"{row['peak_mib']:.0f} |", flush=True)

    print(f"\n3. J&F, {args.jf_videos} synthetic videos x {args.jf_frames} frames at {args.jf_height} px, "
          "mem_every 5\n")
    rows = _jf(args)
    print("\n| memory | J&F | J | F | pixels unlike unbounded | s |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, jf, j, f, diff, seconds in rows:
        print(f"| {name(k)} | {jf:.4f} | {j:.4f} | {f:.4f} | {100 * diff:.2f} % | {seconds:.0f} |")


if __name__ == "__main__":
    main()
