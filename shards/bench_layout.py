"""Readers of the JHMDB, VIP, SegTrack-v2, FBMS-59 and DAVIS-2016 layouts (`shards.bench_synth` writes each one),
on a local folder or any URI pyarrow understands. Every reader returns `shards.layout.Video`s (frame paths in
`jpegs`, whatever the image format) and refuses bad input with one line naming the file or sequence.

- JHMDB: a CRW list (`<frame dir> <joint_positions.mat>` per line; relative paths are taken from the root), frames
  `*.png` sorted numerically, `pos_img` minus 1 as the 0-based joints [2, 15, T] (CRW's jhmdb.py / eval_pck.py).
- VIP: a CRW list (`<image dir> <label dir>` per line) or, without one, every folder of `Images/`; images and
  labels are sorted numerically and paired by position as CRW does; annotations are keyed by the image's frame.
- DAVIS-2016: `JPEGImages/480p`, `Annotations/480p` (0/255) for every frame; sequences from
  `ImageSets/2016/val.txt`, else all.
- SegTrack-v2 / FBMS: the folders motion-grouping's cleaning leaves, under SMTC's config names
  (`shards.bench_synth`); for FBMS also `FBMS_clean.py`'s own `JPEGImages/` and `Annotations/`. FBMS annotations
  are sparse and placed as SMTC does: frame index = annotation number - the first annotation's number.
"""
from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import scipy.io

from .bench_synth import FBMS_GT, FBMS_IMAGES, JHMDB_LIST, STV2_GT, STV2_IMAGES, VIP_LIST
from .errors import NotFound, UserError
from .layout import FOREGROUND_SETS, Video, _read, _size, resolve

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class JointsVideo:
    """A JHMDB video: its position in the list (the name of its prediction file), frames and 0-based joints."""

    index: int
    video: Video
    joints: np.ndarray  # [2, 15, T] pixel x, y

    @property
    def id(self) -> str:
        return self.video.id


def _numeric(name: str) -> tuple[int, str]:
    stem = name.rsplit(".", 1)[0]
    return (int(stem), name) if stem.isdigit() else (1 << 62, name)


def _listing(fs: pafs.FileSystem, folder: str, suffixes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, size) of the files of `folder` with one of `suffixes`, sorted numerically by stem (CRW)."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        raise NotFound(f"{folder}: no such folder")
    infos = [i for i in fs.get_file_info(pafs.FileSelector(folder)) if i.type == pafs.FileType.File
             and posixpath.splitext(i.base_name)[1].lower() in suffixes]
    infos.sort(key=lambda i: _numeric(i.base_name))
    return [(i.path, i.size) for i in infos]


def _video(fs: pafs.FileSystem, name: str, frames: list[tuple[str, int]], annotations: dict[str, str],
           gt_bytes: int = 0) -> Video:
    if not frames:
        raise NotFound(f"sequence {name!r}: no frames")
    width, height = _size(fs, frames[0][0])
    stems = [posixpath.splitext(posixpath.basename(p))[0] for p, _ in frames]
    return Video(id=name, frames=stems, jpegs=[p for p, _ in frames], annotations=annotations, objects={1: ""},
                 height=height, width=width, bytes=sum(s for _, s in frames) + gt_bytes, fs=fs)


def _list_lines(fs: pafs.FileSystem, base: str, root: str, listing: str, default: str) -> list[list[str]]:
    path = posixpath.join(base, default)
    if listing:
        fs, path = resolve(listing)
    try:
        text = _read(fs, path).decode()
    except (FileNotFoundError, OSError):
        raise NotFound(f"{root}: the list {path} does not exist") from None
    lines = [line.split() for line in text.splitlines() if line.strip()]
    bad = [i + 1 for i, cols in enumerate(lines) if len(cols) != 2]
    if bad:
        raise UserError(f"{path}, line {bad[0]}: expected two paths (CRW's list format)")
    return lines


def _under(base: str, path: str) -> str:
    return path if path.startswith("/") else posixpath.join(base, path)


def read_jhmdb(root: str, listing: str = "") -> list[JointsVideo]:
    """The videos of a JHMDB list (default `<root>/test.split.v2.txt`), in list order."""
    fs, base = resolve(root)
    out = []
    for index, (frame_dir, mat) in enumerate(_list_lines(fs, base, root, listing, JHMDB_LIST)):
        frames = _listing(fs, _under(base, frame_dir), (".png",))
        mat_path = _under(base, mat)
        try:
            joints = scipy.io.loadmat(io.BytesIO(_read(fs, mat_path)))["pos_img"].astype(np.float64) - 1
        except (FileNotFoundError, OSError):
            raise NotFound(f"{mat_path}: no such file (line {index + 1} of the list)") from None
        except (KeyError, ValueError) as e:
            raise UserError(f"{mat_path}: not a JHMDB joint_positions.mat with pos_img ({e})") from None
        if joints.ndim != 3 or joints.shape[:2] != (2, 15):
            raise UserError(f"{mat_path}: pos_img is {joints.shape}, expected 2 x 15 x frames")
        if joints.shape[2] != len(frames):
            raise UserError(f"{mat_path}: joints for {joints.shape[2]} frames, {_under(base, frame_dir)} has "
                            f"{len(frames)}")
        name = frame_dir.rstrip("/").split("Rename_Images/")[-1]
        out.append(JointsVideo(index, _video(fs, name, frames, {}), joints))
    return out


