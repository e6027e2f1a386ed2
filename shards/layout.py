"""List the videos of a DAVIS-2017 or YouTube-VOS folder (a local path or any URI pyarrow.fs understands).

Frames are JPEG files (`.jpg` or `.jpeg`, in any case), annotations PNG files (`.png`, in any case).

DAVIS-2017: `JPEGImages/480p/<seq>/*.jpg`, `Annotations[_unsupervised]/480p/<seq>/*.png`,
`ImageSets/2017/<split>.txt`. Splits: any ImageSets file (`train`, `val`, ...), or `all` for every sequence.
Objects are ids 1..N with N the largest id in the first annotated frame (as the DAVIS evaluator counts them).

YouTube-VOS: `<split>/JPEGImages/<vid>/*.jpg`, `<split>/Annotations/<vid>/*.png`, `<split>/meta.json`.
Splits: `train`, `valid`, `test`, and `valid_all_frames` (frames of `valid_all_frames/JPEGImages` with the
annotations and meta.json of `valid`). Objects and categories come from meta.json, or without one from the ids
found in the annotations.

`val` and `valid` name the same split in both layouts.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from .errors import NotFound, UserError

LAYOUTS = ("davis", "ytvos")
FOREGROUND_SETS = ("davis2016", "segtrackv2", "fbms")  # single-foreground discovery sets (shards.bench_layout)
YTVOS_SPLITS = ("train", "valid", "test", "valid_all_frames")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as s3://bucket/key or file:///dir."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


@dataclass
class Video:
    """One video: frame names in order, their JPEG paths, the annotation PNGs that exist, and the objects.

    Paths are inside `fs` (absolute paths for local folders, usable with `open`); `read` fetches one.
    """

    id: str
    frames: list[str]
    jpegs: list[str]
    annotations: dict[str, str]
    objects: dict[int, str]
    height: int
    width: int
    bytes: int = 0  # total size of the JPEG and annotation files
    fs: pafs.FileSystem = field(default_factory=pafs.LocalFileSystem, repr=False, compare=False)

    def read(self, path: str) -> bytes:
        return _read(self.fs, path)


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def detect_layout(root: str) -> str:
    """'davis' or 'ytvos' from the folder structure; ValueError naming `root` when it is neither."""
    fs, base = resolve(root)
    if not _is_dir(fs, base):
        raise NotFound(f"{root}: no such folder")
    if _is_dir(fs, posixpath.join(base, "JPEGImages", "480p")):
        return "davis"
    if any(_is_dir(fs, posixpath.join(base, s, "JPEGImages")) for s in YTVOS_SPLITS):
        return "ytvos"
    raise UserError(f"{root}: not a DAVIS-2017 or YouTube-VOS folder (expected JPEGImages/480p/<sequence>/ "
                    f"or train|valid/JPEGImages/<video>/ inside it)")


def canonical_split(layout: str, split: str) -> str:
    """The layout's own name for `split`: DAVIS says `val`, YouTube-VOS `valid`."""
    if layout == "davis":
        return "val" if split == "valid" else split
    return "valid" if split == "val" else split


JPEG_SUFFIXES = (".jpg", ".jpeg")  # any case: .JPG, .Jpeg, ...
PNG_SUFFIXES = (".png",)


def _files(fs: pafs.FileSystem, folder: str, suffixes: tuple[str, ...]) -> dict[str, dict[str, tuple[str, int]]]:
    """{video: {frame: (path, size)}} for the files one level below `folder` whose suffix, in any case, is one
    of `suffixes` (empty if the folder is absent). Two files of one frame (`00000.jpg` and `00000.JPG`) are
    refused, naming both."""
    out: dict[str, dict[str, tuple[str, int]]] = {}
    for info in fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        parts = posixpath.relpath(info.path, folder).split("/")
        stem, dot, suffix = parts[-1].rpartition(".")
        if len(parts) != 2 or not dot or f".{suffix.lower()}" not in suffixes:
            continue
        frames = out.setdefault(parts[0], {})
        if stem in frames:
            raise UserError(f"{frames[stem][0]} and {info.path}: two files for frame {stem} of {parts[0]}; "
                            f"keep one")
        frames[stem] = (info.path, info.size)
    return out


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def image_problem(e: Exception) -> str:
    """Why PIL could not read an image, without the repr of the stream it was given."""
    return "not an image file PIL can read" if isinstance(e, UnidentifiedImageError) else str(e)


def _size(fs: pafs.FileSystem, path: str) -> tuple[int, int]:
    try:
        with fs.open_input_file(path) as f:
            return Image.open(f).size
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot read the frame ({image_problem(e)})") from None


def _ids(fs: pafs.FileSystem, path: str) -> set[int]:
    try:
        ids = np.unique(np.asarray(Image.open(io.BytesIO(_read(fs, path)))))
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot read the annotation ({image_problem(e)})") from None
    return {int(i) for i in ids if 0 < i < 255}


