"""`jobs/eval_smtc.py --dataset jhmdb|vip|davis2016|segtrackv2|fbms`: SMTC's evaluation sets beyond DAVIS-2017,
on the same actor pool (or `--serial`).

Outputs: `keypoints/<list index>.npy` (JHMDB), `parts/<video>/<frame>.png` (VIP), `foreground/<seq>/<frame>.png`
(discovery), `summary.json`; `python -m raytrain.eval score --task pck|vip|fg-iou --results <out>/<that folder>`
(`raytrain.eval.score_cli`) gives the same numbers from the files.
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from raytrain.cli.eval_run import evaluate, inputs, model_spec
from raytrain.config import EvalSMTCConfig
from raytrain.eval.discovery import DiscoverySettings
from raytrain.eval.foreground import RULES, foreground_video, mean_iou
from raytrain.eval.keypoints import keypoint_video, pck
from raytrain.eval.parts import miou, part_video
from raytrain.eval.propagation import PRESETS
from raytrain.eval.report import output_folder, upload
from raytrain.eval.video_io import VideoResult
from raytrain.methods import smtc
from shards.bench_layout import FOREGROUND_SETS, read_foreground, read_jhmdb, read_vip
from shards.cache import synthetic_benchmark
from shards.errors import UsageError, naming

TASK_OF = {"jhmdb": "propagation", "vip": "propagation", **{d: "discovery" for d in FOREGROUND_SETS}}
FOLDER = {"jhmdb": "keypoints", "vip": "parts", **{d: "foreground" for d in FOREGROUND_SETS}}
class Writer:
    """Writes each result's masks under `<out>/<folder>/<name>/` and its extra files, as they arrive."""

    def __init__(self, out: Path, folder: str):
        self.out, self.folder = out, folder

    def __call__(self, index: int, result: VideoResult) -> None:
        for frame, png in result.masks.items():
            path = self.out / self.folder / result.name / f"{frame}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        for rel, data in result.extra.items():
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.out / rel).write_bytes(data)


def combine(dataset: str, results: list[VideoResult]) -> dict[str, Any]:
    """The set's scores from the per-video numbers (the same combination as the score CLI's)."""
    if dataset == "jhmdb":
        return pck([r.stats for r in results])
    if dataset == "vip":
        return miou(np.sum([r.stats for r in results], axis=0))
    return mean_iou([r.stats for r in results])


def main_benchmark(cfg: EvalSMTCConfig) -> dict[str, Any]:
    """Evaluate SMTC (or DINO weights, for propagation) on one of the benchmark sets."""

    dataset = cfg.dataset
    if cfg.task != TASK_OF[dataset]:
        raise UsageError(f"--dataset {dataset} is evaluated with --task {TASK_OF[dataset]}, got --task {cfg.task}")
    preset_name = cfg.preset or dataset
    if TASK_OF[dataset] == "propagation" and preset_name not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got {preset_name!r}")
    if cfg.foreground not in RULES:
        raise UsageError(f"--foreground must be one of {', '.join(RULES)}, got {cfg.foreground!r}")
    spec = model_spec(cfg, smtc.METHOD)
    data = cfg.data or synthetic_benchmark(dataset, cfg.seed)
    with naming("--data", data):
        if dataset == "jhmdb":
            items = read_jhmdb(data, cfg.imset)
        elif dataset == "vip":
            items = read_vip(data, cfg.imset)
        else:
            items = read_foreground(data, dataset, cfg.imset)
    items = items[:cfg.videos] if cfg.videos > 0 else items
    out = output_folder(cfg.out, f"eval/smtc-{dataset}", inputs(cfg, data))
    extra: dict[str, Any] = {"dataset": dataset, "task": cfg.task}
    if dataset == "jhmdb":
        work = partial(keypoint_video, preset=PRESETS[preset_name])
    elif dataset == "vip":
        work = partial(part_video, preset=PRESETS[preset_name])
    else:
        settings = DiscoverySettings(size=(cfg.height, cfg.width), window=cfg.window, iters=cfg.iters, seed=cfg.seed)
        work = partial(foreground_video, settings=settings, rule=cfg.foreground)
        extra.update(foreground=cfg.foreground, input_size=[cfg.height, cfg.width])
    if TASK_OF[dataset] == "propagation":
        extra["preset"] = dataclasses.asdict(PRESETS[preset_name])
    print(f"{dataset} {cfg.task}: {len(items)} videos of {data}, model {spec.source}", flush=True)
    results, seconds = evaluate(cfg, spec, work, items, Writer(out, FOLDER[dataset]))
    scores = combine(dataset, results)
    metric = {"jhmdb": "pck", "vip": "vip"}.get(dataset, "fg-iou")
    summary = {"model": spec.source, "random_weights": spec.random, "videos": len(results),
               "seconds": round(seconds, 3), **extra, "scores": scores,
               "score_command": f"python -m raytrain.eval score --task {metric} --data {data} --dataset {dataset} "
                                f"--results {out / FOLDER[dataset]}"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    shown = {k: v for k, v in scores.items() if k != "per_class"}
    print(f"\n{dataset}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in shown.items()))
    print(f"{len(results)} videos in {seconds:.1f} s; outputs in {cfg.out or out}", flush=True)
    upload(out, cfg.out)
    return summary
