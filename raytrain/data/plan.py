"""The deterministic clip plan of one training rank.

Every rank reads its own sequence of shards: round r visits all shards in a seeded order, and item j of the
concatenated rounds belongs to rank j % world_size. Reading a shard yields `clips_per_video` clips of each
usable video, in a seeded order. Because the number of clips per shard follows from the index alone, the
position of every clip in a rank's stream, and so the step that consumes it, is known before any data is
read. That makes sampling step-based (STMAE's max-skip schedule is looked up by step) and lets a run resumed
at step k start exactly at clip k * batch_size of each rank, skipping whole shards without reading them.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from raytrain.data import sampling


@dataclass(frozen=True)
class StreamConfig:
    """Sampling settings of one rank's clip stream."""

    kind: str  # "smtc" or "stmae"
    seed: int
    rank: int
    world_size: int
    batch_size: int
    steps: int
    clips_per_video: int
    num_frames: int
    size: int  # SMTC frame size / STMAE crop size
    gap: int = 4
    max_skip: tuple[int, ...] = (5,)
    max_skip_at: tuple[float, ...] = (0.0,)
    max_objects: int = 3
    finetune_at: float = 1.0
    decode: str = "cpu"  # "gpu": the stream carries JPEG bytes, decoded on the consumer's device

    def __post_init__(self) -> None:
        if self.kind not in ("smtc", "stmae"):
            raise ValueError(f"unknown clip kind {self.kind!r} (expected 'smtc' or 'stmae')")
        if self.decode not in ("cpu", "gpu") or (self.decode == "gpu" and self.kind != "smtc"):
            raise ValueError(f"decode {self.decode!r} for {self.kind} clips: 'cpu', or 'gpu' for SMTC clips only")
        if self.kind == "smtc" and self.gap < 1:
            raise ValueError(f"--gap must be at least 1, got {self.gap}")


Span = tuple[int, int]  # (offset, size) of a member's data in its shard


@dataclass(frozen=True)
class VideoEntry:
    video: str
    frames: tuple[str, ...]
    jpg: tuple[Span, ...]  # of each frame's JPEG
    png: dict[str, Span]  # of the annotation PNG of each annotated frame
    ordinal: int  # row in the index, used for seeding


@dataclass(frozen=True)
class ClipSource:
    """The shard index grouped by shard: what the plan samples from, and where each member lies."""

    root: str
    shards: tuple[str, ...]
    videos: tuple[tuple[VideoEntry, ...], ...]  # per shard, index order

    @classmethod
    def from_index(cls, root: str, index: pa.Table) -> "ClipSource":
        rows = index.select(["shard", "video", "frames", "annotated", "members", "sizes", "offsets"]).to_pylist()
        by_shard: dict[str, list[VideoEntry]] = {}
        for i, r in enumerate(rows):
            spans = dict(zip(r["members"], zip(r["offsets"], r["sizes"])))
            v = r["video"]
            by_shard.setdefault(r["shard"], []).append(VideoEntry(
                v, tuple(r["frames"]), tuple(spans[f"{v}.{f}.jpg"] for f in r["frames"]),
                {f: spans[f"{v}.{f}.png"] for f in r["annotated"] or ()}, i))
        if not by_shard:
            raise ValueError(f"{root}: the shard index lists no videos")
        shards = tuple(sorted(by_shard))
        root = root.rstrip("/") if "://" in root else os.path.abspath(root)
        return cls(root, shards, tuple(tuple(by_shard[s]) for s in shards))

    def url(self, shard: int) -> str:
        return f"{self.root}/{self.shards[shard]}"


@dataclass(frozen=True)
class ClipSpec:
    """One planned clip: what to read and how to sample/augment it."""

    video: str
    frame_idx: tuple[int, ...]
    jpg: tuple[Span, ...]  # where each frame's JPEG lies in the shard
    png: tuple[Span | None, ...]  # and its annotation PNG (None: not annotated)
    video_ordinal: int
    position: int  # index of the clip in the rank's stream
    step: int  # the step that consumes it
    seed: int  # augmentation seed


def usable(entry: VideoEntry, cfg: StreamConfig) -> bool:
    n = len(entry.frames)
    if cfg.kind == "smtc":
        return n >= sampling.smtc_min_length(cfg.num_frames)  # exactly the videos smtc_frames samples from
    return n >= cfg.num_frames and entry.frames[0] in entry.png


def clips_in_shard(source: ClipSource, shard: int, cfg: StreamConfig) -> int:
    return cfg.clips_per_video * sum(usable(v, cfg) for v in source.videos[shard])


def rank_items(num_shards: int, cfg: StreamConfig) -> Iterator[tuple[int, int]]:
    """(round, shard) pairs this rank reads, forever."""
    j = 0
    for rnd in itertools.count():
        order = np.random.default_rng([cfg.seed, rnd, 0x5A4D]).permutation(num_shards)
        for shard in order:
            if j % cfg.world_size == cfg.rank:
                yield rnd, int(shard)
            j += 1


@dataclass(frozen=True)
class Item:
    """One shard read: its clips from `skip` on, the first of which sits at `position` + `skip`."""

    round: int
    shard: int
    position: int
    skip: int


def plan_items(source: ClipSource, cfg: StreamConfig, start: int, count: int) -> list[Item]:
    """The items that hold this rank's clips at positions [start, start + count) (at least)."""
    counts = [clips_in_shard(source, s, cfg) for s in range(len(source.shards))]
    if sum(counts) == 0:
        raise ValueError(f"{source.root}: no video is long enough for {cfg.num_frames}-frame {cfg.kind} clips")
    items: list[Item] = []
    position = 0
    for rnd, shard in rank_items(len(counts), cfg):
        n = counts[shard]
        if position + n > start and n:
            items.append(Item(rnd, shard, position, max(0, start - position)))
        position += n
        if position >= start + count:
            return items
    raise AssertionError("unreachable")


def item_end(source: ClipSource, cfg: StreamConfig, item: Item) -> int:
    """The stream position just after an item's last clip."""
    return item.position + clips_in_shard(source, item.shard, cfg)


def item_clips(source: ClipSource, cfg: StreamConfig, item: Item) -> list[ClipSpec]:
    """The planned clips of one item, in stream order, from `item.skip` on."""
    entries = [v for v in source.videos[item.shard] if usable(v, cfg)]
    pairs = [(v, j) for v in entries for j in range(cfg.clips_per_video)]
    order = np.random.default_rng([cfg.seed, item.round, item.shard, 0x0DE5]).permutation(len(pairs))
    clips = []
    for k in range(item.skip, len(pairs)):
        entry, j = pairs[order[k]]
        position = item.position + k
        step = position // cfg.batch_size
        rng = np.random.default_rng([cfg.seed, item.round, entry.ordinal, j])
        if cfg.kind == "smtc":
            idx = sampling.smtc_frames(len(entry.frames), cfg.num_frames, cfg.gap, rng)
        else:
            skip = sampling.max_skip_at(step, cfg.steps, cfg.max_skip, cfg.max_skip_at)
            jump = max(1, skip // sampling.frame_stride(entry.frames))
            idx = sampling.stmae_frames(len(entry.frames), cfg.num_frames, jump, rng)
        assert idx is not None, "usable() admitted a video the sampler rejects"
        clips.append(ClipSpec(entry.video, tuple(idx), tuple(entry.jpg[i] for i in idx),
                              tuple(entry.png.get(entry.frames[i]) for i in idx), entry.ordinal, position, step,
                              int(rng.integers(2**62))))
    return clips
