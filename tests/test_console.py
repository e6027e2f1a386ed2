"""What a person reads: the training progress line, the end-of-run summary and plain progress lines in logs."""
from __future__ import annotations

import io

from raytrain.cli.train import summary
from raytrain.train.loop import progress_line
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
