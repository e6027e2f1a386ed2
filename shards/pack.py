"""Pack one split of a DAVIS/YouTube-VOS folder into WebDataset tar shards, one sample per video.

Sample members, contiguous and sorted by name: `<video>.<frame>.jpg` for every frame, `<video>.<frame>.png`
for every annotated frame, and `<video>.json` = {"video", "layout", "split", "frames", "annotated", "height",
"width", "objects": {"<id>": category}}. Tar headers carry mtime 0, so the same input gives the same bytes.
`ray.data.read_webdataset` turns each video into one row with columns `<frame>.jpg`, `<frame>.png`, `json`;
rows read in one block share the union of their columns, absent members being None.

Videos are assigned to shards deterministically (sorted ids, greedy fill up to the target size measured on the
source files), the plan is saved as `plan.json`, and each shard is written by its own Ray task to a temporary
name in the output folder and then moved into place. Re-running the same job keeps the shards that exist and
writes only the missing ones (it re-reads the kept shards to index them); a different plan for the same folder
is refused. `index.parquet` (one row per video, see `SCHEMA`) is written last. Input and output may be local
paths or pyarrow.fs URIs (s3://...).

A pack holds the lock file `.pack.lock` (its pid, host and run id) in the output folder while it runs, and a
second pack into the same folder is refused. Temporary names carry the run id (`.<name>.tmp-<run>`): holding
the lock, a pack deletes the temp files of earlier runs, of its plan's files (shards, plan, index) and any of
a dead pack whose lock it takes over, and no other dotfile. Every error names the file or shard.

The output folder is checked before anything is written: it must not be, lie inside or hold `--src`, and it
must be new, empty, or hold only what a pack writes (the folder of an earlier pack holds its plan.json). A
video whose frames or annotations differ in size from its first frame is packed with a warning naming it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import socket
import sys
import tarfile
import uuid
import zlib
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from .cluster import init_ray
from .errors import NotFound, UsageError, UserError, storage_problem
from .fanout import fan_out
from .layout import Video, canonical_split, detect_layout, image_problem, list_videos, resolve
from .paths import output_entries, refuse_overlap
from .progress import Progress

INDEX = "index.parquet"
PLAN = "plan.json"
LOCK = ".pack.lock"
STALL_S = 120.0  # a message when no shard task finished for this long (e.g. a cluster without free CPUs)
JPEG_QUALITY = 90
SCHEMA = pa.schema([
    ("shard", pa.string()),                # file name relative to the output folder
    ("video", pa.string()),
    ("frames", pa.list_(pa.string())),
    ("annotated", pa.list_(pa.string())),  # frames with an annotation PNG
    ("num_frames", pa.int32()),
    ("bytes", pa.int64()),                 # sum of the sample's member sizes
    ("objects", pa.int32()),
    ("object_ids", pa.list_(pa.int32())),
    ("categories", pa.list_(pa.string())),  # aligned with object_ids ("" when the layout has none)
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("members", pa.list_(pa.string())),    # tar member names in order
    ("sizes", pa.list_(pa.int64())),       # their sizes
    ("crc32", pa.list_(pa.uint32())),      # and checksums (used by `check`)
    ("offsets", pa.list_(pa.int64())),     # and where their data starts in the shard (read by seeking)
])

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(size: str | int) -> int:
    """Bytes from an int or a string like '200MB', '1.5GB', '512MiB'."""
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", size.lower())
        if not m:
            raise UsageError(f"--shard-size: cannot read {size!r} (examples: 200MB, 1GB, 512MiB)")
        value = int(float(m[1]) * _UNITS[m[2] or ""])
    if value <= 0:
        raise UsageError(f"--shard-size must be positive, got {size!r}")
    return value


def plan_shards(videos: list[Video], target_bytes: int, prefix: str) -> list[tuple[str, list[Video]]]:
    """Greedy fill in sorted-id order: a shard takes videos until the next one would exceed `target_bytes`
    (a video larger than the target gets a shard of its own). Names: `<prefix>-000000.tar`, ..."""
    groups: list[list[Video]] = []
    size = 0
    for v in sorted(videos, key=lambda v: v.id):
        if not groups or (groups[-1] and size + v.bytes > target_bytes):
            groups.append([])
            size = 0
        groups[-1].append(v)
        size += v.bytes
    return [(f"{prefix}-{i:06d}.tar", g) for i, g in enumerate(groups)]


def _resized(data: bytes, short: int, is_mask: bool, path: str) -> bytes:
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if min(w, h) <= short:
            return data
        size = (short, round(h * short / w)) if w < h else (round(w * short / h), short)
        buf = io.BytesIO()
        if is_mask:
            img.resize(size, Image.NEAREST).save(buf, "PNG")
        else:
            img.convert("RGB").resize(size, Image.BICUBIC).save(buf, "JPEG", quality=JPEG_QUALITY)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot decode it to resize it ({image_problem(e)})") from None
    return buf.getvalue()


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header; None when PIL cannot read it (the decoders name it later)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - PIL raises many types for broken data
        return None


def size_warning(video: str, members: list[tuple[str, bytes]]) -> str | None:
    """A line naming the frames and annotations of one video whose size differs from its first frame's (the
    readers assume one size per video, and `check` reports them), or None."""
    sizes = [(name, _image_size(data)) for name, data in members if name.endswith((".jpg", ".png"))]
    first = next((size for name, size in sizes if name.endswith(".jpg") and size), None)
    odd = [(name, size) for name, size in sizes if size and size != first]
    if first is None or not odd:
        return None
    listed = ", ".join(f"{name.split('.', 1)[1]} {w}x{h}" for name, (w, h) in odd[:5])
    return (f"video {video}: {len(odd)} frame(s) or annotation(s) differ in size from its first frame's "
            f"{first[0]}x{first[1]}: {listed}{', ...' if len(odd) > 5 else ''}")


def _sample(video: Video, layout: str, split: str, resize_short: int | None) -> list[tuple[str, bytes]]:
    """The tar members of one video, sorted by name."""
    members = []
    for frame, path in zip(video.frames, video.jpegs):
        data = video.read(path)
        members.append((f"{video.id}.{frame}.jpg",
                        _resized(data, resize_short, False, path) if resize_short else data))
    for frame, path in video.annotations.items():
        data = video.read(path)
        members.append((f"{video.id}.{frame}.png",
                        _resized(data, resize_short, True, path) if resize_short else data))
    if resize_short:
        width, height = Image.open(io.BytesIO(members[0][1])).size
    else:
        width, height = video.width, video.height
    meta = {"video": video.id, "layout": layout, "split": split, "frames": video.frames,
            "annotated": list(video.annotations), "height": height, "width": width,
            "objects": {str(k): c for k, c in sorted(video.objects.items())}}
    members.append((f"{video.id}.json", json.dumps(meta).encode()))
    return sorted(members)


def _row(shard: str, meta: dict, members: list[tuple[str, bytes, int]]) -> dict:
    """The index row of one video from its (name, data, data offset) members."""
    objects = sorted((int(k), c) for k, c in meta["objects"].items())
    return {"shard": shard, "video": meta["video"], "frames": meta["frames"], "annotated": meta["annotated"],
            "num_frames": len(meta["frames"]), "bytes": sum(len(d) for _, d, _ in members),
            "objects": len(objects), "object_ids": [i for i, _ in objects], "categories": [c for _, c in objects],
            "height": meta["height"], "width": meta["width"], "members": [n for n, _, _ in members],
            "sizes": [len(d) for _, d, _ in members], "crc32": [zlib.crc32(d) for _, d, _ in members],
            "offsets": [o for _, _, o in members]}


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member; return the offset of its data in the tar."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # data is padded to blocks


def _tmp(path: str, run: str) -> str:
    """The temporary name of `path` while pack run `run` writes it (the run id tells whose leftover it is)."""
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp-{run}")


def write_shard(fs: pafs.FileSystem, folder: str, name: str, videos: list[Video], layout: str, split: str,
                resize_short: int | None, run: str) -> list[dict]:
    """Write one shard atomically (temporary name in `folder`, then a move); return its index rows."""
    tmp = _tmp(posixpath.join(folder, name), run)
    rows = []
    try:
        with fs.open_output_stream(tmp, compression=None) as stream, \
                tarfile.open(fileobj=stream, mode="w|") as tar:
            for video in videos:
                sample = _sample(video, layout, split, resize_short)
                members = [(n, d, _tar_member(tar, n, d)) for n, d in sample]
                rows.append(_row(name, json.loads(members[-1][1]), members))
                warning = size_warning(video.id, sample)
                if warning:
                    rows[-1]["warning"] = warning  # printed by the driver; not a column of the index
        fs.move(tmp, posixpath.join(folder, name))
    except BaseException:
        if fs.get_file_info(tmp).type == pafs.FileType.File:
            fs.delete_file(tmp)
        raise
    return rows


def iter_samples(fs: pafs.FileSystem, path: str) -> Iterator[tuple[str, list[tuple[str, bytes, int]]]]:
    """(video, [(name, data, data offset)]) for each run of members sharing a key in the tar at `path`."""
    key, members = None, []
    with fs.open_input_stream(path, compression=None) as stream, \
            tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            data = tar.extractfile(info).read()
            k = posixpath.basename(info.name).split(".", 1)[0]
            if k != key and members:
                yield key, members
                members = []
            key = k
            members.append((info.name, data, info.offset_data))
    if members:
        yield key, members


def index_shard(fs: pafs.FileSystem, folder: str, name: str, expected: list[str]) -> list[dict]:
    """Index rows of an existing shard, read from its tar; it must hold exactly the `expected` videos."""
    path = posixpath.join(folder, name)
    rows = []
    try:
        for video, members in iter_samples(fs, path):
            metas = [d for n, d, _ in members if n == f"{video}.json"]
            if not metas:
                raise UserError(f"{path}: video {video} has no {video}.json member; delete the shard and re-pack")
            rows.append(_row(name, json.loads(metas[0]), members))
    except UserError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: this shard, kept from an earlier run, is damaged ({type(e).__name__}: {e}); "
                        f"delete it and run the same pack command again") from None
    found = [r["video"] for r in rows]
    if found != expected:
        raise UserError(f"{path} holds videos {found[:3]}... but the plan puts {expected[:3]}... in it; "
                        f"delete the shard and re-pack")
    return rows


def _atomic_write(fs: pafs.FileSystem, path: str, data: bytes, run: str) -> None:
    tmp = _tmp(path, run)
    with fs.open_output_stream(tmp, compression=None) as f:
        f.write(data)
    fs.move(tmp, path)


def _save_plan(fs: pafs.FileSystem, folder: str, out: str, plan: dict, run: str) -> None:
    path = posixpath.join(folder, PLAN)
    if fs.get_file_info(path).type == pafs.FileType.File:
        try:
            with fs.open_input_stream(path, compression=None) as f:
                old = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable ({e}); pack into an empty folder") from None
        if old != plan:
            raise UserError(f"{out} already holds shards of a different plan ({PLAN} differs: other videos, "
                            f"--shard-size, --resize-short or --prefix); pack into an empty folder")
        return
    _atomic_write(fs, path, json.dumps(plan, indent=1).encode(), run)


TEMP = re.compile(r"\.(?P<name>.+)\.tmp-(?P<run>[^.]+)")  # `_tmp`'s names
SHARD = re.compile(r".+-\d{6}\.tar")  # `plan_shards`'s names


def _own_file(name: str) -> bool:
    """Whether a pack writes files of this name (what an output folder may hold besides a plan.json)."""
    return name in (PLAN, INDEX, LOCK) or bool(SHARD.fullmatch(name) or TEMP.fullmatch(name))


def check_output(src: str, out: str) -> None:
    """Refuse, before anything is written, an --out that is, lies inside or holds --src, is a file or lies
    under one, or holds files no pack wrote (a folder of an earlier pack holds its plan.json)."""
    refuse_overlap("--out", out, [("--src", src)])
    entries = output_entries("--out", out)
    foreign = [e for e in entries if not _own_file(e)]
    if foreign and PLAN not in entries:
        raise UserError(f"--out {out}: holds files that no pack wrote ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); pack into a new or empty folder, or into the "
                        f"folder of an earlier pack of the same data to finish it")


def _url(out: str, name: str) -> str:
    return f"{out.rstrip('/')}/{name}" if "://" in out else os.path.join(os.path.abspath(out), name)


def read_index(out: str) -> pa.Table:
    """The index table of a packed folder or URI."""
    fs, folder = resolve(out)
    path = posixpath.join(folder, INDEX)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise NotFound(f"{out}: no {INDEX} (not packed, or packing did not finish)")
    try:
        table = pq.read_table(path, filesystem=fs)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: unreadable ({e}); run the same `python -m shards pack` again: it keeps the "
                        f"shards and rewrites the index") from None
    if "offsets" not in table.column_names:
        raise UserError(f"{out}: {INDEX} was written by an older version without member offsets; run the same "
                        f"`python -m shards pack` again: it keeps the shards and rewrites the index")
    missing = [c for c in SCHEMA.names if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: not a shard index (no column {', '.join(missing)})")
    return table


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def _create(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Create the file `path` holding `data` unless it exists (exclusive on a local disk; object stores have
    no exclusive create, so there two packs starting in the same second could both get it)."""
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    with fs.open_output_stream(path, compression=None) as f:
        f.write(data)
    return True


