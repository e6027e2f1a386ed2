"""What the training entry points share: Ray start-up, the synthetic default data set, and the run itself."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import ray

from raytrain.config import given_fields, parse
from raytrain.configs import SMALL_SMTC, SMALL_STMAE
from raytrain.train.loop import JOBS, fit, load_checkpoint_state, run_dir

CACHE = Path(os.environ.get("RAYTRAIN_CACHE", "~/.cache/raytrain")).expanduser()
SMALL = {"smtc": SMALL_SMTC, "stmae": SMALL_STMAE}
# SMTC trains on unlabelled YouTube-VOS train frames, STMAE on DAVIS-17 train (first-frame masks only).
SYNTHETIC = {"smtc": ("ytvos", "train"), "stmae": ("davis", "train")}


def init_ray(extra_cpus: int = 0) -> None:
    """Join the cluster this job was submitted to (or one started with `ray start`), else start a local one.

    A local Ray gets a few more logical CPUs than the machine has, so that data tasks can run next to the
    training workers, which hold one CPU each. It starts with its dashboard, whose state API Train needs:
    Train frees the placement group of a trial that ASHA stopped only through it (without it a sweep
    stalls), and its placement-group cleaner warns every few seconds when it cannot reach it.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    except ConnectionError:
        ray.init(num_cpus=(os.cpu_count() or 1) + extra_cpus, include_dashboard=True)


def synthetic_shards(job: str, seed: int = 0) -> str:
    """Shards of a small synthetic data set for `job`, generated and packed into the cache on first use.

    A cached set packed by an older version is re-indexed (its shards are kept).
    """
    from shards.pack import pack, read_index
    from shards.synth import write_davis, write_ytvos

    layout, split = SYNTHETIC[job]
    root = CACHE / "synthetic" / f"{layout}-s{seed}"
    out = root / "shards"
    try:
        read_index(str(out))
        return str(out)
    except FileNotFoundError:
        print(f"generating a synthetic {layout} data set in {root} ...", flush=True)
        write = write_davis if layout == "davis" else write_ytvos
        write(root / "videos", num_videos=12, num_frames=24, height=240, seed=seed, num_val=4)
    except ValueError as e:  # packed by an older version
        print(f"re-indexing {out}: {e}", flush=True)
    pack(str(root / "videos"), str(out), layout=layout, split=split)
    return str(out)


def main(job: str, argv: Sequence[str] | None = None) -> None:
    """`python jobs/train_<job>.py [flags]`: train on Ray Train and print where the results are."""
    cls = JOBS[job][0]
    cfg = parse(cls, argv)
    if not cfg.data:
        given = given_fields(cls, argv)
        small = {k: v for k, v in SMALL[job].items() if k not in given}
        cfg = dataclasses.replace(cfg, **small)
        print(f"no --data given: training on synthetic data with a small configuration ({small})", flush=True)
    init_ray(extra_cpus=cfg.num_workers + 1)
    if not cfg.data:
        cfg = dataclasses.replace(cfg, data=synthetic_shards(job, cfg.seed))
    result = fit(job, cfg)
    storage, name = run_dir(cfg, job)
    ckpt = result.checkpoint
    step = load_checkpoint_state(ckpt.path)["step"] if ckpt and "://" not in ckpt.path else "?"
    print(f"\nfinished {name}: step {step}, final metrics "
          + ", ".join(f"{k}={v:.4g}" for k, v in (result.metrics or {}).items() if isinstance(v, float)))
    print(f"checkpoint: {ckpt.path if ckpt else None}")
    print(f"logs:       {result.path}  (TensorBoard: tensorboard --logdir {Path(storage) / name / 'tensorboard'})")
