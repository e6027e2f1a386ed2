"""Training checkpoints on any storage (a local folder, NFS, or a URI such as s3://bucket/runs).

A checkpoint is a folder holding `state.pt` (a dict loadable with `torch.load(weights_only=True)`: the task's
state, the step, the curve, the sampler, the run's config and job) and `manifest.json`, written last: the size
and SHA-256 of state.pt, and the step, job, config, sampler, starts and curve. Ray Train persists the folders a
worker reports under `<storage_path>/<name>/checkpoint_<time>`, so names sort by age.

Every load verifies: a folder with a manifest is checked against it (size, then SHA-256); one without is read
whole (each record of its zip against its CRC-32) and must hold a raytrain state. The newest checkpoint that
passes is the one a run resumes from or an evaluation scores, and the ones skipped are named. A folder is read
in place where it is local and through a temporary copy of its two files where it is not.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs
import torch

from shards.errors import NotFound, UserError, storage_problem
from shards.layout import resolve
from shards.pack import pid_alive

STATE_FILE = "state.pt"
MANIFEST = "manifest.json"
CKPT_PREFIX = "raytrain-ckpt-"  # temp checkpoint folders: raytrain-ckpt-<pid>-<random>
CHECKPOINT_GLOB = "checkpoint_"
RUN_KEYS = ("task", "step", "job")  # what a raytrain training state holds, whatever its version
COPY_CHUNK = 64 << 20  # bytes per ranged read when fetching a checkpoint: few requests for a state of 100s of MB
MANIFEST_KEYS = ("step", "job", "config", "sampler", "starts", "curve")

Warn = Callable[[str], None]


class CheckpointError(UserError):
    """A checkpoint that cannot be used: the message names it and says why."""


def join(location: str, name: str) -> str:
    """`name` inside the folder `location` (a local path or a URI), in the same spelling."""
    return posixpath.join(location, name) if "://" in location else os.path.join(location, name)


def storage_uri(fs: pafs.FileSystem, path: str) -> str:
    """A location string for a path inside `fs` (Ray Train's checkpoints carry a filesystem and a bare path)."""
    return path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"


# ------------------------------------------------------------------------------------------------ writing

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

    The manifest is written last, so a folder copied in part is never taken for an intact checkpoint. The
    folder is named after this process, so that a process started after a crash can remove it
    (`remove_stale_checkpoint_folders`) if this one was killed before the folder was persisted.
    """
    folder = tempfile.mkdtemp(prefix=f"{CKPT_PREFIX}{os.getpid()}-")
    tmp = os.path.join(folder, STATE_FILE + ".tmp")
    torch.save(state, tmp)
    manifest = {"file": STATE_FILE, "bytes": os.path.getsize(tmp), "sha256": _sha256(tmp),
                **{k: state.get(k) for k in MANIFEST_KEYS}}
    os.replace(tmp, os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, MANIFEST + ".tmp"), "w") as f:
        json.dump(manifest, f)
    os.replace(os.path.join(folder, MANIFEST + ".tmp"), os.path.join(folder, MANIFEST))
    return folder


# ------------------------------------------------------------------------------------------------ reading

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


def read_manifest(folder: str | os.PathLike, name: str | None = None) -> dict[str, Any] | None:
    """The manifest of a checkpoint folder on any storage; None for a checkpoint without one."""
    fs, path = resolve(str(folder))
    target = posixpath.join(path, MANIFEST) if "://" in str(folder) else os.path.join(path, MANIFEST)
    try:
        if fs.get_file_info(target).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(target) as f:
            return json.loads(f.read())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {name or folder}: unreadable {MANIFEST} ({storage_problem(e)})") from None


def verify_checkpoint(folder: str | os.PathLike, name: str | None = None) -> dict[str, Any] | None:
    """Check a local checkpoint folder's state.pt against its manifest (size, then SHA-256); returns the manifest
    (None without one). CheckpointError names the folder (or `name`, where it came from) and what is wrong."""
    name = name or str(folder)
    state = Path(folder) / STATE_FILE
    if not state.is_file():
        raise CheckpointError(f"checkpoint {name}: no {STATE_FILE}")
    manifest = read_manifest(folder, name)
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


def _check_crc(file: Path, name: str) -> None:
    """Every record of a torch zip file against its CRC-32 (torch's own reader does not check them)."""
    try:
        with zipfile.ZipFile(file) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {name}: not a torch file, or a damaged one ({_first_line(e)})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {name}: {STATE_FILE} is damaged (record {bad} fails its CRC-32) and "
                              f"has no {MANIFEST} to compare with")


def load_checkpoint_state(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """The saved state of a local checkpoint folder (or of its state.pt), verified against its manifest first
    and, without one, checked to be a raytrain training state. CheckpointError names the checkpoint (`name`,
    default `path`) and the reason."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    name = name or str(path)
    manifest = verify_checkpoint(folder, name) if path.is_dir() or path.name == STATE_FILE else None
    file = folder / STATE_FILE if path.is_dir() else path
    if manifest is None:
        _check_crc(file, name)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails on foreign bytes in many ways (IndexError, ...)
        raise CheckpointError(f"checkpoint {name}: {torch_load_problem(e)}") from None
    if manifest is None and not (isinstance(state, dict) and all(k in state for k in RUN_KEYS)):
        raise CheckpointError(f"checkpoint {name}: a torch file, but not a raytrain training checkpoint (no "
                              f"{', '.join(RUN_KEYS)}) and no {MANIFEST}")
    return state


@contextmanager
def local_checkpoint(location: str) -> Iterator[Path]:
    """A checkpoint folder, or its state.pt, as a local path: itself, or a temporary copy of the folder's files
    (state.pt and manifest.json) for a URI."""
    if "://" not in location:
        yield Path(location)
        return
    fs, path = resolve(location)
    is_file = posixpath.basename(path) == STATE_FILE
    folder = posixpath.dirname(path) if is_file else path
    with tempfile.TemporaryDirectory(prefix="raytrain-ckpt-copy-") as tmp:
        local = Path(tmp) / posixpath.basename(folder)
        local.mkdir()
        for file in (STATE_FILE, MANIFEST):
            try:
                pafs.copy_files(posixpath.join(folder, file), str(local / file), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem(), chunk_size=COPY_CHUNK)
            except FileNotFoundError:
                continue  # named by the verification that follows
            except OSError as e:
                raise CheckpointError(f"checkpoint {location}: cannot copy {file} ({storage_problem(e)})") from None
        yield local / STATE_FILE if is_file else local


def load_checkpoint(location: str) -> dict[str, Any]:
    """The verified state of a checkpoint folder or its state.pt, local or a URI."""
    with local_checkpoint(location) as local:
        return load_checkpoint_state(local, name=location)


# ------------------------------------------------------------------------------------------------ runs

def checkpoint_locations(run: str) -> list[str]:
    """The `checkpoint_*` folders of a run folder on any storage, newest first (Train names them by time)."""
    fs, path = resolve(run)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as e:
        raise UserError(f"{run}: cannot list the run folder ({storage_problem(e)})") from None
    names = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith(CHECKPOINT_GLOB)), reverse=True)
    return [join(run, n) for n in names]


def checkpoint_folders(run: str | os.PathLike) -> list[Path]:
    """The `checkpoint_*` folders of a local run folder, newest first."""
    return [Path(p) for p in checkpoint_locations(str(run))]


def _state_size(location: str) -> int | None:
    fs, path = resolve(join(location, STATE_FILE))
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def _quick_check(location: str) -> dict[str, Any]:
    """A checkpoint's manifest, with state.pt present at the size it names (the hash is left to the load);
    without a manifest, the whole state, read and checked."""
    manifest = read_manifest(location)
    if manifest is None:
        return load_checkpoint(location)
    size = _state_size(location)
    if size is None:
        raise CheckpointError(f"checkpoint {location}: no {STATE_FILE}")
    if size != manifest.get("bytes"):
        raise CheckpointError(f"checkpoint {location}: {STATE_FILE} has {size} bytes, its manifest says "
                              f"{manifest.get('bytes')} (cut short, e.g. a copy that was interrupted)")
    return manifest


def _newest(run: str, read: Callable[[str], dict[str, Any]], warn: Warn | None
            ) -> tuple[str, dict[str, Any]] | None:
    locations = checkpoint_locations(run)
    if not locations:
        return None
    skipped = []
    for location in locations:
        try:
            return location, read(location)
        except CheckpointError as e:
            skipped.append(str(e))
            if warn is not None:
                warn(f"skipped {e}")
    raise CheckpointError(f"run {run}: none of its {len(locations)} checkpoints is intact ({'; '.join(skipped)})")


def newest_state(run: str, warn: Warn | None = None) -> tuple[str, dict[str, Any]] | None:
    """(location, verified state) of the newest intact checkpoint of a run folder on any storage; None when it
    has no checkpoint. Those skipped go to `warn`; CheckpointError when none is intact."""
    return _newest(run, load_checkpoint, warn)


def newest_manifest(run: str, warn: Warn | None = None) -> tuple[str, dict[str, Any]] | None:
    """Like `newest_state`, reading only manifests (and state.pt's size) where there are manifests: what the
    driver checks before a resume without downloading the state. The workers verify the hash when they load."""
    return _newest(run, _quick_check, warn)


def find_checkpoint(location: str, flag: str, warn: Warn | None = None) -> tuple[str, dict[str, Any]] | None:
    """What `flag` names, on any storage: a run folder (its newest intact checkpoint), a checkpoint folder or
    its state.pt -> (location, verified state); None for any other file (a weights file)."""
    fs, path = resolve(location)
    try:
        kind = fs.get_file_info(path).type
    except OSError as e:
        raise UserError(f"{flag} {location}: {storage_problem(e)}") from None
    if kind == pafs.FileType.NotFound:
        raise NotFound(f"{flag} {location}: not found")
    if kind == pafs.FileType.File:
        return (location, load_checkpoint(location)) if posixpath.basename(path) == STATE_FILE else None
    if _state_size(location) is not None or read_manifest(location) is not None:
        return location, load_checkpoint(location)
    found = newest_state(location, warn)
    if found is None:
        raise NotFound(f"{flag} {location}: a folder without {STATE_FILE} or checkpoint_* folders (not a "
                       f"training checkpoint or run)")
    return found