def _owner(fs: pafs.FileSystem, path: str) -> dict:
    """The pid, host and run id in a lock file ({} when it is gone or unreadable)."""
    try:
        with fs.open_input_stream(path, compression=None) as f:
            owner = json.loads(f.read())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _locked(fs: pafs.FileSystem, folder: str, out: str) -> Iterator[tuple[str, str | None]]:
    """Hold the lock file of the output folder for one pack run. Yields (this run's id, the id of the dead
    run whose lock was taken over, or None); refuses a folder that a running pack holds."""
    path = posixpath.join(folder, LOCK)
    run, host = uuid.uuid4().hex[:16], socket.gethostname()
    stale = None
    while not _create(fs, path, json.dumps({"pid": os.getpid(), "host": host, "run": run}).encode()):
        owner = _owner(fs, path)
        pid = owner.get("pid")
        if owner.get("host") != host or not isinstance(pid, int) or pid_alive(pid) or stale is not None:
            where = f"pid {pid} on {owner.get('host')}" if owner else "unknown owner"
            raise UserError(f"{out}: another pack is writing into this folder ({path}: {where}); wait for it to "
                            f"finish, or delete that file if no pack is running")
        stale = str(owner.get("run", ""))  # its pack died: take the lock over, its temp files are leftovers
        fs.delete_file(path)
    try:
        yield run, stale or None
    finally:
        if _owner(fs, path).get("run") == run:
            fs.delete_file(path)


