"""What the job front-ends check on the driver before Ray starts: flag ranges (`raytrain.config.check_flags`),
that `--data` holds an index the job can cut clips from, that `--val_data` is a DAVIS root with annotated val
videos, that every weights file exists and loads as the model it is for, and that a run being resumed was
trained with compatible flags. Each failure is a UserError naming the flag or file.
"""
from __future__ import annotations

import os
from typing import Any

import pyarrow.fs as pafs
import torch

from raytrain.checkpoints import CheckpointError, load_checkpoint, newest_manifest
from raytrain.config import check_flags, config_changes
from raytrain.data import plan
from raytrain.data.sources import load_source, parse_data
from raytrain.method import Method
from raytrain.runtime import run_dir, run_location
from shards.cluster import cluster_address
from shards.errors import UsageError, UserError, naming, storage_problem
from shards.layout import list_videos, resolve
from shards.paths import local_path, output_entries, probe_uri, refuse_overlap


def check_data(method: Method, cfg: Any) -> None:
    """Every source of `--data` holds a shard index with videos the method's clip sampler can use."""
    source = load_source(cfg.data)
    scfg = plan.stream_config(method, cfg, 0, cfg.num_workers)
    for i, root in enumerate(source.roots):
        shards = [s for s, owner in enumerate(source.shard_source) if owner == i]
        if not any(plan.clips_in_shard(source, s, scfg) for s in shards):
            videos = sum(len(source.videos[s]) for s in shards)
            raise UserError(f"--data {root}: none of its {videos} videos can give a {cfg.num_frames}-frame "
                            f"{method.name} clip (a video needs {plan.clip_need(scfg)}; see --num_frames)")
    too_big = plan.round_problem(source, scfg)
    if too_big:
        raise UsageError(f"--data: {too_big}")


def check_val_data(cfg: Any) -> None:
    """`--val_data` is a DAVIS root whose first `--val_videos` val videos have every frame annotated."""
    with naming("--val_data", cfg.val_data):
        videos = list_videos(cfg.val_data, "davis", "val")[:cfg.val_videos or None]
    if not videos:
        raise UserError(f"--val_data {cfg.val_data}: ImageSets/2017/val.txt lists no videos")
    partial = [v.id for v in videos if any(f not in v.annotations for f in v.frames)]
    if partial:
        raise UserError(f"--val_data {cfg.val_data}: videos without an annotation for every frame, which "
                        f"validation needs: {', '.join(partial)}")


def check_resume(method: Method, cfg: Any) -> None:
    """A run folder that holds checkpoints is resumed: its newest intact checkpoint must come from the same job
    and, unless --allow_config_change, from the same flags (those that change what is trained). On any
    storage, from the checkpoint's manifest (small), not its state."""
    run = run_location(cfg, method.name)
    try:
        found = newest_manifest(run, lambda why: print(why, flush=True))
    except CheckpointError as e:
        raise CheckpointError(f"{e}; move the folder away or choose another --name") from None
    if found is None:
        return
    newest, saved = found
    name = newest.rstrip("/").rsplit("/", 1)[-1]
    if saved.get("job") != method.name:
        raise UserError(f"--name {run_dir(cfg, method.name)[1]}: {run} holds a {saved.get('job')!r} run, not "
                        f"{method.name!r}")
    changes = config_changes({**saved.get("config", {}), **({} if cfg.data else {"data": cfg.data})}, cfg)
    if not changes and "sampler" not in saved:  # a manifest written before it recorded the clip stream
        saved = load_checkpoint(newest)
    why = plan.stream_mismatch(saved.get("sampler"), cfg) if not changes else None
    if why:
        changes = [f"the clip stream ({why})"]
    if changes and not cfg.allow_config_change:
        raise UsageError(f"run {run} resumes from {name} (step {saved.get('step')}), trained with other "
                         f"flags: {', '.join(changes)}. Give the same flags, another --name, or "
                         f"--allow_config_change")
    print(f"resuming {run} from {name} (step {saved.get('step')})"
          + (f", with changed flags: {', '.join(changes)}" if changes else ""), flush=True)


def check_storage(flag: str, location: str) -> None:
    """A URI's bucket exists, answers with these credentials and takes writes (a local folder is left to Train,
    which makes it). One line naming the flag, found before Ray starts."""
    if "://" not in location:
        return
    fs, path = resolve(location)
    bucket = path.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type != pafs.FileType.Directory:
            raise UserError(f"{flag} {location}: the bucket {bucket} does not exist")
        fs.get_file_info(path)
    except OSError as e:
        raise UserError(f"{flag} {location}: {storage_problem(e)}") from None
    probe_uri(flag, location)


