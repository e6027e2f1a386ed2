"""The sweep jobs: `jobs/tune_smtc.py` and `jobs/tune_stmae.py` -> `main(method, argv)`."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from raytrain.cli.checks import check_data, check_resources, check_training
from raytrain.config import given_fields, with_small
from raytrain.method import Method
from raytrain.tune import check, run_sweep, trial_configs
from shards.cache import synthetic_shards, synthetic_val
from shards.cluster import init_ray


def main(method: Method, argv: Sequence[str] | None = None) -> None:
    """`python jobs/tune_<method>.py [flags]`: run the sweep and print its table and best trial."""
    cls = method.sweep_config
    cfg, small = with_small(cls, argv, method.small_sweep)
    if not cfg.data:
        print(f"no --data given: a tiny sweep on synthetic data ({small})", flush=True)
        if "val_data" not in given_fields(cls, argv):
            cfg = dataclasses.replace(cfg, val_data=synthetic_val(cfg.seed))
    check(cfg, method)  # before Ray starts: the sweep's flags, every searched value, and each trial's inputs
    trials = trial_configs(cfg, method)
    check_training(method, trials[0], resume=False)
    for trial in trials[1:] if cfg.data else []:
        check_data(method, trial)  # clip lengths differ between trials
    init_ray(extra_cpus=cfg.num_workers + 1)
    check_resources(trials[0])
    if not cfg.data:
        cfg = dataclasses.replace(cfg, data=synthetic_shards(*method.synthetic, seed=cfg.seed))
    run_sweep(method, cfg)
