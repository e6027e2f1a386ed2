"""The models evaluation runs: what to build (`ModelSpec`), built the same way on every actor (`build_model`),
from random weights, a released weights file or a training-run checkpoint (local path or URI, fetched first).

Weights are read once, on the driver, and reach the actors inside the spec through the object store.
"""
from __future__ import annotations

import posixpath
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from pyarrow.fs import FileType, LocalFileSystem, copy_files
from torch import Tensor, nn

from raytrain.checkpoints import find_checkpoint
from raytrain.models.smtc import SMTC
from raytrain.models.stmae import STMAE
from raytrain.models.vit import vit_small
from shards.errors import NotFound, UserError
from shards.layout import resolve

RANDOM_WARNING = ("=" * 100 + "\nWARNING: no checkpoint given: evaluating RANDOMLY INITIALISED weights. "
                  "The numbers below say nothing about the method.\n" + "=" * 100)


@dataclass
class ModelSpec:
    """What an actor builds: architecture, weights (None: random from `seed`) and where they came from."""

    kind: str  # a key of ARCHITECTURES
    weights: dict[str, Tensor] | None
    source: str
    seed: int = 0
    arch: dict[str, Any] = field(default_factory=dict)

    @property
    def random(self) -> bool:
        return self.weights is None


def _vit(arch: dict[str, Any]) -> nn.Module:
    return vit_small()


def _smtc(arch: dict[str, Any]) -> nn.Module:
    return SMTC(arch["num_slots"], arch["num_instances"], resolution=arch["resolution"], drop_path=0.0,
                instance_mask=arch.get("instance_mask", "logit"))


def _stmae(arch: dict[str, Any]) -> nn.Module:
    return STMAE(value_dim=arch.get("value_dim", 512), similarity=arch.get("similarity", "dot"))


# What `ModelSpec.kind` names: the propagation encoder, SMTC whole (discovery), STMAE.
ARCHITECTURES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {"vit": _vit, "smtc": _smtc, "stmae": _stmae}


def new_model(kind: str, arch: dict[str, Any]) -> nn.Module:
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown model kind {kind!r}")
    return ARCHITECTURES[kind](arch)


def build_model(spec: ModelSpec, device: torch.device | str) -> nn.Module:
    """The model of `spec` in eval mode on `device` (the same weights wherever it is built)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = new_model(spec.kind, spec.arch)
    if spec.weights is not None:
        model.load_state_dict(spec.weights)
    return model.to(device).eval()


def run_state(source: str, method: str) -> dict[str, Any] | None:
    """The verified state of a training-run checkpoint of `method` (folder or its state.pt, on any storage), or of the newest
    intact checkpoint of a run folder (naming the ones skipped); None for other files (weights files)."""
    found = find_checkpoint(source, "--checkpoint", lambda why: print(why, flush=True))
    if found is None:
        return None
    where, state = found
    if where != source:
        print(f"--checkpoint {source}: using its newest intact checkpoint, {where.rstrip('/').rsplit('/', 1)[-1]}",
              flush=True)
    if state.get("job") != method:
        raise UserError(f"--checkpoint {where}: a {state.get('job')!r} training checkpoint, expected {method!r}")
    return state


@contextmanager
def fetched(uri: str, flag: str) -> Iterator[Path]:
    """A local path for a weights file: `uri` itself when local, else a temporary copy."""
    if "://" not in uri:
        yield Path(uri)
        return
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == FileType.NotFound:
        raise NotFound(f"{flag} {uri}: not found")
    with tempfile.TemporaryDirectory(prefix="raytrain-eval-") as tmp:
        local = Path(tmp) / posixpath.basename(path.rstrip("/"))
        if kind == FileType.Directory:
            local.mkdir()
        copy_files(path, str(local), source_filesystem=fs, destination_filesystem=LocalFileSystem())
        yield local
