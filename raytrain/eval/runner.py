"""What the evaluation jobs share: configs, model specs, SMTC label propagation per video, the synthetic
default data, and the run itself (fan-out, masks, official CSV files, summary table, overlays).

`jobs/eval_smtc.py` -> `main_smtc`, `jobs/eval_stmae.py` -> `main_stmae`. Both run on a Ray cluster (the one
the job was submitted to, else a local one) through `raytrain.eval.distributed`, or in-process with
`--serial`. Weights are read once, on the driver (a local path or a URI, fetched first), and reach the actors
through the object store, so only the data (`--data`, a local/NFS path or a URI) must be readable from every
node; outputs are written by the driver (to a local folder, or staged locally and uploaded to a URI).

Output folder: masks (`<seq>/<frame>.png`; YouTube-VOS `Annotations/<video>/<frame>.png` and a submission
zip), `global_results-<set>.csv` and `per-sequence_results-<set>.csv` (official format), `summary.json`,
the printed summary table, and `overlays/<video>.gif|png` for the first few videos.

SMTC label propagation (`propagation_video`): features of `SMTC.encoder` (or plain DINO weights) through
`raytrain.eval.propagation`. Presets A and B take the last block's tokens before the final LayerNorm (SMTC's
eval_prop), `dino` takes them after it (DINO's `get_intermediate_layers`), with the rest of DINO's protocol.
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from pyarrow.fs import FileType, LocalFileSystem, copy_files
from torch import Tensor, nn

from raytrain.config import given_fields, parse
from raytrain.eval import davis
from raytrain.eval.discovery import MODES, OFFICIAL, PROTOCOL_NOTE, DiscoverySettings, discover_video
from raytrain.eval.distributed import (VideoResult, decode_png, encode_png, read_clip, read_ground_truth, read_png,
                                       read_rgb, run_serial, run_videos)
from raytrain.eval.overlay import FORMATS, save_overlay
from raytrain.eval.propagation import DINO, SMTC_A, SMTC_B, Preset, propagate, vit_features
from raytrain.eval.vos import (DATASETS, VOSSettings, is_youtube, list_vos_videos, mask_folder, segment_video,
                               write_submission)
from raytrain.models.smtc import SMTC
from raytrain.models.stmae import STMAE, checkpoint_weights, from_weights
from raytrain.models.vit import ViTEncoder, vit_small
from raytrain.models.weights import load_smtc_weights, load_vit_weights, vit_state_dict
from shards.layout import list_videos, resolve
from shards.synth import DAVIS_PALETTE

PRESETS = {"A": SMTC_A, "B": SMTC_B, "dino": DINO}
TASKS = ("propagation", "discovery")
RANDOM_WARNING = ("=" * 100 + "\nWARNING: no checkpoint given: evaluating RANDOMLY INITIALISED weights. "
                  "The numbers below say nothing about the method.\n" + "=" * 100)


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    return field(default=default, metadata={"help": help})


@dataclass
class EvalConfig:
    """Fields shared by the evaluation jobs."""

    data: str = _f("", "dataset folder (local, NFS or URI, readable from every node); empty: a small synthetic set")
    out: str = _f("", "output folder or URI (empty: ./eval/<job>)")
    checkpoint: str = _f("", "checkpoint (run folder with state.pt, or a weights file; path or URI); empty: random "
                             "weights")
    split: str = _f("val", "DAVIS ImageSets split")
    videos: int = _f(0, "evaluate only the first N videos (0: all)")
    seed: int = _f(0, "seed of random weights and of random draws during inference")
    num_actors: int = _f(0, "Ray actors (0: one per GPU, else one per --cpus_per_actor CPUs, at most one per video)")
    use_gpu: Optional[bool] = _f(None, "one GPU per actor (default: when the cluster has GPUs)")
    cpus_per_actor: float = _f(1.0, "CPUs reserved by each actor (also its torch threads)")
    serial: bool = _f(False, "evaluate in this process, without Ray")
    overlays: int = _f(3, "videos to draw overlay pictures of")
    overlay_format: str = _f("gif", "overlay pictures: gif (animated) or png (strip of frames)")


@dataclass
class EvalSMTCConfig(EvalConfig):
    """Evaluate SMTC on DAVIS-2017: label propagation (semi-supervised) or multi-object discovery (unsupervised)."""

    task: str = _f("propagation", "propagation | discovery")
    dino_path: str = _f("", "plain DINO ViT-S/16 weights for propagation (instead of --checkpoint)")
    preset: str = _f("A", "propagation protocol: A (SMTC/CRW stride 16), B (stride 8), dino (DINO's)")
    mode: str = _f(OFFICIAL, "discovery scoring: official (DAVIS protocol) | smtc-paper (upstream's, not comparable)")
    height: int = _f(480, "discovery input height")
    width: int = _f(800, "discovery input width")
    window: int = _f(4, "discovery: frames per window")
    iters: int = _f(5, "discovery: slot attention iterations")
    max_proposals: int = _f(20, "discovery (official): proposals per sequence")
    num_slots: int = _f(16, "semantic slots of a released .pth (run checkpoints carry their own)")
    num_instance: int = _f(4, "instance slots per semantic slot of a released .pth")
    resolution: int = _f(256, "training resolution of a released .pth")


@dataclass
class EvalSTMAEConfig(EvalConfig):
    """Evaluate STMAE (semi-supervised VOS) on DAVIS-2016/2017 val or YouTube-VOS 2018/2019 valid."""

    dataset: str = _f("D17", "D16 | D17 | Y18 | Y19")
    imset: str = _f("", "D16 sequence list (default: <data>/ImageSets/2016/val.txt)")
    mem_every: int = _f(5, "frames between memory frames")
    top_k: int = _f(30, "top-k memory readout (<= 0: full softmax)")
    size: int = _f(480, "shorter side the frames are resized to (<= 0: original size)")
    amp: bool = _f(True, "bf16 autocast on GPUs")


# Overrides for the synthetic default run (no --data), for fields the user did not set.
SMALL_SMTC = dict(height=96, width=160)
SMALL_STMAE = dict(size=0)


# ------------------------------------------------------------------------------------------------ models

@dataclass
class ModelSpec:
    """What an actor builds: architecture, weights (None: random from `seed`) and where they came from."""

    kind: str  # "vit" (propagation encoder), "smtc" (discovery), "stmae"
    weights: dict[str, Tensor] | None
    source: str
    seed: int = 0
    arch: dict[str, int] = field(default_factory=dict)

    @property
    def random(self) -> bool:
        return self.weights is None


def _new_model(kind: str, arch: dict[str, int]) -> nn.Module:
    if kind == "vit":
        return vit_small()
    if kind == "smtc":
        return SMTC(arch["num_slots"], arch["num_instances"], resolution=arch["resolution"], drop_path=0.0)
    if kind == "stmae":
        return STMAE(value_dim=arch.get("value_dim", 512))
    raise ValueError(f"unknown model kind {kind!r}")


def build_model(spec: ModelSpec, device: torch.device | str) -> nn.Module:
    """The model of `spec` in eval mode on `device` (the same weights wherever it is built)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = _new_model(spec.kind, spec.arch)
    if spec.weights is not None:
        model.load_state_dict(spec.weights)
    return model.to(device).eval()


