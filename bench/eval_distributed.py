"""Distributed evaluation throughput: videos/s of the Ray actor pool with 1 and 2 actors (and more if asked).

    python bench/eval_distributed.py [--videos 8 --frames 8 --height 64 --actors 1 2 --task propagation]

Same run, same synthetic DAVIS videos, same random model for every row: SMTC label propagation (preset A,
ViT-S/16) or STMAE semi-supervised VOS (`--task stmae`). Each actor holds one CPU (one torch thread) or one GPU.
Actor start-up (process, imports, model build) is timed apart from the evaluation; videos/s counts the
evaluation only. The last column checks that every row produced the same global J&F.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial

import ray
import torch

from raytrain.eval import davis
from raytrain.eval.distributed import EvalPool
from raytrain.eval.propagation import SMTC_A, propagation_video
from raytrain.eval.models import ModelSpec, build_model
from raytrain.eval.vos import VOSSettings, VOSVideo, segment_video
from shards.layout import list_videos
from shards.synth import write_davis


def _stmae_work(model, video, device, settings):
    return segment_video(model, VOSVideo(video, "D17"), device, settings)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("propagation", "stmae"), default="propagation")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--use_gpu", action="store_true", help="one GPU per actor")
    args = p.parse_args(argv)

    root = tempfile.mkdtemp(prefix="bench-eval-")
    write_davis(root, num_videos=args.videos, num_frames=args.frames, height=args.height, seed=0)
    videos = list_videos(root, "davis", "all")
    if args.task == "propagation":
        spec, work = ModelSpec("vit", None, "random", seed=0), partial(propagation_video, preset=SMTC_A)
    else:
        spec, work = ModelSpec("stmae", None, "random", seed=0), partial(_stmae_work, settings=VOSSettings(size=0))
    ray.init(num_cpus=max(max(args.actors), os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    print(f"{args.task}: {len(videos)} synthetic videos x {args.frames} frames, {videos[0].height}x{videos[0].width}, "
          f"{os.cpu_count()} CPU cores, {'GPU' if args.use_gpu else 'CPU'} actors\n")
    rows, base = [], None
    for n in args.actors:
        pool = EvalPool(build_model, spec, work, num_actors=n, use_gpu=args.use_gpu, log=lambda s: None)
        start = time.perf_counter()
        results = pool.map(videos)
        seconds = time.perf_counter() - start
        pool.shutdown()
        jf = davis.combine([r.scores for r in results]).jf_mean
        rate = len(videos) / seconds
        base = base or (rate, jf)
        rows.append([str(n), f"{pool.startup_s:.1f}", f"{seconds:.1f}", f"{rate:.3f}", f"{rate / base[0]:.2f}x",
                     "yes" if jf == base[1] else f"no ({jf:.4f})"])
    header = ["actors", "start-up (s)", "evaluation (s)", "videos/s", "vs 1st row", "same J&F"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    ray.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
