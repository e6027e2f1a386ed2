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
from typing import Any, Callable, ClassVar, Optional, Sequence, TypeVar

from shards.errors import DEBUG_HELP, UsageError
from shards.layout import FOREGROUND_SETS
from shards.paths import location

T = TypeVar("T")


Check = tuple[Callable[[Any], bool], str]  # (is the value valid?, what a valid value is)


def flag(default: Any, help: str, check: Check | None = None,  # noqa: A002 - mirrors argparse
         choices: Sequence[str] | None = None) -> Any:
    """A config field with its `--help` text and what values it takes: `check` (a test and its words) or
    `choices` (shown by `--help`); `flag_problems` holds the values to them. A list default is copied for each
    instance."""
    meta = {"help": help, "check": check, "choices": tuple(choices) if choices else None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def at_least(n: float, text: str = "") -> Check:
    return (lambda v: v >= n), text or f"at least {n}"


POSITIVE: Check = ((lambda v: v > 0), "positive")
FRACTION: Check = ((lambda v: 0.0 <= v <= 1.0), "in [0, 1]")
PATCHES: Check = ((lambda v: v >= 32 and v % 16 == 0), "a multiple of 16, at least 32")
LOG_RANGE: Check = ((lambda v: len(v) in (1, 2)), "one value (fixed) or two (the log-uniform range)")
# The models' and the evaluation's options (raytrain.models.smtc, raytrain.models.stmae; tests/test_config.py
# holds them to the code that reads them).
INSTANCE_MASKS = ("logit", "softmax")
SIMILARITIES = ("dot", "l2")
BENCHMARK_SETS = ("davis2017", "jhmdb", "vip", *FOREGROUND_SETS)


# ------------------------------------------------------------------------------------------- training

@dataclass
class RunConfig:
    """Fields shared by every training job (cluster, storage, logging)."""

    data: list[str] = flag([], "shard folders or URIs (with index.parquet), each optionally FOLDER:WEIGHT (its "
                               "videos are visited WEIGHT times per round; default 1), or a .json file listing "
                               "{\"path\", \"weight\"} objects; empty: generate and pack a synthetic set")
    name: str = flag("", "run name; resubmitting the same name resumes the run (empty: derived from the job)")
    storage_path: str = flag("", "where checkpoints and logs go (local path, NFS or s3://); empty: ./runs")
    num_workers: int = flag(1, "Ray Train workers (one per GPU)",
                            check=at_least(1, "at least 1 (0 would train in Ray's local mode, whose checkpoints "
                                                 "are never persisted)"))
    min_workers: int = flag(0, "elastic training: after losing workers, go on with as few as this many (Ray "
                               "Train restarts from the last checkpoint on the workers it can get, at the same "
                               "global batch); 0: always --num_workers", check=at_least(0))
    use_gpu: bool = flag(False, "one GPU per worker, bf16 autocast")
    cpus_per_worker: float = flag(1.0, "CPUs reserved by each training worker", check=POSITIVE)
    steps: int = flag(10000, "optimizer steps to train", check=at_least(1))
    checkpoint_every: int = flag(500, "steps between checkpoints", check=at_least(1))
    log_every: int = flag(10, "steps between metric reports", check=at_least(1))
    max_failures: int = flag(3, "worker-group restarts from the last checkpoint before the run fails",
                             check=at_least(0))
    seed: int = flag(0, "seed for sampling, augmentation and initialisation", check=at_least(0))
    clips_per_video: int = flag(1, "clips cut from a video at each visit (upstream: 1)", check=at_least(1))
    shard_window: int = flag(16, "shard reads whose clips the plan shuffles together: a batch mixes the videos of "
                                 "up to this many shards", check=at_least(1))
    global_batch_size: int = flag(0, "clips per step over all workers, each worker taking global_batch_size / "
                                     "num_workers (0: batch_size x num_workers); the clip stream depends on it, "
                                     "not on the number of workers", check=at_least(0))
    decode_workers: int = flag(0, "parallel decode tasks per training worker (0: Ray Data decides)", check=at_least(0))
    decode: str = flag("cpu", "where training frames are decoded: cpu (in the data tasks) | gpu (the data tasks ship "
                              "the JPEG bytes; the training worker decodes them in batches on its device; SMTC only)",
                       choices=("cpu", "gpu"))
    grad_clip: float = flag(0.0, "max gradient norm (0: no clipping)", check=at_least(0))
    val_data: str = flag("", "DAVIS-layout folder to validate on at every checkpoint (J&F on a few videos)")
    val_videos: int = flag(0, "validation videos: the first ones of the val split (0: all of them)",
                           check=at_least(0))
    val_async: bool = flag(True, "validate each checkpoint as a Ray task while training goes on (Ray Train's "
                                 "ValidationConfig); --no-val_async: on rank 0, in the training loop, while "
                                 "every worker waits")
    val_cpus: float = flag(1.0, "CPUs reserved by the validation task (--val_async)", check=POSITIVE)
    val_use_gpu: bool = flag(False, "one GPU for the validation task (--val_async)")
    val_tasks: int = flag(1, "Ray tasks each validation is split over, each scoring a share of the videos with "
                             "--val_cpus CPUs (and a GPU with --val_use_gpu) (--val_async)", check=at_least(1))
    val_timeout_s: float = flag(0.0, "seconds a validation may take before it is cancelled and reported as timed "
                                     "out (0: no limit); training goes on either way", check=at_least(0))
    keep_metric: str = flag("val_jf", "reported metric that picks the checkpoints kept: the --num_to_keep best "
                                      "(loss*: lowest, else highest), plus the newest for resume; newest only "
                                      "when the run does not report it (val_* without --val_data)")
    num_to_keep: int = flag(2, "best checkpoints kept by --keep_metric (the newest is kept besides)",
                            check=at_least(1))
    verbose: bool = flag(False, "show Ray Train's and Ray Data's own INFO lines from the workers")
    allow_config_change: bool = flag(False, "resume a run although flags that change what it trains differ from "
                                            "its checkpoint's (the exact resume is lost)")
    lr_scaling: str = flag("none", "none: --lr as given | linear: --lr x global batch / the upstream recipe's global "
                                   "batch (SMTC 128, STMAE 32), as STMAE's README advises for smaller batches",
                           choices=("none", "linear"))

    REFERENCE_BATCH: ClassVar[int] = 0  # the upstream recipe's global batch, that --lr is meant for

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # a single folder, as configs saved before mixtures hold it
            self.data = [self.data] if self.data else []


@dataclass
class SMTCConfig(RunConfig):
    """SMTC self-supervised training (ICCV 2023) on unlabelled video clips."""

    REFERENCE_BATCH: ClassVar[int] = 128  # upstream: 32 clips per GPU on 4 GPUs

    num_slots: int = flag(16, "semantic slots", check=at_least(1))
    num_instance: int = flag(4, "instance slots per semantic slot", check=at_least(1))
    instance_mask: str = flag("logit", "instance-stage mask: logit (upstream: raw semantic logits > 0.3) | softmax "
                                       "(their softmax over slots > 0.3)", choices=INSTANCE_MASKS)
    num_iterations: int = flag(3, "slot attention iterations", check=at_least(1))
    num_frames: int = flag(4, "frames per clip", check=at_least(2))
    gap: int = flag(4, "frame spacing inside a clip", check=at_least(1))
    lr: float = flag(2e-5, "peak learning rate (cosine to 0.1x, no warm-up)", check=POSITIVE)
    weight_decay: float = flag(0.1, "AdamW weight decay for decayed groups", check=at_least(0))
    grad_iter: int = flag(3000, "steps with encoder lr x0; x0.01 afterwards", check=at_least(0))
    entro_cons: bool = flag(True, "slot diversity loss")
    bi_cons: bool = flag(True, "bidirectional Sinkhorn semantic consistency loss")
    strict_filter: bool = flag(False, "strict valid-instance filter (activation 0.5) instead of relaxed (0.3)")
    batch_size: int = flag(32, "clips per worker per step", check=at_least(1))
    resolution: int = flag(256, "training frame size (square)", check=PATCHES)
    ema_momentum: float = flag(0.999, "teacher EMA momentum (encoder excluded)", check=FRACTION)
    dino_path: str = flag("", "DINO ViT-S/16 weights (.pth); empty: random init (tests, synthetic runs)")
    drop_path: float = flag(0.1, "ViT stochastic depth in the student", check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    jitter_order: str = flag("batch", "order of the colour-jitter operations: batch (upstream's kornia: one order "
                                      "per view of each worker's batch) | clip (one per clip: a clip's views do "
                                      "not depend on its batch mates)", choices=("batch", "clip"))


@dataclass
class STMAEConfig(RunConfig):
    """STMAE one-shot VOS training (FAIML 2024): only first-frame masks reach the loss."""

    REFERENCE_BATCH: ClassVar[int] = 32  # upstream: 8 clips per GPU on 4 GPUs

    num_frames: int = flag(8, "frames per clip (frame 0 first)", check=at_least(2))
    num_ref_frames: int = flag(3, "reference frames for the backward reconstruction", check=at_least(1))
    max_objects: int = flag(3, "objects per clip", check=at_least(1))
    batch_size: int = flag(8, "clips per worker per step", check=at_least(1))
    lr: float = flag(2e-5, "AdamW learning rate", check=POSITIVE)
    weight_decay: float = flag(0.05, "AdamW weight decay", check=at_least(0))
    lr_decay_at: float = flag(85 / 370, "fraction of steps after which lr drops 10x (upstream: epoch 85 of 370)",
                              check=FRACTION)
    similarity: str = flag("dot", "memory-query key similarity: dot (upstream) | l2 (STCN's; learns from random "
                                  "weights)", choices=SIMILARITIES)
    crop: int = flag(384, "training crop size (square)", check=PATCHES)
    max_skip: list[int] = flag([5, 10, 15, 10, 5], "max-skip curriculum values",
                               check=(lambda v: all(s >= 1 for s in v), "at least 1 each"))
    max_skip_at: list[float] = flag([0.0, 35 / 370, 105 / 370, 175 / 370, 245 / 370],
                                    "fractions of steps where each max-skip value starts (upstream epochs "
                                    "0/35/105/175/245 of 370)",
                                    check=(lambda v: all(0 <= x <= 1 for x in v), "in [0, 1] each"))
    finetune_at: float = flag(350 / 370, "fraction of steps after which rotation/shear are turned off", check=FRACTION)
    resnet50_path: str = flag("", "ImageNet ResNet-50 weights for the key encoder (torchvision or timm keys)")
    resnet18_path: str = flag("", "ImageNet ResNet-18 weights for the mask encoder")
    val_size: int = flag(0, "shorter side the validation frames are resized to (0: as stored; upstream: 480)",
                         check=at_least(0))
    decode: str = flag("cpu", "where training frames are decoded: cpu only (STMAE's clips are cropped and augmented "
                              "per clip in the data tasks; --decode gpu is for SMTC)",
                       check=((lambda v: v == "cpu"), "cpu for STMAE (its clips are cropped and augmented per clip on "
                                                      "the CPU; --decode gpu is for SMTC)"))
    bn_calibration: str = flag("first_batch", "frozen BatchNorm statistics of an encoder without weights: "
                                              "first_batch (set from the first batch) | none (mean 0, var 1)",
                               choices=("first_batch", "none"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.max_skip) != len(self.max_skip_at):
            raise UsageError("--max_skip and --max_skip_at need the same number of values")


def global_batch(cfg: Any) -> int:
    """Clips per step over all workers: --global_batch_size, else --batch_size x --num_workers."""
    return cfg.global_batch_size or cfg.batch_size * cfg.num_workers


def scaled_lr(cfg: Any) -> float:
    """The peak learning rate a run trains with: --lr, times global batch / REFERENCE_BATCH with --lr_scaling
    linear."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch(cfg) / cfg.REFERENCE_BATCH
    return cfg.lr


def worker_batch(cfg: Any, world_size: int) -> int:
    """Clips per step of each of `world_size` workers (the global batch divides evenly, see `flag_problems`)."""
    return global_batch(cfg) // world_size



# ----------------------------------------------------------------------------------------- evaluation

@dataclass
class EvalConfig:
    """Fields shared by the evaluation jobs."""

    data: str = flag("", "dataset folder (local, NFS or URI, readable from every node); empty: a small synthetic set")
    out: str = flag("", "output folder or URI (empty: ./eval/<job>)")
    checkpoint: str = flag("", "checkpoint (run folder with state.pt, or a weights file; path or URI); empty: random "
                               "weights")
    split: str = flag("val", "DAVIS ImageSets split")
    videos: int = flag(0, "evaluate only the first N videos (0: all)", check=at_least(0))
    seed: int = flag(0, "seed of random weights and of random draws during inference", check=at_least(0))
    num_actors: int = flag(0, "Ray actors (0: one per GPU, else one per --cpus_per_actor CPUs, at most one per video)",
                           check=at_least(0))
    use_gpu: Optional[bool] = flag(None, "one GPU per actor (default: when the cluster has GPUs)")
    cpus_per_actor: float = flag(1.0, "CPUs reserved by each actor (also its torch threads)", check=POSITIVE)
    serial: bool = flag(False, "evaluate in this process, without Ray")
    overlays: int = flag(3, "videos to draw overlay pictures of", check=at_least(0))
    overlay_format: str = flag("gif", "overlay pictures: gif (animated) or png (strip of frames)",
                               choices=("gif", "png"))


@dataclass
class EvalSMTCConfig(EvalConfig):
    """Evaluate SMTC on DAVIS-2017: label propagation (semi-supervised) or multi-object discovery (unsupervised)."""

    task: str = flag("propagation", "propagation | discovery", choices=("propagation", "discovery"))
    dataset: str = flag("davis2017", "davis2017 | jhmdb, vip (propagation) | davis2016, segtrackv2, fbms (single-"
                                     "foreground discovery); see docs/usage.md", choices=BENCHMARK_SETS)
    imset: str = flag("", "jhmdb / vip: CRW list file (default <data>/test.split.v2.txt, <data>/lists/val_videos.txt);"
                          " discovery: sequence list")
    foreground: str = flag("smtc", "single-foreground discovery: smtc (SMTC's oracle slot union) | best-slot",
                           choices=("smtc", "best-slot"))
    dino_path: str = flag("", "plain DINO ViT-S/16 weights for propagation (instead of --checkpoint)")
    preset: str = flag("", "propagation protocol: A (SMTC/CRW stride 16), B (stride 8), dino (DINO's), jhmdb, vip "
                           "(empty: the dataset's own; A for davis2017)",
                       choices=("", "A", "B", "dino", "jhmdb", "vip"))
    mode: str = flag("official", "discovery scoring: official (DAVIS protocol) | smtc-paper (upstream's, not "
                                 "comparable)", choices=("official", "smtc-paper"))
    height: int = flag(480, "discovery input height", check=at_least(16))
    width: int = flag(800, "discovery input width", check=at_least(16))
    window: int = flag(4, "discovery: frames per window", check=at_least(1))
    iters: int = flag(5, "discovery: slot attention iterations", check=at_least(1))
    max_proposals: int = flag(20, "discovery (official): proposals per sequence", check=at_least(1))
    num_slots: int = flag(16, "semantic slots of a released .pth (run checkpoints carry their own)", check=at_least(1))
    num_instance: int = flag(4, "instance slots per semantic slot of a released .pth", check=at_least(1))
    instance_mask: str = flag("logit", "instance-stage mask of a released .pth: logit (upstream) | softmax (run "
                                       "checkpoints carry their own)", choices=INSTANCE_MASKS)
    resolution: int = flag(256, "training resolution of a released .pth", check=PATCHES)


@dataclass
class EvalSTMAEConfig(EvalConfig):
    """Evaluate STMAE (semi-supervised VOS) on DAVIS-2016/2017 val or YouTube-VOS 2018/2019 valid."""

    dataset: str = flag("D17", "D16 | D17 | Y18 | Y19", choices=("D16", "D17", "Y18", "Y19"))
    imset: str = flag("", "D16 sequence list (default: <data>/ImageSets/2016/val.txt)")
    mem_every: int = flag(5, "frames between memory frames", check=at_least(1))
    top_k: int = flag(30, "top-k memory readout (<= 0: full softmax)")
    size: int = flag(480, "shorter side the frames are resized to (<= 0: original size)")
    amp: bool = flag(True, "bf16 autocast on GPUs")
    max_mem_frames: int = flag(0, "memory frames kept besides frame 0 and the frames with given masks: the newest "
                                  "K (0: unbounded, as upstream)", check=at_least(0))
    similarity: str = flag("dot", "key similarity of a released .pth: dot (upstream) | l2 (run checkpoints carry "
                                  "their own)", choices=SIMILARITIES)


@dataclass
class ScoreConfig:
    """Score a folder of result PNGs against DAVIS-2017 ground truth (the official toolkit's protocols)."""

    davis: str = flag("", "DAVIS root with ImageSets/ and Annotations[_unsupervised]/480p (path or URI)")
    results: str = flag("", "results folder: <sequence>/<frame>.png id maps (path or URI)")
    task: str = flag("semi", "semi | unsup (or semi-supervised | unsupervised) | pck | vip | fg-iou",
                     choices=("semi", "unsup", "semi-supervised", "unsupervised", "pck", "vip", "fg-iou"))
    data: str = flag("", "--task pck|vip|fg-iou: ground-truth root (JHMDB, VIP, or the --dataset folder)")
    dataset: str = flag("", "--task fg-iou: davis2016 | segtrackv2 | fbms", choices=("", *FOREGROUND_SETS))
    imset: str = flag("", "--task pck|vip|fg-iou: CRW list / sequence list (default: the layout's)")
    set: str = flag("val", "ImageSets list: train | val | test-dev | test-challenge")
    sequences: str = flag("", "comma-separated sequences to score instead of the whole set")
    num_workers: int = flag(0, "Ray workers, one CPU and one sequence at a time each (1: in this process; 0: one "
                               "per CPU of the Ray cluster when running on one, as under ray job submit, else 1)",
                            check=at_least(0, "0 (automatic) or more"))
    out: str = flag("", "where the CSV files go (default: the results folder)")
    max_proposals: int = flag(20, "unsupervised: most proposals per sequence", check=at_least(1))


# --------------------------------------------------------------------------------------------- sweeps

# A sweep config's SEARCHED flags take the values to search; `lr` is log-uniform between two values, the others a
# choice.
LOG_UNIFORM = {"lr"}


@dataclass
class SweepOptions:
    """Tune settings shared by the sweep jobs."""

    num_samples: int = flag(8, "trials to run (random search over the searched flags, seeded by --seed)",
                            check=at_least(1))
    metric: str = flag("val_jf", "reported metric that ASHA and the final ranking use (val_* needs --val_data)")
    mode: str = flag("max", "max or min: whether a larger --metric is better", choices=("max", "min"))
    grace_steps: int = flag(0, "steps every trial trains before ASHA may stop it (0: a quarter of --steps)",
                            check=at_least(0))
    reduction_factor: float = flag(2.0, "ASHA keeps 1/reduction_factor of the trials at each milestone",
                                   check=(lambda v: v > 1, "more than 1"))
    max_concurrent_trials: int = flag(0, "trials running at once (0: cluster GPUs // --num_workers, or CPUs "
                                         "// (2 x --num_workers x --cpus_per_worker) without --use_gpu)",
                                      check=at_least(0))
    trial_failures: int = flag(1, "times Tune retries a failed trial (from its last checkpoint)", check=at_least(0))
    driver_resource: str = flag("", "custom resource a trial's driver needs 0.01 of (e.g. TRAIN_DRIVER: keep "
                                    "drivers on the head); empty: none")


@dataclass
class SMTCSweepConfig(SweepOptions, SMTCConfig):
    """Ray Tune sweep of SMTC training runs (ASHA on the validation metric)."""

    SEARCHED: ClassVar[tuple[str, ...]] = ("num_slots", "num_instance", "gap", "lr")
    num_slots: list[int] = flag([8, 16, 32], "semantic slots: values to search")
    num_instance: list[int] = flag([2, 4], "instance slots per semantic slot: values to search")
    gap: list[int] = flag([2, 4], "frame spacing inside a clip: values to search")
    lr: list[float] = flag([1e-5, 1e-4], "peak learning rate: log-uniform between two values (one: fixed)",
                           check=LOG_RANGE)


@dataclass
class STMAESweepConfig(SweepOptions, STMAEConfig):
    """Ray Tune sweep of STMAE training runs (ASHA on the validation metric)."""

    SEARCHED: ClassVar[tuple[str, ...]] = ("lr", "num_ref_frames", "num_frames")
    lr: list[float] = flag([1e-5, 1e-4], "AdamW learning rate: log-uniform between two values (one: fixed)",
                           check=LOG_RANGE)
    num_ref_frames: list[int] = flag([2, 3], "reference frames: values to search")
    num_frames: list[int] = flag([6, 8], "frames per clip: values to search")


# The tiny sweep that runs when no --data is given (synthetic data, a few CPU minutes per trial); each method
# adds its searched values (`raytrain.methods`).
SMALL_SWEEP = dict(steps=12, checkpoint_every=4, batch_size=2, num_workers=1, num_samples=4, grace_steps=4,
                   clips_per_video=2, val_videos=2)


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
        choices = f.metadata.get("choices")
        shown = {"metavar": "{" + ",".join(c for c in choices if c) + "}"} if choices else {}
        if tp is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(tp) in (list, tuple):
            (item,) = set(typing.get_args(tp)) - {Ellipsis}
            parser.add_argument(name, type=item, nargs="+", default=default, help=help_text, **shown)
        else:
            parser.add_argument(name, type=tp, default=default, help=help_text, **shown)


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

def _valid(f: dataclasses.Field) -> Check | None:
    """The field's check, or one made of its choices."""
    choices = f.metadata.get("choices")
    if choices:
        text = "one of " + ", ".join(c for c in choices if c) + (" (or empty)" if "" in choices else "")
        return (lambda v: v in choices), text
    return f.metadata.get("check")


def _training_check(cls: type, name: str) -> Check | None:
    """The check of a searched flag in the training config a sweep config derives from (applied per value)."""
    for base in cls.__mro__[1:]:
        f = getattr(base, "__dataclass_fields__", {}).get(name)
        if f is not None and _valid(f) is not None:
            return _valid(f)
    return None


def flag_problems(cfg: Any) -> list[str]:
    """Every flag of `cfg` whose value is out of range, as `--flag must be ..., got ...`. A sweep's searched
    flags are checked value by value, against the training config's check."""
    searched: tuple[str, ...] = getattr(cfg, "SEARCHED", ())
    problems: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        checks = [(_valid(f), [value])]
        if f.name in searched:
            checks.append((_training_check(type(cfg), f.name), list(value)))
        for check, values in checks:
            if check is None:
                continue
            ok, text = check
            problems += [f"--{f.name} must be {text}, got {v!r}" for v in values if not ok(v)]
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
                         "val_async", "val_cpus", "val_use_gpu", "val_tasks", "val_timeout_s", "keep_metric",
                         "num_to_keep", "allow_config_change", "steps", "dino_path", "resnet50_path", "resnet18_path",
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