def _parallel(fn, items: list) -> list:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(fn, items))


def _davis(fs: pafs.FileSystem, base: str, root: str, split: str, unsupervised: bool
           ) -> tuple[list[str], dict, dict, dict[str, dict[int, str]]]:
    jpegs = _files(fs, posixpath.join(base, "JPEGImages", "480p"), JPEG_SUFFIXES)
    ann_folder = "Annotations_unsupervised" if unsupervised else "Annotations"
    anns = _files(fs, posixpath.join(base, ann_folder, "480p"), PNG_SUFFIXES)
    if split == "all":
        names = sorted(jpegs)
    else:
        listing = posixpath.join(base, "ImageSets", "2017", f"{split}.txt")
        if fs.get_file_info(listing).type != pafs.FileType.File:
            raise NotFound(f"{root}: split {split!r} needs {listing}, which does not exist")
        names = sorted({n.strip() for n in _read(fs, listing).decode().splitlines() if n.strip()})
        absent = [n for n in names if n not in jpegs]
        if absent:
            raise NotFound(f"{listing} lists sequences without frames in "
                           f"{posixpath.join(base, 'JPEGImages', '480p')}: {', '.join(absent[:5])}")

    def objects(name: str) -> dict[int, str]:
        frames = anns.get(name)
        if not frames:
            return {}
        ids = _ids(fs, frames[min(frames)][0])
        return {i: "" for i in range(1, max(ids) + 1)} if ids else {}

    return names, jpegs, anns, dict(zip(names, _parallel(objects, names)))


def _ytvos(fs: pafs.FileSystem, base: str, root: str, split: str
           ) -> tuple[list[str], dict, dict, dict[str, dict[int, str]]]:
    if split not in YTVOS_SPLITS:
        raise UserError(f"{root}: unknown YouTube-VOS split {split!r} (one of {', '.join(YTVOS_SPLITS)})")
    ann_split = "valid" if split == "valid_all_frames" else split
    jpeg_dir = posixpath.join(base, split, "JPEGImages")
    if not _is_dir(fs, jpeg_dir):
        raise NotFound(f"{root}: split {split!r} needs the folder {jpeg_dir}, which does not exist")
    jpegs = _files(fs, jpeg_dir, JPEG_SUFFIXES)
    anns = _files(fs, posixpath.join(base, ann_split, "Annotations"), PNG_SUFFIXES)
    names = sorted(jpegs)
    meta_path = posixpath.join(base, ann_split, "meta.json")
    if fs.get_file_info(meta_path).type == pafs.FileType.File:
        try:
            meta = json.loads(_read(fs, meta_path))["videos"]
            objects = {v: {int(k): o["category"] for k, o in meta.get(v, {}).get("objects", {}).items()}
                       for v in names}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{meta_path}: not a YouTube-VOS meta.json "
                            f'({{"videos": {{vid: {{"objects": {{"1": {{"category": ...}}}}}}}}}}): {e!r}') from e
    else:
        def union(name: str) -> dict[int, str]:
            ids = set().union(*(_ids(fs, p) for p, _ in anns.get(name, {}).values()))
            return {i: "" for i in sorted(ids)}
        objects = dict(zip(names, _parallel(union, names)))
    return names, jpegs, anns, objects


def list_videos(root: str, layout: str | None = None, split: str = "train", *,
                unsupervised: bool = False) -> list[Video]:
    """The videos of one split of a DAVIS-2017 or YouTube-VOS folder, sorted by id.

    `layout` is detected when None. `unsupervised` reads DAVIS `Annotations_unsupervised` instead of
    `Annotations`. Height and width come from each video's first JPEG.
    """
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    fs, base = resolve(root)
    if not _is_dir(fs, base):
        raise NotFound(f"{root}: no such folder")
    split = canonical_split(layout, split)
    if layout == "davis":
        names, jpegs, anns, objects = _davis(fs, base, root, split, unsupervised)
    else:
        names, jpegs, anns, objects = _ytvos(fs, base, root, split)
    sizes = _parallel(lambda n: _size(fs, jpegs[n][min(jpegs[n])][0]), names)
    videos = []
    for name, (width, height) in zip(names, sizes):
        frames = sorted(jpegs[name])
        ann = {f: p for f, (p, _) in sorted(anns.get(name, {}).items()) if f in jpegs[name]}
        total = sum(s for _, s in jpegs[name].values()) + sum(s for f, (_, s) in anns.get(name, {}).items()
                                                              if f in ann)
        videos.append(Video(id=name, frames=frames, jpegs=[jpegs[name][f][0] for f in frames],
                            annotations=ann, objects=objects[name], height=height, width=width,
                            bytes=total, fs=fs))
    return videos
