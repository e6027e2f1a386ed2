"""Hyper-parameter sweeps with Ray Tune: every trial drives one Ray Train run of a training job.

Each trial is a driver function that builds the job's `TorchTrainer` (`raytrain.train.loop.make_trainer`) with a
`TuneReportCallback`, so every rank-0 `ray.train.report` becomes one Tune result. Trials report (and checkpoint)
every `--checkpoint_every` steps, each report carrying the validation metric (`val_jf` when `--val_data` is
set), and ASHA stops the weaker trials at step milestones (`time_attr="step"`).

Searched parameters are flags that take the values to search, under the training flag's own name:

- SMTC: `--num_slots 8 16 32 --num_instance 2 4 --gap 2 4` (uniform choice), `--lr 1e-5 1e-4` (log-uniform
  between the two values).
- STMAE: `--lr 1e-5 1e-4` (log-uniform), `--num_ref_frames 2 3` and `--num_frames 6 8` (choice). The
  reference count and the clip length trade memory for temporal context; upstream trains 8 frames with 3
  references at lr 2e-5, the ranges centre on that.

A single value fixes the parameter. Every other training flag applies to all trials.

Layout under `--storage_path` (default ./runs), all names deterministic: `<name>/` is the Tune experiment
(`trial_000`, `trial_001`, ... hold Tune's per-trial results), `<name>/train/trial_NNN/` the Train run of each
trial (checkpoints, TensorBoard), and `<name>/trials.csv` plus `<name>/<metric>_vs_params.png` the summary.
Running the job again with the same `--name` and `--storage_path` restores the sweep (`Tuner.restore`):
finished trials are kept, unfinished and errored ones continue from their last Train checkpoint.

A trial whose Train run fails (after `--max_failures` worker-group restarts) is retried by Tune
(`--trial_failures`); the retry resumes the same Train run from its last checkpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import ray
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from raytrain.config import from_dict, given_fields, parse, to_dict
from raytrain.configs import SMTCConfig, STMAEConfig
from raytrain.train.launch import CACHE, init_ray, synthetic_shards
from raytrain.train.loop import JOBS, make_trainer, run_dir
from shards.layout import resolve

SEARCHED: dict[str, tuple[str, ...]] = {
    "smtc": ("num_slots", "num_instance", "gap", "lr"),
    "stmae": ("lr", "num_ref_frames", "num_frames"),
}
LOG_UNIFORM = {"lr"}


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    return field(default=default, metadata={"help": help})


def _values(default: list, help: str) -> Any:  # noqa: A002
    return field(default_factory=lambda: list(default), metadata={"help": help})


@dataclass
class SweepOptions:
    """Tune settings shared by the sweep jobs."""

    num_samples: int = _f(8, "trials to run (random search over the searched flags, seeded by --seed)")
    metric: str = _f("val_jf", "reported metric that ASHA and the final ranking use (val_* needs --val_data)")
    mode: str = _f("max", "max or min: whether a larger --metric is better")
    grace_steps: int = _f(0, "steps every trial trains before ASHA may stop it (0: a quarter of --steps)")
    reduction_factor: float = _f(2.0, "ASHA keeps 1/reduction_factor of the trials at each milestone")
    max_concurrent_trials: int = _f(0, "trials running at once (0: cluster GPUs // --num_workers, or CPUs "
                                       "// (2 x --num_workers x --cpus_per_worker) without --use_gpu)")
    trial_failures: int = _f(1, "times Tune retries a failed trial (from its last checkpoint)")
    driver_resource: str = _f("", "custom resource a trial's driver needs 0.01 of (e.g. TRAIN_DRIVER: keep "
                                  "drivers on the head); empty: none")


@dataclass
class SMTCSweepConfig(SweepOptions, SMTCConfig):
    """Ray Tune sweep of SMTC training runs (ASHA on the validation metric)."""

    num_slots: list[int] = _values([8, 16, 32], "semantic slots: values to search")
    num_instance: list[int] = _values([2, 4], "instance slots per semantic slot: values to search")
    gap: list[int] = _values([2, 4], "frame spacing inside a clip: values to search")
    lr: list[float] = _values([1e-5, 1e-4], "peak learning rate: log-uniform between two values (one: fixed)")


@dataclass
class STMAESweepConfig(SweepOptions, STMAEConfig):
    """Ray Tune sweep of STMAE training runs (ASHA on the validation metric)."""

    lr: list[float] = _values([1e-5, 1e-4], "AdamW learning rate: log-uniform between two values (one: fixed)")
    num_ref_frames: list[int] = _values([2, 3], "reference frames: values to search")
    num_frames: list[int] = _values([6, 8], "frames per clip: values to search")


SWEEPS: dict[str, type] = {"smtc": SMTCSweepConfig, "stmae": STMAESweepConfig}

# The tiny sweep that runs when no --data is given (synthetic data, a few CPU minutes per trial).
_SMALL = dict(steps=12, checkpoint_every=4, batch_size=2, num_workers=1, num_samples=4, grace_steps=4,
              clips_per_video=2, val_videos=2)
SMALL_SWEEP: dict[str, dict[str, Any]] = {
    "smtc": dict(_SMALL, resolution=64, num_slots=[4, 8], num_instance=[2], gap=[2, 4], lr=[1e-4, 3e-3],
                 grad_iter=0),
    "stmae": dict(_SMALL, crop=64, num_frames=[4, 6], num_ref_frames=[1, 2], lr=[1e-5, 1e-3],
                  max_skip=[3], max_skip_at=[0.0]),
}


def _check(cfg: Any, job: str) -> None:
    if cfg.mode not in ("max", "min"):
        raise ValueError(f"--mode must be max or min, got {cfg.mode!r}")
    if cfg.metric.startswith("val_") and not cfg.val_data:
        raise ValueError(f"--metric {cfg.metric} is only reported with --val_data (or use --metric loss --mode min)")
    if cfg.num_samples < 1:
        raise ValueError(f"--num_samples must be at least 1, got {cfg.num_samples}")
    for name in SEARCHED[job]:
        values = getattr(cfg, name)
        if name in LOG_UNIFORM and not (len(values) in (1, 2) and all(v > 0 for v in values)):
            raise ValueError(f"--{name}: one positive value (fixed) or two (log-uniform range), got {values}")


def search_space(cfg: Any, job: str) -> dict[str, Any]:
    """Tune's search space for the searched flags of `cfg` (a single value stays a constant)."""
    space: dict[str, Any] = {}
    for name in SEARCHED[job]:
        values = list(getattr(cfg, name))
        if len(values) == 1:
            space[name] = values[0]
        elif name in LOG_UNIFORM:
            space[name] = ray.tune.loguniform(min(values), max(values))
        else:
            space[name] = ray.tune.choice(values)
    return space


