"""Label-propagation throughput: batched `propagate` vs the upstream-schedule `propagate_reference`.

    python bench/propagation.py [--frames 12 --size 480x854 --size-b 240x427 --settings smtc-a,smtc-b]

Both run in the same process on the same synthetic video: objects moving over a DAVIS-size frame and 384-d
L2-normalised features on the preset's grid (object codes plus noise, so the top-k neighbours are meaningful).
For each SMTC setting the table gives propagated frames per second (frames after the first, wall clock) of
each implementation, the ratio, the CPU seconds each used (a steadier figure on a shared machine), and
whether the two produced identical id maps.

Setting B at 480x854 (a 60x106 grid, 21 context frames) costs about 0.65 TFLOP per frame in either
implementation, minutes per video on a 2-core CPU, so the CPU default scores B at 240x427 (its grid is 30x53);
on a GPU run `--size-b 480x854 --frames 30`.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from raytrain.eval.propagation import SMTC_A, SMTC_B, Preset, propagate, propagate_reference


def synthetic_video(preset: Preset, frames: int, height: int, width: int, channels: int,
                    device: torch.device, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Features [T, C, h, w] and the first frame's id map for three ellipses drifting across the frame."""
    rng = np.random.default_rng(seed)
    gh, gw = preset.grid(height, width)
    yy, xx = np.mgrid[:gh, :gw] + 0.5
    centres = rng.uniform([0.2 * gh, 0.2 * gw], [0.8 * gh, 0.8 * gw], size=(3, 2))
    radii = rng.uniform(0.1, 0.25, size=(3, 1)) * np.array([gh, gw])
    velocity = rng.normal(0, 0.01, size=(3, 2)) * np.array([gh, gw])
    cells = np.zeros((frames, gh, gw), np.int64)
    for t in range(frames):
        for k, (c, r, v) in enumerate(zip(centres, radii, velocity)):
            cy, cx = c + v * t
            cells[t][((yy - cy) / r[0]) ** 2 + ((xx - cx) / r[1]) ** 2 < 1] = k + 1
    gen = torch.Generator().manual_seed(seed)
    codes = F.normalize(torch.randn(4, channels, generator=gen), dim=1)
    noise = 0.3 * torch.randn(frames, channels, gh, gw, generator=gen)
    feats = codes[torch.as_tensor(cells)].permute(0, 3, 1, 2) + noise
    first = cells[0].repeat(preset.stride, 0).repeat(preset.stride, 1).astype(np.uint8)  # grid cells as blocks
    first = np.pad(first, ((0, height - first.shape[0]), (0, width - first.shape[1])), mode="edge")
    return F.normalize(feats, dim=1).to(device), first


def _timed(fn, *args) -> tuple[list[np.ndarray], float, float]:
    """Output, wall seconds and this process's CPU seconds (all threads)."""
    if args[0].is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    if args[0].is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def propagation_rows(args: argparse.Namespace) -> list[list[str]]:
    """One table row per SMTC setting: frames/s of both implementations on the same video."""
    rows = []
    device = torch.device(args.device)
    for preset, size in ((SMTC_A, args.size), (SMTC_B, args.size_b)):
        if preset.name not in args.settings:
            continue
        height, width = size
        feats, first = synthetic_video(preset, args.frames, height, width, args.channels, device)
        fast, t_fast, cpu_fast = _timed(propagate, feats, first, preset)
        ref, t_ref, cpu_ref = _timed(propagate_reference, feats, first, preset)
        differing = sum(int((a != b).sum()) for a, b in zip(fast, ref))
        n = args.frames - 1
        rows.append([preset.name, f"{height}x{width}", "x".join(map(str, feats.shape[-2:])), str(args.frames),
                     f"{n / t_fast:.2f}", f"{n / t_ref:.2f}", f"{t_ref / t_fast:.1f}x",
                     f"{cpu_fast:.1f} / {cpu_ref:.1f}", "yes" if differing == 0 else f"no ({differing} px differ)"])
    return rows


# Distributed evaluation has its own benchmark: bench/eval_distributed.py.
SECTIONS = {
    "Label propagation": (["setting", "video", "grid", "frames", "propagate (frames/s)",
                           "reference (frames/s)", "speed-up", "CPU s (propagate / reference)", "identical ids"],
                          propagation_rows),
}


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=12, help="frames per synthetic video")
    p.add_argument("--size", type=_size, default=(480, 854), help="frame size HxW for setting A")
    p.add_argument("--size-b", type=_size, default=(240, 427), help="frame size HxW for setting B")
    p.add_argument("--channels", type=int, default=384, help="feature channels (ViT-S/16: 384)")
    p.add_argument("--settings", type=lambda s: s.split(","), default=["smtc-a", "smtc-b"],
                   help="comma-separated presets to run (smtc-a, smtc-b)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    print(f"device: {args.device}, torch threads: {torch.get_num_threads()}\n")
    for title, (header, section) in SECTIONS.items():
        print(f"### {title}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in section(args):
            print("| " + " | ".join(row) + " |", flush=True)
        print()


if __name__ == "__main__":
    main()