def _run_state(path: Path, job: str) -> dict[str, Any] | None:
    """The state of a training-run checkpoint (folder or its state.pt), None for other files."""
    from raytrain.train.loop import STATE_FILE, load_checkpoint_state

    if not (path.is_dir() or path.name == STATE_FILE):
        return None
    if path.is_dir() and not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--checkpoint {path}: a folder without {STATE_FILE} (not a training checkpoint)")
    state = load_checkpoint_state(path)
    if state.get("job") != job:
        raise ValueError(f"--checkpoint {path}: a {state.get('job')!r} training checkpoint, expected {job!r}")
    return state


@contextmanager
def fetched(uri: str, flag: str) -> Iterator[Path]:
    """A local path for a checkpoint: `uri` itself when local, else a temporary copy (file or folder)."""
    if "://" not in uri:
        yield Path(uri)
        return
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == FileType.NotFound:
        raise FileNotFoundError(f"{flag} {uri}: not found")
    with tempfile.TemporaryDirectory(prefix="raytrain-eval-") as tmp:
        local = Path(tmp) / posixpath.basename(path.rstrip("/"))
        if kind == FileType.Directory:
            local.mkdir()
        copy_files(path, str(local), source_filesystem=fs, destination_filesystem=LocalFileSystem())
        yield local


