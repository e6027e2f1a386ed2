"""Validation off the training path (`raytrain.train.validation`): a checkpoint read back from disk and scored
in a Ray task gives the numbers the training loop's own validation gives on the model it saved; the metrics land
on their checkpoint (Train's result, `<run>/curve`, TensorBoard at its step); a failed validation is reported and
training goes on; training steps run while a validation is in flight; the best checkpoint survives num_to_keep."""
from __future__ import annotations

from dataclasses import replace
import json
import os
import time
from pathlib import Path

import pytest
import ray.train
import torch

from conftest import pack_synthetic
from shards.synth import write_davis
from raytrain.checkpoints import (CHECKPOINT_GLOB, STATE_FILE, CheckpointError, load_checkpoint_state, read_manifest,
                                  write_checkpoint)
from raytrain.config import SMTCConfig, STMAEConfig, to_dict
from raytrain.train.loop import checkpoint_config, fit
from raytrain.methods import get
from raytrain.train.stmae_task import STMAETask
from raytrain.train.validation import merged_curve, read_records, validate_checkpoint, write_record


def _scalars(folder: Path, tag: str) -> dict[int, tuple[float, float]]:
    """step -> (value, wall time) of a TensorBoard tag over every event file in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {e.step: (e.value, e.wall_time) for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {}


@pytest.mark.parametrize("job", ["smtc", "stmae"])
def test_a_saved_checkpoint_scores_as_the_model_it_was_saved_from(job, synth_davis, tmp_path, capsys):
    if job == "smtc":
        cfg = SMTCConfig(num_slots=4, num_instance=2, resolution=64, val_data=str(synth_davis))
    else:
        cfg = STMAEConfig(crop=64, val_data=str(synth_davis), val_videos=1)
    task = get(job).task(cfg, "cpu")
    with torch.no_grad():  # weights a fresh task of the same seed does not have: the checkpoint must be loaded
        gen = torch.Generator().manual_seed(1)
        for p in task.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    expected = get(job).validate(task, cfg)
    folder = write_checkpoint({"task": task.state_dict(), "step": 7, "job": job, "config": to_dict(cfg)})
    run = tmp_path / "run"
    got = validate_checkpoint(ray.train.Checkpoint.from_directory(folder), method=get(job), cfg=to_dict(cfg),
                              run=str(run), tensorboard_dir=str(run / "tensorboard"))
    assert got == expected  # exactly: the same numbers as the synchronous path on the same weights
    assert 0 < got["val_jf"] < 1
    assert read_records(str(run)) == [{"step": 7, **expected}]
    assert _scalars(run / "tensorboard", "train/val_jf")[7][0] == pytest.approx(expected["val_jf"], rel=1e-6)
    assert f"[{job}] step 7/{cfg.steps} | val J&F {expected['val_jf']:.3f}" in capsys.readouterr().out


@pytest.mark.parametrize("job", ["smtc", "stmae"])
def test_a_validation_split_over_tasks_gives_the_numbers_of_one(job, ray_local, tmp_path):
    """--val_tasks 2: two Ray tasks (other processes) score every other video each; the joined metrics are
    exactly those of one pass over all the videos."""
    write_davis(tmp_path / "davis", num_videos=4, num_frames=5, height=64, num_val=3, seed=4)
    if job == "smtc":
        cfg = SMTCConfig(num_slots=4, num_instance=2, resolution=64, val_data=str(tmp_path / "davis"))
    else:
        cfg = STMAEConfig(crop=64, val_data=str(tmp_path / "davis"))
    method, calls = get(job), tmp_path / "calls"
    calls.mkdir()
    real = method.val_scores

    def recorded(task, cfg, share):
        (calls / f"{share[0]}-{share[1]}").write_text(str(os.getpid()))
        return real(task, cfg, share)

    task = method.task(cfg, "cpu")
    expected = method.validate(task, cfg)
    folder = write_checkpoint({"task": task.state_dict(), "step": 3, "job": job, "config": to_dict(cfg)})
    split = to_dict(replace(cfg, val_tasks=2))
    got = validate_checkpoint(ray.train.Checkpoint.from_directory(folder), method=replace(method, val_scores=recorded),
                              cfg=split, run=str(tmp_path / "run"), tensorboard_dir=str(tmp_path / "tb"))
    assert got == expected and 0 < got["val_jf"] < 1
    pids = {p.name: int(p.read_text()) for p in calls.iterdir()}
    assert sorted(pids) == ["0-2", "1-2"] and os.getpid() not in pids.values()


def test_a_failed_validation_is_printed_recorded_and_raised(synth_davis, tmp_path, capsys):
    cfg = STMAEConfig(crop=64, val_data=str(synth_davis), val_videos=1)
    folder = write_checkpoint({"task": STMAETask(cfg, "cpu").state_dict(), "step": 4, "job": "stmae"})

    def broken(task, cfg, share):
        raise RuntimeError("CUDA out of memory\nmore")

    with pytest.raises(RuntimeError, match="out of memory"):
        validate_checkpoint(ray.train.Checkpoint.from_directory(folder),
                            method=replace(get("stmae"), val_scores=broken),
                            cfg=to_dict(cfg), run=str(tmp_path), tensorboard_dir=str(tmp_path / "tb"))
    assert "[stmae] step 4: validation failed: CUDA out of memory" in capsys.readouterr().out
    (record,) = read_records(str(tmp_path))
    assert record["step"] == 4 and record["error"] == "CUDA out of memory"


def test_a_damaged_checkpoint_fails_its_validation(synth_davis, tmp_path, capsys):
    """So that it ranks last by --keep_metric and is deleted first, not kept in place of an intact one."""
    cfg = STMAEConfig(crop=64, val_data=str(synth_davis), val_videos=1)
    folder = Path(write_checkpoint({"task": STMAETask(cfg, "cpu").state_dict(), "step": 8, "job": "stmae"}))
    data = bytearray((folder / STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / STATE_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        validate_checkpoint(ray.train.Checkpoint.from_directory(str(folder)), method=get("stmae"), cfg=to_dict(cfg),
                            run=str(tmp_path), tensorboard_dir=str(tmp_path / "tb"))
    assert "[stmae] step 8: validation failed: checkpoint" in capsys.readouterr().out
    (record,) = read_records(str(tmp_path))
    assert record["step"] == 8 and "SHA-256" in record["error"]


def test_records_join_the_curve_of_their_checkpoint(tmp_path):
    run = str(tmp_path)
    for record in ({"step": 0, "val_jf": 0.1}, {"step": 4, "val_jf": 0.3}, {"step": 8, "error": "timed out"},
                   {"step": 12, "val_jf": 0.9}):
        write_record(run, record)
    curve = [{"step": 4, "loss": 2.0}, {"step": 8, "loss": 1.5}]
    # step 12's record belongs to a checkpoint after this one (a later, lost attempt): left out
    assert merged_curve(curve, run) == [{"step": 0, "val_jf": 0.1}, {"step": 4, "loss": 2.0, "val_jf": 0.3},
                                        {"step": 8, "loss": 1.5}]


def test_checkpoints_are_kept_by_the_metric():
    best = checkpoint_config(SMTCConfig(val_data="v", num_to_keep=2))
    assert (best.num_to_keep, best.checkpoint_score_attribute, best.checkpoint_score_order) == (2, "val_jf", "max")
    loss = checkpoint_config(SMTCConfig(keep_metric="loss", num_to_keep=1))
    assert (loss.checkpoint_score_attribute, loss.checkpoint_score_order) == ("loss", "min")
    newest = checkpoint_config(SMTCConfig(num_to_keep=2))  # no --val_data: no val_jf to rank by
    assert (newest.num_to_keep, newest.checkpoint_score_attribute) == (3, None)


@pytest.fixture(scope="module")
def shards(ray_local, tmp_path_factory):
    return pack_synthetic(tmp_path_factory.mktemp("offpath"), num_videos=4, yt_frames=8, davis_frames=10, seed=3,
                          shard_size="60KB")


@pytest.mark.slow
def test_validation_runs_while_training_goes_on(shards, tmp_path):
    """STMAE on 2 workers, 10 steps, a checkpoint every 2; a scripted validation that takes 6 s and scores step 2
    best, fails on step 4 and scores the later ones low. Training steps are logged while step 2's validation
    runs; the run ends; each score lands on its checkpoint; with num_to_keep 1 the kept checkpoints are the
    best (step 2) and the newest (step 10)."""
    spans = tmp_path / "spans"
    spans.mkdir()
    scripted = {0: 0.5, 2: 0.9, 6: 0.1, 8: 0.2, 10: 0.3}

    def scripted_validation(task, cfg, share):
        state = task.optimizer.state_dict()["state"]
        step = int(next(iter(state.values()))["step"]) if state else 0  # the optimizer counts the steps
        start = time.time()
        time.sleep(6)
        (spans / f"{step}.json").write_text(json.dumps([start, time.time()]))
        if step not in scripted:
            raise ValueError(f"scripted failure at step {step}")
        return {"val_jf": scripted[step], "val_j": scripted[step], "val_f": scripted[step]}

    cfg = STMAEConfig(data=[str(shards / "davis_shards")], val_data=str(shards / "davis"), crop=64, num_frames=4,
                      num_ref_frames=2, batch_size=1, max_skip=[3], max_skip_at=[0.0], num_workers=2, steps=10,
                      checkpoint_every=2, log_every=1, max_failures=0, num_to_keep=1, cpus_per_worker=0.5, decode_workers=1,
                      val_cpus=0.5, storage_path=str(tmp_path / "runs"), name="offpath")
    result = fit(replace(get("stmae"), val_scores=scripted_validation, val_join=lambda parts: parts[0]), cfg)
    run = tmp_path / "runs" / "offpath"

    losses = _scalars(run / "tensorboard", "train/loss")
    start, end = json.loads((spans / "2.json").read_text())
    assert any(start < wall < end for step, (_, wall) in losses.items() if step > 2), \
        f"no step trained while step 2 was validated ({start}-{end}): {losses}"

    assert {r["step"]: r.get("val_jf", r.get("error")) for r in read_records(str(run))} == {
        0: 0.5, 2: 0.9, 4: "scripted failure at step 4", 6: 0.1, 8: 0.2, 10: 0.3}
    assert {s: v for s, (v, _) in _scalars(run / "tensorboard", "train/val_jf").items()} == pytest.approx(scripted)

    kept = {read_manifest(p)["step"]: p for p in run.glob(f"{CHECKPOINT_GLOB}*") if p.is_dir()}
    assert sorted(kept) == [2, 10]  # the best and the newest; step 4 (failed validation) went first
    by_step = {load_checkpoint_state(c.path)["step"]: m for c, m in result.best_checkpoints}
    assert by_step[2]["val_jf"] == 0.9 and by_step[2]["step"] == 2  # Train's record of the checkpoint has it
    assert result.metrics["step"] == 10 and result.metrics["val_jf"] == 0.3  # the newest, once validated
    assert load_checkpoint_state(result.checkpoint.path)["step"] == 10
