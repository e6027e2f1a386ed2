"""Both training jobs on a real Ray Train run (2 CPU workers, gloo, real shards): the loss falls, a worker
killed mid-run resumes from the last checkpoint and the run ends at the planned step, and resubmitting the
same run name resumes it."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import pack_synthetic
from raytrain.config import SMTCConfig, STMAEConfig
from raytrain.runtime import CKPT_PREFIX, load_checkpoint_state, remove_stale_checkpoint_folders
from raytrain.train.loop import FAILURE_ENV, fit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(ray_local, tmp_path_factory):
    return pack_synthetic(tmp_path_factory.mktemp("train"), num_videos=4, yt_frames=16, davis_frames=10,
                          seed=2, shard_size="60KB")


def _losses(run_dir):
    """The loss of every report, by step, read back from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


def _run_with_a_killed_worker(cfg, tmp_path, kill_at):
    marker = tmp_path / "killed"
    os.environ[FAILURE_ENV] = f"{kill_at}:1:{marker}"
    try:
        result = fit("smtc" if isinstance(cfg, SMTCConfig) else "stmae", cfg)
    finally:
        del os.environ[FAILURE_ENV]
    assert marker.exists(), "the failure was not injected"
    return result


@pytest.mark.parametrize("job", ["smtc", "stmae"])
def test_run_resumes_after_a_killed_worker_and_on_resubmission(job, shards, tmp_path):
    if job == "smtc":
        cfg = SMTCConfig(data=str(shards / "yt_shards"), resolution=64, num_slots=4, num_instance=2,
                         batch_size=2, grad_iter=0, lr=3e-3)
    else:
        cfg = STMAEConfig(data=str(shards / "davis_shards"), crop=64, num_frames=4, num_ref_frames=2,
                          batch_size=2, lr=1e-4, max_skip=[3], max_skip_at=[0.0])
    cfg = dataclasses.replace(cfg, storage_path=str(tmp_path / "runs"), name=f"{job}-ft", num_workers=2,
                              steps=12, checkpoint_every=4, log_every=2, clips_per_video=2, max_failures=2)
    temp_checkpoints = set(Path(tempfile.gettempdir()).glob("raytrain-ckpt-*"))
    result = _run_with_a_killed_worker(cfg, tmp_path, kill_at=6)
    # Train persisted each checkpoint to storage and its temp folder went away.
    assert set(Path(tempfile.gettempdir()).glob("raytrain-ckpt-*")) <= temp_checkpoints
    state = load_checkpoint_state(result.checkpoint.path)
    assert state["step"] == 12
    assert state["starts"] == [0, 4]  # restarted from the step-4 checkpoint, not from scratch
    losses = _losses(tmp_path / "runs" / f"{job}-ft")
    assert sorted(losses) == [2, 4, 6, 8, 10, 12]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses[12] < losses[2], f"loss did not fall: {losses}"

    more = fit(job, dataclasses.replace(cfg, steps=16))  # resubmitting the same run name resumes it
    state = load_checkpoint_state(more.checkpoint.path)
    assert state["step"] == 16 and state["starts"] == [0, 4, 12]


def test_temp_checkpoints_of_dead_processes_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale, live = tmp_path / f"{CKPT_PREFIX}{ended.pid}-a1", tmp_path / f"{CKPT_PREFIX}{os.getpid()}-b2"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"x")
    remove_stale_checkpoint_folders()
    assert not stale.exists() and live.exists()
