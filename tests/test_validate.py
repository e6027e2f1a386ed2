"""In-training validation: the J&F it reports are the DAVIS scores of the model's predictions on the first val
videos (recomputed from the predicted masks with tests/davis_reference.py, which shares no code with raytrain),
for the student (SMTC) or the trained model (STMAE); train mode restored, nothing learned."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

import davis_reference as ref
import raytrain.eval.validate as validate_module
from raytrain.eval import discovery
from raytrain.config import SMTCConfig, STMAEConfig
from raytrain.methods import get
from raytrain.train.smtc_task import SMTCTask
from raytrain.train.stmae_task import STMAETask


pytestmark = pytest.mark.usefixtures("one_thread")


def _check(metrics: dict[str, float], prefixes: tuple[str, ...] = ("val",)) -> None:
    assert set(metrics) == {f"{p}_{m}" for p in prefixes for m in ("jf", "j", "f")}
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())
    for p in prefixes:
        assert metrics[f"{p}_jf"] == pytest.approx((metrics[f"{p}_j"] + metrics[f"{p}_f"]) / 2)


def _record(monkeypatch, name: str) -> list:
    """Keep the (arguments, VideoResult) of every call validate makes to its per-video function `name`."""
    calls = []
    work = getattr(validate_module, name)

    def recorded(*args, **kwargs):
        calls.append((args, work(*args, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(validate_module, name, recorded)
    return calls


def _first_val_video(root) -> str:
    return (root / "ImageSets" / "2017" / "val.txt").read_text().split()[0]


def _expected(prefix: str, result, gt: np.ndarray, protocol) -> dict[str, float]:
    """The metrics of one video's predicted PNGs under `protocol` (ref.semi or ref.unsup)."""
    preds = np.stack([np.array(Image.open(io.BytesIO(png))) for png in result.masks.values()])
    j, f = protocol(gt, preds)
    row, _ = ref.global_results([(result.name, j, f)])
    return {f"{prefix}_jf": row["J&F-Mean"], f"{prefix}_j": row["J-Mean"], f"{prefix}_f": row["F-Mean"]}


def test_smtc_validation(synth_davis, monkeypatch):
    cfg = SMTCConfig(num_slots=4, num_instance=2, resolution=64, val_data=str(synth_davis), val_videos=1)
    task = SMTCTask(cfg, "cpu")
    task.model.train()
    propagated, discovered = _record(monkeypatch, "propagation_video"), _record(monkeypatch, "discover_video")
    # A random SMTC keeps no candidate at cos >= 0.5 and discovers nothing; accept them all to score something.
    monkeypatch.setattr(discovery, "SIMILARITY_THRESHOLD", -1.0)
    metrics = get("smtc").validate(task, cfg)
    _check(metrics, ("val", "val_disc"))  # propagation and discovery
    assert task.model.training and task.model.encoder.training
    seq = _first_val_video(synth_davis)
    ((args, result),) = propagated
    assert args[0] is task.model.encoder and args[3].name == "smtc-a" and result.name == seq  # the student's
    expected = _expected("val", result, ref.read_pngs(synth_davis / "Annotations" / "480p" / seq), ref.semi)
    ((args, disc),) = discovered
    assert args[0] is task.model and disc.name == seq
    gt = ref.read_pngs(synth_davis / "Annotations_unsupervised" / "480p" / seq)
    expected |= _expected("val_disc", disc, gt, ref.unsup)
    assert 0 < expected["val_j"] < 1 and 0 < expected["val_disc_j"] < 1
    assert metrics == pytest.approx(expected, rel=0, abs=1e-12)
    task.model.eval()
    get("smtc").validate(task, cfg)
    assert not task.model.training


def test_stmae_validation(synth_davis, monkeypatch):
    cfg = STMAEConfig(crop=64, val_data=str(synth_davis), val_videos=1)
    task = STMAETask(cfg, "cpu")
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    segmented = _record(monkeypatch, "segment_video")
    metrics = get("stmae").validate(task, cfg)
    _check(metrics)
    assert task.model.training
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())  # nothing learned/updated
    seq = _first_val_video(synth_davis)
    ((args, result),) = segmented
    assert args[0] is task.model and result.name == seq
    gt = ref.read_pngs(synth_davis / "Annotations" / "480p" / seq)
    expected = _expected("val", result, gt, ref.semi)
    assert 0 < expected["val_j"] < 1
    assert metrics == pytest.approx(expected, rel=0, abs=1e-12)

