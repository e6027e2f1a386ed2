"""Ray Data clip streaming: WebDataset shards -> planned clips -> decoded, fixed-shape tensors.

One rank's stream is a Ray Dataset over its slices of the planned global batches (`raytrain.data.plan`):

    from_items(tasks) -> map_batches(load_clips)   one CPU task per run of steps (about one output block):
                                                   ranged reads (pyarrow.fs) of just the planned members of
                                                   each shard its clips come from, at the offsets the index
                                                   holds; decode and resize / augment
                      -> iter_torch_batches        fixed-shape tensors for the training loop

With `--decode gpu` (SMTC) the tasks only read: they ship the JPEG bytes, and the training worker decodes and
resizes each batch on its device (`raytrain.data.device_decode`).

The data tasks of a rank run on its training worker's node (`DECODE_LOCALITY_ENV`), so its decoded blocks do not
cross nodes; Ray Data's default would spread them over the cluster.

A corrupt JPEG/PNG drops its clip, a truncated or unreadable shard drops what could not be read; both are
logged by name and counted in a `DataHealth` actor, and the run goes on.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import os
from dataclasses import asdict
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow.fs as pafs
import ray
import torch

from raytrain.data import decode, device_decode, plan
from raytrain.data.plan import ClipSource, Item, Plan, Span, StreamConfig
from shards.errors import UserError
from shards.layout import resolve

log = logging.getLogger("raytrain.data")
BLOCK_BYTES = 32 << 20  # least decoded bytes per output block: larger blocks cost the driver less per clip
# Overrides BLOCK_BYTES, read on the training worker: bench/cluster.py lowers it so that a small run has as many
# data tasks per step as a full-size one.
BLOCK_BYTES_ENV = "RAYTRAIN_BLOCK_BYTES"
# Where a rank's data tasks run, read on the training worker (`decode_placement`): "node" (the default) on the
# worker's own node only, waiting for a free CPU there; "prefer" on the worker's node while a CPU is free there,
# else on any node (for clusters with CPU nodes for decoding); "spread": Ray Data's default, spread over the
# cluster (the behaviour before, bench/cluster.py's baseline).
DECODE_LOCALITY_ENV = "RAYTRAIN_DECODE_LOCALITY"
LOCALITY_MODES = ("node", "prefer", "spread")
NODE_LABEL = "ray.io/node-id"  # the label Ray gives every node: its id
# The training loop's clip-log folder (`raytrain.train.loop.CLIP_LOG_ENV`): where it is set, every data task also
# appends the node it ran on and its rank's node to `decode/rank<r>-pid<p>.jsonl` there (locality audits).
AUDIT_ENV = "RAYTRAIN_CLIP_LOG"


@ray.remote(num_cpus=0)
class DataHealth:
    """Counts what the data pipeline skipped, by kind, and keeps the latest names."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[str] = collections.deque(maxlen=50)

    def record(self, kind: str, name: str, error: str) -> None:
        self.counts[kind] += 1
        self.recent.append(f"{kind}: {name}: {error}")

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "recent": list(self.recent)}


def _report(health: Any, kind: str, name: str, error: Exception | str) -> None:
    log.warning("data: skipped %s %s (%s)", kind, name, error)
    if health is not None:
        try:  # waited for, so that the count is in before the clips after it reach the trainer
            ray.get(health.record.remote(kind, name, str(error)), timeout=30)
        except Exception as e:  # noqa: BLE001 - losing a count must not stop the run
            log.warning("data: could not record the skip in DataHealth (%s)", e)


def _skip_counts(health: Any) -> str:
    """What DataHealth counted, as `frame 12, shard 1` (or why the counts are unknown)."""
    if health is None:
        return "not counted"
    try:
        counts = ray.get(health.snapshot.remote(), timeout=30)["counts"]
    except Exception as e:  # noqa: BLE001 - the error being raised matters more than the counts
        return f"unknown ({type(e).__name__})"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"


_SOURCES: dict[str, ClipSource] = {}
_PLANS: dict[tuple[int, StreamConfig], Plan] = {}


def _source(ref: Any) -> ClipSource:
    """The ClipSource behind an object ref, fetched once per process."""
    if isinstance(ref, ClipSource):
        return ref
    key = ref.hex()
    if key not in _SOURCES:
        _SOURCES[key] = ray.get(ref)
    return _SOURCES[key]