def check_run_folder(method: Method, cfg: Any) -> None:
    """A local --storage_path is a folder (or can be made: no file on its way) that can be written, and the run
    folder keeps clear of what the run reads (--data, --val_data). A URI's bucket: `check_storage`."""
    storage = run_dir(cfg, method.name)[0]
    local = local_path(storage)
    if local is not None:
        output_entries("--storage_path", local)  # a file, or under one
        parent = os.path.abspath(local)
        while not os.path.exists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"--storage_path {storage}: cannot write there ({parent} is not writable)")
    run = run_location(cfg, method.name)
    refuse_overlap("--storage_path/--name", run,
                   [("--data", path) for path in _data_folders(cfg)] + [("--val_data", cfg.val_data)])


def _data_folders(cfg: Any) -> list[str]:
    try:
        return [path for path, _ in parse_data(cfg.data)] if cfg.data else []
    except UserError:
        return []  # malformed: check_data says how


def check_steps(method: Method, cfg: Any) -> None:
    """A resumed run must have steps left: --steps below the step of its newest checkpoint is refused (it would
    stop at once and report the checkpoint's step "of" the smaller --steps)."""
    run = run_location(cfg, method.name)
    found = newest_manifest(run)
    if found is None:
        return
    step = found[1].get("step")
    if isinstance(step, int) and cfg.steps < step:
        raise UsageError(f"--steps {cfg.steps}: run {run} is already at step {step} (its newest "
                         f"checkpoint); give --steps {step} or more to go on, or another --name for a new run")


def check_private_workers(cfg: Any) -> None:
    """A private Ray (no cluster to join) gets more logical CPUs than the machine has, for the data tasks: the
    worker group itself must fit the machine's CPUs, or Train starts more workers (a process and a model
    each) than it can run, until memory runs out."""
    if cluster_address() is not None:
        return
    cpus = os.cpu_count() or 1
    need = cfg.num_workers * cfg.cpus_per_worker
    if need <= cpus:
        return
    fix = (f"--num_workers {int(cpus // cfg.cpus_per_worker)} or fewer" if cfg.cpus_per_worker <= cpus else
           f"--cpus_per_worker {cpus} or less")
    raise UsageError(f"--num_workers {cfg.num_workers} x --cpus_per_worker {cfg.cpus_per_worker:g} needs {need:g} "
                     f"CPU, and this machine has {cpus}; without a cluster to join (RAY_ADDRESS or `ray start`) "
                     f"the workers run here: give {fix}")


def check_training(method: Method, cfg: Any, resume: bool = True) -> None:
    """Everything a training run (or every trial of a sweep) can be refused for before Ray starts."""
    check_flags(cfg)
    for name in ("use_gpu", "val_use_gpu"):  # a GPU task a private Ray cannot place would wait for ever
        if getattr(cfg, name) and cluster_address() is None and not torch.cuda.is_available():
            raise UsageError(f"--{name}: this machine has no GPU that torch can use, and no Ray cluster to join "
                             "(RAY_ADDRESS or `ray start`)")
    check_storage("--storage_path", run_dir(cfg, method.name)[0])
    check_run_folder(method, cfg)
    check_private_workers(cfg)
    if cfg.data:
        check_data(method, cfg)
    if cfg.val_data:
        check_val_data(cfg)
    method.check_weights(cfg)
    if resume:
        check_resume(method, cfg)
        check_steps(method, cfg)


def check_resources(cfg: Any) -> None:
    """Once Ray is up: a private Ray that cannot hold the worker group is refused (Train would wait for it
    forever); on a joined cluster, which an autoscaler may grow, a note says what is missing."""
    import ray

    have = ray.cluster_resources()
    least = cfg.min_workers or cfg.num_workers  # an elastic run starts with what it can get, from min_workers on
    need = {"CPU": least * cfg.cpus_per_worker, **({"GPU": float(least)} if cfg.use_gpu else {})}
    short = ", ".join(f"{v:g} {k} (the cluster has {have.get(k, 0):g})" for k, v in need.items()
                      if v > have.get(k, 0))
    if not short:
        return
    what = (f"--{'min' if cfg.min_workers else 'num'}_workers {least} x --cpus_per_worker {cfg.cpus_per_worker:g}"
            f"{' with --use_gpu' if cfg.use_gpu else ''} needs {short}")
    if cluster_address() is None:
        raise UsageError(f"{what}: this machine's private Ray cannot start the workers")
    print(f"note: {what}; Train waits until the cluster has them (an autoscaler may add nodes)", flush=True)
