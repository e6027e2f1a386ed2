"""Check packed shards against their index: every problem is reported by shard and member name.

Found: a missing index or shard, shards not in the index, a tar cut short (a member's data ends early or the
end-of-archive blocks are missing), missing, unexpected, duplicated or non-contiguous members, members whose
size, CRC-32 or byte offset differs from the index, JPEG/PNG members PIL cannot decode or whose size differs
from the video's, `<video>.json` members that are unreadable or disagree with the index, and the temp files and
the lock that an interrupted pack left.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow.fs as pafs
from PIL import Image

from .errors import UserError
from .layout import resolve
from .pack import INDEX, LOCK, PLAN, TEMP, read_index
from .progress import Progress

MAX_LISTED = 10  # missing members listed per shard before summing up the rest


@dataclass
class Report:
    root: str
    shards: int = 0
    videos: int = 0
    members: int = 0  # members read and checked
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{self.root}: {self.shards} shards, {self.videos} videos, {self.members} members checked: {status}"


def _check_member(shard: str, name: str, data: bytes, offset: int, expected: dict) -> list[str]:
    if name not in expected:
        return [f"{shard}: unexpected member {name}"]
    size, crc, at, row = expected[name]
    if offset != at:
        return [f"{shard}: member {name} starts at byte {offset}, the index says {at} (re-pack the shard)"]
    if len(data) != size:
        return [f"{shard}: member {name} has {len(data)} bytes, the index says {size} (truncated or altered)"]
    problems = []
    if zlib.crc32(data) != crc:
        problems.append(f"{shard}: corrupted member {name} (CRC-32 differs from the index)")
    ext = name.rsplit(".", 1)[-1]
    if ext in ("jpg", "png"):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.size != (row["width"], row["height"]):
                    problems.append(f"{shard}: member {name} is {img.size[0]}x{img.size[1]}, "
                                    f"the index says {row['width']}x{row['height']}")
        except Exception as e:  # PIL raises many types for broken data
            problems.append(f"{shard}: undecodable member {name}: {e}")
    elif ext == "json":
        try:
            meta = json.loads(data)
            if meta["frames"] != row["frames"] or meta["annotated"] != row["annotated"]:
                problems.append(f"{shard}: member {name} lists other frames than the index")
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{shard}: unreadable member {name}: {e!r}")
    return problems


def _check_shard(fs: pafs.FileSystem, folder: str, shard: str, rows: list[dict]) -> tuple[int, list[str]]:
    """(members read, problems) for one shard."""
    path = posixpath.join(folder, shard)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return 0, [f"{shard}: missing shard ({len(rows)} videos)"]
    problems = []
    with fs.open_input_file(path) as f:
        size = f.size()
        f.seek(max(size - 1024, 0))
        if size % 512 or size < 1024 or any(f.read(1024)):
            problems.append(f"{shard}: truncated tar (size {size}, no end-of-archive blocks)")
    expected = {m: (s, c, o, r) for r in rows
                for m, s, c, o in zip(r["members"], r["sizes"], r["crc32"], r["offsets"])}
    seen: set[str] = set()
    finished: set[str] = set()
    key = None
    try:
        with fs.open_input_stream(path, compression=None) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                try:
                    data = tar.extractfile(member).read()
                except (tarfile.ReadError, EOFError, OSError) as e:
                    problems.append(f"{shard}: truncated member {name} ({e})")
                    break
                k = posixpath.basename(name).split(".", 1)[0]
                if k != key:
                    if k in finished:
                        problems.append(f"{shard}: members of video {k} are not contiguous (at {name})")
                    finished.add(key)
                    key = k
                if name in seen:
                    problems.append(f"{shard}: duplicated member {name}")
                seen.add(name)
                problems += _check_member(shard, name, data, member.offset_data, expected)
    except (tarfile.ReadError, EOFError, OSError) as e:
        problems.append(f"{shard}: unreadable tar after {len(seen)} members ({e})")
    missing = [m for m in expected if m not in seen]
    problems += [f"{shard}: missing member {m}" for m in missing[:MAX_LISTED]]
    if len(missing) > MAX_LISTED:
        problems.append(f"{shard}: ... and {len(missing) - MAX_LISTED} more missing members")
    return len(seen), problems


def check(out: str, workers: int | None = None) -> Report:
    """Read every shard of the packed folder/URI `out` against its index (shards in parallel threads)."""
    report = Report(out)
    fs, folder = resolve(out)
    try:
        table = read_index(out)
    except UserError as e:  # missing, unreadable or not an index
        report.problems.append(str(e))
        return report
    shards: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        shards.setdefault(row["shard"], []).append(row)
    report.shards, report.videos = len(shards), table.num_rows
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        if info.base_name.endswith(".tar") and info.base_name not in shards:
            report.problems.append(f"{info.base_name}: shard not listed in {INDEX}")
        temp = TEMP.fullmatch(info.base_name)
        if temp and (temp["name"].endswith(".tar") or temp["name"] in (PLAN, INDEX)):
            report.problems.append(f"{info.base_name}: temp file of an interrupted pack; run the same pack command "
                                   f"again (it removes it), or delete it")
        if info.base_name == LOCK:
            report.problems.append(f"{LOCK}: a pack is writing into this folder, or one was killed (the next pack "
                                   f"into it takes the lock over)")
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool, \
            Progress(len(shards), "check", unit="shard") as bar:
        for read, problems in pool.map(lambda s: _check_shard(fs, folder, s, shards[s]), shards):
            report.members += read
            report.problems += problems
            bar.update()
    return report
