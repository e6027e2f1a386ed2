"""The deterministic clip plan: one global stream of clips, cut into global batches, each rank taking its slice.

A round visits every shard of every source `weight` times (a "shard read"; a source of weight 5 has its videos
visited five times per round, as upstream's repeated ConcatDataset). The round's shard reads are put in a seeded
order and cut into windows of at most `shard_window` reads; the clips of a window (`clips_per_video` of each
usable video of each read) are shuffled together, so a batch mixes the videos of up to `shard_window` shards.
The rounds, concatenated, are the global stream; global batch s is clips [s * G, (s + 1) * G) for the global
batch size G, and rank r of W takes clips [r * G / W, (r + 1) * G / W) of each global batch.

The stream is a function of the sources, the seed, G and the sampling flags, never of the number of workers:
a run resumed on another number of workers (or restarted by an elastic Train on fewer) goes on with the same
clips in the same global batches. Every clip's position, and so the step that consumes it, is known from the
index alone, before any data is read: sampling is step-based (STMAE's max-skip schedule is looked up by step)
and a run resumed at step k starts exactly at global batch k.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from raytrain.config import global_batch, worker_batch
from raytrain.data import sampling
from raytrain.method import Method

PLAN_VERSION = 2  # recorded in checkpoints; 1 was the per-rank shard striding of earlier versions
# A round's clips are held as arrays, about 24 bytes a clip (a few rounds at once, and twice that while one is
# drawn): the most a round may hold, about 100 MB. Far above a real mixture (STMAE's recipe: 3,764 a round).
MAX_ROUND_CLIPS = 2**22


@dataclass(frozen=True)
class StreamConfig:
    """Sampling settings of one rank's clip stream (`batch_size` clips per step: its slice of each global
    batch of `batch_size * world_size` clips)."""

    # "gap" (SMTC's clips: `num_frames` frames `gap` apart, whole frames resized to `size`, no masks) or "max_skip"
    # (STMAE's: frame 0, then random jumps up to the step's max-skip; with masks, cropped and augmented per clip)
    sampler: str
    seed: int
    rank: int
    world_size: int
    batch_size: int
    steps: int
    clips_per_video: int
    num_frames: int
    size: int  # frame size ("gap") / crop size ("max_skip")
    gap: int = 4
    max_skip: tuple[int, ...] = (5,)
    max_skip_at: tuple[float, ...] = (0.0,)
    max_objects: int = 3
    finetune_at: float = 1.0
    decode: str = "cpu"  # "gpu": the stream carries JPEG bytes, decoded on the consumer's device
    shard_window: int = 16

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown clip sampler {self.sampler!r} (expected one of {', '.join(SAMPLERS)})")
        if self.decode not in ("cpu", "gpu") or (self.decode == "gpu" and self.masks):
            raise ValueError(f"decode {self.decode!r} for {self.sampler} clips: 'cpu', or 'gpu' for clips without "
                             f"masks only")
        if self.sampler == "gap" and self.gap < 1:
            raise ValueError(f"--gap must be at least 1, got {self.gap}")
        if self.shard_window < 1 or self.clips_per_video < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"shard_window {self.shard_window}, clips_per_video {self.clips_per_video}, rank "
                             f"{self.rank} of {self.world_size}: out of range")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def masks(self) -> bool:
        """Whether the clips carry their annotation masks."""
        return self.sampler == "max_skip"


SAMPLERS = ("gap", "max_skip")


def stream_config(method: Method, cfg: Any, rank: int, world_size: int) -> StreamConfig:
    """Rank `rank`'s stream of `world_size` for a training config: its slice of each global batch
    (`raytrain.config.global_batch`), cut the method's way (`Method.clip`)."""
    return StreamConfig(seed=cfg.seed, rank=rank, world_size=world_size, batch_size=worker_batch(cfg, world_size),
                        steps=cfg.steps, clips_per_video=cfg.clips_per_video, num_frames=cfg.num_frames,
                        decode=cfg.decode, shard_window=cfg.shard_window, **method.clip(cfg))


def sampler_state(cfg: Any, world_size: int, next_clip: Sequence[int] = ()) -> dict[str, Any]:
    """What a checkpoint records of the clip stream, for an exact resume: `next_clip` is where each rank's
    stream goes on (`rank_index`; it is ahead of the step's planned clips once damaged clips were dropped)."""
    return {"plan": PLAN_VERSION, "seed": cfg.seed, "global_batch_size": global_batch(cfg), "data": list(cfg.data),
            "world_size": world_size, "batch_size": worker_batch(cfg, world_size),
            "next_clip": [int(n) for n in next_clip]}