def _load_smtc(model: nn.Module, path: Path, source: str, state: dict[str, Any] | None, discovery: bool) -> None:
    """Load a run checkpoint's `state` (None: the file at `path`) into SMTC (discovery) or its encoder."""
    if state is not None and discovery:
        model.load_state_dict(state["task"]["model"])
    elif state is not None:
        try:
            model.load_state_dict(vit_state_dict(state["task"], source))
        except RuntimeError as e:
            raise ValueError(f"--checkpoint {source}: the encoder does not match ViT-S/16: {e}") from None
    elif discovery:
        load_smtc_weights(model, path)
    else:
        load_vit_weights(model, path)


def smtc_spec(cfg: EvalSMTCConfig) -> ModelSpec:
    """Weights for SMTC propagation (encoder only) or discovery (whole model), read and checked here."""
    if cfg.checkpoint and cfg.dino_path:
        raise ValueError("give either --checkpoint (SMTC) or --dino_path (DINO), not both")
    discovery = cfg.task == "discovery"
    if discovery and cfg.dino_path:
        raise ValueError("--dino_path: discovery needs SMTC's slot modules; give an SMTC --checkpoint")
    arch = dict(num_slots=cfg.num_slots, num_instances=cfg.num_instance, resolution=cfg.resolution)
    kind = "smtc" if discovery else "vit"
    source = cfg.checkpoint or cfg.dino_path
    if not source:
        return ModelSpec(kind, None, "random weights", cfg.seed, arch)
    with fetched(source, "--checkpoint" if cfg.checkpoint else "--dino_path") as path:
        state = _run_state(path, "smtc") if cfg.checkpoint else None
        if state is not None:
            train = state["config"]
            arch = dict(num_slots=train["num_slots"], num_instances=train["num_instance"],
                        resolution=train["resolution"])
        model = _new_model(kind, arch)
        _load_smtc(model, path, source, state, discovery)
    return ModelSpec(kind, model.state_dict(), source, cfg.seed, arch)


def stmae_spec(cfg: EvalSTMAEConfig) -> ModelSpec:
    """STMAE weights (released file, upstream training checkpoint, or a run checkpoint folder)."""
    if not cfg.checkpoint:
        return ModelSpec("stmae", None, "random weights", cfg.seed)
    with fetched(cfg.checkpoint, "--checkpoint") as path:
        state = _run_state(path, "stmae")
        obj = state if state is not None else torch.load(path, map_location="cpu", weights_only=True)
    model = from_weights(checkpoint_weights(obj, cfg.checkpoint), cfg.checkpoint)
    return ModelSpec("stmae", model.state_dict(), cfg.checkpoint, cfg.seed, {"value_dim": model.value_dim})


# ----------------------------------------------------------------------------------- label propagation

def encode_tokens(encoder: ViTEncoder, preset: Preset, x: Tensor) -> Tensor:
    """Last-block patch tokens [B, h, w, C]: before the final LayerNorm (SMTC presets) or after it (DINO)."""
    tokens = encoder.features(x).tokens.permute(0, 2, 3, 1)
    return encoder.norm(tokens) if preset.name == DINO.name else tokens


@torch.inference_mode()
def propagation_video(encoder: ViTEncoder, video: Any, device: torch.device, preset: Preset) -> VideoResult:
    """Propagate frame 0's annotation through a DAVIS video with frozen ViT features and score the result."""
    frames = read_clip(video)
    feats = vit_features(partial(encode_tokens, encoder, preset), frames, preset, device=device)
    first, palette = read_png(video, video.frames[0])
    preds = propagate(feats, first, preset)
    gt = read_ground_truth(video)
    scores = None if gt is None else davis.score_semi(gt, np.stack(preds), video.id, video.frames)
    masks = {f: encode_png(p, palette or DAVIS_PALETTE) for f, p in zip(video.frames, preds)}
    return VideoResult(video.id, masks, scores)


# -------------------------------------------------------------------------------------- synthetic data

def cache_dir() -> Path:
    return Path(os.environ.get("RAYTRAIN_CACHE", "~/.cache/raytrain")).expanduser() / "synthetic"


def _once(root: Path, make: Callable[[Path], Any]) -> str:
    """Generate a data set into `root` unless a complete one is there (written to a temp folder, then renamed)."""
    if not root.is_dir():
        print(f"generating a synthetic data set in {root} ...", flush=True)
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        try:
            tmp.rename(root)
        except OSError:  # another job made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return str(root)


