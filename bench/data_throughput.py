"""SMTC clip throughput of the Ray Data pipeline vs the upstream-style loader and the decode ceiling; and how well
the plan mixes videos and shards in a batch, for the upstream configurations.

    pip install opencv-python-headless   # the baseline's decoder; the project itself does not need OpenCV
    python bench/data_throughput.py [--videos 32 --frames 24 --height 480 --warmup 8 --batches 100]

Throughput, measured in the same run on the same synthetic YouTube-VOS-layout frames (packed into
`--shards` shards):
- pipeline: clips/s out of `raytrain.data.pipeline` (shards -> Ray Data -> torch batches) at its defaults (one
  clip per video per visit, a 16-shard window);
  (measured `--repeats` times, the mean compared; the plan before v2 was measured beside it by this script up
  to commit 791a832, see docs/results.md);
- baseline: a torch DataLoader over the JPEG folders reading the way upstream SMTC does (cv2.imread, BGR->RGB,
  /255 as float, cv2.resize to 256x256), the same clip sampling, as many worker processes as the pipeline
  has decode tasks (cores + 1);
- ceiling: one core decoding and resizing the data set's frames the pipeline's way (libjpeg-turbo at reduced
  scale + resize), from memory, times the cores the pipeline uses, divided by frames per clip.
All loaders are timed in their steady state: over `--batches` batches after `--warmup` batches, so that
worker start-up and the filling of prefetch buffers fall outside the timed window.

Mixing (planned only, no data read): the mean number of distinct videos and distinct shards in one worker's
batch (what a per-worker loss sees), over 200 global batches, for the plan and a uniform shuffle
over the round's video visits (upstream's DistributedSampler over its (Concat)Dataset, one clip per visit).
The indexes are synthetic with the real sets' sizes: YouTube-VOS train 3471 videos of 20-36 frames (the
annotated 6 fps frames), DAVIS-17 train 60 videos of 25-104 frames; 200 MB shards at about 120 kB per frame
at 720p (SMTC reads the original frames), 50 kB + 5 kB of mask at 480p (STMAE), 80 kB + 10 kB for DAVIS.
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

from raytrain.data import decode, plan, sampling
from raytrain.data.plan import ClipSource, Plan, StreamConfig, VideoEntry


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


def bench_pipeline(shards: str, batch: int, warmup: int, batches: int, size: int, repeats: int) -> list[float]:
    """clips/s of the pipeline (plan v2 at its defaults), `repeats` times."""
    import ray

    from raytrain.data.pipeline import clip_batches
    from shards.pack import read_index

    source = ClipSource.from_index(shards, read_index(shards))
    ref = ray.put(source)
    common = dict(sampler="gap", seed=0, rank=0, world_size=1, batch_size=batch, steps=warmup + batches + 1,
                  num_frames=4, size=size, gap=4)
    cfg = StreamConfig(clips_per_video=1, shard_window=16, **common)
    rates = []
    for _ in range(repeats):
        it = clip_batches(ref, cfg)
        rates.append(timed((b["frames"] for b in it), warmup, batches))
        it.close()  # stops the Ray Data executor behind the endless stream
    return rates


# ------------------------------------------------------------------------------------------------ mixing

def synthetic_source(root: str, videos: int, frames: tuple[int, int], frame_bytes: int, layout: str, seed: int,
                     weight: int = 1, shard_bytes: int = 200_000_000) -> ClipSource:
    """An index of `videos` videos (lengths uniform in `frames`) packed greedily into shards of `shard_bytes`."""
    rng = np.random.default_rng(seed)
    stride = plan.layout_stride(layout, "train")
    by_shard: list[list[VideoEntry]] = [[]]
    filled = 0
    for i in range(videos):
        n = int(rng.integers(frames[0], frames[1] + 1))
        if filled and filled + n * frame_bytes > shard_bytes:
            by_shard.append([])
            filled = 0
        filled += n * frame_bytes
        names = tuple(f"{stride * t:05d}" for t in range(n))
        by_shard[-1].append(VideoEntry(f"{root}-{i}", names, tuple((t * frame_bytes, frame_bytes) for t in range(n)),
                                       {f: (0, 1) for f in names}, i, stride or 1))
    names = tuple(f"{layout}-{k:06d}.tar" for k in range(len(by_shard)))
    return ClipSource((root,), (weight,), names, (0,) * len(names), tuple(map(tuple, by_shard)))


def uniform_mixing(source: ClipSource, cfg: StreamConfig, steps: int) -> dict[str, float]:
    """Distinct videos and shards per worker batch under a uniform shuffle of each round's visits (every video
    `weight` times), each rank taking every world_size-th visit (torch's DistributedSampler)."""
    visits = [(v.ordinal, s) for s, vs in enumerate(source.videos) for v in vs
              for _ in range(source.weights[source.shard_source[s]]) if plan.usable(v, cfg)]
    need, rnd, stream = steps * cfg.global_batch, 0, []
    while len(stream) < need:
        stream += [visits[i] for i in np.random.default_rng([cfg.seed, rnd]).permutation(len(visits))]
        rnd += 1
    videos = shards = 0.0
    for rank in range(cfg.world_size):
        mine = stream[rank::cfg.world_size]
        for s in range(steps):
            batch = mine[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            videos += len({v for v, _ in batch})
            shards += len({sh for _, sh in batch})
    n = steps * cfg.world_size
    return {"videos": videos / n, "shards": shards / n}


def mixing_table(steps: int = 200) -> list[str]:
    yt720 = synthetic_source("ytvos", 3471, (20, 36), 120_000, "ytvos", 1)
    yt480 = synthetic_source("ytvos480", 3471, (20, 36), 55_000, "ytvos", 1)
    davis = synthetic_source("davis17", 60, (25, 104), 90_000, "davis", 2, weight=5)
    stage3 = ClipSource.mix([davis, yt480])
    configs = [
        ("SMTC: YouTube-VOS train, 4 workers x 32", yt720,
         StreamConfig(sampler="gap", seed=0, rank=0, world_size=4, batch_size=32, steps=10_000, clips_per_video=1,
                      num_frames=4, size=256)),
        ("STMAE stage 3: DAVIS-17 x5 + YouTube-VOS 480p, 4 workers x 8", stage3,
         StreamConfig(sampler="max_skip", seed=0, rank=0, world_size=4, batch_size=8, steps=43_500, clips_per_video=1,
                      num_frames=8, size=384)),
    ]
    lines = [f"Distinct videos and shards per worker batch (mean over {steps} global batches x 4 workers; planned "
             f"only)\n", "| configuration | plan | distinct videos | / uniform | distinct shards | / uniform |",
             "|---|---|---:|---:|---:|---:|"]
    for name, source, cfg in configs:
        uniform = uniform_mixing(source, cfg, steps)
        rows = [("plan v2 (1 clip per visit, 16-shard window)", plan.batch_mixing(Plan(source, cfg), steps)),
                ("uniform shuffle over video visits (upstream)", uniform)]
        shards = len(source.shards)
        for label, m in rows:
            lines.append(f"| {name} ({shards} shards) | {label} | {m['videos']:.2f} of {cfg.batch_size} | "
                         f"{m['videos'] / uniform['videos']:.2f} | {m['shards']:.2f} | "
                         f"{m['shards'] / uniform['shards']:.2f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=32)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--shards", type=int, default=2, help="shards the synthetic videos are packed into")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=8, help="batches before the timed window")
    p.add_argument("--batches", type=int, default=100, help="batches timed")
    p.add_argument("--repeats", type=int, default=2, help="measurements of the pipeline")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workdir", default="", help="reuse data generated here (default: a temp folder)")
    a = p.parse_args()
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise SystemExit("the baseline needs OpenCV: pip install opencv-python-headless")
    import ray

    from shards.cluster import init_ray
    from shards.pack import pack, read_index
    from shards.synth import write_ytvos

    mixing = mixing_table()  # no data, no Ray
    cores = os.cpu_count() or 1
    work = Path(a.workdir or tempfile.mkdtemp(prefix="raytrain-bench-"))
    if not (work / "shards" / "index.parquet").exists():
        write_ytvos(work / "videos", num_videos=a.videos, num_frames=a.frames, height=a.height, num_val=0)
        total = sum(f.stat().st_size for f in (work / "videos").rglob("*") if f.is_file())
        pack(str(work / "videos"), str(work / "shards"), layout="ytvos", split="train",
             shard_size=total // a.shards + 1)
        ray.shutdown()  # the baseline and the ceiling run without Ray
    jpeg_root = work / "videos" / "train" / "JPEGImages"
    num_shards = len(set(read_index(str(work / "shards")).column("shard").to_pylist()))

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: as asked
    baseline = bench_baseline(jpeg_root, cores + 1, a.batch, a.warmup, a.batches, a.size)
    ceiling = bench_ceiling(jpeg_root, a.size, cores)
    # Ray starts as in a training job (`init_ray`): a training job with N workers gets cores + N + 1 logical
    # CPUs, so its decode tasks have cores + 1 slots. Here the driver consumes the batches, so N = 0. (On 2
    # cores, 3 decode tasks gave 170-180 clips/s and 2 gave 155-161: the third fills the gaps.) The pipelines run
    # last because Ray is left to shut down at exit: shutting it down while the stream's threads wind down
    # can end the process.
    init_ray(extra_cpus=1)
    new = bench_pipeline(str(work / "shards"), a.batch, a.warmup, a.batches, a.size, a.repeats)
    pipeline = float(np.mean(new))
    print(f"\nSMTC clips/s ({a.size}x{a.size}, 4 frames, {a.height}p JPEGs, {a.videos} videos in {num_shards} "
          f"shards, {cores} cores, {cores + 1} decode processes, batch {a.batch}; the pipeline: mean of {a.repeats} "
          f"runs)\n")
    print("| loader | clips/s | pipeline / this |")
    print("|---|---:|---:|")
    runs = lambda v: f" (runs: {', '.join(f'{x:.1f}' for x in v)})"  # noqa: E731
    for name, v in [("raytrain pipeline, plan v2 (1 clip per visit, 16-shard window)" + runs(new), pipeline),
                    ("upstream-style DataLoader (OpenCV)", baseline), ("ceiling: decode+resize x cores", ceiling)]:
        print(f"| {name} | {v:.1f} | {pipeline / v:.2f} |")
    print()
    print("\n".join(mixing))


if __name__ == "__main__":
    main()