def stream_mismatch(saved: dict[str, Any] | None, cfg: Any) -> str | None:
    """Why a checkpoint's clip stream (its "sampler" state; None: not recorded) cannot be continued with `cfg`;
    None if it can."""
    if saved is None:
        return None
    if saved.get("plan", 1) != PLAN_VERSION:  # the earlier plan recorded only seed, world_size and batch_size
        return ("it was trained on the clip plan of an earlier version (each worker striding over the shards), "
                "which this version does not continue")
    for key, now in (("seed", cfg.seed), ("global_batch_size", global_batch(cfg))):
        if saved.get(key) != now:
            return f"its {key} is {saved.get(key)}, now {now}"
    return None


def clip_need(cfg: StreamConfig) -> str:
    """What a video needs to give a clip, in words (for refusals)."""
    if cfg.sampler == "gap":
        return f"{sampling.smtc_min_length(cfg.num_frames)} frames"
    return f"{cfg.num_frames} frames and an annotated first frame"


Span = tuple[int, int]  # (offset, size) of a member's data in its shard


@dataclass(frozen=True)
class VideoEntry:
    video: str
    frames: tuple[str, ...]
    jpg: tuple[Span, ...]  # of each frame's JPEG
    png: dict[str, Span]  # of the annotation PNG of each annotated frame
    ordinal: int  # row in the (concatenated) index, used for seeding
    stride: int = 1  # spacing of its frame numbers in the source video: STMAE divides max-skip by it


def layout_stride(layout: str | None, split: str | None) -> int | None:
    """The frame stride of a packed layout: 5 for YouTube-VOS train/valid (every 5th frame; upstream's
    max_skip // 5), 1 for DAVIS and YouTube-VOS all-frames; None when unknown (read from the frame names)."""
    if layout == "davis" or (layout == "ytvos" and split == "valid_all_frames"):
        return 1
    return 5 if layout == "ytvos" else None


@dataclass(frozen=True)
class ClipSource:
    """The shard indexes of one or more sources, grouped by shard: what the plan samples from, where each
    member lies, and how often each source's videos are visited per round."""

    roots: tuple[str, ...]
    weights: tuple[int, ...]
    shards: tuple[str, ...]  # file names, inside their source's root
    shard_source: tuple[int, ...]  # the source of each shard
    videos: tuple[tuple[VideoEntry, ...], ...]  # per shard, index order

    @classmethod
    def from_index(cls, root: str, index: pa.Table, weight: int = 1, layout: str | None = None,
                   split: str | None = None) -> "ClipSource":
        """One source; `layout`/`split` (from its plan.json) give its frame stride rule."""
        rows = index.select(["shard", "video", "frames", "annotated", "members", "sizes", "offsets"]).to_pylist()
        rule = layout_stride(layout, split)
        by_shard: dict[str, list[VideoEntry]] = {}
        for i, r in enumerate(rows):
            spans = dict(zip(r["members"], zip(r["offsets"], r["sizes"])))
            v, frames = r["video"], tuple(r["frames"])
            by_shard.setdefault(r["shard"], []).append(VideoEntry(
                v, frames, tuple(spans[f"{v}.{f}.jpg"] for f in frames),
                {f: spans[f"{v}.{f}.png"] for f in r["annotated"] or ()}, i,
                rule if rule is not None else sampling.frame_stride(frames)))
        if not by_shard:
            raise ValueError(f"{root}: the shard index lists no videos")
        shards = tuple(sorted(by_shard))
        root = root.rstrip("/") if "://" in root else os.path.abspath(root)
        return cls((root,), (weight,), shards, (0,) * len(shards), tuple(tuple(by_shard[s]) for s in shards))

    @classmethod
    def mix(cls, parts: Sequence["ClipSource"]) -> "ClipSource":
        """The sources of `parts`, in order, as one source (video ordinals run on across them)."""
        roots, weights, shards, owner, videos = [], [], [], [], []
        offset = 0
        for part in parts:
            for s, (name, entries) in enumerate(zip(part.shards, part.videos)):
                shards.append(name)
                owner.append(len(roots) + part.shard_source[s])
                videos.append(tuple(replace(e, ordinal=e.ordinal + offset) for e in entries))
            roots += part.roots
            weights += part.weights
            offset += sum(map(len, part.videos))
        return cls(tuple(roots), tuple(weights), tuple(shards), tuple(owner), tuple(videos))

    @property
    def root(self) -> str:
        """The sources, as named in messages."""
        return " + ".join(self.roots)

    def url(self, shard: int) -> str:
        return f"{self.roots[self.shard_source[shard]]}/{self.shards[shard]}"


