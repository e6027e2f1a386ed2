"""Training configs, one dataclass per job. Field names are the upstream flag names where one exists.

Defaults are the upstream defaults (reference/smtc.md, reference/stmae.md). `SMALL_*` hold the overrides the
jobs apply to the built-in synthetic default run (no `--data`), for fields the user did not set.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def _f(default, help: str):  # noqa: A002 - mirrors argparse
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    """Fields shared by every training job (cluster, storage, logging)."""

    data: str = _f("", "shard folder or URI (with index.parquet); empty: generate and pack a synthetic set")
    name: str = _f("", "run name; resubmitting the same name resumes the run (empty: derived from the job)")
    storage_path: str = _f("", "where checkpoints and logs go (local path, NFS or s3://); empty: ./runs")
    num_workers: int = _f(1, "Ray Train workers (one per GPU)")
    use_gpu: bool = _f(False, "one GPU per worker, bf16 autocast")
    cpus_per_worker: float = _f(1.0, "CPUs reserved by each training worker")
    steps: int = _f(10000, "optimizer steps to train")
    checkpoint_every: int = _f(500, "steps between checkpoints")
    log_every: int = _f(10, "steps between metric reports")
    max_failures: int = _f(3, "worker-group restarts from the last checkpoint before the run fails")
    seed: int = _f(0, "seed for sampling, augmentation and initialisation")
    clips_per_video: int = _f(4, "clips cut from each video every time its shard is read")
    decode_workers: int = _f(0, "parallel decode tasks per training worker (0: Ray Data decides)")
    grad_clip: float = _f(0.0, "max gradient norm (0: no clipping)")
    val_data: str = _f("", "DAVIS-layout folder to validate on at every checkpoint (J&F on a few videos)")
    val_videos: int = _f(3, "validation videos (the first ones of the val split)")


@dataclass
class SMTCConfig(RunConfig):
    """SMTC self-supervised training (ICCV 2023) on unlabelled video clips."""

    num_slots: int = _f(16, "semantic slots")
    num_instance: int = _f(4, "instance slots per semantic slot")
    num_iterations: int = _f(3, "slot attention iterations")
    num_frames: int = _f(4, "frames per clip")
    gap: int = _f(4, "frame spacing inside a clip")
    lr: float = _f(2e-5, "peak learning rate (cosine to 0.1x, no warm-up)")
    weight_decay: float = _f(0.1, "AdamW weight decay for decayed groups")
    grad_iter: int = _f(3000, "steps with encoder lr x0; x0.01 afterwards")
    entro_cons: bool = _f(True, "slot diversity loss")
    bi_cons: bool = _f(True, "bidirectional Sinkhorn semantic consistency loss")
    strict_filter: bool = _f(False, "strict valid-instance filter (activation 0.5) instead of relaxed (0.3)")
    batch_size: int = _f(32, "clips per worker per step")
    resolution: int = _f(256, "training frame size (square)")
    ema_momentum: float = _f(0.999, "teacher EMA momentum (encoder excluded)")
    dino_path: str = _f("", "DINO ViT-S/16 weights (.pth); empty: random init (tests, synthetic runs)")
    drop_path: float = _f(0.1, "ViT stochastic depth in the student")


@dataclass
class STMAEConfig(RunConfig):
    """STMAE one-shot VOS training (FAIML 2024): only first-frame masks reach the loss."""

    num_frames: int = _f(8, "frames per clip (frame 0 first)")
    num_ref_frames: int = _f(3, "reference frames for the backward reconstruction")
    max_objects: int = _f(3, "objects per clip")
    batch_size: int = _f(8, "clips per worker per step")
    lr: float = _f(2e-5, "AdamW learning rate")
    weight_decay: float = _f(0.05, "AdamW weight decay")
    lr_decay_at: float = _f(85 / 370, "fraction of steps after which lr drops 10x (upstream: epoch 85 of 370)")
    crop: int = _f(384, "training crop size (square)")
    max_skip: list[int] = _f(None, "max-skip curriculum values (upstream 5 10 15 10 5)")
    max_skip_at: list[float] = _f(None, "fractions of steps where each max-skip value starts (upstream epochs 0/35/105/175/245 of 350)")
    finetune_at: float = _f(350 / 370, "fraction of steps after which rotation/shear are turned off")
    resnet50_path: str = _f("", "ImageNet ResNet-50 weights for the key encoder (torchvision or timm keys)")
    resnet18_path: str = _f("", "ImageNet ResNet-18 weights for the mask encoder")

    def __post_init__(self) -> None:
        if self.max_skip is None:
            self.max_skip = [5, 10, 15, 10, 5]
        if self.max_skip_at is None:
            self.max_skip_at = [0.0, 35 / 370, 105 / 370, 175 / 370, 245 / 370]
        if len(self.max_skip) != len(self.max_skip_at):
            raise ValueError("--max_skip and --max_skip_at need the same number of values")


SMALL_SMTC = dict(steps=60, batch_size=2, num_slots=4, num_instance=2, resolution=128, grad_iter=20,
                  checkpoint_every=20, log_every=5, num_workers=2, lr=1e-4)
SMALL_STMAE = dict(steps=40, batch_size=2, num_frames=4, num_ref_frames=2, crop=128,
                   checkpoint_every=20, log_every=5, num_workers=2, lr=1e-4)
