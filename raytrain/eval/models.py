"""The models evaluation runs: what to build (`ModelSpec`), built the same way on every actor (`build_model`),
from random weights, a released weights file or a training-run checkpoint (local path or URI, fetched first).

Weights are read once, on the driver, and reach the actors inside the spec through the object store.
"""
from __future__ import annotations

import posixpath
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from pyarrow.fs import FileType, LocalFileSystem, copy_files
from torch import Tensor, nn

from raytrain.checkpoints import find_checkpoint
from raytrain.config import EvalSMTCConfig, EvalSTMAEConfig
from raytrain.models.smtc import SMTC
from raytrain.models.stmae import STMAE, checkpoint_weights, from_weights
from raytrain.models.vit import vit_small
from raytrain.models.weights import load_smtc_weights, load_vit_weights, read_weights_file, vit_state_dict
from shards.errors import NotFound, UsageError, UserError
from shards.layout import resolve

RANDOM_WARNING = ("=" * 100 + "\nWARNING: no checkpoint given: evaluating RANDOMLY INITIALISED weights. "
                  "The numbers below say nothing about the method.\n" + "=" * 100)


@dataclass
class ModelSpec:
    """What an actor builds: architecture, weights (None: random from `seed`) and where they came from."""

    kind: str  # "vit" (propagation encoder), "smtc" (discovery), "stmae"
    weights: dict[str, Tensor] | None
    source: str
    seed: int = 0
    arch: dict[str, Any] = field(default_factory=dict)

    @property
    def random(self) -> bool:
        return self.weights is None


def _new_model(kind: str, arch: dict[str, Any]) -> nn.Module:
    if kind == "vit":
        return vit_small()
    if kind == "smtc":
        return SMTC(arch["num_slots"], arch["num_instances"], resolution=arch["resolution"], drop_path=0.0,
                    instance_mask=arch.get("instance_mask", "logit"))
    if kind == "stmae":
        return STMAE(value_dim=arch.get("value_dim", 512), similarity=arch.get("similarity", "dot"))
    raise ValueError(f"unknown model kind {kind!r}")


def build_model(spec: ModelSpec, device: torch.device | str) -> nn.Module:
    """The model of `spec` in eval mode on `device` (the same weights wherever it is built)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = _new_model(spec.kind, spec.arch)
    if spec.weights is not None:
        model.load_state_dict(spec.weights)
    return model.to(device).eval()


def _run_state(source: str, job: str) -> dict[str, Any] | None:
    """The verified state of a training-run checkpoint (folder or its state.pt, on any storage), or of the newest
    intact checkpoint of a run folder (naming the ones skipped); None for other files (weights files)."""
    found = find_checkpoint(source, "--checkpoint", lambda why: print(why, flush=True))
    if found is None:
        return None
    where, state = found
    if where != source:
        print(f"--checkpoint {source}: using its newest intact checkpoint, {where.rstrip('/').rsplit('/', 1)[-1]}",
              flush=True)
    if state.get("job") != job:
        raise UserError(f"--checkpoint {where}: a {state.get('job')!r} training checkpoint, expected {job!r}")
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


def smtc_spec(cfg: EvalSMTCConfig) -> ModelSpec:
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
    state = _run_state(source, "smtc") if cfg.checkpoint else None
    flag = "--checkpoint" if cfg.checkpoint else "--dino_path"
    with fetched(source, flag) if state is None else nullcontext(Path(source)) as path:
        if state is not None:
            train = state["config"]
            # Run checkpoints written before `instance_mask` existed were trained with the softmax mask.
            arch = dict(num_slots=train["num_slots"], num_instances=train["num_instance"],
                        resolution=train["resolution"], instance_mask=train.get("instance_mask", "softmax"))
        model = _new_model(kind, arch)
        _load_smtc(model, path, source, state, discovery)
    return ModelSpec(kind, model.state_dict(), source, cfg.seed, arch)


def stmae_spec(cfg: EvalSTMAEConfig) -> ModelSpec:
    """STMAE weights (released file, upstream training checkpoint, or a run checkpoint folder)."""
    if not cfg.checkpoint:
        return ModelSpec("stmae", None, "random weights", cfg.seed, {"similarity": cfg.similarity})
    state = _run_state(cfg.checkpoint, "stmae")
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
