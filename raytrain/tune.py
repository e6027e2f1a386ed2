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
finished trials are kept, unfinished and errored ones continue from their last Train checkpoint. The flags
a sweep started with are saved (`<name>/sweep.json`) and apply to the restored sweep; those given again that
differ are named.

A trial whose Train run fails (after `--max_failures` worker-group restarts) is retried by Tune
(`--trial_failures`); the retry resumes the same Train run from its last checkpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import posixpath
from pathlib import Path
from typing import Any, Sequence

import ray
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from raytrain.config import LOG_UNIFORM, SweepOptions, check_flags, from_dict, to_dict
from raytrain.method import Method
from raytrain.runtime import run_dir
from raytrain.train.loop import fatal_error, make_trainer
from shards.errors import UsageError, UserError, find_user_error
from shards.layout import resolve


# What every report of a trial holds (`raytrain.train.loop`: the step's loss, lr and speed, and the method's
# loss terms; its validation metrics with --val_data, `val_disc_*` only when the val set also has
# Annotations_unsupervised). The skip counts (`skipped_*`) are left out: they are reported only once something
# was skipped.
REPORTED = ("loss", "lr", "clips_per_s", "data_wait")


def reported_metrics(method: Method) -> tuple[str, ...]:
    """The metrics a trial of `method` reports (with --val_data), any of which --metric may name."""
    return REPORTED + method.loss_terms + method.val_metrics


def check(cfg: Any, method: Method) -> None:
    """Refuse a sweep whose flags (every searched value too) are out of range or do not go together."""
    check_flags(cfg)
    if cfg.metric not in reported_metrics(method):
        raise UsageError(f"--metric {cfg.metric!r} is not a metric a {method.name} trial reports; one of "
                         f"{', '.join(reported_metrics(method))}")
    if cfg.metric.startswith("val_") and not cfg.val_data:
        raise UsageError(f"--metric {cfg.metric} is only reported with --val_data (or use --metric loss --mode min)")


def trial_configs(cfg: Any, method: Method) -> list[Any]:
    """One training config per searched value (the other searched flags at their first value): together they
    hold every value a trial can get, for the driver to check before trials start."""
    base = trial_config(cfg)
    first = {name: getattr(cfg, name)[0] for name in method.searched}
    return [from_dict(method.config, {**base, **first, name: value})
            for name in method.searched for value in getattr(cfg, name)]


def search_space(cfg: Any) -> dict[str, Any]:
    """Tune's search space for the searched flags of a sweep config (a single value stays a constant)."""
    space: dict[str, Any] = {}
    for name in cfg.SEARCHED:
        values = list(getattr(cfg, name))
        if len(values) == 1:
            space[name] = values[0]
        elif name in LOG_UNIFORM:
            space[name] = ray.tune.loguniform(min(values), max(values))
        else:
            space[name] = ray.tune.choice(values)
    return space


def trial_config(cfg: Any) -> dict[str, Any]:
    """The training config all trials share, as a dict: the sweep's flags with every report a checkpoint."""
    sweep_fields = {f.name for f in dataclasses.fields(SweepOptions)}
    base = {k: v for k, v in to_dict(cfg).items() if k not in sweep_fields and k not in cfg.SEARCHED}
    base["log_every"] = cfg.checkpoint_every
    # ASHA decides when a report arrives, on that report's metric: a trial validates in its training loop so
    # that every report carries it (a validation off the training path lands after the report, where Train
    # merges it into the checkpoint's metrics but Tune never sees it).
    base["val_async"] = False
    return base


def sweep_dir(cfg: Any, method: Method) -> tuple[str, str]:
    """(storage_path, name) of a sweep: `--storage_path` (./runs) and `--name` (`<method>-sweep`)."""
    storage, name = run_dir(cfg, method.name)
    return storage, cfg.name or f"{method.name}-sweep"


def trial_name(trial: Any) -> str:
    """`trial_NNN`, NNN the trial's index in the sweep (stable across restores)."""
    return f"trial_{int(trial.trial_id.rsplit('_', 1)[-1]):03d}"


def drive_trial(config: dict[str, Any], method: Method) -> None:
    """One trial: the Train run of `method` (the sweep's record, handed over by `ray.tune.with_parameters`) with
    this trial's parameters, reporting every result to Tune."""
    name = ray.tune.get_context().get_trial_name()
    params = {k: config[k] for k in method.searched}
    cfg = from_dict(method.config, {**config["base"], **params, "name": name, "storage_path": config["train_storage"]})
    make_trainer(method, cfg, callbacks=[TuneReportCallback()]).fit()
    why = fatal_error(method, cfg)
    if why:
        raise UserError(why)