@dataclass(frozen=True)
class ClipSpec:
    """One planned clip: what to read and how to sample/augment it."""

    video: str
    shard: int
    frame_idx: tuple[int, ...]
    jpg: tuple[Span, ...]  # where each frame's JPEG lies in the shard
    png: tuple[Span | None, ...]  # and its annotation PNG (None: not annotated)
    video_ordinal: int
    position: int  # index of the clip in the global stream
    step: int  # the step that consumes it
    seed: int  # augmentation seed


def usable(entry: VideoEntry, cfg: StreamConfig) -> bool:
    n = len(entry.frames)
    if cfg.sampler == "gap":
        return n >= sampling.smtc_min_length(cfg.num_frames)  # exactly the videos smtc_frames samples from
    return n >= cfg.num_frames and entry.frames[0] in entry.png


def clips_in_shard(source: ClipSource, shard: int, cfg: StreamConfig) -> int:
    """Clips of one read of the shard."""
    return cfg.clips_per_video * sum(usable(v, cfg) for v in source.videos[shard])


def round_clips(source: ClipSource, cfg: StreamConfig) -> list[int]:
    """Clips each source adds to a round of the plan (its usable clips times its weight), counted, not built."""
    out = [0] * len(source.roots)
    for s, owner in enumerate(source.shard_source):
        out[owner] += clips_in_shard(source, s, cfg) * source.weights[owner]
    return out


def round_problem(source: ClipSource, cfg: StreamConfig) -> str | None:
    """Why a round of the plan would not fit in memory (more than MAX_ROUND_CLIPS clips), naming the source
    that adds the most; None when it fits."""
    per_source = round_clips(source, cfg)
    if sum(per_source) <= MAX_ROUND_CLIPS:
        return None
    big = max(range(len(per_source)), key=per_source.__getitem__)
    return (f"a round of the plan would hold {sum(per_source):,} clips, more than the {MAX_ROUND_CLIPS:,} it may "
            f"(each is held in memory, about 24 bytes a clip); {source.roots[big]} with weight "
            f"{source.weights[big]:,} adds {per_source[big]:,} (its usable videos x the weight x "
            f"--clips_per_video {cfg.clips_per_video}): lower the weight")


@dataclass(frozen=True)
class Item:
    """One data task: this rank's slices of global batches [step, step + steps), less the first `skip` clips."""

    step: int
    steps: int
    skip: int = 0


def plan_items(start_step: int, num_steps: int, steps_per_item: int, skip: int = 0) -> list[Item]:
    """The tasks that hold this rank's clips of steps [start_step, start_step + num_steps), less the first
    `skip`."""
    return [Item(s, min(steps_per_item, start_step + num_steps - s), skip if s == start_step else 0)
            for s in range(start_step, start_step + num_steps, steps_per_item)]


def rank_index(cfg: StreamConfig, position: int) -> int:
    """The index in its rank's stream (the rank's clips in order) of the clip at global `position`."""
    step, k = divmod(position, cfg.global_batch)
    return step * cfg.batch_size + k - cfg.rank * cfg.batch_size


