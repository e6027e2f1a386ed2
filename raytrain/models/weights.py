"""Loading DINO / timm ViT-S/16 weights and SMTC checkpoints, refusing any file whose keys do not match.

Accepted ViT files (all mapped to timm's = DINO's names, `head.*` classifier / DINO-head keys dropped):
- DINO's released backbone (`dino_deitsmall16_pretrain.pth`): a plain state dict;
- DINO training checkpoints (`{'student': ..., 'teacher': ..., 'args': Namespace, ...}`, keys prefixed with
  `module.` and/or `backbone.`); the teacher is taken unless told otherwise;
- timm state dicts (same names as DINO, plus `head.*`), bare or as timm's training checkpoint `state_dict`;
- SMTC checkpoints (the student's `encoder.*` part); a ViT state dict under a 'model' key (DeiT style).
Accepted SMTC files: upstream's `{'model_state_dict': ...}` and this project's task state `{'model': ...}`.
Everything is read with torch.load(weights_only=True) (argparse.Namespace allowed, for DINO's `args`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from raytrain.checkpoints import torch_load_problem
from shards.errors import NotFound, UserError

_STRIP = ("module.", "backbone.")


def read_weights_file(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` of a weights file (argparse.Namespace allowed, for DINO's `args`).

    NotFound / UserError name the file; torch's own advice to load with weights_only=False is never given.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"weights file {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails on foreign bytes in many ways (IndexError, ...)
        raise UserError(f"{path}: {torch_load_problem(e)}") from None


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _check_and_load(module: nn.Module, state: Mapping[str, Tensor], path: str | Path, what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = [f"{path} does not hold {what} weights:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:5])})")
        if wrong_shape:
            parts.append("shape mismatch for " + ", ".join(
                f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})" for k in wrong_shape[:5]))
        raise UserError(f"{parts[0]} {'; '.join(parts[1:])}")
    module.load_state_dict(state, strict=True)


def _smtc_state(obj: Any) -> Any:
    """The student state dict of an SMTC checkpoint, or None when `obj` is not one."""
    if isinstance(obj, Mapping):
        for key in ("model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return None


def vit_state_dict(obj: Any, path: str | Path, which: str = "teacher") -> dict[str, Tensor]:
    """The backbone state dict (timm/DINO names) inside a loaded checkpoint object."""
    smtc = _smtc_state(obj)
    if smtc is not None:
        encoder = {k[len("encoder."):]: v for k, v in smtc.items() if k.startswith("encoder.")}
        obj = encoder or smtc  # no encoder.* keys: a bare ViT under 'model' (DeiT-style checkpoints)
    elif isinstance(obj, Mapping) and ("teacher" in obj or "student" in obj):
        if which not in obj:
            raise UserError(f"{path} is a DINO training checkpoint without a '{which}' entry "
                            f"(has: {', '.join(map(str, obj))})")
        obj = obj[which]
    elif isinstance(obj, Mapping) and "state_dict" in obj:  # timm training checkpoint
        obj = obj["state_dict"]
    if not _is_state_dict(obj):
        raise UserError(f"{path} holds no state dict of tensors (top-level type {type(obj).__name__})")
    state = {_strip(k): v for k, v in obj.items()}
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def load_vit_weights(encoder: nn.Module, path: str | Path, which: str = "teacher") -> None:
    """Load a DINO / timm / SMTC file into a `ViTEncoder`; `which` picks the DINO training checkpoint entry."""
    _check_and_load(encoder, vit_state_dict(read_weights_file(path), path, which), path, "ViT-S/16 backbone")


def load_smtc_weights(model: nn.Module, path: str | Path) -> None:
    """Load an SMTC checkpoint (upstream release or this project's task state) into an `SMTC` model."""
    obj = read_weights_file(path)
    smtc = _smtc_state(obj)
    obj = obj if smtc is None else smtc
    if not _is_state_dict(obj):
        raise UserError(f"{path} holds no SMTC state dict (expected 'model_state_dict' or 'model')")
    _check_and_load(model, {k.removeprefix("module."): v for k, v in obj.items()}, path, "SMTC")
