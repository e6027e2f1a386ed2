"""The sweep jobs: `jobs/tune_smtc.py` and `jobs/tune_stmae.py` -> `main(job, argv)`."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from raytrain.cli.checks import check_data, check_resources, check_training
from raytrain.cli.train import SYNTHETIC
from raytrain.config import SMALL_SWEEP, SWEEP_CONFIGS, given_fields, with_small
from shards.cluster import init_ray
from raytrain.tune import check, run_sweep, trial_configs
from shards.cache import synthetic_shards, synthetic_val


def main(job: str, argv: Sequence[str] | None = None) -> None:
    """`python jobs/tune_<job>.py [flags]`: run the sweep and print its table and best trial."""
    cls = SWEEP_CONFIGS[job]
    cfg, small = with_small(cls, argv, SMALL_SWEEP[job])
    if not cfg.data:
        print(f"no --data given: a tiny sweep on synthetic data ({small})", flush=True)
        if "val_data" not in given_fields(cls, argv):
            cfg = dataclasses.replace(cfg, val_data=synthetic_val(cfg.seed))
    check(cfg, job)  # before Ray starts: the sweep's flags, every searched value, and each trial's inputs
    trials = trial_configs(cfg, job)
    check_training(job, trials[0], resume=False)
    for trial in trials[1:] if cfg.data else []:
        check_data(job, trial)  # clip lengths differ between trials
    init_ray(extra_cpus=cfg.num_workers + 1)
    check_resources(trials[0])
    if not cfg.data:
        cfg = dataclasses.replace(cfg, data=synthetic_shards(*SYNTHETIC[job], seed=cfg.seed))
    run_sweep(job, cfg)