class Plan:
    """The global clip stream of `source` under `cfg` (which rank only `rank_clips` asks)."""

    def __init__(self, source: ClipSource, cfg: StreamConfig):
        self.source, self.cfg = source, cfg
        self.usable = [tuple(v for v in videos if usable(v, cfg)) for videos in source.videos]
        self.counts = np.array([len(u) * cfg.clips_per_video for u in self.usable], np.int64)
        too_big = round_problem(source, cfg)
        if too_big:  # refused on the driver before Ray starts (raytrain.cli.checks); here before the lists are built
            raise ValueError(f"{source.root}: {too_big}")
        unit_shard, unit_rep = [], []
        for s in np.flatnonzero(self.counts):
            weight = source.weights[source.shard_source[s]]
            unit_shard += [int(s)] * weight
            unit_rep += range(weight)
        if not unit_shard:
            raise ValueError(f"{source.root}: no video is long enough for {cfg.num_frames}-frame clips ({clip_need(cfg)} each)")
        self.unit_shard, self.unit_rep = np.array(unit_shard), np.array(unit_rep)
        self.round_length = int(self.counts[self.unit_shard].sum())  # clips per round
        self._rounds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def round_order(self, rnd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, repetition, clip index within the shard read) of each clip of round `rnd`, in order."""
        if rnd not in self._rounds:
            cfg = self.cfg
            order = np.random.default_rng([cfg.seed, rnd, 0x5A4D]).permutation(len(self.unit_shard))
            shards, reps = self.unit_shard[order], self.unit_rep[order]
            parts = []
            for g, units in enumerate(np.array_split(np.arange(len(order)), math.ceil(len(order) / cfg.shard_window))):
                n = self.counts[shards[units]]
                clip = np.concatenate([np.arange(k) for k in n])
                mix = np.random.default_rng([cfg.seed, rnd, g, 0x0DE5]).permutation(len(clip))
                parts.append((np.repeat(shards[units], n)[mix], np.repeat(reps[units], n)[mix], clip[mix]))
            if len(self._rounds) > 2:
                self._rounds.clear()
            self._rounds[rnd] = tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[assignment]
        return self._rounds[rnd]

    def clip(self, position: int) -> ClipSpec:
        """The clip at `position` of the global stream."""
        cfg = self.cfg
        rnd, k = divmod(position, self.round_length)
        shards, reps, clips = self.round_order(rnd)
        shard, rep = int(shards[k]), int(reps[k])
        v, j = divmod(int(clips[k]), cfg.clips_per_video)
        entry = self.usable[shard][v]
        step = position // cfg.global_batch
        rng = np.random.default_rng([cfg.seed, rnd, rep, entry.ordinal, j])
        if cfg.sampler == "gap":
            idx = sampling.smtc_frames(len(entry.frames), cfg.num_frames, cfg.gap, rng)
        else:
            skip = sampling.max_skip_at(step, cfg.steps, cfg.max_skip, cfg.max_skip_at)
            idx = sampling.stmae_frames(len(entry.frames), cfg.num_frames, max(1, skip // entry.stride), rng)
        assert idx is not None, "usable() admitted a video the sampler rejects"
        return ClipSpec(entry.video, shard, tuple(idx), tuple(entry.jpg[i] for i in idx),
                        tuple(entry.png.get(entry.frames[i]) for i in idx), entry.ordinal, position, step,
                        int(rng.integers(2**62)))

    def rank_positions(self, start_step: int, num_steps: int, rank: int | None = None) -> np.ndarray:
        """Global positions of the clips of `rank` (default: the config's) in steps [start_step, start_step +
        num_steps), in order."""
        cfg = self.cfg
        rank = cfg.rank if rank is None else rank
        steps = np.arange(start_step, start_step + num_steps)[:, None]
        return (steps * cfg.global_batch + rank * cfg.batch_size + np.arange(cfg.batch_size)).ravel()

    def rank_clips(self, start_step: int, num_steps: int, rank: int | None = None) -> list[ClipSpec]:
        """The planned clips of `rank` (default: the config's) in steps [start_step, start_step + num_steps),
        in stream order."""
        return [self.clip(int(p)) for p in self.rank_positions(start_step, num_steps, rank)]

    def global_batch(self, step: int) -> list[ClipSpec]:
        """All clips of global batch `step`, over every rank."""
        g = self.cfg.global_batch
        return [self.clip(p) for p in range(step * g, (step + 1) * g)]


def batch_mixing(plan: Plan, steps: int) -> dict[str, float]:
    """Mean distinct videos and shards in one rank's batches (what a per-rank loss sees), over the first `steps`
    global batches and every rank."""
    cfg = plan.cfg
    videos = shards = 0.0
    for rank in range(cfg.world_size):
        for s in range(steps):
            clips = plan.rank_clips(s, 1, rank)
            videos += len({c.video_ordinal for c in clips})
            shards += len({c.shard for c in clips})
    n = steps * cfg.world_size
    return {"videos": videos / n, "shards": shards / n, "batch": float(cfg.batch_size)}
