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
from functools import partial
from typing import Any, Sequence

from raytrain.cli.benchmarks import main_benchmark
from raytrain.cli.eval_run import evaluate, inputs, model_spec
from raytrain.config import check_flags, with_small
from raytrain.eval.discovery import OFFICIAL, PROTOCOL_NOTE, DiscoverySettings, discover_video
from raytrain.eval.propagation import PRESETS, propagation_video
from raytrain.eval.report import MaskWriter, finish, output_folder, upload
from raytrain.eval.video_io import partial_ground_truth
from raytrain.eval.vos import VOSSettings, is_youtube, list_vos_videos, mask_folder, segment_video, write_submission
from raytrain.method import Method
from raytrain.methods import smtc, stmae
from shards.errors import UserError, naming
from shards.cache import synthetic_davis, synthetic_vos
from shards.layout import list_videos


def _prepare(method: Method, argv: Sequence[str] | None) -> Any:
    cfg, overrides = with_small(method.eval_config, argv, method.small_eval)
    if not cfg.data:
        print(f"no --data given: evaluating on a small synthetic data set ({overrides})", flush=True)
    check_flags(cfg)
    return cfg


def _refuse_partial_ground_truth(data: str, videos: Sequence) -> None:
    partial = partial_ground_truth(videos)
    if partial:
        raise UserError(f"--data {data}: partial ground truth cannot be scored: {partial}")


def main_smtc(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python jobs/eval_smtc.py [flags]`: SMTC label propagation or object discovery on DAVIS-2017."""
    cfg = _prepare(smtc.METHOD, argv)
    if cfg.dataset != "davis2017":
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
