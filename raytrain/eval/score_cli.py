"""`python -m raytrain.eval score` and `jobs/score.py`: score any folder of result PNGs against DAVIS-2017.

    python -m raytrain.eval score --davis DAVIS --results results/xmem --task semi [--set val]
        [--sequences bike-packing,blackswan] [--num_workers 4] [--out DIR]

Same inputs and numbers as the official toolkit's `evaluation_method.py --task semi-supervised|unsupervised`
(`raytrain.eval.score`): it writes `global_results-<set>.csv` and `per-sequence_results-<set>.csv` into the
results folder (or `--out`) and prints the summary table. With `--num_workers N > 1` the sequences are scored
as Ray tasks on N workers (the cluster this job was submitted to, else a local Ray, started only when the
set is large enough to repay its start; a line says when it is not); under `ray job submit` the default is
one worker per CPU of the cluster.

`--task pck|vip|fg-iou --data ROOT` scores JHMDB keypoints, VIP parts or single foregrounds instead
(`raytrain.eval.bench_score`, in this process).
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

from raytrain.config import ScoreConfig, check_flags, parse
from raytrain.eval import davis
from raytrain.eval.bench_score import SCORE_TASKS, score_benchmark
from raytrain.eval.score import check_output, plan, protocol, score_jobs, summary_table, write_results
from shards.errors import UsageError


def _workers(requested: int) -> int:
    """`--num_workers`, with 0 resolved to the cluster's CPUs under a Ray cluster (RAY_ADDRESS), else 1. An
    explicit N leaves Ray to `score_jobs`, which starts a private one only when it pays."""
    if requested < 0:
        raise UsageError(f"--num_workers must be 0 (automatic) or more, got {requested}")
    if requested == 0 and not os.environ.get("RAY_ADDRESS"):
        return 1
    if requested:
        return requested
    from shards.cluster import init_ray

    init_ray()
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def main(argv: Sequence[str] | None = None) -> davis.Report:
    cfg = parse(ScoreConfig, argv)
    if cfg.task in SCORE_TASKS:
        return main_benchmark(cfg)
    if not cfg.davis:
        raise UsageError("--davis is required: the DAVIS root that holds ImageSets/ and Annotations/480p")
    if not cfg.results:
        raise UsageError("--results is required: the folder of <sequence>/<frame>.png results to score")
    check_flags(cfg)
    task = protocol(cfg.task)
    check_output(cfg.davis, cfg.results, cfg.out)  # before any scoring: where the CSV files go
    sequences = [s.strip() for s in cfg.sequences.split(",") if s.strip()] or None
    jobs = plan(cfg.davis, cfg.results, task, cfg.set, sequences, cfg.max_proposals)
    workers = _workers(cfg.num_workers)
    print(f"scoring {len(jobs)} sequences of {cfg.results} ({task}, set {cfg.set}) against {cfg.davis}, "
          f"{workers} worker(s)", flush=True)
    start = time.perf_counter()
    report, csvs = write_results(score_jobs(jobs, workers), cfg.out or cfg.results, cfg.set)
    print("\n" + summary_table(report, f"DAVIS-2017 {task} — {cfg.set}"))
    print(f"\n{len(jobs)} sequences, {len(report.objects)} objects in {time.perf_counter() - start:.1f} s; "
          f"wrote {', '.join(str(p) for p in csvs)}", flush=True)
    return report


def main_benchmark(cfg: ScoreConfig) -> dict[str, Any]:
    """`--task pck|vip|fg-iou --data ROOT --results DIR [--dataset ...]`: JHMDB keypoints, VIP parts or single
    foregrounds."""
    if not cfg.data:
        raise UsageError(f"--task {cfg.task} needs --data: the ground-truth root (JHMDB, VIP or the --dataset set)")
    if not cfg.results:
        raise UsageError("--results is required: the folder of predictions to score")
    start = time.perf_counter()
    scores = score_benchmark(cfg.task, cfg.data, cfg.results, cfg.dataset, cfg.imset)
    shown = {k: v for k, v in scores.items() if k != "per_class"}
    print(f"{cfg.task} of {cfg.results}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in shown.items())
          + f" ({time.perf_counter() - start:.1f} s)", flush=True)
    return scores