def _plan(src: ClipSource, cfg: StreamConfig) -> Plan:
    """The Plan of a source and stream, built once per process."""
    key = (id(src), cfg)
    if key not in _PLANS:
        if len(_PLANS) > 8:
            _PLANS.clear()
        _PLANS[key] = Plan(src, cfg)
    return _PLANS[key]


def coalesce(spans: Iterable[Span], max_gap: int) -> list[tuple[int, int, list[Span]]]:
    """(start, end, spans) runs of the sorted spans, each run without a gap over `max_gap` bytes."""
    runs: list[tuple[int, int, list[Span]]] = []
    for off, size in sorted(set(spans)):
        if runs and off - runs[-1][1] <= max_gap:
            start, end, members = runs[-1]
            runs[-1] = (start, max(end, off + size), members)
            members.append((off, size))
        else:
            runs.append((off, off + size, [(off, size)]))
    return runs


def read_spans(url: str, spans: Iterable[Span], health: Any = None) -> dict[Span, memoryview]:
    """The members at `spans` of a shard (local path or any pyarrow.fs URI), found through the index's offsets.

    No tar header is parsed. Members closer than a gap are read together, one ranged read per run: on a
    local disk the gap spans only tar headers, on remote storage (one request per run) it spans 1 MiB.
    A shard that cannot be opened or ends early is reported; the members read before that are kept.
    """
    found: dict[Span, memoryview] = {}
    try:
        fs, path = resolve(url)
        max_gap = 4 << 10 if isinstance(fs, pafs.LocalFileSystem) else 1 << 20
        with fs.open_input_file(path) as f:
            for start, end, members in coalesce(spans, max_gap):
                data = memoryview(f.read_at(end - start, start))
                for off, size in members:
                    if off + size > start + len(data):
                        raise EOFError(f"truncated: it ends at byte {start + len(data)}, the index has a member at "
                                       f"bytes {off}-{off + size}")
                    found[(off, size)] = data[off - start:off - start + size]
    except Exception as e:  # noqa: BLE001 - any damage to a shard must not stop the run
        _report(health, "shard", url, e)
    return found


def read_item(src: ClipSource, cfg: StreamConfig, item: Item, health: Any = None) -> list[dict[str, Any]]:
    """One data task's planned clips, with the raw frame (and mask) bytes: the members each shard holds for
    them are read together."""
    clips = _plan(src, cfg).rank_clips(item.step, item.steps)[item.skip:]
    masks = cfg.masks
    members: dict[int, dict[Span, memoryview]] = {}
    for shard in dict.fromkeys(c.shard for c in clips):
        spans = [s for c in clips if c.shard == shard for s in c.jpg + (c.png if masks else ()) if s]
        members[shard] = read_spans(src.url(shard), spans, health)
    out = []
    for c in clips:
        found = members[c.shard]
        missing = [k for k, s in enumerate(c.jpg) if s not in found]
        if missing:
            _report(health, "clip", f"{src.url(c.shard)}: {c.video} frame {c.frame_idx[missing[0]]}",
                    "member missing or unreadable")
            continue
        clip = {"jpgs": [found[s] for s in c.jpg], "frame_idx": np.asarray(c.frame_idx, np.int64),
                "position": c.position, "step": c.step, "seed": c.seed, "video_ordinal": c.video_ordinal,
                "video": c.video}
        if masks:
            clip["pngs"] = [found.get(s, b"") if s else b"" for s in c.png]
        out.append(clip)
    return out


