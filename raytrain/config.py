"""Every job's config, one dataclass per job, and the machinery that turns a dataclass into command-line flags.

One flag per field, named as the field; field names are the upstream flag names where one exists, and
defaults are the upstream defaults (reference/smtc.md, reference/stmae.md). The `SMALL_*` dicts hold the
overrides a job applies on the built-in synthetic default run (no `--data`), for fields the user did not set.

- training: `RunConfig` (shared) -> `SMTCConfig`, `STMAEConfig`
- evaluation: `EvalConfig` (shared) -> `EvalSMTCConfig`, `EvalSTMAEConfig`; `ScoreConfig` (scoring a results
  folder)
- sweeps: `SweepOptions` + a training config -> `SMTCSweepConfig`, `STMAESweepConfig`
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, TypeVar

from shards.errors import DEBUG_HELP, UsageError
from shards.paths import location

T = TypeVar("T")


def flag(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A config field with its `--help` text (a list default is copied for each instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ------------------------------------------------------------------------------------------- training

@dataclass
class RunConfig:
    """Fields shared by every training job (cluster, storage, logging)."""

    data: list[str] = flag([], "shard folders or URIs (with index.parquet), each optionally FOLDER:WEIGHT (its "
                               "videos are visited WEIGHT times per round; default 1), or a .json file listing "
                               "{\"path\", \"weight\"} objects; empty: generate and pack a synthetic set")
    name: str = flag("", "run name; resubmitting the same name resumes the run (empty: derived from the job)")
    storage_path: str = flag("", "where checkpoints and logs go (local path, NFS or s3://); empty: ./runs")
    num_workers: int = flag(1, "Ray Train workers (one per GPU)")
    min_workers: int = flag(0, "elastic training: after losing workers, go on with as few as this many (Ray "
                               "Train restarts from the last checkpoint on the workers it can get, at the same "
                               "global batch); 0: always --num_workers")
    use_gpu: bool = flag(False, "one GPU per worker, bf16 autocast")
    cpus_per_worker: float = flag(1.0, "CPUs reserved by each training worker")
    steps: int = flag(10000, "optimizer steps to train")
    checkpoint_every: int = flag(500, "steps between checkpoints")
    log_every: int = flag(10, "steps between metric reports")
    max_failures: int = flag(3, "worker-group restarts from the last checkpoint before the run fails")
    seed: int = flag(0, "seed for sampling, augmentation and initialisation")
    clips_per_video: int = flag(1, "clips cut from a video at each visit (upstream: 1)")
    shard_window: int = flag(16, "shard reads whose clips the plan shuffles together: a batch mixes the videos of "
                                 "up to this many shards")
    global_batch_size: int = flag(0, "clips per step over all workers, each worker taking global_batch_size / "
                                     "num_workers (0: batch_size x num_workers); the clip stream depends on it, "
                                     "not on the number of workers")
    decode_workers: int = flag(0, "parallel decode tasks per training worker (0: Ray Data decides)")
    decode: str = flag("cpu", "where training frames are decoded: cpu (in the data tasks) | gpu (the data tasks ship "
                              "the JPEG bytes; the training worker decodes them in batches on its device; SMTC only)")
    grad_clip: float = flag(0.0, "max gradient norm (0: no clipping)")
    val_data: str = flag("", "DAVIS-layout folder to validate on at every checkpoint (J&F on a few videos)")
    val_videos: int = flag(0, "validation videos: the first ones of the val split (0: all of them)")
    val_async: bool = flag(True, "validate each checkpoint as a Ray task while training goes on (Ray Train's "
                                 "ValidationConfig); --no-val_async: on rank 0, in the training loop, while "
                                 "every worker waits")
    val_cpus: float = flag(1.0, "CPUs reserved by the validation task (--val_async)")
    val_use_gpu: bool = flag(False, "one GPU for the validation task (--val_async)")
    val_timeout_s: float = flag(0.0, "seconds a validation may take before it is cancelled and reported as timed "
                                     "out (0: no limit); training goes on either way")
    keep_metric: str = flag("val_jf", "reported metric that picks the checkpoints kept: the --num_to_keep best "
                                      "(loss*: lowest, else highest), plus the newest for resume; newest only "
                                      "when the run does not report it (val_* without --val_data)")
    num_to_keep: int = flag(2, "best checkpoints kept by --keep_metric (the newest is kept besides)")
    verbose: bool = flag(False, "show Ray Train's and Ray Data's own INFO lines from the workers")
    allow_config_change: bool = flag(False, "resume a run although flags that change what it trains differ from "
                                            "its checkpoint's (the exact resume is lost)")

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # a single folder, as configs saved before mixtures hold it
            self.data = [self.data] if self.data else []


@dataclass
class SMTCConfig(RunConfig):
    """SMTC self-supervised training (ICCV 2023) on unlabelled video clips."""

    num_slots: int = flag(16, "semantic slots")
    num_instance: int = flag(4, "instance slots per semantic slot")
    instance_mask: str = flag("logit", "instance-stage mask: logit (upstream: raw semantic logits > 0.3) | softmax "
                                       "(their softmax over slots > 0.3)")
    num_iterations: int = flag(3, "slot attention iterations")
    num_frames: int = flag(4, "frames per clip")
    gap: int = flag(4, "frame spacing inside a clip")
    lr: float = flag(2e-5, "peak learning rate (cosine to 0.1x, no warm-up)")
    weight_decay: float = flag(0.1, "AdamW weight decay for decayed groups")
    grad_iter: int = flag(3000, "steps with encoder lr x0; x0.01 afterwards")
    entro_cons: bool = flag(True, "slot diversity loss")
    bi_cons: bool = flag(True, "bidirectional Sinkhorn semantic consistency loss")
    strict_filter: bool = flag(False, "strict valid-instance filter (activation 0.5) instead of relaxed (0.3)")
    batch_size: int = flag(32, "clips per worker per step")
    resolution: int = flag(256, "training frame size (square)")
    ema_momentum: float = flag(0.999, "teacher EMA momentum (encoder excluded)")
    dino_path: str = flag("", "DINO ViT-S/16 weights (.pth); empty: random init (tests, synthetic runs)")
    drop_path: float = flag(0.1, "ViT stochastic depth in the student")


@dataclass
class STMAEConfig(RunConfig):
    """STMAE one-shot VOS training (FAIML 2024): only first-frame masks reach the loss."""

    num_frames: int = flag(8, "frames per clip (frame 0 first)")
    num_ref_frames: int = flag(3, "reference frames for the backward reconstruction")
    max_objects: int = flag(3, "objects per clip")
    batch_size: int = flag(8, "clips per worker per step")
    lr: float = flag(2e-5, "AdamW learning rate")
    weight_decay: float = flag(0.05, "AdamW weight decay")
    lr_decay_at: float = flag(85 / 370, "fraction of steps after which lr drops 10x (upstream: epoch 85 of 370)")
    similarity: str = flag("dot", "memory-query key similarity: dot (upstream) | l2 (STCN's; learns from random "
                                  "weights)")
    crop: int = flag(384, "training crop size (square)")
    max_skip: list[int] = flag([5, 10, 15, 10, 5], "max-skip curriculum values")
    max_skip_at: list[float] = flag([0.0, 35 / 370, 105 / 370, 175 / 370, 245 / 370],
                                    "fractions of steps where each max-skip value starts (upstream epochs "
                                    "0/35/105/175/245 of 370)")
    finetune_at: float = flag(350 / 370, "fraction of steps after which rotation/shear are turned off")
    resnet50_path: str = flag("", "ImageNet ResNet-50 weights for the key encoder (torchvision or timm keys)")
    resnet18_path: str = flag("", "ImageNet ResNet-18 weights for the mask encoder")
    val_size: int = flag(0, "shorter side the validation frames are resized to (0: as stored; upstream: 480)")
    bn_calibration: str = flag("first_batch", "frozen BatchNorm statistics of an encoder without weights: "
                                              "first_batch (set from the first batch) | none (mean 0, var 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.max_skip) != len(self.max_skip_at):
            raise UsageError("--max_skip and --max_skip_at need the same number of values")


TRAIN_CONFIGS: dict[str, type[RunConfig]] = {"smtc": SMTCConfig, "stmae": STMAEConfig}


def global_batch(cfg: Any) -> int:
    """Clips per step over all workers: --global_batch_size, else --batch_size x --num_workers."""
    return cfg.global_batch_size or cfg.batch_size * cfg.num_workers


def worker_batch(cfg: Any, world_size: int) -> int:
    """Clips per step of each of `world_size` workers (the global batch divides evenly, see `flag_problems`)."""
    return global_batch(cfg) // world_size

SMALL_SMTC = dict(steps=60, batch_size=2, num_slots=4, num_instance=2, resolution=128, grad_iter=20,
                  checkpoint_every=20, log_every=5, num_workers=2, lr=1e-4, val_videos=3)
SMALL_STMAE = dict(steps=40, batch_size=2, num_frames=4, num_ref_frames=2, crop=128,
                   checkpoint_every=20, log_every=5, num_workers=2, lr=1e-4, lr_decay_at=1.0, similarity="l2",
                   val_videos=3)
SMALL_TRAIN = {"smtc": SMALL_SMTC, "stmae": SMALL_STMAE}


# ----------------------------------------------------------------------------------------- evaluation

@dataclass
class EvalConfig:
    """Fields shared by the evaluation jobs."""

    data: str = flag("", "dataset folder (local, NFS or URI, readable from every node); empty: a small synthetic set")
    out: str = flag("", "output folder or URI (empty: ./eval/<job>)")
    checkpoint: str = flag("", "checkpoint (run folder with state.pt, or a weights file; path or URI); empty: random "
                               "weights")
    split: str = flag("val", "DAVIS ImageSets split")
    videos: int = flag(0, "evaluate only the first N videos (0: all)")
    seed: int = flag(0, "seed of random weights and of random draws during inference")
    num_actors: int = flag(0, "Ray actors (0: one per GPU, else one per --cpus_per_actor CPUs, at most one per video)")
    use_gpu: Optional[bool] = flag(None, "one GPU per actor (default: when the cluster has GPUs)")
    cpus_per_actor: float = flag(1.0, "CPUs reserved by each actor (also its torch threads)")
    serial: bool = flag(False, "evaluate in this process, without Ray")
    overlays: int = flag(3, "videos to draw overlay pictures of")
    overlay_format: str = flag("gif", "overlay pictures: gif (animated) or png (strip of frames)")


@dataclass
class EvalSMTCConfig(EvalConfig):
    """Evaluate SMTC on DAVIS-2017: label propagation (semi-supervised) or multi-object discovery (unsupervised)."""

    task: str = flag("propagation", "propagation | discovery")
    dino_path: str = flag("", "plain DINO ViT-S/16 weights for propagation (instead of --checkpoint)")
    preset: str = flag("A", "propagation protocol: A (SMTC/CRW stride 16), B (stride 8), dino (DINO's)")
    mode: str = flag("official", "discovery scoring: official (DAVIS protocol) | smtc-paper (upstream's, not "
                                 "comparable)")
    height: int = flag(480, "discovery input height")
    width: int = flag(800, "discovery input width")
    window: int = flag(4, "discovery: frames per window")
    iters: int = flag(5, "discovery: slot attention iterations")
    max_proposals: int = flag(20, "discovery (official): proposals per sequence")
    num_slots: int = flag(16, "semantic slots of a released .pth (run checkpoints carry their own)")
    num_instance: int = flag(4, "instance slots per semantic slot of a released .pth")
    instance_mask: str = flag("logit", "instance-stage mask of a released .pth: logit (upstream) | softmax (run "
                                       "checkpoints carry their own)")
    resolution: int = flag(256, "training resolution of a released .pth")


@dataclass
class EvalSTMAEConfig(EvalConfig):
    """Evaluate STMAE (semi-supervised VOS) on DAVIS-2016/2017 val or YouTube-VOS 2018/2019 valid."""

    dataset: str = flag("D17", "D16 | D17 | Y18 | Y19")
    imset: str = flag("", "D16 sequence list (default: <data>/ImageSets/2016/val.txt)")
    mem_every: int = flag(5, "frames between memory frames")
    top_k: int = flag(30, "top-k memory readout (<= 0: full softmax)")
    size: int = flag(480, "shorter side the frames are resized to (<= 0: original size)")
    amp: bool = flag(True, "bf16 autocast on GPUs")
    max_mem_frames: int = flag(0, "memory frames kept besides frame 0 and the frames with given masks: the newest "
                                  "K (0: unbounded, as upstream)")
    similarity: str = flag("dot", "key similarity of a released .pth: dot (upstream) | l2 (run checkpoints carry "
                                  "their own)")


@dataclass
class ScoreConfig:
    """Score a folder of result PNGs against DAVIS-2017 ground truth (the official toolkit's protocols)."""

    davis: str = flag("", "DAVIS root with ImageSets/ and Annotations[_unsupervised]/480p (path or URI)")
    results: str = flag("", "results folder: <sequence>/<frame>.png id maps (path or URI)")
    task: str = flag("semi", "semi | unsup (or semi-supervised | unsupervised)")
    set: str = flag("val", "ImageSets list: train | val | test-dev | test-challenge")
    sequences: str = flag("", "comma-separated sequences to score instead of the whole set")
    num_workers: int = flag(0, "Ray workers, one CPU and one sequence at a time each (1: in this process; 0: one "
                               "per CPU of the Ray cluster when running on one, as under ray job submit, else 1)")
    out: str = flag("", "where the CSV files go (default: the results folder)")
    max_proposals: int = flag(20, "unsupervised: most proposals per sequence")


SMALL_EVAL_SMTC = dict(height=96, width=160)
SMALL_EVAL_STMAE = dict(size=0)


# --------------------------------------------------------------------------------------------- sweeps

# Searched flags take the values to search; `lr` is log-uniform between two values, the others a choice.
SEARCHED: dict[str, tuple[str, ...]] = {
    "smtc": ("num_slots", "num_instance", "gap", "lr"),
    "stmae": ("lr", "num_ref_frames", "num_frames"),
}
LOG_UNIFORM = {"lr"}


@dataclass
class SweepOptions:
    """Tune settings shared by the sweep jobs."""

    num_samples: int = flag(8, "trials to run (random search over the searched flags, seeded by --seed)")
    metric: str = flag("val_jf", "reported metric that ASHA and the final ranking use (val_* needs --val_data)")
    mode: str = flag("max", "max or min: whether a larger --metric is better")
    grace_steps: int = flag(0, "steps every trial trains before ASHA may stop it (0: a quarter of --steps)")
    reduction_factor: float = flag(2.0, "ASHA keeps 1/reduction_factor of the trials at each milestone")
    max_concurrent_trials: int = flag(0, "trials running at once (0: cluster GPUs // --num_workers, or CPUs "
                                         "// (2 x --num_workers x --cpus_per_worker) without --use_gpu)")
    trial_failures: int = flag(1, "times Tune retries a failed trial (from its last checkpoint)")
    driver_resource: str = flag("", "custom resource a trial's driver needs 0.01 of (e.g. TRAIN_DRIVER: keep "
                                    "drivers on the head); empty: none")


@dataclass
class SMTCSweepConfig(SweepOptions, SMTCConfig):
    """Ray Tune sweep of SMTC training runs (ASHA on the validation metric)."""

    num_slots: list[int] = flag([8, 16, 32], "semantic slots: values to search")
    num_instance: list[int] = flag([2, 4], "instance slots per semantic slot: values to search")
    gap: list[int] = flag([2, 4], "frame spacing inside a clip: values to search")
    lr: list[float] = flag([1e-5, 1e-4], "peak learning rate: log-uniform between two values (one: fixed)")


@dataclass
class STMAESweepConfig(SweepOptions, STMAEConfig):
    """Ray Tune sweep of STMAE training runs (ASHA on the validation metric)."""

    lr: list[float] = flag([1e-5, 1e-4], "AdamW learning rate: log-uniform between two values (one: fixed)")
    num_ref_frames: list[int] = flag([2, 3], "reference frames: values to search")
    num_frames: list[int] = flag([6, 8], "frames per clip: values to search")


SWEEP_CONFIGS: dict[str, type] = {"smtc": SMTCSweepConfig, "stmae": STMAESweepConfig}

# The tiny sweep that runs when no --data is given (synthetic data, a few CPU minutes per trial).
_SMALL_SWEEP = dict(steps=12, checkpoint_every=4, batch_size=2, num_workers=1, num_samples=4, grace_steps=4,
                    clips_per_video=2, val_videos=2)
SMALL_SWEEP: dict[str, dict[str, Any]] = {
    "smtc": dict(_SMALL_SWEEP, resolution=64, num_slots=[4, 8], num_instance=[2], gap=[2, 4], lr=[1e-4, 3e-3],
                 grad_iter=0),
    "stmae": dict(_SMALL_SWEEP, crop=64, num_frames=[4, 6], num_ref_frames=[1, 2], lr=[1e-5, 1e-3],
                  max_skip=[3], max_skip_at=[0.0]),
}


# --------------------------------------------------------------------------------------- flags <-> dataclass

def _field_type(cls: type, f: dataclasses.Field) -> Any:
    tp = typing.get_type_hints(cls)[f.name]
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":  # Optional[X] -> X
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--name` flag per dataclass field (bools become `--name / --no-name`)."""
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        name = f"--{f.name}"
        if tp is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(tp) in (list, tuple):
            (item,) = set(typing.get_args(tp)) - {Ellipsis}
            parser.add_argument(name, type=item, nargs="+", default=default, help=help_text)
        else:
            parser.add_argument(name, type=tp, default=default, help=help_text)


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse `argv` into an instance of the config dataclass `cls`."""
    parser = argparse.ArgumentParser(description=description or cls.__doc__, allow_abbrev=False, epilog=DEBUG_HELP,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, cls)
    return cls(**vars(parser.parse_args(argv)))


def given_fields(cls: type, argv: Sequence[str] | None) -> set[str]:
    """Names of the fields whose flags appear in `argv` (to tell user choices from defaults)."""
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS, allow_abbrev=False, add_help=False)
    add_arguments(parser, cls)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    ns, _ = parser.parse_known_args(argv)
    return set(vars(ns))


def with_small(cls: type[T], argv: Sequence[str] | None, small: dict[str, Any]) -> tuple[T, dict[str, Any]]:
    """Parse `argv`; without `--data`, apply the `small` overrides the user did not set. Returns (config,
    applied overrides)."""
    cfg = parse(cls, argv)
    if getattr(cfg, "data"):
        return cfg, {}
    given = given_fields(cls, argv)
    applied = {k: v for k, v in small.items() if k not in given}
    return dataclasses.replace(cfg, **applied), applied  # type: ignore[type-var]


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build `cls` from a dict, ignoring keys that are not fields (e.g. Tune bookkeeping)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------------------------- range checks

Rule = tuple[str, Callable[[Any], bool], str]  # (field, valid?, what a valid value is)


def _at_least(n: float) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _fraction(v: float) -> bool:
    return 0.0 <= v <= 1.0


def _patches(v: int) -> bool:
    return v >= 32 and v % 16 == 0


_POSITIVE = (lambda v: v > 0, "positive")
_RULES: dict[type, list[Rule]] = {
    RunConfig: [
        ("num_workers", _at_least(1), "at least 1 (0 would train in Ray's local mode, whose checkpoints are "
                                      "never persisted)"),
        ("cpus_per_worker", *_POSITIVE), ("steps", _at_least(1), "at least 1"),
        ("checkpoint_every", _at_least(1), "at least 1"), ("log_every", _at_least(1), "at least 1"),
        ("max_failures", _at_least(0), "at least 0"), ("seed", _at_least(0), "at least 0"),
        ("clips_per_video", _at_least(1), "at least 1"), ("decode_workers", _at_least(0), "at least 0"),
        ("grad_clip", _at_least(0), "at least 0"), ("val_videos", _at_least(0), "at least 0"),
        ("val_cpus", *_POSITIVE), ("val_timeout_s", _at_least(0), "at least 0"),
        ("num_to_keep", _at_least(1), "at least 1"),
        ("decode", lambda v: v in ("cpu", "gpu"), "cpu or gpu"), ("min_workers", _at_least(0), "at least 0"),
        ("shard_window", _at_least(1), "at least 1"), ("global_batch_size", _at_least(0), "at least 0"),
    ],
    SMTCConfig: [
        ("num_slots", _at_least(1), "at least 1"), ("num_instance", _at_least(1), "at least 1"),
        ("num_iterations", _at_least(1), "at least 1"), ("num_frames", _at_least(2), "at least 2"),
        ("gap", _at_least(1), "at least 1"), ("lr", *_POSITIVE), ("weight_decay", _at_least(0), "at least 0"),
        ("grad_iter", _at_least(0), "at least 0"), ("batch_size", _at_least(1), "at least 1"),
        ("resolution", _patches, "a multiple of 16, at least 32"), ("ema_momentum", _fraction, "in [0, 1]"),
        ("drop_path", lambda v: 0 <= v < 1, "in [0, 1)"),
    ],
    STMAEConfig: [
        ("num_frames", _at_least(2), "at least 2"), ("num_ref_frames", _at_least(1), "at least 1"),
        ("max_objects", _at_least(1), "at least 1"), ("batch_size", _at_least(1), "at least 1"),
        ("lr", *_POSITIVE), ("weight_decay", _at_least(0), "at least 0"), ("lr_decay_at", _fraction, "in [0, 1]"),
        ("crop", _patches, "a multiple of 16, at least 32"),
        ("max_skip", lambda v: all(s >= 1 for s in v), "at least 1 each"),
        ("max_skip_at", lambda v: all(map(_fraction, v)), "in [0, 1] each"), ("finetune_at", _fraction, "in [0, 1]"),
        ("bn_calibration", lambda v: v in ("first_batch", "none"), "first_batch or none"),
        ("val_size", _at_least(0), "at least 0"),
        ("decode", lambda v: v == "cpu", "cpu for STMAE (its clips are cropped and augmented per clip on the CPU; "
                                         "--decode gpu is for SMTC)"),
    ],
    EvalConfig: [
        ("videos", _at_least(0), "at least 0"), ("seed", _at_least(0), "at least 0"),
        ("num_actors", _at_least(0), "at least 0"), ("cpus_per_actor", *_POSITIVE),
        ("overlays", _at_least(0), "at least 0"),
    ],
    EvalSMTCConfig: [
        ("height", _at_least(16), "at least 16"), ("width", _at_least(16), "at least 16"),
        ("window", _at_least(1), "at least 1"), ("iters", _at_least(1), "at least 1"),
        ("max_proposals", _at_least(1), "at least 1"), ("num_slots", _at_least(1), "at least 1"),
        ("num_instance", _at_least(1), "at least 1"), ("resolution", _patches, "a multiple of 16, at least 32"),
    ],
    EvalSTMAEConfig: [
        ("mem_every", _at_least(1), "at least 1"), ("max_mem_frames", _at_least(0), "at least 0"),
    ],
    ScoreConfig: [
        ("num_workers", _at_least(0), "0 (automatic) or more"), ("max_proposals", _at_least(1), "at least 1"),
    ],
    SweepOptions: [
        ("num_samples", _at_least(1), "at least 1"), ("mode", lambda v: v in ("max", "min"), "max or min"),
        ("grace_steps", _at_least(0), "at least 0"), ("reduction_factor", lambda v: v > 1, "more than 1"),
        ("max_concurrent_trials", _at_least(0), "at least 0"), ("trial_failures", _at_least(0), "at least 0"),
        ("lr", lambda v: len(v) in (1, 2), "one value (fixed) or two (the log-uniform range)"),
    ],
}


def flag_problems(cfg: Any) -> list[str]:
    """Every flag of `cfg` whose value is out of range, as `--flag must be ..., got ...`. A sweep's searched
    flags are checked value by value, against the training job's rule."""
    searched: tuple[str, ...] = ()
    if isinstance(cfg, SweepOptions):
        searched = SEARCHED["smtc" if isinstance(cfg, SMTCConfig) else "stmae"]
    problems: list[str] = []
    names = {f.name for f in dataclasses.fields(cfg)}
    for cls in reversed(type(cfg).__mro__):
        for name, ok, text in _RULES.get(cls, []):
            if name not in names:
                continue
            value = getattr(cfg, name)
            sweep_rule = cls is SweepOptions
            for v in (value if name in searched and not sweep_rule else [value]):
                if not ok(v):
                    problems.append(f"--{name} must be {text}, got {v!r}")
    if not problems:
        problems += _batch_problems(cfg)
    return list(dict.fromkeys(problems))


def _batch_problems(cfg: Any) -> list[str]:
    """Worker counts that the global batch does not divide evenly, and --min_workers above --num_workers."""
    if not isinstance(cfg, RunConfig) or cfg.num_workers < 1 or cfg.batch_size < 1:
        return []
    if cfg.min_workers > cfg.num_workers:
        return [f"--min_workers must be at most --num_workers ({cfg.num_workers}), got {cfg.min_workers}"]
    counts = range(cfg.min_workers or cfg.num_workers, cfg.num_workers + 1)
    bad = [w for w in counts if w and global_batch(cfg) % w]
    if not bad:
        return []
    what = (f"--global_batch_size {cfg.global_batch_size}" if cfg.global_batch_size else
            f"--batch_size {cfg.batch_size} x --num_workers {cfg.num_workers} = {global_batch(cfg)} clips per step")
    if len(counts) == 1:
        return [f"{what} must be divisible by --num_workers {cfg.num_workers}"]
    return [f"{what} must be divisible by every worker count from --min_workers {cfg.min_workers} to "
            f"--num_workers {cfg.num_workers} (not by {', '.join(map(str, bad))}); see --global_batch_size"]


def check_flags(cfg: Any) -> None:
    """Refuse `cfg` when a flag is out of range (UsageError naming every such flag)."""
    problems = flag_problems(cfg)
    if problems:
        raise UsageError("; ".join(problems))


# Flags a resumed run may change: where it runs and logs, and the initial weights (a resume loads the
# checkpoint's). `steps` may grow or shrink: the lr schedule and the STMAE curriculum follow the new value.
# The worker count and per-worker batch may change too, as long as the global batch does (`config_changes`).
RESUME_FREE = frozenset({"name", "storage_path", "use_gpu", "cpus_per_worker", "checkpoint_every", "log_every",
                         "max_failures", "decode_workers", "decode", "val_data", "val_videos", "verbose",
                         "val_async", "val_cpus", "val_use_gpu", "val_timeout_s", "keep_metric", "num_to_keep",
                         "allow_config_change", "steps", "dino_path", "resnet50_path", "resnet18_path",
                         "num_workers", "min_workers", "batch_size", "global_batch_size"})
BATCH_FLAGS = ("batch_size", "num_workers", "global_batch_size")


def _data_sources(items: Sequence[str]) -> list[tuple[str, str]]:
    """`--data` items as (location, weight): one folder spelled two ways (`d`, `./d/`, `d//`) is one source, and
    no weight is weight 1. A mixture file stays a file (its list is compared through the clip stream)."""
    out = []
    for item in items:
        head, sep, tail = item.rpartition(":")
        path, weight = (head, tail) if sep and head and "/" not in tail else (item, "1")
        out.append((location(path), weight.lstrip("0") or weight))
    return out


def _batch_words(cfg: Any) -> str:
    """The flags that set a config's global batch."""
    if cfg.global_batch_size:
        return f"--global_batch_size {cfg.global_batch_size}"
    return f"--batch_size {cfg.batch_size} x --num_workers {cfg.num_workers}"


def config_changes(saved: dict[str, Any], cfg: Any) -> list[str]:
    """`--flag saved -> now` for each flag of `cfg` outside RESUME_FREE that differs from a checkpoint's saved
    config (a flag the saved config lacks is compared with its default; `--data` by where each source is), and
    the flags that set the global batch if it differs (the clip stream depends on it, not on how it is split
    between workers), naming only flags that set it: a --batch_size is not named beside a --global_batch_size."""
    changes, defaults = [], {}
    for f in dataclasses.fields(cfg):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        defaults[f.name] = default
        if f.name in RESUME_FREE:
            continue
        old, new = saved.get(f.name, default), getattr(cfg, f.name)
        if isinstance(old, str) and isinstance(new, list):  # a single value, saved before the flag took several
            old = [old] if old else []
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = list(old), list(new)
        if f.name == "data" and isinstance(old, list) and _data_sources(old) == _data_sources(new):
            continue
        if old != new:
            changes.append(f"--{f.name} {old!r} -> {new!r}")
    if isinstance(cfg, RunConfig):
        before = dataclasses.replace(cfg, **{k: saved.get(k, defaults[k]) for k in BATCH_FLAGS})
        if global_batch(before) != global_batch(cfg):
            if bool(before.global_batch_size) != bool(cfg.global_batch_size):
                flags = [f"{_batch_words(before)} -> {_batch_words(cfg)}"]
            else:
                keys = ("global_batch_size",) if cfg.global_batch_size else ("batch_size", "num_workers")
                flags = [f"--{k} {getattr(before, k)!r} -> {getattr(cfg, k)!r}" for k in keys
                         if getattr(before, k) != getattr(cfg, k)]
            changes.append(f"{', '.join(flags)} (global batch {global_batch(before)} -> {global_batch(cfg)} clips; "
                           f"--global_batch_size {global_batch(before)} keeps it on any number of workers)")
    return changes
