"""Run folders: where a training run keeps its checkpoints and logs (checkpoints themselves: `raytrain.checkpoints`;
starting Ray: `shards.cluster`). A run's name is deterministic, so resubmitting it resumes.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from shards.layout import resolve


FATAL_FILE = "fatal.txt"  # in a run folder: why its workers stopped without training on (read by the driver)


def run_dir(cfg: Any, method: str) -> tuple[str, str]:
    """(storage_path, name) of a run: `--storage_path` (./runs) and `--name` (`<method>-default`); the name is
    deterministic, so resubmitting resumes."""
    return cfg.storage_path or str(Path("runs").resolve()), cfg.name or f"{method}-default"


def run_location(cfg: Any, method: str) -> str:
    """The run folder, `<storage_path>/<name>`, as a local path or a URI."""
    storage, name = run_dir(cfg, method)
    return f"{storage.rstrip('/')}/{name}" if "://" in storage else os.path.join(storage, name)


def write_fatal(run: str, reason: str) -> None:
    """Leave `reason` in the run folder: the run cannot go on, and a retry would fail the same way."""
    fs, folder = resolve(run)
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(posixpath.join(folder, FATAL_FILE)) as f:
        f.write(reason.encode())


def take_fatal(run: str) -> str | None:
    """The reason `write_fatal` left in the run folder (removed as it is read), or None."""
    fs, folder = resolve(run)
    path = posixpath.join(folder, FATAL_FILE)
    try:
        with fs.open_input_stream(path) as f:
            reason = f.read().decode()
    except (FileNotFoundError, OSError):
        return None
    fs.delete_file(path)
    return reason