def shard_urls(out: str) -> list[str]:
    """Paths (or URIs, for a URI `out`) of the shards listed in the index, in order."""
    return [_url(out, s) for s in dict.fromkeys(read_index(out).column("shard").to_pylist())]


def pack(src: str, out: str, layout: str | None = None, split: str = "train", *,
         shard_size: str | int = "200MB", resize_short: int | None = None, prefix: str | None = None,
         verbose: bool = False) -> pa.Table:
    """Pack `split` of the dataset at `src` into shards under `out`; return the index table.

    One Ray task per shard (Ray is started locally if this process is not connected); shards that already
    exist are kept. `resize_short` resizes frames whose short side is larger (JPEG bicubic, PNG nearest).
    """
    import ray

    check_output(src, out)
    layout = layout or detect_layout(src)
    split = canonical_split(layout, split)
    videos = list_videos(src, layout, split)
    if not videos:
        raise UserError(f"{src}: split {split!r} holds no videos")
    dotted = [v.id for v in videos if "." in v.id]
    if dotted:
        raise UserError(f"{src}: video ids must not contain a dot (WebDataset keys end at the first dot): "
                         f"{', '.join(dotted[:5])}")
    prefix = prefix or f"{layout}-{split}"
    if "/" in prefix or prefix.startswith("."):
        raise UsageError(f"--prefix must not contain '/' nor start with '.', got {prefix!r}")
    if resize_short is not None and resize_short < 1:
        raise UsageError(f"--resize-short must be positive, got {resize_short}")
    plan = plan_shards(videos, parse_size(shard_size), prefix)

    fs, folder = resolve(out)
    try:
        fs.create_dir(folder, recursive=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({storage_problem(e)})") from None
    with _locked(fs, folder, out) as (run, stale):
        _save_plan(fs, folder, out, {"layout": layout, "split": split, "resize_short": resize_short,
                                     "shards": {name: [v.id for v in vs] for name, vs in plan}}, run)
        entries = fs.get_file_info(pafs.FileSelector(folder))
        ours = {name for name, _ in plan} | {PLAN, INDEX}
        left = []
        for info in entries:  # temp files of an earlier pack: this run holds the lock, so no pack writes them
            m = TEMP.fullmatch(info.base_name)
            if m and m["run"] != run and (m["run"] == stale or m["name"] in ours):
                fs.delete_file(info.path)
                left.append(info.base_name)
        if left:
            print(f"pack: removed {len(left)} temp file(s) an interrupted pack left in {out}: "
                  f"{', '.join(left[:3])}{', ...' if len(left) > 3 else ''}", file=sys.stderr)
        existing = {info.base_name for info in entries if info.type == pafs.FileType.File}

        init_ray()
        write = ray.remote(num_cpus=1)(write_shard)
        index = ray.remote(num_cpus=1)(index_shard)

        def submit(k: int) -> Any:
            name, vs = plan[k]
            if name in existing:
                return index.remote(fs, folder, name, [v.id for v in vs])
            return write.remote(fs, folder, name, vs, layout, split, resize_short, run)

        def done(k: int, rows: list[dict[str, Any]]) -> None:
            name = plan[k][0]
            for row in rows:
                if row.get("warning"):
                    print(f"pack: warning: {name}: {row['warning']}", file=sys.stderr)
            what = "kept" if name in existing else "written"
            if verbose:
                print(f"{name}: {what} ({len(rows)} videos)", file=sys.stderr)
            bar.update(note=f"{name} {what}")

        def stalled(running: list[int], _: float) -> None:
            free, total = ray.available_resources().get("CPU", 0), ray.cluster_resources().get("CPU", 0)
            print(f"pack: no shard finished in the last {STALL_S:.0f} s; {len(running)} shard tasks (1 CPU "
                  f"each) pending; the Ray cluster has {free:g} of {total:g} CPUs free", file=sys.stderr)

        bar = Progress(len(plan), "pack", unit="shard")
        found = fan_out(len(plan), submit, on_result=done, stall_s=STALL_S, on_stall=stalled)
        results = {name: rows for (name, _), rows in zip(plan, found)}
        bar.close()
        table = pa.Table.from_pylist([r for name, _ in plan for r in results[name]], schema=SCHEMA)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        _atomic_write(fs, posixpath.join(folder, INDEX), buf.getvalue().to_pybytes(), run)
    return table