def decode_clips(clips: list[dict[str, Any]], scfg: StreamConfig, health: Any = None) -> dict[str, np.ndarray]:
    """Decode and transform clips (from `read_item`) into fixed-shape arrays; corrupt clips are dropped.

    Frames are channels-last, N x T x S x S x 3, as decoded: the (cheap) transpose is left to the consumer.
    """
    n, t, s = len(clips), scfg.num_frames, scfg.size
    annotated = scfg.masks
    out = {"frames": np.empty((n, t, s, s, 3), np.uint8), "frame_idx": np.empty((n, t), np.int64),
           "position": np.empty(n, np.int64), "video_ordinal": np.empty(n, np.int64)}
    if annotated:
        out |= {"masks": np.empty((n, t, s, s), np.uint8), "num_objects": np.empty(n, np.int64)}
    kept = 0
    for clip in clips:
        try:
            if not annotated:
                for i, jpg in enumerate(clip["jpgs"]):
                    out["frames"][kept, i] = decode.smtc_frame(jpg, s)
            else:
                imgs = [decode.decode_jpeg(b) for b in clip["jpgs"]]
                anns = [decode.decode_png(b) if b else np.zeros(imgs[i].shape[:2], np.uint8)
                        for i, b in enumerate(clip["pngs"])]
                if any(a.shape != im.shape[:2] for a, im in zip(anns, imgs)):
                    raise ValueError("annotation size differs from its frame")
                finetune = clip["step"] >= scfg.finetune_at * scfg.steps
                rng = np.random.default_rng(clip["seed"])
                frames, masks, k = decode.stmae_clip(imgs, anns, rng, s, scfg.max_objects, finetune)
                out["frames"][kept], out["masks"][kept], out["num_objects"][kept] = frames, masks, k
        except Exception as e:  # noqa: BLE001 - a corrupt frame drops its clip, never the run
            _report(health, "frame", f"{clip['video']} frames {list(clip['frame_idx'])}", e)
            continue
        for key in ("frame_idx", "position", "video_ordinal"):
            out[key][kept] = clip[key]
        kept += 1
    return {k: v[:kept] for k, v in out.items()}


def encoded_clips(clips: list[dict[str, Any]], scfg: StreamConfig, health: Any = None) -> dict[str, np.ndarray]:
    """`--decode gpu`: clips (from `read_item`) with their JPEG bytes as they are, for `device_decode` on the
    training device. "jpegs" holds each clip's T JPEGs back to back, "jpeg_sizes" (N x T) their sizes; a clip
    with a JPEG whose header does not parse is dropped here."""
    n, t = len(clips), scfg.num_frames
    out = {"jpegs": np.empty(n, object), "jpeg_sizes": np.empty((n, t), np.int64), "video": np.empty(n, object),
           "frame_idx": np.empty((n, t), np.int64), "position": np.empty(n, np.int64),
           "video_ordinal": np.empty(n, np.int64)}
    kept = 0
    for clip in clips:
        try:
            for jpg in clip["jpgs"]:
                decode.jpeg_header(jpg)
        except Exception as e:  # noqa: BLE001 - a corrupt frame drops its clip, never the run
            _report(health, "frame", f"{clip['video']} frames {list(clip['frame_idx'])}", e)
            continue
        out["jpegs"][kept] = b"".join(clip["jpgs"])
        out["jpeg_sizes"][kept] = [len(j) for j in clip["jpgs"]]
        for key in ("video", "frame_idx", "position", "video_ordinal"):
            out[key][kept] = clip[key]
        kept += 1
    return {k: v[:kept] for k, v in out.items()}


def clip_bytes(cfg: StreamConfig) -> int:
    """Bytes of one decoded clip in an output block."""
    t, s = cfg.num_frames, cfg.size
    pixels = t * s * s * (4 if cfg.masks else 3)  # RGB, and the mask
    return pixels + 8 * (t + 2 + cfg.masks)  # frame_idx, position, video_ordinal (num_objects)


def block_bytes(cfg: StreamConfig) -> int:
    """Ray Data's target block size for the stream: at least `BLOCK_BYTES` and three batches of decoded clips
    (JPEG bytes, with `--decode gpu`: `BLOCK_BYTES`, or `BLOCK_BYTES_ENV` where set)."""
    least = int(os.environ.get(BLOCK_BYTES_ENV) or BLOCK_BYTES)
    return least if cfg.decode == "gpu" else max(least, 3 * cfg.batch_size * clip_bytes(cfg))


def steps_per_item(src: ClipSource, cfg: StreamConfig) -> int:
    """Steps of one data task: the fewest whole batches that fill 1.1x Ray Data's target block size
    (`block_bytes`), with JPEG bytes (`--decode gpu`) estimated from the index's mean frame size."""
    if cfg.decode == "gpu":
        sizes = [size for videos in src.videos for v in videos for _, size in v.jpg]
        clip = cfg.num_frames * sum(sizes) / max(len(sizes), 1)
    else:
        clip = clip_bytes(cfg)
    return max(1, math.ceil(1.1 * block_bytes(cfg) / (clip * cfg.batch_size)))


def _audit(folder: str, scfg: StreamConfig, consumer: str | None, item: Item) -> None:
    """One line of the locality audit: this data task's steps, the node it runs on and its rank's node."""
    with open(os.path.join(folder, f"rank{scfg.rank}-pid{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps({"rank": scfg.rank, "step": item.step, "steps": item.steps, "consumer": consumer,
                            "node": ray.get_runtime_context().get_node_id()}) + "\n")


