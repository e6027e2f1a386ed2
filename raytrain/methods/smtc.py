"""SMTC (ICCV 2023): self-supervised slot attention on a DINO ViT-S/16, trained on unlabelled clips."""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raytrain.config import SMALL_SWEEP, EvalSMTCConfig, SMTCConfig, SMTCSweepConfig
from raytrain.eval.models import ModelSpec, fetched, new_model, run_state
from raytrain.eval.validate import join_scores, smtc_scores
from raytrain.method import Method
from raytrain.models.vit import vit_small
from raytrain.models.weights import load_smtc_weights, load_vit_weights, vit_state_dict
from raytrain.train.smtc_task import SMTCTask
from shards.errors import UsageError, UserError, naming


def clip(cfg: SMTCConfig) -> dict[str, Any]:
    """`num_frames` whole frames, `gap` apart, resized to `resolution` (the two views are cut on the device)."""
    return dict(sampler="gap", size=cfg.resolution, gap=cfg.gap)


def check_weights(cfg: SMTCConfig) -> None:
    """--dino_path loads into ViT-S/16 (keys and shapes; nothing is allocated)."""
    if not cfg.dino_path:
        return
    with torch.device("meta"):
        model = vit_small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading into meta tensors is a no-op, and torch says so per tensor
        with naming("--dino_path", cfg.dino_path):
            load_vit_weights(model, cfg.dino_path)


def _load_smtc(model: nn.Module, path: Path, source: str, state: dict[str, Any] | None, discovery: bool) -> None:
    """Load a run checkpoint's `state` (None: the file at `path`) into SMTC (discovery) or its encoder."""
    if state is not None and discovery:
        model.load_state_dict(state["task"]["model"])
    elif state is not None:
        try:
            model.load_state_dict(vit_state_dict(state["task"], source))
        except RuntimeError as e:
            raise UserError(f"--checkpoint {source}: the encoder does not match ViT-S/16: {e}") from None
    elif discovery:
        load_smtc_weights(model, path)
    else:
        load_vit_weights(model, path)


def advice(cfg: SMTCConfig) -> list[str]:
    """A run without DINO weights: upstream always starts from them."""
    if cfg.dino_path:
        return []
    return ["SMTC: no --dino_path: the ViT-S/16 encoder starts from random weights, where upstream starts from "
            "DINO's (give --dino_path dino_deitsmall16_pretrain.pth)"]


def eval_model(cfg: EvalSMTCConfig) -> ModelSpec:
    """Weights for SMTC propagation (encoder only) or discovery (whole model), read and checked here."""
    if cfg.checkpoint and cfg.dino_path:
        raise UsageError("give either --checkpoint (SMTC) or --dino_path (DINO), not both")
    discovery = cfg.task == "discovery"
    if discovery and cfg.dino_path:
        raise UsageError("--dino_path: discovery needs SMTC's slot modules; give an SMTC --checkpoint")
    arch = dict(num_slots=cfg.num_slots, num_instances=cfg.num_instance, resolution=cfg.resolution,
                instance_mask=cfg.instance_mask)
    kind = "smtc" if discovery else "vit"
    source = cfg.checkpoint or cfg.dino_path
    if not source:
        return ModelSpec(kind, None, "random weights", cfg.seed, arch)
    state = run_state(source, "smtc") if cfg.checkpoint else None
    flag = "--checkpoint" if cfg.checkpoint else "--dino_path"
    with fetched(source, flag) if state is None else nullcontext(Path(source)) as path:
        if state is not None:
            train = state["config"]
            # Run checkpoints written before `instance_mask` existed were trained with the softmax mask.
            arch = dict(num_slots=train["num_slots"], num_instances=train["num_instance"],
                        resolution=train["resolution"], instance_mask=train.get("instance_mask", "softmax"))
        model = new_model(kind, arch)
        _load_smtc(model, path, source, state, discovery)
    return ModelSpec(kind, model.state_dict(), source, cfg.seed, arch)


METHOD = Method(
    name="smtc",
    config=SMTCConfig,
    sweep_config=SMTCSweepConfig,
    eval_config=EvalSMTCConfig,
    task=SMTCTask,
    clip=clip,
    synthetic=("ytvos", "train"),  # upstream trains on unlabelled YouTube-VOS train frames
    loss_terms=("loss_cons", "loss_diff", "loss_inst", "valid_frac"),
    val_metrics=("val_jf", "val_j", "val_f", "val_disc_jf", "val_disc_j", "val_disc_f"),
    val_scores=smtc_scores,
    val_join=join_scores,
    check_weights=check_weights,
    advice=advice,
    eval_model=eval_model,
    small=dict(steps=60, batch_size=2, num_slots=4, num_instance=2, resolution=128, grad_iter=20,
               checkpoint_every=20, log_every=5, num_workers=2, lr=1e-4, val_videos=3),
    small_sweep=dict(SMALL_SWEEP, resolution=64, num_slots=[4, 8], num_instance=[2], gap=[2, 4], lr=[1e-4, 3e-3],
                     grad_iter=0),
    small_eval=dict(height=96, width=160),
)