def read_vip(root: str, listing: str = "") -> list[Video]:
    """VIP videos: images and their part labels (module docstring)."""
    fs, base = resolve(root)
    if listing or fs.get_file_info(posixpath.join(base, VIP_LIST)).type == pafs.FileType.File:
        pairs = _list_lines(fs, base, root, listing, VIP_LIST)
    else:
        folder = posixpath.join(base, "Images")
        if fs.get_file_info(folder).type != pafs.FileType.Directory:
            raise NotFound(f"{root}: neither {VIP_LIST} nor Images/ (not a VIP folder)")
        pairs = sorted([f"Images/{i.base_name}", f"Category_ids/{i.base_name}"]
                       for i in fs.get_file_info(pafs.FileSelector(folder)) if i.type == pafs.FileType.Directory)
    out = []
    for image_dir, label_dir in pairs:
        images = _listing(fs, _under(base, image_dir), IMAGE_SUFFIXES)
        labels = _listing(fs, _under(base, label_dir), (".png",))
        name = posixpath.basename(image_dir.rstrip("/"))
        if len(images) != len(labels):
            raise UserError(f"VIP video {name!r}: {len(images)} images but {len(labels)} label PNGs in "
                            f"{_under(base, label_dir)}")
        video = _video(fs, name, images, {}, sum(s for _, s in labels))
        video.annotations = {f: p for f, (p, _) in zip(video.frames, labels)}
        out.append(video)
    return out


def _foreground_dirs(dataset: str) -> tuple[str, str]:
    return {"davis2016": ("JPEGImages/480p", "Annotations/480p"), "segtrackv2": (STV2_IMAGES, STV2_GT),
            "fbms": (FBMS_IMAGES, FBMS_GT)}[dataset]


def read_foreground(root: str, dataset: str, listing: str = "") -> list[Video]:
    """Single-foreground sequences of `dataset` (davis2016, segtrackv2, fbms) with their annotations."""
    if dataset not in FOREGROUND_SETS:
        raise UserError(f"--dataset must be one of {', '.join(FOREGROUND_SETS)}, got {dataset!r}")
    fs, base = resolve(root)
    images, gt = (posixpath.join(base, d) for d in _foreground_dirs(dataset))
    if dataset == "fbms" and fs.get_file_info(images).type != pafs.FileType.Directory:
        images, gt = posixpath.join(base, "JPEGImages"), posixpath.join(base, "Annotations")  # FBMS_clean.py's names
    if fs.get_file_info(images).type != pafs.FileType.Directory:
        raise NotFound(f"{root}: no {posixpath.relpath(images, base)}/ (not a {dataset} folder)")
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(images)) if i.type == pafs.FileType.Directory)
    imset = listing or (posixpath.join(base, "ImageSets/2016/val.txt") if dataset == "davis2016" else "")
    if imset and fs.get_file_info(imset).type == pafs.FileType.File:
        wanted = sorted({n for n in _read(fs, imset).decode().split() if n})
        absent = [n for n in wanted if n not in names]
        if absent:
            raise NotFound(f"{imset} lists sequences without frames: {', '.join(absent[:5])}")
        names = wanted
    elif listing:
        raise NotFound(f"{listing}: no such sequence list")
    out = []
    for name in names:
        frames = _listing(fs, posixpath.join(images, name), IMAGE_SUFFIXES)
        labels = _listing(fs, posixpath.join(gt, name), (".png",)) if \
            fs.get_file_info(posixpath.join(gt, name)).type == pafs.FileType.Directory else []
        if not labels:
            raise NotFound(f"sequence {name!r}: no annotations in {posixpath.join(gt, name)}")
        video = _video(fs, name, frames, {}, sum(s for _, s in labels))
        stems = [posixpath.splitext(posixpath.basename(p))[0] for p, _ in labels]
        if dataset == "fbms":  # SMTC data.py: index = annotation number - the first annotation's number
            first = int(stems[0])
            index = {int(s) - first: p for s, (p, _) in zip(stems, labels)}
            beyond = [i for i in index if i >= len(video.frames)]
            if beyond:
                raise UserError(f"FBMS sequence {name!r}: annotation {stems[-1]} falls after its {len(video.frames)} "
                                f"frames")
            video.annotations = {video.frames[i]: p for i, p in sorted(index.items())}
        else:
            missing = [f for f in video.frames if f not in stems]
            if missing:
                raise NotFound(f"sequence {name!r}: no annotation for frame(s) {', '.join(missing[:5])} in "
                               f"{posixpath.join(gt, name)} (every frame is scored)")
            video.annotations = {s: p for s, (p, _) in zip(stems, labels) if s in set(video.frames)}
        out.append(video)
    return out
