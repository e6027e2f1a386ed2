"""The training jobs: `jobs/train_smtc.py` and `jobs/train_stmae.py` -> `main(job, argv)`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from raytrain.config import SMALL_TRAIN, TRAIN_CONFIGS, with_small
from raytrain.eval.validate import validate
from raytrain.runtime import init_ray, load_checkpoint_state, run_dir
from raytrain.train.loop import fit
from shards.cache import synthetic_shards

# SMTC trains on unlabelled YouTube-VOS train frames, STMAE on DAVIS-17 train (first-frame masks only).
SYNTHETIC = {"smtc": ("ytvos", "train"), "stmae": ("davis", "train")}


def main(job: str, argv: Sequence[str] | None = None) -> None:
    """`python jobs/train_<job>.py [flags]`: train on Ray Train and print where the results are."""
    cfg, small = with_small(TRAIN_CONFIGS[job], argv, SMALL_TRAIN[job])
    if not cfg.data:
        print(f"no --data given: training on synthetic data with a small configuration ({small})", flush=True)
    init_ray(extra_cpus=cfg.num_workers + 1)
    if not cfg.data:
        cfg = dataclasses.replace(cfg, data=synthetic_shards(*SYNTHETIC[job], seed=cfg.seed))
    result = fit(job, cfg, validate=validate)
    storage, name = run_dir(cfg, job)
    ckpt = result.checkpoint
    step = load_checkpoint_state(ckpt.path)["step"] if ckpt and "://" not in ckpt.path else "?"
    print(f"\nfinished {name}: step {step}, final metrics "
          + ", ".join(f"{k}={v:.4g}" for k, v in (result.metrics or {}).items() if isinstance(v, float)))
    print(f"checkpoint: {ckpt.path if ckpt else None}")
    print(f"logs:       {result.path}  (TensorBoard: tensorboard --logdir {Path(storage) / name / 'tensorboard'})")
