"""ImageNet ResNet weights from a file into a module that holds ResNet layers under its own names.

Accepted files: torchvision checkpoints (e.g. resnet50-19c8e357.pth, resnet18-5c106cde.pth) and timm
checkpoints (.pth/.bin read with torch.load(weights_only=True), or .safetensors), optionally wrapped in
{'state_dict': ...} / {'model': ...} and/or with a 'module.' key prefix. torchvision and timm ResNets share
key names (conv1, bn1, layer1..layer4, fc); timm's `features_only` models do too.

A target conv1 with more input channels than the file's (STMAE's mask encoder: RGB + 2 mask channels)
gets the pretrained RGB filters in its first channels and orthogonally initialised extra channels, as
XMem's `load_weights_add_extra_dim` does.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from raytrain.models.weights import read_weights_file
from shards.errors import NotFound, UserError

_RESNET_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def read_resnet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ResNet state dict stored in `path` (torchvision or timm format), with wrappers and prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"ResNet weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            obj = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        obj = read_weights_file(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a ResNet state dict, got {type(obj).__name__}")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if "conv1.weight" not in state or not any(k.startswith("layer1.") for k in state):
        raise UserError(f"{path}: not a torchvision/timm ResNet state dict (no conv1.weight / layer1.*; "
                        f"first keys: {', '.join(list(state)[:4])})")
    return state


def load_resnet(target: nn.Module, path: str | Path, rename: dict[str, str] | None = None) -> None:
    """Copy ImageNet ResNet weights from `path` into the ResNet parameters and buffers of `target`.

    `rename` maps the file's top-level names to the target's (e.g. {'layer1': 'res2'} for STMAE's key
    encoder). Every ResNet tensor of `target` (conv1, bn1, layer1..layer4 after renaming) must be found
    with a matching shape; other tensors of `target` (e.g. the fusion blocks) are left alone.
    """
    state = read_resnet_state(path)
    back = {v: k for k, v in (rename or {}).items()}
    own = target.state_dict()
    updates: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        top, _, rest = name.partition(".")
        src_name = f"{back.get(top, top)}.{rest}"
        if not src_name.startswith(_RESNET_PREFIXES):
            continue
        if src_name not in state:
            if name.endswith("num_batches_tracked"):
                continue
            raise UserError(f"{path}: missing '{src_name}' (needed for '{name}'); is it the right ResNet depth?")
        src = state[src_name]
        if src.shape != tensor.shape:
            if name == "conv1.weight" and src.shape[0] == tensor.shape[0] and src.shape[2:] == tensor.shape[2:] \
                    and src.shape[1] < tensor.shape[1]:
                extra = torch.empty(tensor.shape[0], tensor.shape[1] - src.shape[1], *tensor.shape[2:])
                nn.init.orthogonal_(extra)
                src = torch.cat([src, extra], 1)
            else:
                raise UserError(f"{path}: '{src_name}' has shape {tuple(src.shape)} but '{name}' needs "
                                f"{tuple(tensor.shape)}; is it the right ResNet depth?")
        updates[name] = src.to(dtype=tensor.dtype)
    with torch.no_grad():
        for name, src in updates.items():
            own[name].copy_(src)
