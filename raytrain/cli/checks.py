"""What the job front-ends check on the driver before Ray starts: flag ranges (`raytrain.config.check_flags`),
that `--data` holds an index the job can cut clips from, that `--val_data` is a DAVIS root with annotated val
videos, that every weights file exists and loads as the model it is for, and that a run being resumed was
trained with compatible flags. Each failure is a UserError naming the flag or file.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from raytrain.config import check_flags, config_changes
from raytrain.data import plan
from raytrain.data.sources import load_source
from raytrain.models.resnet_weights import load_resnet
from raytrain.models.smtc import INSTANCE_MASKS
from raytrain.models.stmae import SIMILARITIES, STMAE
from raytrain.models.vit import vit_small
from raytrain.models.weights import load_vit_weights
from raytrain.runtime import (CheckpointError, checkpoint_folders, cluster_address, load_checkpoint_state, run_dir,
                              verify_checkpoint)
from raytrain.train.loop import stream_config, stream_mismatch
from shards.errors import UsageError, UserError, naming
from shards.layout import list_videos


def check_data(job: str, cfg: Any) -> None:
    """Every source of `--data` holds a shard index with videos the job's clip sampler can use."""
    source = load_source(cfg.data)
    scfg = stream_config(job, cfg, 0, cfg.num_workers)
    need = (f"{plan.sampling.smtc_min_length(cfg.num_frames)} frames" if job == "smtc"
            else f"{cfg.num_frames} frames and an annotated first frame")
    for i, root in enumerate(source.roots):
        shards = [s for s, owner in enumerate(source.shard_source) if owner == i]
        if not any(plan.clips_in_shard(source, s, scfg) for s in shards):
            videos = sum(len(source.videos[s]) for s in shards)
            raise UserError(f"--data {root}: none of its {videos} videos can give a {cfg.num_frames}-frame "
                            f"{job} clip (a video needs {need}; see --num_frames)")


def check_val_data(cfg: Any) -> None:
    """`--val_data` is a DAVIS root whose first `--val_videos` val videos have every frame annotated."""
    with naming("--val_data", cfg.val_data):
        videos = list_videos(cfg.val_data, "davis", "val")[:cfg.val_videos]
    if not videos:
        raise UserError(f"--val_data {cfg.val_data}: ImageSets/2017/val.txt lists no videos")
    partial = [v.id for v in videos if any(f not in v.annotations for f in v.frames)]
    if partial:
        raise UserError(f"--val_data {cfg.val_data}: videos without an annotation for every frame, which "
                        f"validation needs: {', '.join(partial)}")


def check_weights(job: str, cfg: Any) -> None:
    """Every weights flag names a file that loads into the module it is for (keys and shapes, read here)."""
    if not (cfg.dino_path if job == "smtc" else cfg.resnet50_path or cfg.resnet18_path):
        return
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = vit_small() if job == "smtc" else STMAE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading into meta tensors is a no-op, and torch says so per tensor
        if job == "smtc":
            with naming("--dino_path", cfg.dino_path):
                load_vit_weights(model, cfg.dino_path)
        if job == "stmae":
            for flag, path, part, rename in (("--resnet50_path", cfg.resnet50_path, model.key_encoder,
                                              {"layer1": "res2"}),
                                             ("--resnet18_path", cfg.resnet18_path, model.value_encoder, None)):
                if path:
                    with naming(flag, path):
                        load_resnet(part, path, rename=rename)


def check_resume(job: str, cfg: Any) -> None:
    """A run folder that holds checkpoints is resumed: its newest intact checkpoint must come from the same job
    and, unless --allow_config_change, from the same flags (those that change what is trained)."""
    storage, name = run_dir(cfg, job)
    if "://" in storage:
        return  # read by the workers when they resume; checking here would download the checkpoint
    run = Path(storage) / name
    folders = checkpoint_folders(run)
    if not folders:
        return
    for newest in folders:
        try:  # the manifest, or for a checkpoint from before manifests the state itself
            saved = verify_checkpoint(newest) or load_checkpoint_state(newest)
            break
        except CheckpointError as e:
            print(f"skipped {e}", flush=True)
    else:
        raise CheckpointError(f"run {run}: none of its {len(folders)} checkpoints is intact; move the folder "
                              f"away or choose another --name")
    if saved.get("job") != job:
        raise UserError(f"--name {name}: {run} holds a {saved.get('job')!r} run, not {job!r}")
    changes = config_changes({**saved.get("config", {}), **({} if cfg.data else {"data": cfg.data})}, cfg)
    if not changes and "sampler" not in saved:  # a manifest written before it recorded the clip stream
        saved = load_checkpoint_state(newest)
    why = stream_mismatch(saved.get("sampler"), cfg) if not changes else None
    if why:
        changes = [f"the clip stream ({why})"]
    if changes and not cfg.allow_config_change:
        raise UsageError(f"run {run} resumes from {newest.name} (step {saved.get('step')}), trained with other "
                         f"flags: {', '.join(changes)}. Give the same flags, another --name, or "
                         f"--allow_config_change")
    print(f"resuming {run} from {newest.name} (step {saved.get('step')})"
          + (f", with changed flags: {', '.join(changes)}" if changes else ""), flush=True)


def check_training(job: str, cfg: Any, resume: bool = True) -> None:
    """Everything a training run (or every trial of a sweep) can be refused for before Ray starts."""
    check_flags(cfg)
    if job == "smtc" and cfg.instance_mask not in INSTANCE_MASKS:
        raise UsageError(f"--instance_mask must be one of {', '.join(INSTANCE_MASKS)}, got {cfg.instance_mask!r}")
    if job == "stmae" and cfg.similarity not in SIMILARITIES:
        raise UsageError(f"--similarity must be one of {', '.join(SIMILARITIES)}, got {cfg.similarity!r}")
    if cfg.use_gpu and cluster_address() is None and not torch.cuda.is_available():
        raise UsageError("--use_gpu: this machine has no GPU that torch can use, and no Ray cluster to join "
                         "(RAY_ADDRESS or `ray start`)")
    if cfg.data:
        check_data(job, cfg)
    if cfg.val_data:
        check_val_data(cfg)
    check_weights(job, cfg)
    if resume:
        check_resume(job, cfg)


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
