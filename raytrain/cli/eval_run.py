"""Running one evaluation, for every evaluation job (`raytrain.cli.evaluate`, `raytrain.cli.benchmarks`): the
model spec with its weights checked on the driver, what the job reads, and the videos evaluated in this process
or on the Ray actor pool (`raytrain.eval.distributed`)."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from raytrain.config import EvalConfig
from raytrain.eval.distributed import run_serial, run_videos
from raytrain.eval.models import RANDOM_WARNING, ModelSpec, build_model
from raytrain.eval.report import MaskWriter
from raytrain.eval.video_io import VideoResult
from raytrain.method import Method
from shards.cluster import init_ray
from shards.errors import UsageError, UserError, naming


def evaluate(cfg: EvalConfig, spec: ModelSpec, work: Callable, items: Sequence, writer: MaskWriter
        ) -> tuple[list[VideoResult], float]:
    """Evaluate `items` serially or on Ray; returns the results (input order) and the wall time."""
    if not items:
        raise UserError(f"--data {cfg.data or '(synthetic)'}: no videos to evaluate in split {cfg.split!r}")
    start = time.perf_counter()
    if cfg.serial:
        use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
        if use_gpu and not torch.cuda.is_available():
            raise UsageError("--use_gpu: no GPU in this process")
        results = run_serial(build_model, spec, work, items, device="cuda" if use_gpu else "cpu", on_result=writer)
    else:
        init_ray()  # only now: every input was checked on the driver
        results = run_videos(build_model, spec, work, items, num_actors=cfg.num_actors, use_gpu=cfg.use_gpu,
                             cpus_per_actor=cfg.cpus_per_actor, on_result=writer)
    return results, time.perf_counter() - start


def model_spec(cfg: Any, method: Method) -> ModelSpec:
    """The model spec, its weights read and checked here; errors name the weights flag."""
    flag = "--checkpoint" if cfg.checkpoint or not getattr(cfg, "dino_path", "") else "--dino_path"
    with naming(flag, cfg.checkpoint or getattr(cfg, "dino_path", "")):
        spec = method.eval_model(cfg)
    if spec.random:
        print(RANDOM_WARNING, flush=True)
    return spec


def inputs(cfg: Any, data: str) -> list[tuple[str, str]]:
    """What an evaluation reads, which its --out must keep clear of."""
    return [("--data", data), ("--checkpoint", cfg.checkpoint), ("--dino_path", getattr(cfg, "dino_path", "")),
            ("--imset", getattr(cfg, "imset", ""))]