def load_clips(items: dict[str, np.ndarray], *, source: Any, cfg: dict[str, Any], block: int,
               health: Any = None, consumer: str | None = None, audit: str | None = None
               ) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data map_batches: data tasks -> their decoded clips, one output block at a time.

    Reading and decoding share one task, so the compressed bytes never pass through the object store. A task
    covers whole batches (`steps_per_item`), and every yielded chunk but the last of a task ends on a batch
    boundary and holds 1.1-1.43x Ray Data's target block size `block` (three batches or more, see
    `block_bytes`). Ray Data merges blocks under the target and slices those over 1.5x, so it keeps each
    chunk as one block, and a batch that lies in one block reaches the trainer without being copied.
    With `--decode gpu` the chunks hold JPEG bytes (`encoded_clips`), cut by their sizes. `consumer` (the
    training worker's node) and `audit` (a folder) are for the locality audit (`AUDIT_ENV`).
    """
    src, scfg = _source(source), StreamConfig(**cfg)
    encoded = scfg.decode == "gpu"
    finish = encoded_clips if encoded else decode_clips
    cut = 1.1 * block if encoded else 1.1 * block / clip_bytes(scfg)  # bytes, or decoded clips, per chunk
    for i in range(len(items["step"])):
        item = Item(int(items["step"][i]), int(items["steps"][i]), int(items["skip"][i]))
        if audit:
            _audit(audit, scfg, consumer, item)
        chunk: list[dict[str, Any]] = []
        filled = 0
        for clip in read_item(src, scfg, item, health):
            chunk.append(clip)
            filled += sum(map(len, clip["jpgs"])) if encoded else 1
            if filled >= cut and len(chunk) % scfg.batch_size == 0:
                yield finish(chunk, scfg, health)
                chunk, filled = [], 0
        if chunk:
            yield finish(chunk, scfg, health)


def node_preference(node: str | None, spill: bool = False) -> dict[str, Any]:
    """map_batches arguments that run a task on `node` (None: anywhere, Ray Data's default); with `spill`, on
    another node when `node` has no free CPU at the time (Ray tries the fallback, any node, then)."""
    if not node:
        return {}
    return {"label_selector": {NODE_LABEL: node}, **({"fallback_strategy": [{"label_selector": {}}]} if spill else {})}


def clip_dataset(source: ClipSource | Any, cfg: StreamConfig, items: list[Item], health: Any = None,
                 decode_tasks: int = 0, node: str | None = None, spill: bool = False, audit: str | None = None
                 ) -> ray.data.Dataset:
    """The clips of the planned data tasks `items`, as a lazy Ray Dataset in deterministic order.

    `source` is a ClipSource or an object ref to one (pass a ref when many tasks need it); `decode_tasks`
    caps the concurrent shard-read tasks (0: as many as there are free CPUs); `node` is where they run, and
    `spill` lets them run elsewhere while it has no free CPU (`node_preference`; no node: Ray Data's default,
    spread over the cluster); `audit`: see `AUDIT_ENV`.
    """
    rows = [asdict(i) for i in items]
    block = block_bytes(cfg)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    compute = ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks > 0 else None
    ds = ds.map_batches(load_clips, fn_kwargs={"source": source, "cfg": asdict(cfg), "block": block,
                                               "health": health, "consumer": node, "audit": audit},
                        batch_size=1, batch_format="numpy", compute=compute, **node_preference(node, spill))
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False  # one stream per training worker: bars would flood the job log
    # One block per yielded chunk (see `load_clips`), so batches reach the trainer while a shard is still
    # being decoded.
    ds.context.target_max_block_size = block
    return ds


def decode_placement() -> tuple[str | None, bool, str | None]:
    """(node, spill, audit folder) for the data tasks of a stream read in this process (`clip_dataset`).

    `DECODE_LOCALITY_ENV` decides: "node" (the default) keeps them on this process's node, "prefer" spills
    them to other nodes while it has no free CPU, "spread" leaves them to Ray Data (node None; also when Ray
    is not running). A node that has no CPU beyond this process's own cannot run them: "node" becomes "prefer"
    there, with a warning. The audit folder is `AUDIT_ENV`'s, if set.
    """
    mode = os.environ.get(DECODE_LOCALITY_ENV) or "node"
    if mode not in LOCALITY_MODES:
        raise UserError(f"{DECODE_LOCALITY_ENV}={mode}: must be one of {', '.join(LOCALITY_MODES)}")
    node = ray.get_runtime_context().get_node_id() if mode != "spread" and ray.is_initialized() else None
    spill = mode == "prefer"
    if node and not spill:
        try:
            held = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
        except AssertionError:  # a driver (not a Ray worker) holds none
            held = 0.0
        total = next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == node), 0.0)
        if total - held < 1:
            log.warning("data: this node has no CPU for data tasks beyond the %g this worker holds: they run on "
                        "other nodes while it has none free (%s=prefer)", held, DECODE_LOCALITY_ENV)
            spill = True
    audit = os.environ.get(AUDIT_ENV) or None
    if audit:
        audit = os.path.join(audit, "decode")
        os.makedirs(audit, exist_ok=True)
    return node, spill, audit


def clip_batches(source: ClipSource | Any, cfg: StreamConfig, start_step: int = 0, health: Any = None,
                 device: torch.device | str = "cpu", decode_tasks: int = 0, prefetch_batches: int = 2,
                 start_clip: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """One rank's endless stream of fixed-size batches of tensors on `device`, from `start_step` on: its slice
    of each planned global batch.

    Batch: "frames" uint8 B x T x 3 x S x S (channels-last in memory: the view of how frames are decoded;
    call `.contiguous()` where an op needs it), "frame_idx" B x T, "position" (in the global stream) and
    "video_ordinal" B, and for STMAE "masks" uint8 B x T x S x S and "num_objects" B.

    The planned steps up to the end of the run (plus 10 %) form one Ray Dataset; if unreadable data runs it
    dry early, the stream goes on with the steps planned after it. Once a whole round of the plan has given
    no clip since the last batch the stream yielded, it stops with a UserError naming the data and the skips.

    Its data tasks run on this process's node (`decode_placement`).

    A damaged clip (a frame that does not decode, a missing member) is dropped and the batches close up behind
    it: every later batch then holds clips planned a little later than its step. `start_clip` (the index in
    this rank's stream, `plan.rank_index`, of the next clip to train on, as a checkpoint records it) resumes
    such a stream exactly where it was; without it the stream starts at `start_step`'s planned clips.

    With `cfg.decode == "gpu"` (SMTC) the stream carries JPEG bytes and `device_decode` decodes each batch on
    `device`, one batch ahead; "frames" is then contiguous, and a clip that fails to decode there is dropped
    from its batch.
    """
    src = _source(source)
    stream = _plan(src, cfg)
    per_item = steps_per_item(src, cfg)
    round_steps = math.ceil(stream.round_length / cfg.global_batch) + 1
    skip = 0
    if start_clip is not None:  # where a stream that dropped damaged clips had got to (see the docstring)
        start_step, skip = divmod(start_clip, cfg.batch_size)
    step, count = start_step, max(cfg.steps - start_step, 1) * 11 // 10 + 1
    dry = 0  # planned steps since the last batch the stream yielded
    node, spill, audit = decode_placement()
    while True:
        ds = clip_dataset(source, cfg, plan.plan_items(step, count, per_item, skip), health, decode_tasks, node,
                          spill, audit)
        skip = 0
        tail = None  # the positions of the last batch this Dataset yielded
        if cfg.decode == "gpu":
            encoded = ds.iter_batches(batch_size=cfg.batch_size, drop_last=True, batch_format="numpy",
                                      prefetch_batches=prefetch_batches)
            for batch in device_decode.device_batches(encoded, cfg.size, device,
                                                      lambda name, e: _report(health, "frame", name, e)):
                tail = batch["position"]
                yield batch
        else:
            for batch in ds.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True, device=str(device),
                                               prefetch_batches=prefetch_batches):
                batch["frames"] = batch["frames"].permute(0, 1, 4, 2, 3)
                tail = batch["position"]
                yield batch
        dry = dry + count if tail is None else step + count - 1 - int(tail.max()) // cfg.global_batch
        if dry >= round_steps:  # a whole round gave nothing: re-planning would go on forever
            usable = sum(1 for n in stream.counts if n)
            raise UserError(f"{src.root}: no usable clip in any of its {usable} shards in the last {dry} steps "
                            f"(a whole round of the plan) of this stream (rank {cfg.rank}); skipped: "
                            f"{_skip_counts(health)}. `python -m shards check` on each folder names the damaged "
                            f"members")
        step += count
        count = 8
