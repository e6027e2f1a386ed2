"""What training and evaluation share: starting or joining Ray, checkpoint files, run folders.

A checkpoint is a folder holding `state.pt` (a dict loadable with `torch.load(weights_only=True)`): the task's
state, the step, the sampler, the run's config and job. Ray Train persists the folders a worker reports under
`<storage_path>/<name>/checkpoint_*`; a run's name is deterministic, so resubmitting it resumes. Next to it,
`manifest.json` holds the size and SHA-256 of state.pt (and the step, job, config and sampler): loading verifies
them, and a resume takes the newest checkpoint that passes, naming those it skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from shards.errors import UserError
from shards.pack import pid_alive

STATE_FILE = "state.pt"
MANIFEST = "manifest.json"  # size and SHA-256 of state.pt, step, job and config (written last)
CKPT_PREFIX = "raytrain-ckpt-"  # temp checkpoint folders: raytrain-ckpt-<pid>-<random>
CACHE = Path(os.environ.get("RAYTRAIN_CACHE", "~/.cache/raytrain")).expanduser()


def cluster_address() -> str | None:
    """The cluster a job may join: `RAY_ADDRESS` (set by `ray job submit`, or by the user), else the one
    `ray start` recorded on this machine (its address file), else None.

    Ray's own `address="auto"` would also attach to any Ray process it finds on the machine, such as another
    program's private instance; a job must not.
    """
    from ray._private.utils import read_ray_address

    return os.environ.get("RAY_ADDRESS") or read_ray_address() or None


def _answers(address: str, timeout: float = 5.0) -> bool:
    """Whether anything accepts a connection at a `host:port` address (other forms, e.g. ray://, are left to
    Ray)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def init_ray(extra_cpus: int = 0) -> None:
    """Join the cluster this job was submitted to (or one started with `ray start`), else start a private one.

    A private Ray gets a few more logical CPUs than the machine has, so that data tasks can run next to the
    training workers, which hold one CPU each. It starts with its dashboard, whose state API Train needs:
    Train frees the placement group of a trial that ASHA stopped only through it (without it a sweep
    stalls), and its placement-group cleaner warns every few seconds when it cannot reach it.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    address = cluster_address()
    if address is not None and not _answers(address):  # Ray itself would retry for minutes
        if os.environ.get("RAY_ADDRESS"):
            raise UserError(f"RAY_ADDRESS={address}: no Ray cluster answers there")
        print(f"the Ray cluster that `ray start` recorded ({address}) does not answer: starting a private one",
              flush=True)
        address = None
    if address is not None:
        try:
            ray.init(address=address)
            return
        except ConnectionError:
            if os.environ.get("RAY_ADDRESS"):
                raise UserError(f"RAY_ADDRESS={address}: no Ray cluster answers there") from None
            # a `ray start` cluster that has been stopped since: start a private one
    # Ray's state API (Train's placement-group cleaner uses it) finds "the" cluster by itself and fails where
    # another program runs a Ray too: point it, and every process of this Ray, at this one's dashboard.
    port = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=(os.cpu_count() or 1) + extra_cpus, include_dashboard=True,
             dashboard_port=port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dir(cfg: Any, job: str) -> tuple[str, str]:
    """(storage_path, name) of a run: `--storage_path` (./runs) and `--name` (`<job>-default`); the name is
    deterministic, so resubmitting resumes."""
    return cfg.storage_path or str(Path("runs").resolve()), cfg.name or f"{job}-default"


def remove_stale_checkpoint_folders() -> None:
    """Delete the temp checkpoint folders of processes that died before Train persisted and removed them."""
    for folder in Path(tempfile.gettempdir()).glob(f"{CKPT_PREFIX}*-*"):
        pid = folder.name[len(CKPT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(state: dict[str, Any]) -> str:
    """Write `state` and its manifest to a fresh temp folder (temp file + rename each) and return the folder.

    The manifest (`manifest.json`: size and SHA-256 of state.pt, and the step, job and config) is written last,
    so a folder copied in part is never taken for an intact checkpoint. The folder is named after this
    process, so that a process started after a crash can remove it (`remove_stale_checkpoint_folders`) if
    this one was killed before the folder was persisted.
    """
    folder = tempfile.mkdtemp(prefix=f"{CKPT_PREFIX}{os.getpid()}-")
    tmp = os.path.join(folder, STATE_FILE + ".tmp")
    torch.save(state, tmp)
    manifest = {"file": STATE_FILE, "bytes": os.path.getsize(tmp), "sha256": _sha256(tmp),
                **{k: state.get(k) for k in ("step", "job", "config", "sampler")}}
    os.replace(tmp, os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, MANIFEST + ".tmp"), "w") as f:
        json.dump(manifest, f)
    os.replace(os.path.join(folder, MANIFEST + ".tmp"), os.path.join(folder, MANIFEST))
    return folder


class CheckpointError(UserError):
    """A checkpoint that cannot be used: the message names it and says why."""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def torch_load_problem(e: BaseException) -> str:
    """What a failed `torch.load(weights_only=True)` means, in one line, without torch's advice to load with
    weights_only=False (never done here)."""
    text = str(e)
    unsafe = re.search(r"GLOBAL (\S+)", text)
    if unsafe:
        return f"holds Python objects ({unsafe[1]}) that a safe load (weights_only=True) refuses"
    if "Weights only load failed" in text:
        return "not a torch file (its bytes are no torch pickle)"
    if isinstance(e, (RuntimeError, OSError)):  # e.g. torch's zip reader on a file cut short
        return f"not a torch file, or a damaged one ({_first_line(e).split('. ')[0]})"
    return "not a torch file, or a damaged one"


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a checkpoint folder; None for a checkpoint written before manifests existed."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder}: unreadable {MANIFEST} ({_first_line(e)})") from None


def verify_checkpoint(folder: str | os.PathLike, name: str | None = None) -> dict[str, Any] | None:
    """Check a checkpoint folder's state.pt against its manifest (size, then SHA-256); returns the manifest
    (None without one). CheckpointError names the folder (or `name`, where it came from) and what is wrong."""
    name = name or str(folder)
    state = Path(folder) / STATE_FILE
    if not state.is_file():
        raise CheckpointError(f"checkpoint {name}: no {STATE_FILE}")
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    size = state.stat().st_size
    if size != manifest.get("bytes"):
        raise CheckpointError(f"checkpoint {name}: {STATE_FILE} has {size} bytes, its manifest says "
                              f"{manifest.get('bytes')} (cut short, e.g. a copy that was interrupted)")
    if _sha256(state) != manifest.get("sha256"):
        raise CheckpointError(f"checkpoint {name}: {STATE_FILE} does not match the SHA-256 in its manifest "
                              f"(damaged)")
    return manifest


def load_checkpoint_state(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """The saved state of a checkpoint folder (or of its state.pt), verified against its manifest first.

    CheckpointError names the checkpoint (`name`, default `path`) and the reason.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    name = name or str(path)
    if path.is_dir() or path.name == STATE_FILE:
        verify_checkpoint(folder, name)
    try:
        return torch.load(folder / STATE_FILE if path.is_dir() else path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails on foreign bytes in many ways (IndexError, ...)
        raise CheckpointError(f"checkpoint {name}: {torch_load_problem(e)}") from None


def checkpoint_folders(run: str | os.PathLike) -> list[Path]:
    """The `checkpoint_*` folders of a local run folder, newest first (Train names them by time)."""
    return sorted((p for p in Path(run).glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def newest_intact(folders: list[Path]) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The first of `folders` that passes `verify_checkpoint`: (folder, manifest, why each one before it was
    skipped); (None, None, reasons) when none does."""
    skipped = []
    for folder in folders:
        try:
            return folder, verify_checkpoint(folder), skipped
        except CheckpointError as e:
            skipped.append(str(e))
    return None, None, skipped


def resume_state(ckpt: Any, warn: Callable[[str], None] | None = None) -> tuple[dict[str, Any], str]:
    """The state of the newest intact checkpoint at or before Train's latest one `ckpt` (a
    `ray.train.Checkpoint` on any storage), and its path. The ones skipped are passed to `warn` with the reason;
    CheckpointError when none of the run's checkpoints is intact."""
    from pyarrow.fs import FileSelector, FileType
    from ray.train import Checkpoint

    fs, latest = ckpt.filesystem, ckpt.path.rstrip("/")
    run = posixpath.dirname(latest)
    older = sorted((i.path for i in fs.get_file_info(FileSelector(run)) if i.type == FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.path < latest), reverse=True)
    skipped = []
    for path in [latest, *older]:
        try:
            with Checkpoint(path, filesystem=fs).as_directory() as local:
                state = load_checkpoint_state(local, name=path)
        except CheckpointError as e:
            skipped.append(str(e))
            if warn is not None:
                warn(f"skipped {e}")
            continue
        return state, path
    raise CheckpointError(f"run {run}: no intact checkpoint to resume from ({'; '.join(skipped)})")
