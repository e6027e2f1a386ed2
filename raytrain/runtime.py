"""What training and evaluation share: starting or joining Ray, checkpoint files, run folders.

A checkpoint is a folder holding `state.pt` (a dict loadable with `torch.load(weights_only=True)`): the task's
state, the step, the sampler, the run's config and job. Ray Train persists the folders a worker reports under
`<storage_path>/<name>/checkpoint_*`; a run's name is deterministic, so resubmitting it resumes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
CKPT_PREFIX = "raytrain-ckpt-"  # temp checkpoint folders: raytrain-ckpt-<pid>-<random>
CACHE = Path(os.environ.get("RAYTRAIN_CACHE", "~/.cache/raytrain")).expanduser()


def init_ray(extra_cpus: int = 0) -> None:
    """Join the cluster this job was submitted to (or one started with `ray start`), else start a local one.

    A local Ray gets a few more logical CPUs than the machine has, so that data tasks can run next to the
    training workers, which hold one CPU each. It starts with its dashboard, whose state API Train needs:
    Train frees the placement group of a trial that ASHA stopped only through it (without it a sweep
    stalls), and its placement-group cleaner warns every few seconds when it cannot reach it.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    except ConnectionError:
        ray.init(num_cpus=(os.cpu_count() or 1) + extra_cpus, include_dashboard=True)


def run_dir(cfg: Any, job: str) -> tuple[str, str]:
    """(storage_path, name) of a run: `--storage_path` (./runs) and `--name` (`<job>-default`); the name is
    deterministic, so resubmitting resumes."""
    return cfg.storage_path or str(Path("runs").resolve()), cfg.name or f"{job}-default"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def remove_stale_checkpoint_folders() -> None:
    """Delete the temp checkpoint folders of processes that died before Train persisted and removed them."""
    for folder in Path(tempfile.gettempdir()).glob(f"{CKPT_PREFIX}*-*"):
        pid = folder.name[len(CKPT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def write_checkpoint(state: dict[str, Any]) -> str:
    """Write `state` to a fresh temp folder (temp file + rename) and return the folder.

    The folder is named after this process, so that a process started after a crash can remove it
    (`remove_stale_checkpoint_folders`) if this one was killed before the folder was persisted.
    """
    folder = tempfile.mkdtemp(prefix=f"{CKPT_PREFIX}{os.getpid()}-")
    tmp = os.path.join(folder, STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(folder, STATE_FILE))
    return folder


def load_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The saved state of a checkpoint folder (or of its state.pt)."""
    path = Path(path)
    return torch.load(path / STATE_FILE if path.is_dir() else path, map_location="cpu", weights_only=True)
