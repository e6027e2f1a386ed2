"""Shared fixtures: a local Ray instance and small synthetic DAVIS / YouTube-VOS datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every Ray instance a test starts, in-process or with `ray start`, runs without token auth. Set once for the
# whole session: a client and a cluster that disagree on the mode cannot talk (see shared/reference/ray.md §5).
os.environ["RAY_AUTH_MODE"] = "disabled"

from shards.synth import write_davis, write_ytvos

# Small enough for 2 CPU cores; tests that need other sizes call write_davis/write_ytvos themselves.
SYNTH = dict(num_videos=4, num_frames=8, height=64, max_objects=3, seed=0)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for the module (4 logical CPUs so Ray Data tasks fit next to workers)."""
    import ray
    from ray.data import DataContext

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=int(1e9), ignore_reinit_error=True,
             log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_davis(tmp_path_factory) -> Path:
    """DAVIS-2017 layout: 4 sequences (3 train, 1 val) x 8 frames, 64 x 114 px, up to 3 objects."""
    root = tmp_path_factory.mktemp("davis")
    write_davis(root, **SYNTH)
    return root


@pytest.fixture(scope="session")
def synth_ytvos(tmp_path_factory) -> Path:
    """YouTube-VOS layout: 4 videos (3 train, 1 valid with a late object) x 8 frames, 64 x 114 px."""
    root = tmp_path_factory.mktemp("ytvos")
    write_ytvos(root, **SYNTH)
    return root
