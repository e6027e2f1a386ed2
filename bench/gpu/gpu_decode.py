"""Can the CPUs, or the GPU's JPEG decoder, keep the SMTC step fed? (`--decode cpu` against `--decode gpu`.)

1. Decode throughput of SMTC frames (synthetic 480p DAVIS JPEGs -> 256²): `decode.smtc_frame` on one core
   (torch 1 thread), the same in one process per core at once, and `device_decode.decode_frames` in batches
   of one upstream step's frames (32 clips x 4) on the GPU.
2. The data-wait fraction of the SMTC step at the upstream configuration (batch 32, bf16 on CUDA) with each
   mode. The GPU machine has no Ray, so a torch DataLoader stands in for the Ray Data stream, from JPEG bytes
   held in memory (no shard reads): `cpu`, its workers (cores - 1) run `decode.smtc_frame`; `gpu`, two
   workers only gather the bytes and `device_decode.device_batches` decodes on the GPU one batch ahead, as
   `pipeline.clip_batches` does. Data wait = time the loop waits for the next batch / wall time.

    python bench/gpu/gpu_decode.py [--json FILE]                 # on the GPU machine
    python bench/gpu/gpu_decode.py --tiny --device cpu           # the CPU smoke run of bench/gpu_check.sh
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.tables import save_json
from raytrain.config import SMTCConfig
from raytrain.data import decode, device_decode, sampling
from raytrain.train.smtc_task import SMTCTask
from shards.synth import write_davis

UPSTREAM = dict(num_frames=4, gap=4, resolution=256, num_slots=16, num_instance=4, grad_iter=0)


def synthetic_jpegs(root: Path, videos: int, frames: int, height: int) -> list[list[bytes]]:
    """Each video's JPEG bytes (synthetic DAVIS layout, quality 90)."""
    write_davis(root, num_videos=videos, num_frames=frames, height=height, num_val=1)
    return [[f.read_bytes() for f in sorted(d.glob("*.jpg"))] for d in sorted((root / "JPEGImages/480p").iterdir())]


def _decode_for(args: tuple[list[bytes], int, float]) -> int:
    """Frames decoded by one process in `seconds` (torch on one thread)."""
    jpegs, size, seconds = args
    torch.set_num_threads(1)
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        decode.smtc_frame(jpegs[n % len(jpegs)], size)
        n += 1
    return n


def cpu_throughput(jpegs: list[bytes], size: int, seconds: float, procs: int) -> float:
    """Frames/s of `procs` processes decoding at once."""
    if procs == 1:
        return _decode_for((jpegs, size, seconds)) / seconds
    with mp.get_context("fork").Pool(procs) as pool:
        pool.map(_decode_for, [(jpegs[:1], size, 0.05)] * procs)  # workers started and imported
        return sum(pool.map(_decode_for, [(jpegs, size, seconds)] * procs)) / seconds


def device_throughput(jpegs: list[bytes], size: int, seconds: float, batch: int, device: torch.device) -> float:
    """Frames/s of `device_decode.decode_frames` on batches of `batch` frames (bytes already in tensors)."""
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    batches = [[tensors[(i * batch + j) % len(tensors)] for j in range(batch)] for i in range(8)]
    device_decode.decode_frames(batches[0], size, device)  # warm-up: nvJPEG handles, kernels
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        device_decode.decode_frames(batches[n % len(batches)], size, device)
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n * batch / (time.perf_counter() - start)


class Clips(Dataset):
    """SMTC clips cut from in-memory videos: decoded on the CPU ("cpu"), or as the encoded columns of
    `pipeline.encoded_clips` ("gpu")."""

    def __init__(self, videos: list[list[bytes]], frames: int, gap: int, size: int, mode: str) -> None:
        self.videos, self.frames, self.gap, self.size, self.mode = videos, frames, gap, size, mode

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(i)
        v = int(rng.integers(len(self.videos)))
        idx = sampling.smtc_frames(len(self.videos[v]), self.frames, self.gap, rng)
        jpgs = [self.videos[v][k] for k in idx]
        if self.mode == "cpu":
            return {"frames": np.stack([decode.smtc_frame(j, self.size) for j in jpgs]), "position": i}
        return {"jpegs": b"".join(jpgs), "jpeg_sizes": np.array([len(j) for j in jpgs]), "position": i,
                "frame_idx": np.asarray(idx), "video_ordinal": v, "video": str(v)}


