"""In-training validation: finite J&F in [0, 1] for both jobs with random models, train mode restored."""
from __future__ import annotations

import math

import pytest
import torch

from raytrain.config import SMTCConfig, STMAEConfig
from raytrain.eval.validate import validate
from raytrain.train.smtc_task import SMTCTask
from raytrain.train.stmae_task import STMAETask


pytestmark = pytest.mark.usefixtures("one_thread")


def _check(metrics: dict[str, float], prefixes: tuple[str, ...] = ("val",)) -> None:
    assert set(metrics) == {f"{p}_{m}" for p in prefixes for m in ("jf", "j", "f")}
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())
    for p in prefixes:
        assert metrics[f"{p}_jf"] == pytest.approx((metrics[f"{p}_j"] + metrics[f"{p}_f"]) / 2)


def test_smtc_validation(synth_davis):
    cfg = SMTCConfig(num_slots=4, num_instance=2, resolution=64, val_data=str(synth_davis), val_videos=1)
    task = SMTCTask(cfg, "cpu")
    task.model.train()
    _check(validate("smtc", task, cfg), ("val", "val_disc"))  # propagation and discovery
    assert task.model.training and task.model.encoder.training
    task.model.eval()
    validate("smtc", task, cfg)
    assert not task.model.training


def test_stmae_validation(synth_davis):
    cfg = STMAEConfig(crop=64, val_data=str(synth_davis), val_videos=1)
    task = STMAETask(cfg, "cpu")
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    _check(validate("stmae", task, cfg))
    assert task.model.training
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())  # nothing learned/updated


def test_unknown_job(synth_davis):
    with pytest.raises(ValueError, match="unknown job"):
        validate("crw", None, SMTCConfig(val_data=str(synth_davis)))
