"""The configs as data: each flag's choices are the ones the code reads, `--help` shows them, and every method
record (raytrain.methods) is consistent with its configs."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from raytrain.config import (EvalConfig, EvalSMTCConfig, EvalSTMAEConfig, ScoreConfig, SMTCConfig, flag_problems,
                             parse)
from raytrain.cli import benchmarks
from raytrain.eval import bench_score, discovery, foreground, overlay, propagation, score, vos
from raytrain.methods import METHODS, get
from shards.layout import LAYOUTS

ROOT = Path(__file__).resolve().parents[1]


def _choices(cls: type, name: str) -> tuple[str, ...]:
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]


def test_choices_are_what_the_code_reads():
    assert _choices(EvalSMTCConfig, "preset") == ("", *propagation.PRESETS)  # empty: the data set's own
    assert _choices(EvalSMTCConfig, "dataset") == ("davis2017", *benchmarks.TASK_OF)
    assert _choices(EvalSMTCConfig, "foreground") == foreground.RULES
    assert _choices(EvalSMTCConfig, "mode") == discovery.MODES
    assert _choices(EvalSTMAEConfig, "dataset") == vos.DATASETS
    assert _choices(EvalConfig, "overlay_format") == overlay.FORMATS
    assert set(_choices(ScoreConfig, "task")) == set(score.TASKS) | set(bench_score.SCORE_TASKS)


def test_a_value_outside_the_choices_or_range_is_named():
    assert flag_problems(EvalSMTCConfig(preset="C", height=8)) == [
        "--preset must be one of A, B, dino, jhmdb, vip (or empty), got 'C'", "--height must be at least 16, got 8"]
    assert flag_problems(SMTCConfig(instance_mask="hard")) == ["--instance_mask must be one of logit, softmax, "
                                                                "got 'hard'"]


def test_help_shows_the_choices():
    out = subprocess.run([sys.executable, "jobs/eval_smtc.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}, check=True).stdout
    assert "--preset {A,B,dino,jhmdb,vip}" in out and "--task {propagation,discovery}" in out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_records_fit_their_configs(name):
    method = get(name)
    fields = {f.name for f in dataclasses.fields(method.config)}
    assert set(method.small) <= fields
    assert set(method.searched) <= fields
    assert set(method.small_sweep) <= {f.name for f in dataclasses.fields(method.sweep_config)}
    assert set(method.small_eval) <= {f.name for f in dataclasses.fields(method.eval_config)}
    assert method.synthetic[0] in LAYOUTS
    assert parse(method.config, []).__class__ is method.config
    assert flag_problems(parse(method.sweep_config, [])) == []
    for part in ("start", "train_step", "state_dict", "load_state_dict"):
        assert callable(getattr(method.task, part))
    with pytest.raises(KeyError, match="unknown method 'crw'"):
        get("crw")
