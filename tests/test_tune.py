"""The Tune glue: flags -> search space and trial configs, concurrency from the cluster, the trial table and
plot; and (slow) a real sweep on synthetic shards, interrupted and restored to completion."""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import ray.tune
from PIL import Image

from conftest import private_cluster
from raytrain.config import SMTCConfig, SMTCSweepConfig, STMAEConfig, STMAESweepConfig, from_dict, parse
from raytrain.checkpoints import load_checkpoint_state
from raytrain.tune import (check, format_table, max_concurrent, plot_png, run_sweep, search_space, table_csv,
                           trial_config, trial_name)
from raytrain.methods.smtc import METHOD as SMTC_METHOD
from raytrain.methods.stmae import METHOD as STMAE_METHOD
from shards.pack import pack
from shards.synth import write_davis, write_ytvos


def test_flags_become_the_search_space():
    cfg = parse(SMTCSweepConfig, ["--num_slots", "8", "32", "--num_instance", "4", "--lr", "1e-5", "1e-3"])
    space = search_space(cfg)
    assert space["num_slots"].categories == [8, 32]
    assert space["num_instance"] == 4  # one value: fixed
    assert space["gap"].categories == [2, 4]  # the default choices
    lr = space["lr"]
    assert (lr.lower, lr.upper) == (1e-5, 1e-3)
    assert type(lr.get_sampler()) is type(ray.tune.loguniform(1.0, 2.0).get_sampler())

    space = search_space(parse(STMAESweepConfig, ["--lr", "3e-5"]))
    assert space["lr"] == 3e-5
    assert space["num_ref_frames"].categories == [2, 3] and space["num_frames"].categories == [6, 8]


def test_bad_sweep_flags_are_rejected():
    with pytest.raises(ValueError, match="--lr"):
        check(parse(SMTCSweepConfig, ["--lr", "1e-5", "1e-4", "1e-3", "--metric", "loss"]), SMTC_METHOD)
    with pytest.raises(ValueError, match="--val_data"):
        check(parse(SMTCSweepConfig, []), SMTC_METHOD)  # val_jf without validation data
    with pytest.raises(ValueError, match="--mode"):
        check(parse(STMAESweepConfig, ["--metric", "loss", "--mode", "lowest"]), STMAE_METHOD)


def test_trial_config_reports_a_checkpoint_and_the_metric_at_every_report():
    cfg = parse(SMTCSweepConfig, ["--steps", "100", "--checkpoint_every", "20", "--log_every", "5",
                                  "--resolution", "64", "--num_samples", "3"])
    base = trial_config(cfg)
    assert base["log_every"] == 20 and base["steps"] == 100 and base["resolution"] == 64
    # ASHA decides on each report's own metrics: trials validate in the loop, so every report carries val_jf
    assert base["val_async"] is False and from_dict(SMTCConfig, base).val_async is False
    assert not {"num_slots", "lr", "num_samples", "metric"} & set(base)
    trial = from_dict(SMTCConfig, {**base, "num_slots": 8, "num_instance": 2, "gap": 4, "lr": 1e-4})
    assert (trial.num_slots, trial.lr, trial.checkpoint_every) == (8, 1e-4, 20)

    base = trial_config(parse(STMAESweepConfig, ["--max_skip", "3", "--max_skip_at", "0"]))
    trial = from_dict(STMAEConfig, {**base, "lr": 1e-5, "num_ref_frames": 2, "num_frames": 6})
    assert trial.max_skip == [3] and trial.num_frames == 6


def test_concurrency_follows_the_cluster():
    gpu = SimpleNamespace(max_concurrent_trials=0, use_gpu=True, num_workers=2, cpus_per_worker=1.0)
    assert max_concurrent(gpu, {"CPU": 96.0, "GPU": 8.0}) == 4
    assert max_concurrent(gpu, {"CPU": 8.0}) == 1  # autoscaling cluster without GPU nodes yet
    cpu = SimpleNamespace(max_concurrent_trials=0, use_gpu=False, num_workers=1, cpus_per_worker=2.0)
    assert max_concurrent(cpu, {"CPU": 8.0}) == 2
    assert max_concurrent(SimpleNamespace(**{**vars(cpu), "max_concurrent_trials": 5}), {"CPU": 1.0}) == 5


