"""Writing an evaluation's results: masks as they arrive, the official CSV files, the summary table and JSON,
overlay pictures, and the upload to a URI.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pyarrow.fs import LocalFileSystem, copy_files

from raytrain.config import EvalConfig
from raytrain.eval.models import RANDOM_WARNING, ModelSpec
from raytrain.eval.overlay import FORMATS, save_overlay
from raytrain.eval.score import summary_table, write_results
from raytrain.eval.video_io import VideoResult, decode_png, read_rgb
from shards.errors import UserError
from shards.layout import resolve
from shards.paths import local_path, output_entries, prepare_local_folder, probe_uri, refuse_overlap

MARKER = ".raytrain-eval"  # written first into an evaluation's output folder: it tells a rerun the folder is its own


class MaskWriter:
    """Writes each result's masks (`<out>/<mask_dir>/<video>/<frame>.png`) and extra files as they arrive."""

    def __init__(self, out: Path, mask_dir: str = ""):
        self.out, self.mask_dir = out, mask_dir

    def __call__(self, index: int, result: VideoResult) -> None:
        folder = self.out / self.mask_dir / result.name
        folder.mkdir(parents=True, exist_ok=True)
        for frame, png in result.masks.items():
            (folder / f"{frame}.png").write_bytes(png)
        for rel, data in result.extra.items():
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.out / rel).write_bytes(data)


def _overlays(cfg: EvalConfig, out: Path, items: Sequence, results: Sequence[VideoResult]) -> list[Path]:
    if cfg.overlay_format not in FORMATS:
        raise ValueError(f"--overlay_format must be one of {', '.join(FORMATS)}")
    paths = []
    for item, result in list(zip(items, results))[:max(cfg.overlays, 0)]:
        video = getattr(item, "video", item)
        index = {f: i for i, f in enumerate(video.frames)}
        decoded = [decode_png(png) for png in result.masks.values()]
        frames = [read_rgb(video, index[f]) for f in result.masks]
        masks = [ids if pal is not None else (ids > 0).astype(np.uint8) for ids, pal in decoded]
        palette = next((pal for _, pal in decoded if pal is not None), None)
        paths.append(save_overlay(frames, masks, out / "overlays" / f"{result.name}.{cfg.overlay_format}", palette))
    return paths


def finish(cfg: EvalConfig, out: Path, spec: ModelSpec, items: Sequence, results: Sequence[VideoResult],
           seconds: float, protocol: str, set_name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Official CSVs (when scored), summary table and JSON, overlays; returns the summary."""
    summary: dict[str, Any] = {"protocol": protocol, "model": spec.source, "random_weights": spec.random,
                               "videos": len(results), "seconds": round(seconds, 3),
                               "videos_per_s": round(len(results) / max(seconds, 1e-9), 4), **(extra or {})}
    scored = [r.scores for r in results if r.scores is not None]
    if scored:
        if len(scored) < len(results):
            print(f"{len(results) - len(scored)} video(s) have no ground truth for every frame and are not scored")
        report, csvs = write_results(scored, out, set_name)  # the scorer `python -m raytrain.eval score` uses
        summary.update(global_results=report.as_dict(), objects=[list(o) for o in report.objects],
                       csv=[p.name for p in csvs])
        print("\n" + summary_table(report, f"{protocol} — {set_name}"))
    else:  # nothing scored: CSVs of an earlier run into this folder would pass for this run's
        for stale in (out / f"global_results-{set_name}.csv", out / f"per-sequence_results-{set_name}.csv"):
            if stale.is_file():
                stale.unlink()
                print(f"removed {stale}: this run scored no video, so it is not this run's result")
    summary["overlays"] = [p.relative_to(out).as_posix() for p in _overlays(cfg, out, items, results)]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if spec.random:
        print(RANDOM_WARNING)
    print(f"\n{len(results)} videos in {seconds:.1f} s ({summary['videos_per_s']:.3f} videos/s); "
          f"outputs in {cfg.out if '://' in cfg.out else out}", flush=True)
    return summary


def output_folder(out: str, default: str, inputs: Sequence[tuple[str, str]] = ()) -> Path:
    """The local folder results are written to: `out` (or `default`), or a staging folder when `out` is a URI.

    Checked before anything is written (errors name --out): it must not be, lie inside or hold one of the
    `inputs` ((flag, path) pairs: the data, the weights), must be a folder (or not exist yet) that can be
    written, and must be empty or a folder an earlier evaluation wrote (its `MARKER` or summary.json): masks
    are written as `<sequence>/<frame>.png`, the shape of a ground-truth folder, over any files of those names.
    """
    target = out or default
    refuse_overlap("--out", target, inputs)
    entries = output_entries("--out", target)
    if entries and MARKER not in entries and "summary.json" not in entries:
        raise UserError(f"--out {target}: holds files that no evaluation wrote ({', '.join(entries[:3])}"
                        f"{', ...' if len(entries) > 3 else ''}); write into a new or empty folder, or the folder of "
                        f"an earlier evaluation")
    local = local_path(target)
    if local is not None:  # a file:// URI too: found here, not at the upload
        prepare_local_folder("--out", local)
    else:
        probe_uri("--out", target)
    folder = Path(tempfile.mkdtemp(prefix="raytrain-eval-out-")) if "://" in out else Path(target)
    (folder / MARKER).write_text(json.dumps({"written_by": "raytrain evaluation"}) + "\n")
    return folder


def upload(folder: Path, out: str) -> None:
    """Copy the results to `out` and remove the staging folder, when `out` is a URI (s3://, gs://, ...)."""
    if "://" in out:
        fs, path = resolve(out)
        fs.create_dir(path, recursive=True)
        copy_files(str(folder), path, source_filesystem=LocalFileSystem(), destination_filesystem=fs)
        shutil.rmtree(folder)
        print(f"outputs uploaded to {out}", flush=True)