def synthetic_davis(seed: int = 0, root: Path | None = None) -> str:
    """DAVIS-2017 layout (both annotation folders): 6 sequences (3 val) x 10 frames, 96 x 171."""
    from shards.synth import write_davis

    return _once(root or cache_dir() / f"eval-davis-s{seed}",
                 lambda p: write_davis(p, num_videos=6, num_frames=10, height=96, num_val=3, seed=seed))


def write_davis2016(out: Path, seed: int = 0, **kw: Any) -> None:
    """DAVIS-2016 layout: one object per sequence as 0/255 masks, `ImageSets/2016/val.txt`."""
    from PIL import Image

    from shards.synth import write_davis

    write_davis(out, max_objects=1, seed=seed, **kw)
    shutil.rmtree(out / "Annotations_unsupervised")
    for png in (out / "Annotations" / "480p").rglob("*.png"):
        with Image.open(png) as im:
            ids = np.asarray(im)
        Image.fromarray(np.where(ids == 1, 255, 0).astype(np.uint8)).save(png)
    (out / "ImageSets" / "2016").mkdir(parents=True)
    shutil.copy(out / "ImageSets" / "2017" / "val.txt", out / "ImageSets" / "2016" / "val.txt")


def synthetic_vos(dataset: str, seed: int = 0, root: Path | None = None) -> str:
    """A small synthetic set in the layout of `dataset` (D16, D17, Y18/Y19)."""
    from shards.synth import write_ytvos

    if dataset == "D17":
        return synthetic_davis(seed, root)
    if dataset == "D16":
        return _once(root or cache_dir() / f"eval-davis2016-s{seed}",
                     lambda p: write_davis2016(p, seed, num_videos=6, num_frames=10, height=96, num_val=3))
    return _once(root or cache_dir() / f"eval-ytvos-s{seed}",
                 lambda p: write_ytvos(p, num_videos=5, num_frames=6, height=96, num_val=2, seed=seed))


# ------------------------------------------------------------------------------------------------ runs

def init_ray() -> None:
    """Join the cluster (`ray job submit`, or one started with `ray start`), else start a local Ray."""
    from raytrain.train.launch import init_ray as start

    start()


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


def run(cfg: EvalConfig, spec: ModelSpec, work: Callable, items: Sequence, writer: MaskWriter
        ) -> tuple[list[VideoResult], float]:
    """Evaluate `items` serially or on Ray; returns the results (input order) and the wall time."""
    if not items:
        raise ValueError(f"--data {cfg.data or '(synthetic)'}: no videos to evaluate in split {cfg.split!r}")
    start = time.perf_counter()
    if cfg.serial:
        use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
        if use_gpu and not torch.cuda.is_available():
            raise ValueError("--use_gpu: no GPU in this process")
        results = run_serial(build_model, spec, work, items, device="cuda" if use_gpu else "cpu", on_result=writer)
    else:
        results = run_videos(build_model, spec, work, items, num_actors=cfg.num_actors, use_gpu=cfg.use_gpu,
                             cpus_per_actor=cfg.cpus_per_actor, on_result=writer)
    return results, time.perf_counter() - start


def summary_table(report: davis.Report, title: str) -> str:
    """Markdown: the global row, then one row per object."""
    cols = davis.GLOBAL_COLUMNS
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
             "| " + " | ".join(f"{v:.3f}" for v in report.as_dict().values()) + " |", "",
             "| Sequence | J-Mean | F-Mean |", "|---|---|---|"]
    lines += [f"| {name} | {j:.3f} | {f:.3f} |" for name, j, f in report.objects]
    return "\n".join(lines)


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
        report = davis.combine(scored)
        csvs = davis.write_csv(report, out, set_name)
        summary.update(global_results=report.as_dict(), objects=[list(o) for o in report.objects],
                       csv=[p.name for p in csvs])
        print("\n" + summary_table(report, f"{protocol} — {set_name}"))
    summary["overlays"] = [p.relative_to(out).as_posix() for p in _overlays(cfg, out, items, results)]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if spec.random:
        print(RANDOM_WARNING)
    print(f"\n{len(results)} videos in {seconds:.1f} s ({summary['videos_per_s']:.3f} videos/s); "
          f"outputs in {cfg.out if '://' in cfg.out else out}", flush=True)
    return summary


