"""The evaluation jobs: `jobs/eval_smtc.py` -> `main_smtc`, `jobs/eval_stmae.py` -> `main_stmae`.

Both run on a Ray cluster (the one the job was submitted to, else a local one) through
`raytrain.eval.distributed`, or in-process with `--serial`. Weights are read once, on the driver
(`raytrain.eval.models`), so only the data (`--data`, a local/NFS path or a URI) must be readable from every
node; outputs are written by the driver (`raytrain.eval.report`: to a local folder, or staged locally and
uploaded to a URI).

Output folder: masks (`<seq>/<frame>.png`; YouTube-VOS `Annotations/<video>/<frame>.png` and a submission
zip), `global_results-<set>.csv` and `per-sequence_results-<set>.csv` (official format), `summary.json`,
the printed summary table, and `overlays/<video>.gif|png` for the first few videos.
"""
from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any, Callable, Sequence

import torch

from raytrain.config import EvalConfig, check_flags, with_small
from raytrain.eval.discovery import OFFICIAL, PROTOCOL_NOTE, DiscoverySettings, discover_video
from raytrain.eval.distributed import run_serial, run_videos
from raytrain.eval.models import RANDOM_WARNING, ModelSpec, build_model
from raytrain.eval.propagation import PRESETS, propagation_video
from raytrain.eval.report import MaskWriter, finish, output_folder, upload
from raytrain.eval.video_io import VideoResult, partial_ground_truth
from raytrain.eval.vos import VOSSettings, is_youtube, list_vos_videos, mask_folder, segment_video, write_submission
from raytrain.method import Method
from raytrain.methods import smtc, stmae
from shards.cluster import init_ray
from shards.errors import UsageError, UserError, naming
from shards.cache import synthetic_davis, synthetic_vos
from shards.layout import list_videos

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


def _prepare(method: Method, argv: Sequence[str] | None) -> Any:
    cfg, overrides = with_small(method.eval_config, argv, method.small_eval)
    if not cfg.data:
        print(f"no --data given: evaluating on a small synthetic data set ({overrides})", flush=True)
    check_flags(cfg)
    return cfg


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


def _refuse_partial_ground_truth(data: str, videos: Sequence) -> None:
    partial = partial_ground_truth(videos)
    if partial:
        raise UserError(f"--data {data}: partial ground truth cannot be scored: {partial}")


def main_smtc(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python jobs/eval_smtc.py [flags]`: SMTC label propagation or object discovery on DAVIS-2017."""
    cfg = _prepare(smtc.METHOD, argv)
    if cfg.dataset != "davis2017":
        from raytrain.cli.benchmarks import main_benchmark
        return main_benchmark(cfg)
    cfg = dataclasses.replace(cfg, preset=cfg.preset or "A")
    spec = model_spec(cfg, smtc.METHOD)
    data = cfg.data or synthetic_davis(cfg.seed)
    discovery = cfg.task == "discovery"
    with naming("--data", data):
        videos = list_videos(data, "davis", cfg.split, unsupervised=discovery)
    videos = videos[:cfg.videos] if cfg.videos > 0 else videos
    _refuse_partial_ground_truth(data, videos)
    if discovery and videos and not any(v.annotations for v in videos):
        print(f"{data} has no Annotations_unsupervised/480p (a separate DAVIS download): proposals are written "
              "but not scored", flush=True)
    out = output_folder(cfg.out, f"eval/smtc-{cfg.task}", inputs(cfg, data))
    if discovery:
        settings = DiscoverySettings(mode=cfg.mode, size=(cfg.height, cfg.width), window=cfg.window,
                                     iters=cfg.iters, seed=cfg.seed, max_proposals=cfg.max_proposals)
        work = partial(discover_video, settings=settings)
        official = cfg.mode == OFFICIAL
        protocol = f"SMTC discovery, {PROTOCOL_NOTE[cfg.mode]}"
        set_name = cfg.split if official else f"{cfg.split}-smtc-paper"
        writer = MaskWriter(out, "" if official else "smtc-paper-preview")
        extra = {"mode": cfg.mode, "input_size": [cfg.height, cfg.width]}
    else:
        work = partial(propagation_video, preset=PRESETS[cfg.preset])
        protocol = f"DAVIS-2017 semi-supervised, label propagation preset {cfg.preset} ({PRESETS[cfg.preset].name})"
        set_name, writer, extra = cfg.split, MaskWriter(out), {"preset": cfg.preset}
    print(f"{protocol}: {len(videos)} videos of {data}, model {spec.source}", flush=True)
    results, seconds = evaluate(cfg, spec, work, videos, writer)
    summary = finish(cfg, out, spec, videos, results, seconds, protocol, set_name, {"task": cfg.task, **extra})
    upload(out, cfg.out)
    return summary


def main_stmae(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python jobs/eval_stmae.py [flags]`: STMAE on DAVIS-2016/2017 or YouTube-VOS 2018/2019."""
    cfg = _prepare(stmae.METHOD, argv)
    spec = model_spec(cfg, stmae.METHOD)
    data = cfg.data or synthetic_vos(cfg.dataset, cfg.seed)
    with naming("--data", data):
        items = list_vos_videos(cfg.dataset, data, cfg.split, cfg.imset)
    items = items[:cfg.videos] if cfg.videos > 0 else items
    if not is_youtube(cfg.dataset):  # YouTube-VOS valid is annotated where objects appear, and not scored here
        _refuse_partial_ground_truth(data, [item.video for item in items])
    out = output_folder(cfg.out, f"eval/stmae-{cfg.dataset}", inputs(cfg, data))
    settings = VOSSettings(mem_every=cfg.mem_every, top_k=cfg.top_k, size=cfg.size, amp=cfg.amp,
                           max_mem_frames=cfg.max_mem_frames)
    youtube = is_youtube(cfg.dataset)
    protocol = (f"YouTube-VOS {cfg.dataset} valid submission (scored by the evaluation server)" if youtube else
                f"DAVIS-{2016 if cfg.dataset == 'D16' else 2017} semi-supervised")
    print(f"STMAE, {protocol}: {len(items)} videos of {data}, model {spec.source}", flush=True)
    results, seconds = evaluate(cfg, spec, partial(segment_video, settings=settings), items,
                           MaskWriter(out, mask_folder(cfg.dataset)))
    extra: dict[str, Any] = {"dataset": cfg.dataset, "settings": dataclasses.asdict(settings)}
    if youtube:
        extra["submission"] = write_submission(results, out / f"{cfg.dataset}-valid-submission.zip").name
        print(f"submission zip: {extra['submission']}")
    summary = finish(cfg, out, spec, items, results, seconds, protocol, cfg.split, extra)
    upload(out, cfg.out)
    return summary
