"""Run folders: where a training run keeps its checkpoints and logs (checkpoints themselves: `raytrain.checkpoints`;
starting Ray: `shards.cluster`). A run's name is deterministic, so resubmitting it resumes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def run_dir(cfg: Any, job: str) -> tuple[str, str]:
    """(storage_path, name) of a run: `--storage_path` (./runs) and `--name` (`<job>-default`); the name is
    deterministic, so resubmitting resumes."""
    return cfg.storage_path or str(Path("runs").resolve()), cfg.name or f"{job}-default"


def run_location(cfg: Any, job: str) -> str:
    """The run folder, `<storage_path>/<name>`, as a local path or a URI."""
    storage, name = run_dir(cfg, job)
    return f"{storage.rstrip('/')}/{name}" if "://" in storage else os.path.join(storage, name)