def _collate_encoded(rows: list[dict]) -> dict[str, np.ndarray]:
    jpegs = np.empty(len(rows), object)
    jpegs[:] = [r["jpegs"] for r in rows]
    return {"jpegs": jpegs, "jpeg_sizes": np.stack([r["jpeg_sizes"] for r in rows]),
            "frame_idx": np.stack([r["frame_idx"] for r in rows]), "video": np.array([r["video"] for r in rows]),
            "position": np.array([r["position"] for r in rows]),
            "video_ordinal": np.array([r["video_ordinal"] for r in rows])}


def data_wait(videos: list[list[bytes]], mode: str, model: dict, batch: int, steps: int, warmup: int,
              workers: int, device: torch.device) -> dict[str, float]:
    """Train `steps` SMTC steps fed by the stand-in loader; the fraction of wall time spent waiting for data."""
    task = SMTCTask(SMTCConfig(batch_size=batch, **model), device)
    ds = Clips(videos, model["num_frames"], model["gap"], model["resolution"], mode)
    cuda = device.type == "cuda"
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, pin_memory=cuda and mode == "cpu",
                        prefetch_factor=4, persistent_workers=True,
                        collate_fn=_collate_encoded if mode == "gpu" else None)
    if mode == "gpu":
        batches = device_decode.device_batches(loader, model["resolution"], device)
    else:
        batches = ({"frames": b["frames"].to(device, non_blocking=True).permute(0, 1, 4, 2, 3)} for b in loader)
    wait, t0 = 0.0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize(device)
            wait, t0 = 0.0, time.perf_counter()
        tw = time.perf_counter()
        b = next(batches)
        wait += time.perf_counter() - tw
        task.train_step({"frames": b["frames"]}, step)  # returns .item()-ed metrics: the step has finished
    wall = time.perf_counter() - t0
    batches.close()  # ends the decode thread before the loader goes
    return {"mode": mode, "loader workers": workers, "batch": batch, "s/step": wall / steps,
            "data wait": wait / wall, "clips/s": steps * batch / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="64 px frames, a small model, a few steps (smoke run)")
    p.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    p.add_argument("--steps", type=int, default=20, help="timed SMTC steps per mode")
    p.add_argument("--json", default="", help="append each row as a JSON line to this file")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = torch.device(args.device)
    cores = os.cpu_count() or 1
    model, batch, height, seconds, steps, warmup = UPSTREAM, 32, 480, args.seconds, args.steps, 3
    if args.tiny:
        model = dict(UPSTREAM, num_frames=2, gap=1, resolution=32, num_slots=4, num_instance=2)
        batch, height, seconds, steps, warmup = 2, 64, min(seconds, 0.3), min(steps, 2), 1
    size = model["resolution"]
    with tempfile.TemporaryDirectory() as tmp:
        videos = synthetic_jpegs(Path(tmp), 8, 16, height)
    flat = [j for v in videos for j in v]
    rows = [{"bench": "decode", "what": "CPU decode + resize, 1 process", "processes": 1,
             "frames/s": cpu_throughput(flat, size, seconds, 1)}]
    procs = min(cores, 2) if args.tiny else cores
    rows.append({"bench": "decode", "what": f"CPU decode + resize, {procs} processes", "processes": procs,
                 "frames/s": cpu_throughput(flat, size, seconds, procs)})
    rows.append({"bench": "decode", "what": f"device decode + resize ({device.type}, batches of "
                 f"{batch * model['num_frames']})", "processes": 1,
                 "frames/s": device_throughput(flat, size, seconds, batch * model["num_frames"], device)})
    workers = {"cpu": max(1, (min(cores, 2) if args.tiny else cores) - 1), "gpu": 2}
    for mode in ("cpu", "gpu"):
        rows.append({"bench": "data_wait", **data_wait(videos, mode, model, batch, steps, warmup, workers[mode],
                                                       device)})
    save_json(args.json, rows)
    for r in rows:
        print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
