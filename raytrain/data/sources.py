"""`--data`: one or more shard folders with weights, parsed and loaded into one `ClipSource`.

Each item of `--data` is a shard folder or URI, optionally followed by `:WEIGHT` (a positive integer: the times
the source's videos are visited per round, as upstream's repetition; default 1), or a `.json` file holding a
list of `{"path": ..., "weight": ...}` objects (or a `.yaml`/`.yml` file holding the same list; relative paths
are relative to the file's folder). Each
source's index (and its `plan.json`, which names its layout) is read once.
"""
from __future__ import annotations

import json
import posixpath
from typing import Sequence

import pyarrow.fs as pafs

from raytrain.data.plan import ClipSource
from shards.errors import UsageError, UserError, naming
from shards.layout import resolve
from shards.pack import PLAN, read_index
from shards.paths import location


def _weight(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # "²".isdigit(), and int() refuses it
        raise UsageError(f"--data {item}: the weight after ':' must be a positive integer, got {text!r}")
    return int(text)


def _split(item: str) -> tuple[str, int]:
    """`path[:weight]` -> (path, weight); a ':' that a '/' follows (as in s3://) is part of the path."""
    head, sep, tail = item.rpartition(":")
    if not sep or "/" in tail:
        return item, 1
    if not head:
        raise UsageError(f"--data {item}: no shard folder before ':'")
    return head, _weight(tail, item)


def _read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path, compression=None) as f:
        return f.read().decode()


SPEC_FILES = (".json", ".yaml", ".yml")


def _from_file(item: str) -> list[tuple[str, int]]:
    import yaml

    kind = "JSON" if item.endswith(".json") else "YAML"
    with naming("--data", item):
        try:
            text = _read_text(*resolve(item))
        except FileNotFoundError:
            raise UserError(f"--data {item}: no such file") from None
        try:
            spec = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as e:
            raise UsageError(f"--data {item}: not valid {kind} ({' '.join(str(e).split())})") from None
    if not isinstance(spec, list) or not spec or not all(isinstance(s, dict) and isinstance(s.get("path"), str)
                                                         for s in spec):
        raise UsageError(f"--data {item}: expected a non-empty {kind} list of {{path: ..., weight: ...}} objects")
    base = item.rsplit("/", 1)[0] if "/" in item else "."
    out = []
    for s in spec:
        weight = s.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise UsageError(f"--data {item}: the weight of {s['path']} must be a positive integer, got {weight!r}")
        path = s["path"]
        out.append((path if "://" in path or path.startswith("/") else posixpath.join(base, path), weight))
    return out


def parse_data(data: Sequence[str]) -> list[tuple[str, int]]:
    """(folder, weight) of each source `--data` names; UsageError naming the item that is malformed."""
    sources: list[tuple[str, int]] = []
    for item in data:
        if item.endswith(SPEC_FILES):
            sources += _from_file(item)
        else:
            sources.append(_split(item))
    spellings: dict[str, list[str]] = {}  # one folder's spellings (`d`, `./d/`, `d//`, a link to it)
    for path, _ in sources:
        spellings.setdefault(location(path), []).append(path)
    twice = [names for names in spellings.values() if len(names) > 1]
    if twice:
        names = list(dict.fromkeys(twice[0]))
        raise UsageError(f"--data names {names[0].rstrip('/') or names[0]} more than once"
                         + (f" (as {', '.join(names)})" if len(names) > 1 else "")
                         + "; give it once, with the sum of the weights")
    if not sources:
        raise UsageError("--data: no shard folder given")
    return sources


def _layout(root: str) -> tuple[str | None, str | None]:
    """The layout and split recorded in a pack's plan.json; (None, None) without one."""
    fs, folder = resolve(root)
    path = posixpath.join(folder, PLAN)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None, None
    try:
        plan = json.loads(_read_text(fs, path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(plan, dict):
        raise UserError(f"{path}: not a pack plan (a JSON object with layout, split and shards; this one holds a "
                        f"{type(plan).__name__}); re-run the pack into a new folder")
    return plan.get("layout"), plan.get("split")


def load_source(data: Sequence[str]) -> ClipSource:
    """The ClipSource of every source `--data` names; errors name `--data` and the source."""
    parts = []
    for root, weight in parse_data(data):
        with naming("--data", root):
            index = read_index(root)
            layout, split = _layout(root)
            try:
                parts.append(ClipSource.from_index(root, index, weight, layout, split))
            except (KeyError, TypeError) as e:
                raise UserError(f"{root}: the index does not match its shards' members ({e!r}); re-pack") from None
            except ValueError as e:  # an index without videos
                raise UserError(str(e)) from None
    return ClipSource.mix(parts)