def test_trial_names_follow_the_trial_index():
    assert trial_name(SimpleNamespace(trial_id="3f2a1_00007")) == "trial_007"


def test_table_csv_and_plot():
    rows = [{"trial": f"trial_00{i}", "status": s, "num_slots": n, "lr": lr, "val_jf": jf, "step": st,
             "checkpoint": f"/r/trial_00{i}/ck"}
            for i, (s, n, lr, jf, st) in enumerate([("done", 8, 1e-4, 0.5, 12), ("early-stopped", 16, 2e-3, 0.25, 4),
                                                   ("error", 8, 3e-5, None, None)])]
    text = format_table(rows)
    assert "checkpoint" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["trial", "status", "num_slots", "lr", "val_jf", "step"]
    assert lines[2].split() == ["trial_001", "early-stopped", "16", "0.002", "0.25", "4"]
    assert lines[3].split()[-2:] == ["-", "-"]
    back = list(csv.DictReader(io.StringIO(table_csv(rows).decode())))
    assert [r["val_jf"] for r in back] == ["0.5", "0.25", ""] and back[0]["checkpoint"] == "/r/trial_000/ck"
    img = Image.open(io.BytesIO(plot_png(rows, ["num_slots", "lr"], "val_jf")))
    assert img.format == "PNG" and img.width > img.height


@pytest.fixture(scope="module")
def ray_head():
    """A one-node cluster with the dashboard, whose state API frees the placement groups of stopped trials."""
    with private_cluster({"num_cpus": 4, "include_dashboard": True, "object_store_memory": int(1e9)}):
        yield


