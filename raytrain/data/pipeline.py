"""Ray Data clip streaming: WebDataset shards -> planned clips -> decoded, fixed-shape tensors.

One rank's stream is a Ray Dataset over its planned shard reads (`raytrain.data.plan`):

    from_items(reads) -> map_batches(load_clips)   one CPU task per shard read: stream the tar through
                                                   pyarrow.fs + webdataset, keep only the planned members,
                                                   decode and resize / augment them in chunks of clips
                      -> iter_torch_batches        fixed-shape tensors for the training loop

A corrupt JPEG/PNG drops its clip, a truncated or unreadable shard drops what could not be read; both are
logged by name and counted in a `DataHealth` actor, and the run goes on.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import asdict
from typing import Any, Iterator

import numpy as np
import ray
import torch
import webdataset as wds

from raytrain.data import decode, plan
from raytrain.data.plan import ClipSource, Item, StreamConfig
from shards.layout import resolve

log = logging.getLogger("raytrain.data")
BLOCK_BYTES = 32 << 20  # decoded bytes per output block: larger blocks cost the driver less per clip


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


_SOURCES: dict[str, ClipSource] = {}


def _source(ref: Any) -> ClipSource:
    """The ClipSource behind an object ref, fetched once per process."""
    if isinstance(ref, ClipSource):
        return ref
    key = ref.hex()
    if key not in _SOURCES:
        _SOURCES[key] = ray.get(ref)
    return _SOURCES[key]


def read_members(url: str, wanted: set[str], health: Any = None) -> dict[str, bytes]:
    """The wanted members of a tar shard (local path or any pyarrow.fs URI), streamed once.

    A shard that cannot be opened or ends early is reported; the members read before the damage are kept.
    """
    found: dict[str, bytes] = {}
    try:
        fs, path = resolve(url)
        with fs.open_input_stream(path) as stream:
            for member in wds.tariterators.tar_file_iterator(stream, select_files=wanted.__contains__):
                found[member["fname"]] = member["data"]
    except Exception as e:  # noqa: BLE001 - any damage to a shard must not stop the run
        _report(health, "shard", url, e)
    return found


def read_item(row: dict[str, Any], *, source: Any, cfg: dict[str, Any], health: Any = None
              ) -> Iterator[dict[str, Any]]:
    """One planned shard read -> its clips, with the raw frame (and mask) bytes."""
    src, scfg = _source(source), StreamConfig(**cfg)
    item = Item(**{k: int(row[k]) for k in ("round", "shard", "position", "skip")})
    clips = plan.item_clips(src, scfg, item)
    masks = scfg.kind == "stmae"
    wanted = {f"{c.video}.{n}.jpg" for c in clips for n in c.frame_names}
    if masks:
        wanted |= {f"{c.video}.{a}.png" for c in clips for a in c.annotations if a is not None}
    members = read_members(src.url(item.shard), wanted, health)
    for c in clips:
        names = [f"{c.video}.{n}.jpg" for n in c.frame_names]
        missing = [n for n in names if n not in members]
        if missing:
            _report(health, "clip", f"{src.url(item.shard)}:{missing[0]}", "member missing or unreadable")
            continue
        out = {"jpgs": [members[n] for n in names], "frame_idx": np.asarray(c.frame_idx, np.int64),
               "position": c.position, "step": c.step, "seed": c.seed, "video_ordinal": c.video_ordinal,
               "video": c.video}
        if masks:
            out["pngs"] = [members.get(f"{c.video}.{a}.png", b"") if a else b"" for a in c.annotations]
        yield out


def decode_clips(clips: list[dict[str, Any]], scfg: StreamConfig, health: Any = None) -> dict[str, np.ndarray]:
    """Decode and transform clips (from `read_item`) into fixed-shape arrays; corrupt clips are dropped."""
    n, t, s = len(clips), scfg.num_frames, scfg.size
    stmae = scfg.kind == "stmae"
    out = {"frames": np.empty((n, t, 3, s, s), np.uint8), "frame_idx": np.empty((n, t), np.int64),
           "position": np.empty(n, np.int64), "video_ordinal": np.empty(n, np.int64)}
    if stmae:
        out |= {"masks": np.empty((n, t, s, s), np.uint8), "num_objects": np.empty(n, np.int64)}
    kept = 0
    for clip in clips:
        try:
            if not stmae:
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


def clips_per_block(cfg: StreamConfig) -> int:
    """How many decoded clips fill one output block of `BLOCK_BYTES`."""
    per_clip = cfg.num_frames * cfg.size * cfg.size * (4 if cfg.kind == "stmae" else 3)
    return max(1, BLOCK_BYTES // per_clip)


def load_clips(items: dict[str, np.ndarray], *, source: Any, cfg: dict[str, Any], health: Any = None
               ) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data map_batches: planned shard reads -> their decoded clips, one output block at a time.

    Reading and decoding share one task, so the compressed bytes never pass through the object store and
    each CPU runs one shard read end to end.
    """
    scfg = StreamConfig(**cfg)
    chunk = clips_per_block(scfg)
    for i in range(len(items["shard"])):
        clips = list(read_item({k: items[k][i] for k in items}, source=source, cfg=cfg, health=health))
        for j in range(0, len(clips), chunk):
            yield decode_clips(clips[j:j + chunk], scfg, health)


def clip_dataset(source: ClipSource | Any, cfg: StreamConfig, items: list[Item], health: Any = None,
                 decode_tasks: int = 0) -> ray.data.Dataset:
    """The clips of the planned `items`, as a lazy Ray Dataset in deterministic order.

    `source` is a ClipSource or an object ref to one (pass a ref when many tasks need it); `decode_tasks`
    caps the concurrent shard-read tasks (0: as many as there are free CPUs).
    """
    rows = [asdict(i) for i in items]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    compute = ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks > 0 else None
    ds = ds.map_batches(load_clips, fn_kwargs={"source": source, "cfg": asdict(cfg), "health": health},
                        batch_size=1, batch_format="numpy", compute=compute)
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False  # one stream per training worker: bars would flood the job log
    # One block per yielded chunk, so batches reach the trainer while a shard is still being decoded.
    ds.context.target_max_block_size = BLOCK_BYTES
    return ds


def clip_batches(source: ClipSource | Any, cfg: StreamConfig, start_step: int = 0, health: Any = None,
                 device: torch.device | str = "cpu", decode_tasks: int = 0, prefetch_batches: int = 2
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """One rank's endless stream of fixed-size batches of tensors on `device`, from `start_step` on.

    The planned clips up to the end of the run (plus 10 %) form one Ray Dataset; if unreadable data runs it
    dry early, the stream goes on with the items planned after it.
    """
    src = _source(source)
    position = start_step * cfg.batch_size
    count = max(cfg.steps - start_step, 1) * cfg.batch_size * 11 // 10
    while True:
        items = plan.plan_items(src, cfg, position, count)
        ds = clip_dataset(source, cfg, items, health, decode_tasks)
        yield from ds.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True, device=str(device),
                                         prefetch_batches=prefetch_batches)
        position = plan.item_end(src, cfg, items[-1])
        count = cfg.batch_size * 8