def trial_config(cfg: Any, job: str) -> dict[str, Any]:
    """The training config all trials share, as a dict: the sweep's flags with every report a checkpoint."""
    sweep_fields = {f.name for f in dataclasses.fields(SweepOptions)}
    base = {k: v for k, v in to_dict(cfg).items() if k not in sweep_fields and k not in SEARCHED[job]}
    base["log_every"] = cfg.checkpoint_every
    return base


def sweep_dir(cfg: Any, job: str) -> tuple[str, str]:
    """(storage_path, name) of a sweep: `--storage_path` (./runs) and `--name` (`<job>-sweep`)."""
    storage, name = run_dir(cfg, job)
    return storage, cfg.name or f"{job}-sweep"


def trial_name(trial: Any) -> str:
    """`trial_NNN`, NNN the trial's index in the sweep (stable across restores)."""
    return f"trial_{int(trial.trial_id.rsplit('_', 1)[-1]):03d}"


def drive_trial(config: dict[str, Any]) -> None:
    """One trial: the job's Train run with this trial's parameters, reporting every result to Tune."""
    job = config["job"]
    name = ray.tune.get_context().get_trial_name()
    params = {k: config[k] for k in SEARCHED[job]}
    cfg = from_dict(JOBS[job][0], {**config["base"], **params, "name": name,
                                   "storage_path": config["train_storage"]})
    make_trainer(job, cfg, callbacks=[TuneReportCallback()]).fit()