def output_folder(out: str, default: str) -> Path:
    """The local folder results are written to: `out` (or `default`), or a staging folder when `out` is a URI."""
    folder = Path(tempfile.mkdtemp(prefix="raytrain-eval-out-")) if "://" in out else Path(out or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def upload(folder: Path, out: str) -> None:
    """Copy the results to `out` and remove the staging folder, when `out` is a URI (s3://, gs://, ...)."""
    if "://" in out:
        fs, path = resolve(out)
        fs.create_dir(path, recursive=True)
        copy_files(str(folder), path, source_filesystem=LocalFileSystem(), destination_filesystem=fs)
        shutil.rmtree(folder)
        print(f"outputs uploaded to {out}", flush=True)


def _prepare(cls: type, argv: Sequence[str] | None, small: dict[str, Any]) -> Any:
    cfg = parse(cls, argv)
    if not cfg.data:
        given = given_fields(cls, argv)
        overrides = {k: v for k, v in small.items() if k not in given}
        cfg = dataclasses.replace(cfg, **overrides)
        print(f"no --data given: evaluating on a small synthetic data set ({overrides})", flush=True)
    if not cfg.serial:
        init_ray()
    return cfg


def main_smtc(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python jobs/eval_smtc.py [flags]`: SMTC label propagation or object discovery on DAVIS-2017."""
    cfg = _prepare(EvalSMTCConfig, argv, SMALL_SMTC)
    if cfg.task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
    if cfg.mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    spec = smtc_spec(cfg)
    if spec.random:
        print(RANDOM_WARNING, flush=True)
    data = cfg.data or synthetic_davis(cfg.seed)
    discovery = cfg.task == "discovery"
    videos = list_videos(data, "davis", cfg.split, unsupervised=discovery)
    videos = videos[:cfg.videos] if cfg.videos > 0 else videos
    if discovery and videos and not any(v.annotations for v in videos):
        print(f"{data} has no Annotations_unsupervised/480p (a separate DAVIS download): proposals are written "
              "but not scored", flush=True)
    out = output_folder(cfg.out, f"eval/smtc-{cfg.task}")
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
    results, seconds = run(cfg, spec, work, videos, writer)
    summary = finish(cfg, out, spec, videos, results, seconds, protocol, set_name, {"task": cfg.task, **extra})
    upload(out, cfg.out)
    return summary


def main_stmae(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python jobs/eval_stmae.py [flags]`: STMAE on DAVIS-2016/2017 or YouTube-VOS 2018/2019."""
    cfg = _prepare(EvalSTMAEConfig, argv, SMALL_STMAE)
    if cfg.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {cfg.dataset!r}")
    spec = stmae_spec(cfg)
    if spec.random:
        print(RANDOM_WARNING, flush=True)
    data = cfg.data or synthetic_vos(cfg.dataset, cfg.seed)
    items = list_vos_videos(cfg.dataset, data, cfg.split, cfg.imset)
    items = items[:cfg.videos] if cfg.videos > 0 else items
    out = output_folder(cfg.out, f"eval/stmae-{cfg.dataset}")
    settings = VOSSettings(mem_every=cfg.mem_every, top_k=cfg.top_k, size=cfg.size, amp=cfg.amp)
    youtube = is_youtube(cfg.dataset)
    protocol = (f"YouTube-VOS {cfg.dataset} valid submission (scored by the evaluation server)" if youtube else
                f"DAVIS-{2016 if cfg.dataset == 'D16' else 2017} semi-supervised")
    print(f"STMAE, {protocol}: {len(items)} videos of {data}, model {spec.source}", flush=True)
    results, seconds = run(cfg, spec, partial(segment_video, settings=settings), items,
                           MaskWriter(out, mask_folder(cfg.dataset)))
    extra: dict[str, Any] = {"dataset": cfg.dataset, "settings": dataclasses.asdict(settings)}
    if youtube:
        extra["submission"] = write_submission(results, out / f"{cfg.dataset}-valid-submission.zip").name
        print(f"submission zip: {extra['submission']}")
    summary = finish(cfg, out, spec, items, results, seconds, protocol, cfg.split, extra)
    upload(out, cfg.out)
    return summary
