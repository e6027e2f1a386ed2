"""STMAE (FAIML 2024): one-shot VOS, a ResNet-50 key encoder and a mask autoencoder trained from first-frame
masks only."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from raytrain.config import SMALL_SWEEP, EvalSTMAEConfig, STMAEConfig, STMAESweepConfig
from raytrain.eval.models import ModelSpec, fetched, run_state
from raytrain.eval.validate import join_scores, stmae_scores
from raytrain.method import Method
from raytrain.models.resnet_weights import load_resnet
from raytrain.models.stmae import STMAE, checkpoint_weights, from_weights
from raytrain.models.weights import read_weights_file
from raytrain.train.stmae_task import STMAETask
from shards.errors import naming


def clip(cfg: STMAEConfig) -> dict[str, Any]:
    """Frame 0 and random jumps up to the max-skip curriculum, with masks, cropped and augmented per clip."""
    return dict(sampler="max_skip", size=cfg.crop, max_skip=tuple(cfg.max_skip), max_skip_at=tuple(cfg.max_skip_at),
                max_objects=cfg.max_objects, finetune_at=cfg.finetune_at)


def check_weights(cfg: STMAEConfig) -> None:
    """--resnet50_path and --resnet18_path load into the key and mask encoders (keys and shapes only)."""
    if not (cfg.resnet50_path or cfg.resnet18_path):
        return
    with torch.device("meta"):
        model = STMAE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading into meta tensors is a no-op, and torch says so per tensor
        for flag, path, part, rename in (("--resnet50_path", cfg.resnet50_path, model.key_encoder, {"layer1": "res2"}),
                                         ("--resnet18_path", cfg.resnet18_path, model.value_encoder, None)):
            if path:
                with naming(flag, path):
                    load_resnet(part, path, rename=rename)



def advice(cfg: STMAEConfig) -> list[str]:
    """Encoders without ImageNet weights; with upstream's dot-product keys such a run does not learn."""
    flags = (("--resnet50_path", cfg.resnet50_path), ("--resnet18_path", cfg.resnet18_path))
    missing = [flag for flag, path in flags if not path]
    if not missing:
        return []
    which = "that encoder starts" if len(missing) == 1 else "the encoders start"
    line = f"STMAE: no {' or '.join(missing)}: {which} from random weights, where upstream starts from ImageNet's"
    if cfg.similarity == "dot" and not cfg.resnet50_path:
        line += ("; with --similarity dot (upstream's) the memory readout does not learn from random keys "
                 "(docs/faithfulness.md#stmae): give --resnet50_path resnet50.pth --resnet18_path resnet18.pth, or "
                 "--similarity l2 to train from scratch")
    return [line]


def eval_model(cfg: EvalSTMAEConfig) -> ModelSpec:
    """STMAE weights (released file, upstream training checkpoint, or a run checkpoint folder)."""
    if not cfg.checkpoint:
        return ModelSpec("stmae", None, "random weights", cfg.seed, {"similarity": cfg.similarity})
    state = run_state(cfg.checkpoint, "stmae")
    if state is None:
        with fetched(cfg.checkpoint, "--checkpoint") as path:
            obj = read_weights_file(path)
    else:
        obj = state
    # Run checkpoints carry their similarity (those from before the flag were trained with "dot").
    sim = cfg.similarity if state is None else state["config"].get("similarity", "dot")
    model = from_weights(checkpoint_weights(obj, cfg.checkpoint), cfg.checkpoint, sim)
    return ModelSpec("stmae", model.state_dict(), cfg.checkpoint, cfg.seed,
                     {"value_dim": model.value_dim, "similarity": sim})


METHOD = Method(
    name="stmae",
    config=STMAEConfig,
    sweep_config=STMAESweepConfig,
    eval_config=EvalSTMAEConfig,
    task=STMAETask,
    clip=clip,
    synthetic=("davis", "train"),  # upstream trains on DAVIS-17 train, first-frame masks only
    loss_terms=("loss_ce", "loss_dice"),
    val_metrics=("val_jf", "val_j", "val_f"),
    val_scores=stmae_scores,
    val_join=join_scores,
    check_weights=check_weights,
    advice=advice,
    eval_model=eval_model,
    small=dict(steps=40, batch_size=2, num_frames=4, num_ref_frames=2, crop=128, checkpoint_every=20, log_every=5,
               num_workers=2, lr=1e-4, lr_decay_at=1.0, similarity="l2", val_videos=3),
    small_sweep=dict(SMALL_SWEEP, crop=64, num_frames=[4, 6], num_ref_frames=[1, 2], lr=[1e-5, 1e-3],
                     max_skip=[3], max_skip_at=[0.0]),
    small_eval=dict(size=0),
)
