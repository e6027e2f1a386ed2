"""Deterministic synthetic video-segmentation datasets written in the DAVIS-2017 and YouTube-VOS layouts.

Each video shows 1..K textured shapes (ellipses, triangles, squares, pentagons, hexagons, stars), each with its
own texture, moving and slowly changing scale over a textured background that pans. Objects are painted in a
fixed depth order, so nearer ones occlude farther ones; they can leave the frame, and in YouTube-VOS videos they
can enter it after frame 0. Every random choice comes from a numpy generator seeded by (seed, video index), so
the same arguments give byte-identical files.

File conventions (reference/eval.md §6):
- DAVIS: `JPEGImages/480p/<seq>/00000.jpg` (quality 90), `Annotations/480p/<seq>/00000.png` (mode P, exact
  PASCAL-VOC palette, 0 background, ids 1..N, 255 void), `Annotations_unsupervised/480p` (same masks, ids
  permuted), `ImageSets/2017/{train,val}.txt`. Every object is visible in frame 0 (the semi-supervised
  evaluator takes N = max id of the first frame). Videos with an even index carry a void band (255) along
  every label boundary, as some real DAVIS sequences do; the others have none.
- YouTube-VOS: `train/JPEGImages/<vid>/00000.jpg, 00005.jpg, ...` (every 5th frame of a 30 fps clip, named by
  the original frame number), `train/Annotations` for every one of them, `train/meta.json`;
  `valid/JPEGImages` (every 5th frame), `valid/Annotations` holding each object only in the frame where it
  first appears, `valid/meta.json` (an object's `frames` run from its first appearance to the last frame),
  and `valid_all_frames/JPEGImages` with every frame 00000, 00001, ... of the same clips.
  Palette: `shards.palettes.YTVOS_PALETTE`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .draw import areas, draw_video, jpeg_bytes, png_bytes, void_band
from .errors import DEBUG_HELP, UsageError, UserError, run_cli
from .palettes import DAVIS_PALETTE, YTVOS_PALETTE
from .paths import output_entries

YTVOS_STEP = 5  # YouTube-VOS keeps every 5th frame of the 30 fps video
BENCH_LAYOUTS = ("jhmdb", "vip", "davis2016", "segtrackv2", "fbms")  # written by shards.bench_synth

_NOUNS = ("bear", "bike", "boat", "camel", "car", "cow", "dance", "dog", "drift", "goat", "horse", "kite",
          "lamp", "mallard", "motocross", "paper", "parrot", "pigs", "rhino", "scooter", "soapbox", "swan",
          "train", "tram", "tennis", "judo", "surf", "stroller", "lady", "gold")
_MODIFIERS = ("black", "blue", "grey", "red", "white", "fast", "night", "street", "river", "snow", "sand",
              "wood", "jump", "turn", "loop", "park", "city", "field", "trees", "bumps")


def default_width(height: int) -> int:
    """DAVIS 480p frames are 854 x 480 (YouTube-VOS 1280 x 720 has the same aspect)."""
    return int(round(height * 854 / 480))


def _check_size(height: int, width: int | None, max_objects: int, num_frames: int) -> int:
    width = default_width(height) if width is None else width
    if height < 32 or width < 32:
        raise UsageError(f"--height/--width must be at least 32 px, got {height} x {width}")
    if not 1 <= max_objects <= 254:
        raise UsageError(f"--objects must be in 1..254, got {max_objects}")
    if num_frames < 2:
        raise UsageError(f"--frames must be at least 2, got {num_frames}")
    return width


def _split_sizes(num_videos: int, num_val: int | None) -> int:
    if num_videos < 1:
        raise UsageError(f"--videos must be at least 1, got {num_videos}")
    if num_val is None:
        num_val = max(1, round(num_videos / 3)) if num_videos >= 2 else 0
    if not 0 <= num_val <= num_videos:
        raise UsageError(f"--val must be in 0..{num_videos} (--videos), got {num_val}")
    return num_val


def _davis_names(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct DAVIS-like names, drawn at random while distinct ones remain (noun or noun-modifier: 630);
    past that, the drawn names again with a number (`bear-2`, `bike-red-2`, ...)."""
    distinct = len(_NOUNS) * (len(_MODIFIERS) + 1)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < min(n, distinct):
        noun = _NOUNS[rng.integers(len(_NOUNS))]
        name = noun if rng.random() < 0.3 else f"{noun}-{_MODIFIERS[rng.integers(len(_MODIFIERS))]}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    names += [f"{names[i % distinct]}-{i // distinct + 1}" for i in range(distinct, n)]
    return names


def _ytvos_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        vid = "".join("0123456789abcdef"[d] for d in rng.integers(0, 16, 10))
        if vid not in ids:
            ids.append(vid)
    return ids


def write_davis(out: str | Path, *, num_videos: int = 8, num_frames: int = 24, height: int = 480,
                width: int | None = None, max_objects: int = 3, seed: int = 0,
                num_val: int | None = None) -> list[str]:
    """Write a DAVIS-2017-style dataset to `out`; return the sequence names (generation order).

    The last `num_val` sequences (default about a third) go to `val.txt`, the rest to `train.txt`.
    """
    width = _check_size(height, width, max_objects, num_frames)
    num_val = _split_sizes(num_videos, num_val)
    out = Path(out)
    names = _davis_names(np.random.default_rng([seed, 1 << 20]), num_videos)
    for index, name in enumerate(names):
        scene, labels = draw_video(seed, index, height, width, num_frames, max_objects, True, False)
        n = len(scene.objects)
        perm_rng = np.random.default_rng([seed, index, 1])
        perm = np.arange(1, n + 1)
        while n > 1 and (perm == np.arange(1, n + 1)).all():
            perm = perm_rng.permutation(np.arange(1, n + 1))
        lut = np.arange(256, dtype=np.uint8)
        lut[1:n + 1] = perm
        dirs = {d: out / d / "480p" / name for d in ("JPEGImages", "Annotations", "Annotations_unsupervised")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        for s, label in enumerate(labels):
            frame, _ = scene.render(s)
            if index % 2 == 0:
                label = void_band(label)
            (dirs["JPEGImages"] / f"{s:05d}.jpg").write_bytes(jpeg_bytes(frame))
            (dirs["Annotations"] / f"{s:05d}.png").write_bytes(png_bytes(label, DAVIS_PALETTE))
            (dirs["Annotations_unsupervised"] / f"{s:05d}.png").write_bytes(png_bytes(lut[label], DAVIS_PALETTE))
    sets = out / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    cut = num_videos - num_val
    (sets / "train.txt").write_text("".join(f"{v}\n" for v in sorted(names[:cut])))
    (sets / "val.txt").write_text("".join(f"{v}\n" for v in sorted(names[cut:])))
    return names


def write_davis2016(out: str | Path, **kw) -> list[str]:
    """A DAVIS-2016-style dataset: one object per sequence as 0/255 masks, `ImageSets/2016/val.txt`.

    Takes `write_davis`'s arguments (but `max_objects`) and returns the sequence names.
    """
    out = Path(out)
    names = write_davis(out, max_objects=1, **kw)
    shutil.rmtree(out / "Annotations_unsupervised")
    for png in (out / "Annotations" / "480p").rglob("*.png"):
        with Image.open(png) as im:
            ids = np.asarray(im)
        Image.fromarray(np.where(ids == 1, 255, 0).astype(np.uint8)).save(png)
    (out / "ImageSets" / "2016").mkdir(parents=True)
    shutil.copy(out / "ImageSets" / "2017" / "val.txt", out / "ImageSets" / "2016" / "val.txt")
    return names


def write_ytvos(out: str | Path, *, num_videos: int = 8, num_frames: int = 24, height: int = 480,
                width: int | None = None, max_objects: int = 3, seed: int = 0,
                num_val: int | None = None) -> list[str]:
    """Write a YouTube-VOS-style dataset to `out`; return the video ids (generation order).

    `num_frames` counts the every-5th frames in `JPEGImages`; `valid_all_frames` holds the
    5 * (num_frames - 1) + 1 frames of each validation clip. The last `num_val` videos (default about a
    third) form `valid`; the first of them always has an object that first appears after frame 0.
    """
    width = _check_size(height, width, max_objects, num_frames)
    num_val = _split_sizes(num_videos, num_val)
    out = Path(out)
    ids = _ytvos_ids(np.random.default_rng([seed, 1 << 20]), num_videos)
    cut = num_videos - num_val
    metas: dict[str, dict] = {"train": {}, "valid": {}}
    for index, vid in enumerate(ids):
        split = "train" if index < cut else "valid"
        force_late = index == (cut if num_val else 0)
        scene, labels = draw_video(seed, index, height, width, num_frames, max_objects, False, force_late)
        names = [f"{YTVOS_STEP * s:05d}" for s in range(num_frames)]
        jpeg_dir = out / split / "JPEGImages" / vid
        ann_dir = out / split / "Annotations" / vid
        jpeg_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        n = len(scene.objects)
        seen = np.stack([areas(lab, n) > 0 for lab in labels])  # (frames, objects)
        first = seen.argmax(0)
        for s, (name, label) in enumerate(zip(names, labels)):
            (jpeg_dir / f"{name}.jpg").write_bytes(jpeg_bytes(scene.render(s)[0]))
            if split == "train":
                (ann_dir / f"{name}.png").write_bytes(png_bytes(label, YTVOS_PALETTE))
            elif (first == s).any():
                keep = np.isin(label, 1 + np.flatnonzero(first == s))
                (ann_dir / f"{name}.png").write_bytes(png_bytes(np.where(keep, label, 0), YTVOS_PALETTE))
        categories = {obj.id: obj.category for obj in scene.objects}
        objects = {}
        for k in range(n):
            frames = [names[s] for s in range(num_frames) if seen[s, k]] if split == "train" \
                else names[first[k]:]
            objects[str(k + 1)] = {"category": categories[k + 1], "frames": frames}
        metas[split][vid] = {"objects": objects}
        if split == "valid":
            all_dir = out / "valid_all_frames" / "JPEGImages" / vid
            all_dir.mkdir(parents=True, exist_ok=True)
            for t in range(YTVOS_STEP * (num_frames - 1) + 1):
                (all_dir / f"{t:05d}.jpg").write_bytes(jpeg_bytes(scene.render(t / YTVOS_STEP)[0]))
    for split, videos in metas.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / "meta.json").write_text(json.dumps({"videos": dict(sorted(videos.items()))}))
    return ids


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m shards.synth", description=__doc__.split("\n\n")[0],
                                epilog="--out must be a new or empty folder. " + DEBUG_HELP)
    p.add_argument("--layout", choices=("davis", "ytvos", *BENCH_LAYOUTS), required=True,
                   help="davis, ytvos, or a benchmark layout of shards.bench_synth (its own frame sizes)")
    p.add_argument("--out", required=True, help="folder to write the dataset into")
    p.add_argument("--videos", type=int, default=8, help="number of videos")
    p.add_argument("--frames", type=int, default=24, help="frames per video (YouTube-VOS: every-5th frames)")
    p.add_argument("--height", type=int, default=480, help="frame height in pixels")
    p.add_argument("--width", type=int, default=None, help="frame width (default: height * 854 / 480)")
    p.add_argument("--objects", type=int, default=3, help="maximum objects per video")
    p.add_argument("--val", type=int, default=None, help="videos in the val/valid split (default: about 1/3)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    width = _check_size(a.height, a.width, a.objects, a.frames)  # before anything is written
    _split_sizes(a.videos, a.val)
    entries = output_entries("--out", a.out)
    if entries:  # a data set is written over files of the same names: never into someone's data
        raise UserError(f"--out {a.out}: not empty ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
                        f"write a synthetic data set into a new or empty folder")
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {a.out}: cannot write there ({e.strerror or e})") from None
    write = write_davis if a.layout == "davis" else write_ytvos
    t0 = time.perf_counter()
    if a.layout == "davis2016":  # the benchmark sets at their own small size
        ids = write_davis2016(a.out, num_videos=a.videos, num_frames=a.frames, height=64, num_val=a.videos,
                              seed=a.seed)
    elif a.layout in BENCH_LAYOUTS:
        from .bench_synth import write_benchmark
        ids = write_benchmark(a.layout, a.out, num_videos=a.videos, num_frames=a.frames, seed=a.seed)
    else:
        ids = write(a.out, num_videos=a.videos, num_frames=a.frames, height=a.height, width=width,
                    max_objects=a.objects, seed=a.seed, num_val=a.val)
    print(f"wrote {len(ids)} {a.layout} videos x {a.frames} frames to {a.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m shards.synth"))
