"""What in-training validation costs the training: steps/s and the time each worker is held, on a simulated
two-node cluster, with no validation, with validation on rank 0 in the training loop (`--no-val_async`, the
path before) and with validation off the training path (a Ray task per checkpoint, the default).

    python bench/validation_stall.py [--steps 16] [--checkpoint_every 4] [--val_videos 3] [--json FILE]

One `ray.cluster_utils.Cluster` on this machine (`bench/cluster.py`'s: a 1-CPU head and two 3-CPU nodes; a
training worker reserves 2 CPUs, so each node holds one of the 2 workers and keeps a CPU for its data tasks;
the validation task takes the head's CPU). STMAE at 64 px (4 frames, 1 clip per worker and step, a report
every step, a checkpoint every `--checkpoint_every` steps) on synthetic DAVIS shards, validated on the same
`--val_videos` synthetic val videos (64 px, 10 frames) in each mode. Each rank logs (RAYTRAIN_TIMING_LOG) when
its loop begins and ends and how long each report held it (the validation on rank 0 when it runs there, writing
the checkpoint, the report's barrier). Columns: training steps/s per worker (steps over the loop's wall time,
validations and checkpoints included), its ratio to the no-validation row, the fraction of that wall time each
rank was held in reports, and the wall time of `fit` (off the path: until the last validation arrived).

All nodes share this machine's 2 cores: a validation task off the path takes CPU time from the training
workers here, where on a cluster it has CPUs (or a GPU, `--val_use_gpu`) of its own.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cluster import sim_cluster
from raytrain.config import STMAEConfig
from raytrain.methods import get
from raytrain.train.loop import TIMING_LOG_ENV, fit
from shards.pack import pack
from shards.synth import write_davis

MODES = {"none": "no validation", "sync": "on rank 0, in the loop (--no-val_async; before)",
         "async": "a Ray task per checkpoint (now)"}


def timing(folder: Path) -> dict[int, dict[str, float]]:
    """rank -> steps, wall seconds and held seconds of its loop (the last start of each rank)."""
    out: dict[int, dict[str, float]] = {}
    for f in folder.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            row = out.setdefault(r["rank"], {"held": 0.0})
            if r["event"] == "begin":
                row.update(begin=r["t"], first=r["step"], held=0.0)
            elif r["event"] == "end":
                row.update(end=r["t"], last=r["step"])
            else:
                row["held"] += r["held_s"]
    return {rank: {"steps": r["last"] - r["first"], "wall": r["end"] - r["begin"], "held": r["held"]}
            for rank, r in sorted(out.items())}


def run(mode: str, cfg: STMAEConfig, root: Path) -> dict[str, Any]:
    log = root / f"timing-{mode}"
    log.mkdir()
    os.environ[TIMING_LOG_ENV] = str(log)
    changes = {"none": dict(val_data=""), "sync": dict(val_async=False), "async": {}}[mode]
    start = time.perf_counter()
    fit(get("stmae"), dataclasses.replace(cfg, name=mode, **changes))
    fit_s = time.perf_counter() - start
    ranks = timing(log)
    return {"mode": mode, "fit_s": fit_s,
            "steps_per_s": sum(r["steps"] / r["wall"] for r in ranks.values()) / len(ranks),
            "held": {rank: r["held"] / r["wall"] for rank, r in ranks.items()}}


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["steps_per_s"]
    lines = ["| validation | steps/s | vs none | held, rank 0 | held, rank 1 | fit (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {MODES[r['mode']]} | {r['steps_per_s']:.3f} | {r['steps_per_s'] / base:.2f}x | "
                     f"{100 * r['held'][0]:.0f}% | {100 * r['held'][1]:.0f}% | {r['fit_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--checkpoint_every", type=int, default=4)
    p.add_argument("--val_videos", type=int, default=3)
    p.add_argument("--json", default="")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="valstall-"))
    cfg = STMAEConfig(data=[str(root / "shards")], val_data=str(root / "davis"), crop=64, num_frames=4,
                      num_ref_frames=2, batch_size=1, max_skip=[3], max_skip_at=[0.0], num_workers=2,
                      cpus_per_worker=2, steps=args.steps, checkpoint_every=args.checkpoint_every, log_every=1,
                      max_failures=0, clips_per_video=2, storage_path=str(root / "runs"))
    rows = []
    with sim_cluster((3, 3)):
        write_davis(root / "davis", num_videos=args.val_videos + 3, num_frames=10, height=64,
                    num_val=args.val_videos, seed=0)
        pack(str(root / "davis"), str(root / "shards"), layout="davis", split="train", shard_size="60KB")
        for mode in MODES:
            rows.append(run(mode, cfg, root))
            print(f"{mode}: {rows[-1]}", flush=True)
    print(f"\nSTMAE 64 px, 2 workers on 2 simulated nodes, {args.steps} steps, a checkpoint every "
          f"{args.checkpoint_every}, {args.val_videos} val videos (bench/validation_stall.py)\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