def max_concurrent(cfg: Any, resources: dict[str, float]) -> int:
    """Trials that fit at once: GPUs // workers per trial with --use_gpu, else CPUs // (2 x CPUs per trial)
    (half of the CPUs left to the decode tasks). At least 1: an autoscaling cluster may have no GPU yet."""
    if cfg.max_concurrent_trials > 0:
        return cfg.max_concurrent_trials
    if cfg.use_gpu:
        return max(1, int(resources.get("GPU", 0)) // cfg.num_workers)
    return max(1, int(resources.get("CPU", 0) // (2 * cfg.num_workers * cfg.cpus_per_worker)))


def make_tuner(method: Method, cfg: Any) -> ray.tune.Tuner:
    """A new sweep, or the interrupted one with the same name and storage (restored)."""
    storage, name = sweep_dir(cfg, method)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(drive_trial, method=method),
                                        {"CPU": 0.01, **({cfg.driver_resource: 0.01} if cfg.driver_resource else {})})
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
        param_space={"job": method.name, "base": trial_config(cfg),
                     "train_storage": posixpath.join(storage, name, "train"), **search_space(cfg)},
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
    analysis = ray.tune.ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem)
    return {t.path: t.status for t in analysis.trials}


def trial_rows(results: ray.tune.ResultGrid, searched: Sequence[str], metric: str, steps: int
               ) -> list[dict[str, Any]]:
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
                     **{k: r.config[k] for k in searched},
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


def plot_png(rows: list[dict[str, Any]], params: Sequence[str], metric: str) -> bytes:
    """PNG scatter of `metric` against each parameter, one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r[metric] is not None and math.isfinite(r[metric])]
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


def _write(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def summarize(results: ray.tune.ResultGrid, method: Method, cfg: Any) -> dict[str, Any] | None:
    """Print and save the trial table (CSV) and the plot; print and return the best trial's row."""
    storage, name = sweep_dir(cfg, method)
    metric, mode = cfg.metric, cfg.mode
    rows = trial_rows(results, method.searched, metric, cfg.steps)
    if not rows:
        print("no trials")
        return None
    if "://" in storage:  # Train reports a checkpoint's path inside its filesystem: give the URI
        scheme = storage.split("://", 1)[0] + "://"
        for row in rows:
            if row["checkpoint"] and "://" not in row["checkpoint"]:
                row["checkpoint"] = scheme + row["checkpoint"]
    print("\n" + format_table(rows))
    folder = posixpath.join(storage, name)
    _write(posixpath.join(folder, "trials.csv"), table_csv(rows))
    _write(posixpath.join(folder, f"{metric}_vs_params.png"), plot_png(rows, method.searched, metric))
    print(f"\ntable: {posixpath.join(folder, 'trials.csv')}\nplot:  {posixpath.join(folder, f'{metric}_vs_params.png')}")
    if any(r["status"] == "unfinished" for r in rows):
        print("the sweep was interrupted: run the same command again to resume it")
    scored = [r for r in rows if r[metric] is not None and math.isfinite(r[metric])]
    if not scored:
        print(f"no trial reported {metric}")
        return None
    best = (max if mode == "max" else min)(scored, key=lambda r: r[metric])
    print(f"best: {best['trial']} {metric}={best[metric]:.4g} at step {best['step']} with "
          + ", ".join(f"{k}={_fmt(best[k])}" for k in method.searched))
    print(f"best checkpoint: {best['checkpoint']}")
    return best


SETTINGS = "sweep.json"  # the flags a sweep was started with, in its folder: what a restore uses


def saved_settings(method: Method, cfg: Any) -> Any:
    """The flags that apply to this sweep: on a restore, those it was started with (read from its SETTINGS;
    each that differs from the flags given now is named, as the saved one overrides it), else `cfg`, saved."""
    storage, name = sweep_dir(cfg, method)
    path = posixpath.join(storage, name)
    fs, folder = resolve(path)
    settings = posixpath.join(folder, SETTINGS)
    if not ray.tune.Tuner.can_restore(path):
        fs.create_dir(folder, recursive=True)
        _write(posixpath.join(path, SETTINGS), json.dumps(to_dict(cfg), indent=1).encode())
        return cfg
    try:
        with fs.open_input_stream(settings) as f:
            saved = json.loads(f.read())
    except (OSError, ValueError):
        print(f"{path}: a sweep from before {SETTINGS} was saved: its own settings are used, whatever flags are "
              f"given now", flush=True)
        return cfg
    now = to_dict(cfg)
    keep = {"name", "storage_path"}
    differ = [f"--{k} {_flag(saved[k])} (given now: {_flag(now[k])})" for k in now
              if k not in keep and k in saved and saved[k] != now[k]]
    if differ:
        print(f"{path}: the sweep's saved settings override the flags given now: {'; '.join(differ)}", flush=True)
    return from_dict(type(cfg), {**saved, **{k: now[k] for k in keep}})


def _flag(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def run_sweep(method: Method, cfg: Any) -> tuple[ray.tune.ResultGrid, dict[str, Any] | None]:
    """Run (or restore and finish) the sweep of `method`; print and save its summary. Ray must be initialised."""
    check(cfg, method)
    cfg = saved_settings(method, cfg)
    results = make_tuner(method, cfg).fit()
    best = summarize(results, method, cfg)
    rows = trial_rows(results, method.searched, cfg.metric, cfg.steps)
    statuses = {r["status"] for r in rows}
    if not statuses & {"done", "early-stopped", "unfinished"}:  # an interrupted sweep is resumed, not failed
        storage, name = sweep_dir(cfg, method)
        errors = [r["trial"] for r in rows if r["status"] == "error"]
        first = next((find_user_error(e) for e in results.errors if find_user_error(e) is not None), None)
        raise UserError(f"sweep {posixpath.join(storage, name)}: no trial finished ({len(errors)} of {len(rows)} "
                        f"failed; each failed trial's folder holds its error.txt)"
                        + (f"; first error: {first}" if first is not None else ""))
    return results, best
