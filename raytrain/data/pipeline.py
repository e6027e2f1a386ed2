"""Ray Data clip streaming: WebDataset shards -> planned clips -> decoded, fixed-shape tensors.

One rank's stream is a Ray Dataset over its planned shard reads (`raytrain.data.plan`):

    from_items(items) -> flat_map(read_item)       one task per shard read: stream the tar through
                                                   pyarrow.fs + webdataset, keep only planned members
                      -> map_batches(decode_batch)  JPEG/PNG decode, resize / augmentation, on CPU tasks
                      -> iter_torch_batches         fixed-shape tensors for the training loop

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
BLOCK_BYTES = 2 << 20


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
        health.record.remote(kind, name, str(error))


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
    """Ray Data flat_map: one planned shard read -> its clips, with the raw frame (and mask) bytes."""
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


def decode_batch(batch: dict[str, np.ndarray], *, cfg: dict[str, Any], health: Any = None
                 ) -> dict[str, np.ndarray]:
    """Ray Data map_batches: decode and transform clips into fixed-shape arrays; corrupt clips are dropped."""
    scfg = StreamConfig(**cfg)
    out: dict[str, list] = collections.defaultdict(list)
    for i in range(len(batch["position"])):
        name = f"{batch['video'][i]} frames {list(batch['frame_idx'][i])}"
        try:
            if scfg.kind == "smtc":
                frames = np.stack([decode.smtc_frame(bytes(b), scfg.size) for b in batch["jpgs"][i]])
            else:
                imgs = [decode.decode_jpeg(bytes(b)) for b in batch["jpgs"][i]]
                anns = [decode.decode_png(bytes(b)) if len(b) else np.zeros(imgs[t].shape[:2], np.uint8)
                        for t, b in enumerate(batch["pngs"][i])]
                if any(a.shape != im.shape[:2] for a, im in zip(anns, imgs)):
                    raise ValueError("annotation size differs from its frame")
                finetune = int(batch["step"][i]) >= scfg.finetune_at * scfg.steps
                rng = np.random.default_rng(int(batch["seed"][i]))
                frames, masks, k = decode.stmae_clip(imgs, anns, rng, scfg.size, scfg.max_objects, finetune)
                out["masks"].append(masks)
                out["num_objects"].append(k)
        except Exception as e:  # noqa: BLE001 - a corrupt frame drops its clip, never the run
            _report(health, "frame", name, e)
            continue
        out["frames"].append(frames)
        for key in ("frame_idx", "position", "video_ordinal"):
            out[key].append(batch[key][i])
    n_frames, s = scfg.num_frames, scfg.size
    shapes = {"frames": (0, n_frames, 3, s, s), "masks": (0, n_frames, s, s), "num_objects": (0,),
              "frame_idx": (0, n_frames), "position": (0,), "video_ordinal": (0,)}
    dtypes = {"frames": np.uint8, "masks": np.uint8}
    keys = ["frames", "frame_idx", "position", "video_ordinal"] + (["masks", "num_objects"] if scfg.kind == "stmae" else [])
    return {k: np.stack(out[k]).astype(dtypes.get(k, np.int64)) if out[k]
            else np.zeros(shapes[k], dtypes.get(k, np.int64)) for k in keys}


def clip_dataset(source: ClipSource | Any, cfg: StreamConfig, items: list[Item], health: Any = None,
                 decode_tasks: int = 0) -> ray.data.Dataset:
    """The clips of the planned `items`, as a lazy Ray Dataset in deterministic order.

    `source` is a ClipSource or an object ref to one (pass a ref when many tasks need it).
    """
    rows = [asdict(i) for i in items]
    cfg_dict = asdict(cfg)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.flat_map(read_item, fn_kwargs={"source": source, "cfg": cfg_dict, "health": health})
    compute = ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks > 0 else None
    ds = ds.map_batches(decode_batch, fn_kwargs={"cfg": cfg_dict, "health": health}, batch_size=8,
                        batch_format="numpy", compute=compute)
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False  # one stream per training worker: bars would flood the job log
    # Small blocks out of the shard reads, so that decoding spreads over many tasks instead of one per shard.
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
