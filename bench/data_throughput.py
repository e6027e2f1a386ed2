"""SMTC clip throughput of the Ray Data pipeline vs the upstream-style loader and the decode ceiling.

    pip install opencv-python-headless   # the baseline's decoder; the project itself does not need OpenCV
    python bench/data_throughput.py [--videos 16 --frames 40 --height 480 --warmup 8 --batches 100]

Three numbers, measured in the same run on the same synthetic YouTube-VOS-layout frames:
- pipeline: clips/s out of `raytrain.data.pipeline` (shards -> Ray Data -> torch batches);
- baseline: a torch DataLoader over the JPEG folders reading the way upstream SMTC does (cv2.imread, BGR->RGB,
  /255 as float, cv2.resize to 256x256), the same clip sampling, as many worker processes as the pipeline
  has decode tasks (cores + 1);
- ceiling: one core decoding and resizing the data set's frames the pipeline's way (libjpeg-turbo at reduced
  scale + resize), from memory, times the cores the pipeline uses, divided by frames per clip.
Both loaders are timed in their steady state: over `--batches` batches after `--warmup` batches, so that
worker start-up and the filling of prefetch buffers fall outside the timed window.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from raytrain.data import decode, sampling


class UpstreamClips(torch.utils.data.Dataset):
    """Upstream SMTC's training reader: a random video per item, cv2 decode of full frames, float resize."""

    def __init__(self, jpeg_root: Path, num_frames: int, gap: int, size: int, length: int):
        self.videos = sorted(p for p in jpeg_root.iterdir() if p.is_dir())
        self.num_frames, self.gap, self.size, self.length = num_frames, gap, size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        import cv2

        rng = np.random.default_rng(i)
        video = self.videos[int(rng.integers(len(self.videos)))]
        frames = sorted(video.glob("*.jpg"))
        idx = sampling.smtc_frames(len(frames), self.num_frames, self.gap, rng)
        out = []
        for k in idx:
            rgb = cv2.cvtColor(cv2.imread(str(frames[k])), cv2.COLOR_BGR2RGB) / 255
            out.append(cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(out))


def timed(batches: Iterator, warmup: int, count: int) -> float:
    """Clips per second over `count` batches after `warmup` batches."""
    for _ in range(warmup):
        next(batches)
    t = time.perf_counter()
    n = sum(b.shape[0] for b, _ in zip(batches, range(count)))
    return n / (time.perf_counter() - t)


def bench_baseline(jpeg_root: Path, workers: int, batch: int, warmup: int, batches: int, size: int) -> float:
    ds = UpstreamClips(jpeg_root, 4, 4, size, batch * (warmup + batches))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True)
    it = iter(loader)
    rate = timed(it, warmup, batches)
    for _ in it:  # drain the loader, so that its workers have exited before the next measurement
        pass
    return rate


def bench_ceiling(jpeg_root: Path, size: int, cores: int, seconds: float = 5.0) -> float:
    data = [f.read_bytes() for f in sorted(jpeg_root.glob("*/*.jpg"))]  # all frames: the pipeline's reads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as a Ray task with num_cpus=1 runs
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        decode.smtc_frame(data[n % len(data)], size)
        n += 1
    rate = n / (time.perf_counter() - t) / 4 * cores
    torch.set_num_threads(threads)
    return rate


def bench_pipeline(shards: str, batch: int, warmup: int, batches: int, size: int) -> float:
    import ray

    from raytrain.data.pipeline import clip_batches
    from raytrain.data.plan import ClipSource, StreamConfig
    from shards.pack import read_index

    source = ClipSource.from_index(shards, read_index(shards))
    cfg = StreamConfig(kind="smtc", seed=0, rank=0, world_size=1, batch_size=batch, steps=warmup + batches + 1,
                       clips_per_video=8, num_frames=4, size=size, gap=4)
    it = clip_batches(ray.put(source), cfg)
    rate = timed((b["frames"] for b in it), warmup, batches)
    it.close()  # stops the Ray Data executor behind the endless stream
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=8, help="batches before the timed window")
    p.add_argument("--batches", type=int, default=100, help="batches timed")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workdir", default="", help="reuse data generated here (default: a temp folder)")
    a = p.parse_args()
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise SystemExit("the baseline needs OpenCV: pip install opencv-python-headless")
    import ray

    from raytrain.runtime import init_ray
    from shards.pack import pack
    from shards.synth import write_ytvos

    cores = os.cpu_count() or 1
    work = Path(a.workdir or tempfile.mkdtemp(prefix="raytrain-bench-"))
    if not (work / "shards" / "index.parquet").exists():
        write_ytvos(work / "videos", num_videos=a.videos, num_frames=a.frames, height=a.height, num_val=0)
        pack(str(work / "videos"), str(work / "shards"), layout="ytvos", split="train")
        ray.shutdown()  # the baseline and the ceiling run without Ray
    jpeg_root = work / "videos" / "train" / "JPEGImages"

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: as asked
    baseline = bench_baseline(jpeg_root, cores + 1, a.batch, a.warmup, a.batches, a.size)
    ceiling = bench_ceiling(jpeg_root, a.size, cores)
    # Ray starts as in a training job (`init_ray`): a training job with N workers gets cores + N + 1 logical
    # CPUs, so its decode tasks have cores + 1 slots. Here the driver consumes the batches, so N = 0. (On 2
    # cores, 3 decode tasks gave 170-180 clips/s and 2 gave 155-161: the third fills the gaps.) The pipeline runs
    # last because Ray is left to shut down at exit: shutting it down while the stream's threads wind down
    # can end the process.
    init_ray(extra_cpus=1)
    pipeline = bench_pipeline(str(work / "shards"), a.batch, a.warmup, a.batches, a.size)
    print(f"\nSMTC clips/s ({a.size}x{a.size}, 4 frames, {a.height}p JPEGs, {cores} cores, {cores + 1} decode "
          f"processes, batch {a.batch})\n")
    print("| loader | clips/s | pipeline / this |")
    print("|---|---:|---:|")
    for name, v in [("raytrain pipeline (Ray Data)", pipeline), ("upstream-style DataLoader (OpenCV)", baseline),
                    ("ceiling: decode+resize x cores", ceiling)]:
        print(f"| {name} | {v:.1f} | {pipeline / v:.2f} |")


if __name__ == "__main__":
    main()
