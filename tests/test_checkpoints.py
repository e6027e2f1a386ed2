"""Checkpoints that can be trusted: a manifest (size and SHA-256 of state.pt) written with each one and verified
on load; a resume takes the newest intact checkpoint and names the ones it skipped; a resumed run's flags are
compared with the checkpoint's.

The slow test trains a run, cuts its newest checkpoint short, adds a newer half-copied folder, and submits
the run again through the training front-end: it resumes from the previous checkpoint and ends at the
planned step.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import pack_serially
from raytrain.cli.checks import check_resume
from raytrain.cli.train import main
from raytrain.config import SMTCConfig, config_changes, parse, to_dict
from raytrain.checkpoints import (MANIFEST, STATE_FILE, CheckpointError, checkpoint_folders, find_checkpoint,
                                  load_checkpoint_state, newest_manifest, newest_state, write_checkpoint)
from raytrain.methods.smtc import METHOD as SMTC_METHOD
from shards.errors import UsageError
from shards.synth import write_ytvos


def _run(root: Path, steps: tuple[int, ...], cfg: SMTCConfig, sampler: dict | None = None) -> list[Path]:
    for step in steps:
        folder = root / f"checkpoint_2026-01-01_00-00-{step:02d}.000000"
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(write_checkpoint({"task": {"w": torch.full((256,), float(step))}, "step": step, "starts": [0],
                                      "job": "smtc", "config": to_dict(cfg), "sampler": sampler}), folder)
    return checkpoint_folders(root)


def test_manifest_is_verified_and_the_newest_intact_checkpoint_is_found(tmp_path):
    newest, middle, oldest = _run(tmp_path / "run", (2, 4, 6), SMTCConfig())
    manifest = json.loads((newest / MANIFEST).read_text())
    assert manifest["step"] == 6 and manifest["job"] == "smtc"
    assert manifest["bytes"] == (newest / STATE_FILE).stat().st_size
    data = (newest / STATE_FILE).read_bytes()
    (newest / STATE_FILE).write_bytes(data[:len(data) // 2])  # cut short
    raw = bytearray((middle / STATE_FILE).read_bytes())
    raw[-30] ^= 0xFF  # same size, other bytes
    (middle / STATE_FILE).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{newest.name}: state.pt has \d+ bytes, its manifest says"):
        load_checkpoint_state(newest)
    with pytest.raises(CheckpointError, match=rf"{middle.name}: state.pt does not match the SHA-256"):
        load_checkpoint_state(middle)
    warnings: list[str] = []
    where, state = newest_state(str(tmp_path / "run"), warnings.append)
    assert where == str(oldest) and state["step"] == 2 and len(warnings) == 2
    assert newest.name in warnings[0] and middle.name in warnings[1]
    # The driver's check reads manifests only: it sees the cut-short one, not the hash mismatch.
    where, manifest = newest_manifest(str(tmp_path / "run"))
    assert where == str(middle) and manifest["step"] == 4


def test_a_folder_without_a_manifest_is_read_whole_and_foreign_ones_are_skipped(tmp_path):
    newest, middle, oldest = _run(tmp_path / "run", (2, 4, 6), SMTCConfig())
    for folder in (newest, middle):
        (folder / MANIFEST).unlink()
    torch.save({"weights": torch.zeros(3)}, newest / STATE_FILE)  # a foreign state.pt, no manifest
    raw = bytearray((middle / STATE_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # damaged inside the tensor data: only the zip's CRC can tell
    (middle / STATE_FILE).write_bytes(bytes(raw))
    warnings: list[str] = []
    for find in (newest_state, newest_manifest):
        warnings.clear()
        where, _ = find(str(tmp_path / "run"), warnings.append)
        assert where == str(oldest)
        assert "not a raytrain training checkpoint" in warnings[0] and newest.name in warnings[0]
        assert "damaged" in warnings[1] and middle.name in warnings[1]
    lines: list[str] = []
    where, state = find_checkpoint(str(tmp_path / "run"), "--checkpoint", lines.append)
    assert where == str(oldest) and state["step"] == 2 and len(lines) == 2
    with pytest.raises(CheckpointError, match="damaged"):
        find_checkpoint(str(middle / STATE_FILE), "--checkpoint")
    for folder in (oldest,):
        (folder / STATE_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError, match="none of its 3 checkpoints is intact"):
        newest_state(str(tmp_path / "run"))


def test_a_checkpoint_without_a_manifest_is_still_read_and_a_foreign_file_is_named(tmp_path):
    (folder,) = _run(tmp_path / "old", (3,), SMTCConfig())
    (folder / MANIFEST).unlink()  # written before manifests existed
    assert load_checkpoint_state(folder)["step"] == 3
    (folder / STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"checkpoint {folder}: not a torch file"):
        load_checkpoint_state(folder)


def test_resuming_with_other_flags_is_refused_unless_allowed(tmp_path, capsys):
    cfg = parse(SMTCConfig, ["--data", str(tmp_path / "d"), "--storage_path", str(tmp_path), "--name", "r",
                             "--batch_size", "2"])
    _run(tmp_path / "r", (4,), cfg)
    check_resume(SMTC_METHOD, dataclasses.replace(cfg, steps=20, log_every=1))  # where and how long: free to change
    assert "resuming" in capsys.readouterr().out
    changed = dataclasses.replace(cfg, batch_size=4, lr=1e-3)
    assert config_changes(to_dict(cfg), changed) == [
        "--lr 2e-05 -> 0.001", "--batch_size 2 -> 4 (global batch 2 -> 4 clips; --global_batch_size 2 keeps it on "
        "any number of workers)"]
    # the worker count may change at the same global batch, and a checkpoint of the earlier plan is refused
    assert config_changes(to_dict(cfg), dataclasses.replace(cfg, num_workers=2, global_batch_size=2)) == []
    _run(tmp_path / "old", (4,), dataclasses.replace(cfg, name="old"),
         sampler={"seed": 0, "world_size": 1, "batch_size": 2})
    with pytest.raises(UsageError, match=r"the clip stream \(it was trained on the clip plan of an earlier version"):
        check_resume(SMTC_METHOD, dataclasses.replace(cfg, name="old"))
    with pytest.raises(UsageError, match=r"--lr 2e-05 -> 0.001, --batch_size 2 -> 4.*--allow_config_change"):
        check_resume(SMTC_METHOD, changed)
    check_resume(SMTC_METHOD, dataclasses.replace(changed, allow_config_change=True))
    assert "with changed flags: --lr" in capsys.readouterr().out


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped_on_resubmission(ray_local, tmp_path, capsys):
    write_ytvos(tmp_path / "yt", num_videos=3, num_frames=8, height=32, num_val=1, seed=2)
    pack_serially(tmp_path / "yt", tmp_path / "shards", "ytvos", "train")
    argv = ["--data", str(tmp_path / "shards"), "--storage_path", str(tmp_path / "runs"), "--name", "cut",
            "--steps", "6", "--checkpoint_every", "2", "--log_every", "2", "--num_workers", "1", "--batch_size", "2",
            "--resolution", "32", "--num_slots", "2", "--num_instance", "2", "--clips_per_video", "2",
            "--num_frames", "2", "--gap", "1", "--grad_iter", "0", "--max_failures", "0"]
    main(SMTC_METHOD, argv)
    run = tmp_path / "runs" / "cut"
    folders = checkpoint_folders(run)
    assert [load_checkpoint_state(f)["step"] for f in folders] == [6, 4, 2]
    newest = folders[0]
    data = (newest / STATE_FILE).read_bytes()
    (newest / STATE_FILE).write_bytes(data[:len(data) // 3])
    half = run / "checkpoint_9999-01-01_00-00-00.000000"  # newer, but a copy to storage that was cut off
    shutil.copytree(newest, half)
    capsys.readouterr()

    main(SMTC_METHOD, argv)  # the same command again
    out = capsys.readouterr().out
    assert f"skipped checkpoint {half}" in out and f"skipped checkpoint {newest}" in out
    assert f"from {folders[1].name} (step 4)" in out
    skipped: list[str] = []
    _, state = newest_state(str(run), skipped.append)
    assert state["step"] == 6 and state["starts"] == [0, 4]  # trained steps 5 and 6 again, from step 4
    assert half.name in skipped[0]  # never taken for an intact one; left for the user to delete