def _event_steps(folder: Path) -> list[list[int]]:
    """Steps logged to TensorBoard, per event file (one file per start of the Train run)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [sorted({e.step for e in EventFileLoader(str(f)).Load() if e.summary.value})
            for f in sorted(folder.glob("events.*"))]


@pytest.mark.slow
def test_sweep_is_interrupted_restored_and_summarized(ray_head, tmp_path, capsys):
    write_ytvos(tmp_path / "yt", num_videos=3, num_frames=12, height=64, num_val=1, seed=5)
    pack(str(tmp_path / "yt"), str(tmp_path / "shards"), layout="ytvos", split="train", shard_size="60KB")
    write_davis(tmp_path / "davis", num_videos=2, num_frames=5, height=64, num_val=1, seed=5)
    cfg = parse(SMTCSweepConfig, [
        "--data", str(tmp_path / "shards"), "--val_data", str(tmp_path / "davis"), "--val_videos", "1",
        "--storage_path", str(tmp_path / "sweeps"), "--name", "sw", "--num_samples", "2",
        "--max_concurrent_trials", "2", "--steps", "4", "--checkpoint_every", "2", "--grace_steps", "2",
        "--num_slots", "4", "8", "--num_instance", "2", "--gap", "2", "4", "--lr", "1e-4", "1e-3",
        "--resolution", "64", "--batch_size", "2", "--clips_per_video", "2", "--grad_iter", "0"])
    sweep = tmp_path / "sweeps" / "sw"

    checkpointed: list[str] = []

    def interrupt_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not checkpointed:
            checkpointed.extend(p.parent.name for p in sweep.glob("train/trial_*/checkpoint_*"))
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop, as on Ctrl+C

    watcher = threading.Thread(target=interrupt_after_first_checkpoint, daemon=True)
    watcher.start()
    results, _ = run_sweep(SMTC_METHOD, cfg)
    watcher.join(timeout=1)
    assert "the sweep was interrupted" in capsys.readouterr().out
    first = {Path(r.path).name: r.metrics.get("step") for r in results}
    assert sorted(first) == ["trial_000", "trial_001"] and min(s or 0 for s in first.values()) < 4

    results, best = run_sweep(SMTC_METHOD, cfg)
    out = capsys.readouterr().out
    assert "restoring the sweep" in out and "the sweep was interrupted" not in out
    rows = list(csv.DictReader((sweep / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["trial_000", "trial_001"]
    for row in rows:
        assert row["status"] in ("done", "early-stopped")
        assert (row["status"] == "done") == (row["step"] == "4")
        assert 0.0 <= float(row["val_jf"]) <= 1.0 and row["num_instance"] == "2"
    # The trial that had checkpointed step 2 when the sweep was stopped went on from a checkpoint, not from
    # scratch, retraining at most one checkpoint interval (2 steps): TensorBoard has one event file per start
    # of its Train run; the fresh start logs its validation at step 0, then step 2, and a run started from the
    # checkpoint of step c logs c + 2 first.
    starts = [s for s in _event_steps(sweep / "train" / checkpointed[0] / "tensorboard") if s]
    assert starts[0][:2] == [0, 2] and starts[-1][-1] == 4
    for before, after in zip(starts, starts[1:]):
        assert after[0] != 0, "a resumed run does not validate its starting point again"
        resumed_from = after[0] - 2
        assert resumed_from >= 2 and before[-1] - resumed_from <= 2, starts
    assert load_checkpoint_state(best["checkpoint"])["step"] == best["step"]
    assert f"best checkpoint: {best['checkpoint']}" in out
    assert Image.open(sweep / "val_jf_vs_params.png").format == "PNG"


@pytest.mark.slow
def test_asha_stops_a_trial_on_val_jf_at_its_milestone(ray_head, tmp_path):
    """Two trials, one at a time, with a scripted validation (through the sweep's `Method` record): trial_000
    scores 0.9 at every checkpoint and runs to the end; trial_001 scores 0.1, is below the step-2 rung's cutoff
    (the two trials' median) and ASHA stops it there. Every report carries val_jf (trials validate in the loop)."""
    def scripted(task, cfg, share):
        jf = 0.9 if cfg.name == "trial_000" else 0.1
        return {"val_jf": jf, "val_j": jf, "val_f": jf}

    write_ytvos(tmp_path / "yt", num_videos=2, num_frames=8, height=32, num_val=1, seed=5)
    pack(str(tmp_path / "yt"), str(tmp_path / "shards"), layout="ytvos", split="train", shard_size="60KB")
    write_davis(tmp_path / "davis", num_videos=1, num_frames=3, height=32, num_val=1, seed=5)
    cfg = parse(SMTCSweepConfig, [
        "--data", str(tmp_path / "shards"), "--val_data", str(tmp_path / "davis"), "--val_videos", "1",
        "--storage_path", str(tmp_path / "sweeps"), "--name", "asha", "--num_samples", "2",
        "--max_concurrent_trials", "1", "--steps", "4", "--checkpoint_every", "2", "--grace_steps", "2",
        "--reduction_factor", "2", "--num_slots", "2", "--num_instance", "2", "--gap", "2", "--lr", "1e-4",
        "--resolution", "32", "--batch_size", "1", "--num_workers", "1", "--clips_per_video", "2",
        "--grad_iter", "0", "--num_frames", "2"])
    scripted_method = dataclasses.replace(SMTC_METHOD, val_scores=scripted, val_join=lambda parts: parts[0])
    results, best = run_sweep(scripted_method, cfg)
    rows = {r["trial"]: r for r in csv.DictReader((tmp_path / "sweeps" / "asha" / "trials.csv").open())}
    assert (rows["trial_000"]["status"], rows["trial_000"]["step"], rows["trial_000"]["val_jf"]) == ("done", "4", "0.9")
    assert (rows["trial_001"]["status"], rows["trial_001"]["step"], rows["trial_001"]["val_jf"]) == (
        "early-stopped", "2", "0.1")
    assert best["trial"] == "trial_000"