def max_concurrent(cfg: Any, resources: dict[str, float]) -> int:
    """Trials that fit at once: GPUs // workers per trial with --use_gpu, else CPUs // (2 x CPUs per trial)
    (half of the CPUs left to the decode tasks). At least 1: an autoscaling cluster may have no GPU yet."""
    if cfg.max_concurrent_trials > 0:
        return cfg.max_concurrent_trials
    if cfg.use_gpu:
        return max(1, int(resources.get("GPU", 0)) // cfg.num_workers)
    return max(1, int(resources.get("CPU", 0) // (2 * cfg.num_workers * cfg.cpus_per_worker)))


def make_tuner(job: str, cfg: Any) -> ray.tune.Tuner:
    """A new sweep, or the interrupted one with the same name and storage (restored)."""
    storage, name = sweep_dir(cfg, job)
    trainable = ray.tune.with_resources(
        drive_trial, {"CPU": 0.01, **({cfg.driver_resource: 0.01} if cfg.driver_resource else {})})
    path = posixpath.join(storage, name)
    if ray.tune.Tuner.can_restore(path):
        print(f"restoring the sweep in {path} (its search space and settings are the saved ones)", flush=True)
        return ray.tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    grace = cfg.grace_steps or max(cfg.steps // 4, 1)
    scheduler = ASHAScheduler(time_attr="step", max_t=cfg.steps, grace_period=min(grace, cfg.steps),
                              reduction_factor=cfg.reduction_factor)
    concurrent = max_concurrent(cfg, ray.cluster_resources())
    print(f"sweep {name}: {cfg.num_samples} trials, at most {concurrent} at once, ASHA on {cfg.metric} ({cfg.mode}) "
          f"from step {min(grace, cfg.steps)}", flush=True)
    return ray.tune.Tuner(
        trainable,
        param_space={"job": job, "base": trial_config(cfg, job),
                     "train_storage": posixpath.join(storage, name, "train"), **search_space(cfg, job)},
        tune_config=ray.tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, scheduler=scheduler, num_samples=cfg.num_samples,
            # The generator's own limit: Tune ignores max_concurrent_trials when given a generator.
            search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrent),
            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=ray.tune.RunConfig(name=name, storage_path=storage, verbose=1,
                                      failure_config=ray.tune.FailureConfig(max_failures=cfg.trial_failures)),
    )


def _statuses(results: ray.tune.ResultGrid) -> dict[str, str]:
    """Tune's saved status of each trial (TERMINATED, ERROR, PENDING, ...) by trial folder.

    Read back from the experiment state on storage: after an interruption it holds the trials Tune would
    resume as PENDING, where the in-memory trials read TERMINATED.
    """
    return {t.path: t.status for t in ray.tune.ExperimentAnalysis(results.experiment_path).trials}


def trial_rows(results: ray.tune.ResultGrid, job: str, metric: str, steps: int) -> list[dict[str, Any]]:
    """One row per trial: name, status (done / early-stopped / error / unfinished), searched parameters,
    last metric, last step and checkpoint."""
    statuses = _statuses(results)
    rows = []
    for r in results:
        m = r.metrics or {}
        step, status = m.get("step"), statuses.get(r.path)
        rows.append({"trial": Path(r.path).name,
                     "status": "error" if status == "ERROR" else "unfinished" if status != "TERMINATED"
                     else "done" if step == steps else "early-stopped",
                     **{k: r.config[k] for k in SEARCHED[job]},
                     metric: m.get(metric), "step": step, "checkpoint": m.get("checkpoint_path")})
    return sorted(rows, key=lambda row: row["trial"])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: list[dict[str, Any]], skip: Sequence[str] = ("checkpoint",)) -> str:
    """The rows as a fixed-width text table."""
    cols = [c for c in rows[0] if c not in skip]
    cells = [[_fmt(row[c]) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def table_csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _panel_positions(values: list[Any], log: bool) -> list[float]:
    """x in [0, 1] of each value: log-scaled for `log`, else evenly spaced distinct values."""
    if log:
        lo, hi = math.log(min(values)), math.log(max(values))
        return [0.5 if hi == lo else (math.log(v) - lo) / (hi - lo) for v in values]
    distinct = sorted(set(values))
    return [0.5 if len(distinct) == 1 else distinct.index(v) / (len(distinct) - 1) for v in values]


def plot_png(rows: list[dict[str, Any]], params: Sequence[str], metric: str) -> bytes:
    """PNG scatter of `metric` against each parameter, one panel each (matplotlib if installed, else PIL)."""
    rows = [r for r in rows if r[metric] is not None and math.isfinite(r[metric])]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pil(rows, params, metric)
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3), squeeze=False, sharey=True)
    for ax, p in zip(axes[0], params):
        ax.scatter([r[p] for r in rows], [r[metric] for r in rows])
        if p in LOG_UNIFORM:
            ax.set_xscale("log")
        ax.set_xlabel(p)
    axes[0][0].set_ylabel(metric)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _plot_pil(rows: list[dict[str, Any]], params: Sequence[str], metric: str) -> bytes:
    from PIL import Image, ImageDraw

    pw, ph = 240, 200  # panel size
    left, top, right, bottom = 46, 22, 12, 36  # plot-area margins inside a panel
    img = Image.new("RGB", (pw * len(params), ph), "white")
    draw = ImageDraw.Draw(img)
    ys = [r[metric] for r in rows]
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    span = hi - lo or 1.0
    for i, p in enumerate(params):
        x0, x1, y0, y1 = i * pw + left, (i + 1) * pw - right, top, ph - bottom
        draw.text((x0, 4), f"{metric} vs {p}", fill="black")
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((i * pw + 2, y0), _fmt(hi), fill="black")
        draw.text((i * pw + 2, y1 - 10), _fmt(lo), fill="black")
        draw.text(((x0 + x1) // 2 - 3 * len(p), y1 + 20), p, fill="black")
        if not rows:
            continue
        values = [r[p] for r in rows]
        xs = [x0 + 12 + f * (x1 - x0 - 24) for f in _panel_positions(values, p in LOG_UNIFORM)]
        ticks = dict(zip(values, xs))
        if p in LOG_UNIFORM:  # the ends of the log axis only
            ticks = {v: ticks[v] for v in (min(values), max(values))}
        for v, x in ticks.items():
            label = f"{v:.1e}" if p in LOG_UNIFORM else _fmt(v)
            draw.text((x - 3 * len(label), y1 + 4), label, fill="gray")
        for x, y in zip(xs, ys):
            cy = y1 - 8 - (y - lo) / span * (y1 - y0 - 16)
            draw.ellipse([x - 4, cy - 4, x + 4, cy + 4], fill=(31, 119, 180))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def summarize(results: ray.tune.ResultGrid, job: str, cfg: Any) -> dict[str, Any] | None:
    """Print and save the trial table (CSV) and the plot; print and return the best trial's row."""
    storage, name = sweep_dir(cfg, job)
    metric, mode = cfg.metric, cfg.mode
    rows = trial_rows(results, job, metric, cfg.steps)
    if not rows:
        print("no trials")
        return None
    print("\n" + format_table(rows))
    folder = posixpath.join(storage, name)
    _write(posixpath.join(folder, "trials.csv"), table_csv(rows))
    _write(posixpath.join(folder, f"{metric}_vs_params.png"), plot_png(rows, SEARCHED[job], metric))
    print(f"\ntable: {posixpath.join(folder, 'trials.csv')}\nplot:  {posixpath.join(folder, f'{metric}_vs_params.png')}")
    if any(r["status"] == "unfinished" for r in rows):
        print("the sweep was interrupted: run the same command again to resume it")
    scored = [r for r in rows if r[metric] is not None and math.isfinite(r[metric])]
    if not scored:
        print(f"no trial reported {metric}")
        return None
    best = (max if mode == "max" else min)(scored, key=lambda r: r[metric])
    print(f"best: {best['trial']} {metric}={best[metric]:.4g} at step {best['step']} with "
          + ", ".join(f"{k}={_fmt(best[k])}" for k in SEARCHED[job]))
    print(f"best checkpoint: {best['checkpoint']}")
    return best


def run_sweep(job: str, cfg: Any) -> tuple[ray.tune.ResultGrid, dict[str, Any] | None]:
    """Run (or restore and finish) the sweep; print and save its summary. Ray must be initialised."""
    _check(cfg, job)
    results = make_tuner(job, cfg).fit()
    return results, summarize(results, job, cfg)


def synthetic_val(seed: int = 0) -> str:
    """A small synthetic DAVIS-layout validation set (2 val videos, 8 frames, 64 px high), made on first use."""
    from shards.synth import write_davis

    root = CACHE / "synthetic" / f"davis-val-s{seed}"
    if not (root / "ImageSets" / "2017" / "val.txt").exists():
        write_davis(root, num_videos=3, num_frames=8, height=64, num_val=2, seed=seed + 1)
    return str(root)


def main(job: str, argv: Sequence[str] | None = None) -> None:
    """`python jobs/tune_<job>.py [flags]`: run the sweep and print its table and best trial."""
    cls = SWEEPS[job]
    cfg = parse(cls, argv)
    given = given_fields(cls, argv)
    if not cfg.data:
        small = {k: v for k, v in SMALL_SWEEP[job].items() if k not in given}
        cfg = dataclasses.replace(cfg, **small)
        print(f"no --data given: a tiny sweep on synthetic data ({small})", flush=True)
        if "val_data" not in given:
            cfg = dataclasses.replace(cfg, val_data=synthetic_val(cfg.seed))
    _check(cfg, job)
    init_ray(extra_cpus=cfg.num_workers + 1)
    if not cfg.data:
        cfg = dataclasses.replace(cfg, data=synthetic_shards(job, cfg.seed))
    run_sweep(job, cfg)
