"""What a person reads: the training progress line, the end-of-run summary and plain progress lines in logs."""
from __future__ import annotations

import io

import pytest

from raytrain.cli.train import run_lines, summary
from raytrain.config import SMTCConfig, STMAEConfig, scaled_lr
from raytrain.methods import get
from raytrain.train.stmae_task import lr_at
from raytrain.train.progress import progress_line
from shards.progress import Progress


def test_progress_line_holds_what_a_person_looks_for():
    metrics = {"loss": 2.25, "loss_cons": 1.4, "loss_diff": 0.9, "lr": 1e-4, "clips_per_s": 3.5,
               "data_wait": 0.12, "skipped_frame": 2.0, "skipped_shard": 0.0, "val_jf": 0.41, "val_j": 0.4,
               "val_f": 0.42, "val_disc_jf": 0.2, "step": 20}
    line = progress_line("smtc", 20, 60, metrics, eta_s=95)
    assert line == ("[smtc] step 20/60 | loss 2.2500 (cons 1.400 diff 0.900) | val J&F 0.410 (J 0.400 F 0.420) | "
                    "discovery J&F 0.200 | 3.5 clips/s, data wait 12% | skipped frame 2 | ETA 1m35s")
    assert progress_line("stmae", 0, 40, {"val_jf": 0.1, "val_j": 0.1, "val_f": 0.1}) == \
        "[stmae] step 0/40 | val J&F 0.100 (J 0.100 F 0.100)"


def test_summary_gives_start_and_end():
    curve = [{"step": 0, "val_jf": 0.30, "val_j": 0.3, "val_f": 0.3}, {"step": 10, "loss": 2.0},
             {"step": 20, "loss": 1.5, "val_jf": 0.45}]
    assert summary(curve) == ["loss:          2.0000 (step 10) -> 1.5000 (step 20), -0.5000",
                              "val J&F:       0.3000 (step 0) -> 0.4500 (step 20), +0.1500"]
    assert summary([]) == []


def test_progress_in_a_log_is_a_few_plain_lines():
    out = io.StringIO()
    with Progress(50, "pack", unit="shard", stream=out) as bar:
        for i in range(50):
            bar.update(note=f"shard {i}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # each tenth of the work, the last one included
    assert lines[-1].startswith("[pack] 50/50 shards") and lines[-1].endswith("(shard 49)")
    assert "ETA" in lines[0] and "ETA" not in lines[-1]


def test_a_run_starts_with_its_global_batch_lr_and_warnings():
    smtc = run_lines(get("smtc"), SMTCConfig(num_workers=2, batch_size=4))
    assert smtc[0] == ("global batch 8 clips per step (2 workers x 4), lr 2e-05 (the upstream recipe trains smtc at "
                       "a global batch of 128; --lr_scaling linear scales --lr with the batch)")
    assert smtc[1].startswith("warning: SMTC: no --dino_path") and len(smtc) == 2
    assert run_lines(get("smtc"), SMTCConfig(num_workers=4, dino_path="dino.pth")) == [
        "global batch 128 clips per step (4 workers x 32), lr 2e-05"]
    stmae = run_lines(get("stmae"), STMAEConfig(global_batch_size=8, num_workers=2, lr_scaling="linear"))
    assert stmae[0] == ("global batch 8 clips per step (2 workers x 4), lr 5e-06 (--lr 2e-05 x 8 / 32, the "
                        "recipe's global batch)")
    assert "does not learn from random keys" in stmae[1] and "--similarity l2" in stmae[1]
    l2 = run_lines(get("stmae"), STMAEConfig(similarity="l2"))
    assert "from random weights" in l2[1] and "does not learn" not in l2[1]
    assert run_lines(get("stmae"), STMAEConfig(resnet50_path="r50.pth", resnet18_path="r18.pth"))[1:] == []


def test_linear_lr_scaling_follows_the_global_batch_not_the_workers():
    assert scaled_lr(STMAEConfig(lr=2e-5)) == 2e-5  # default: --lr as given
    assert scaled_lr(STMAEConfig(lr=2e-5, lr_scaling="linear", batch_size=8, num_workers=1)) == pytest.approx(5e-6)
    assert scaled_lr(SMTCConfig(lr=2e-5, lr_scaling="linear", global_batch_size=256, num_workers=8)) == \
        pytest.approx(4e-5)
    assert scaled_lr(SMTCConfig(lr=2e-5, lr_scaling="linear", batch_size=32, num_workers=4)) == pytest.approx(2e-5)
    stmae = STMAEConfig(lr=2e-5, lr_scaling="linear", batch_size=8, num_workers=1, lr_decay_at=0.5, steps=10)
    assert (lr_at(stmae, 0), lr_at(stmae, 5)) == (pytest.approx(5e-6), pytest.approx(5e-7))  # the task's schedule
