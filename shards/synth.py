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
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from .errors import DEBUG_HELP, UsageError, UserError, run_cli
from .palettes import DAVIS_PALETTE, YTVOS_PALETTE
from .paths import output_entries

JPEG_QUALITY = 90
YTVOS_STEP = 5  # YouTube-VOS keeps every 5th frame of the 30 fps video
VOID = 255
BENCH_LAYOUTS = ("jhmdb", "vip", "davis2016", "segtrackv2", "fbms")  # written by shards.bench_synth
CATEGORIES = ("ellipse", "triangle", "square", "pentagon", "hexagon", "star")

_NOUNS = ("bear", "bike", "boat", "camel", "car", "cow", "dance", "dog", "drift", "goat", "horse", "kite",
          "lamp", "mallard", "motocross", "paper", "parrot", "pigs", "rhino", "scooter", "soapbox", "swan",
          "train", "tram", "tennis", "judo", "surf", "stroller", "lady", "gold")
_MODIFIERS = ("black", "blue", "grey", "red", "white", "fast", "night", "street", "river", "snow", "sand",
              "wood", "jump", "turn", "loop", "park", "city", "field", "trees", "bumps")


def default_width(height: int) -> int:
    """DAVIS 480p frames are 854 x 480 (YouTube-VOS 1280 x 720 has the same aspect)."""
    return int(round(height * 854 / 480))


@dataclass
class _Object:
    id: int
    category: str
    verts: np.ndarray      # (n, 2) outline in units of the radius
    radius: float          # pixels at scale 1
    texture: Image.Image   # RGB, big enough for the largest scale
    start: np.ndarray      # centre (x, y) at time 0, pixels
    velocity: np.ndarray   # pixels per (sampled) frame
    wobble: np.ndarray     # amplitude (x, y) of a sinusoidal sway, pixels
    wobble_freq: float
    wobble_phase: float
    scale_amp: float
    scale_freq: float
    scale_phase: float

    def center(self, s: float) -> np.ndarray:
        return self.start + self.velocity * s + self.wobble * np.sin(self.wobble_freq * s + self.wobble_phase)

    def sprite(self, s: float) -> tuple[int, int, Image.Image, Image.Image]:
        """Top-left corner, mask (L, 0/255) and texture of the object at time `s`."""
        r = self.radius * (1 + self.scale_amp * np.sin(self.scale_freq * s + self.scale_phase))
        side = int(np.ceil(2 * r)) + 2
        mask = Image.new("L", (side, side))
        ImageDraw.Draw(mask).polygon([tuple(p) for p in self.verts * r + side / 2], fill=255)
        cx, cy = self.center(s)
        return (int(round(cx - side / 2)), int(round(cy - side / 2)), mask,
                self.texture.resize((side, side), Image.BILINEAR))


@dataclass
class _Scene:
    height: int
    width: int
    background: Image.Image  # larger than a frame; panned over
    pan_start: np.ndarray
    pan_velocity: np.ndarray
    objects: list[_Object]   # far to near

    def render(self, s: float, with_image: bool = True) -> tuple[Image.Image | None, np.ndarray]:
        """RGB frame (or None) and label map (0 background, object ids) at time `s` (in sampled frames)."""
        h, w = self.height, self.width
        ox, oy = np.round(self.pan_start + self.pan_velocity * s).astype(int)
        frame = self.background.crop((ox, oy, ox + w, oy + h)) if with_image else None
        label = np.zeros((h, w), np.uint8)
        for obj in self.objects:
            x0, y0, mask, tex = obj.sprite(s)
            side = mask.size[0]
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
            if xa >= xb or ya >= yb:
                continue
            inside = np.asarray(mask)[ya - y0:yb - y0, xa - x0:xb - x0] > 0
            label[ya:yb, xa:xb][inside] = obj.id
            if frame is not None:
                frame.paste(tex, (x0, y0), mask.filter(ImageFilter.GaussianBlur(0.6)))
        return frame, label


def _smooth_noise(rng: np.random.Generator, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """RGB value noise: a random (gh, gw, 3) grid upsampled bicubically to `size` = (w, h); floats in 0..255."""
    small = (rng.random((*grid, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC), np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    low = _smooth_noise(rng, (4, 6), (w, h))
    mid = _smooth_noise(rng, (max(2, h // 16), max(2, w // 16)), (w, h))
    img = 0.55 * low + 0.45 * mid
    img = 0.45 * img + 0.55 * img.mean(axis=2, keepdims=True)  # less saturated than the objects
    layer = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(layer)
    for _ in range(12):  # a little structure: faint rectangles and lines
        x, y = rng.random(2) * (w, h)
        dx, dy = (0.05 + 0.25 * rng.random(2)) * h
        colour = tuple(int(v) for v in rng.integers(40, 216, 3))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + dx, y + dy), outline=colour, width=max(1, h // 160))
        else:
            draw.line((x, y, x + dx, y - dy), fill=colour, width=max(1, h // 120))
    img = np.asarray(layer, np.float32) + 6 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _texture(rng: np.random.Generator, side: int) -> Image.Image:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    c1, c2 = rng.integers(20, 236, (2, 3)).astype(np.float32)
    kind = rng.integers(3)
    freq = rng.uniform(2, 6)
    if kind == 0:  # stripes
        a = rng.uniform(0, np.pi)
        p = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(a) + yy * np.sin(a)) + rng.uniform(0, 6.3))
    elif kind == 1:  # checkerboard
        p = ((np.floor(xx * freq) + np.floor(yy * freq)) % 2).astype(np.float32)
    else:  # blotches
        p = _smooth_noise(rng, (5, 5), (side, side))[..., 0] / 255
    img = c1 * (1 - p[..., None]) + c2 * p[..., None] + 8 * rng.standard_normal((side, side, 3), dtype=np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _outline(rng: np.random.Generator, category: str) -> np.ndarray:
    rot = rng.uniform(0, 2 * np.pi)
    if category == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        a, b = 1.0, rng.uniform(0.5, 1.0)
        pts = np.stack([a * np.cos(t), b * np.sin(t)], 1)
    elif category == "star":
        k = int(rng.integers(5, 8))
        t = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False)
        rad = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.4, 0.6))
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
    else:
        k = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[category]
        t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(-0.15, 0.15, k)
        rad = rng.uniform(0.85, 1.0, k)
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
    c, s = np.cos(rot), np.sin(rot)
    return pts @ np.array([[c, s], [-s, c]])


def _scene(rng: np.random.Generator, h: int, w: int, num_frames: int, num_objects: int,
           late: list[bool]) -> _Scene:
    """Draw a scene. Objects flagged in `late` start outside the frame and move in; the others start inside."""
    pan_velocity = rng.uniform(-0.01, 0.01, 2) * h
    extent = np.ceil(np.abs(pan_velocity) * max(num_frames - 1, 1)).astype(int) + 1
    pan_start = np.where(pan_velocity < 0, extent - 1, 0).astype(float)
    background = _background(rng, h + extent[1], w + extent[0])
    objects = []
    for i in range(num_objects):
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        radius = rng.uniform(0.12, 0.25) * h
        scale_amp = rng.uniform(0, 0.15)
        wobble = rng.uniform(0, 0.03, 2) * h
        speed = rng.uniform(0.005, 0.035) * h
        if late[i]:
            # enter from the left or right edge somewhere in the first half of the clip
            side = rng.choice([-1.0, 1.0])
            arrive = rng.uniform(0.5, max(1.0, (num_frames - 1) / 2))  # when it touches the edge
            speed = max(speed, 1.2 * radius / max(num_frames - 1 - arrive, 1.0))  # and gets well inside
            margin = radius * (1 + scale_amp) + wobble[0] + 2
            x0 = (-margin - speed * arrive) if side < 0 else (w + margin + speed * arrive)
            start = np.array([x0, rng.uniform(0.25, 0.75) * h])
            velocity = np.array([-side * speed, rng.uniform(-0.005, 0.005) * h])
        else:
            start = rng.uniform((0.15 * w, 0.2 * h), (0.85 * w, 0.8 * h))
            angle = rng.uniform(0, 2 * np.pi)
            velocity = speed * np.array([np.cos(angle), np.sin(angle)])
        side_px = int(np.ceil(2 * radius * (1 + scale_amp))) + 2
        objects.append(_Object(
            id=i + 1, category=category, verts=_outline(rng, category), radius=radius,
            texture=_texture(rng, side_px), start=start, velocity=velocity, wobble=wobble,
            wobble_freq=rng.uniform(0.2, 0.6), wobble_phase=rng.uniform(0, 2 * np.pi),
            scale_amp=scale_amp, scale_freq=rng.uniform(0.1, 0.4), scale_phase=rng.uniform(0, 2 * np.pi)))
    depth = rng.permutation(num_objects)
    return _Scene(h, w, background, pan_start, pan_velocity, [objects[d] for d in depth])


def _void_band(label: np.ndarray) -> np.ndarray:
    """Mark 255 on both sides of every label boundary (a band about 2 px wide, 4 px from 360 px up)."""
    k = 3 if label.shape[0] < 360 else 5
    band = ndimage.maximum_filter(label, k) != ndimage.minimum_filter(label, k)
    out = label.copy()
    out[band] = VOID
    return out


def _areas(label: np.ndarray, num_objects: int) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=256)[1:num_objects + 1]


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _png(label: np.ndarray, palette: bytes) -> bytes:
    img = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


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


def _draw_video(seed: int, index: int, h: int, w: int, num_frames: int, max_objects: int,
                davis: bool, force_late: bool) -> tuple[_Scene, list[np.ndarray]]:
    """A scene that satisfies the layout's rules, and its label maps at the sampled frames 0..num_frames-1.

    DAVIS: every object has a clearly visible part (after the void band) in frame 0.
    YouTube-VOS: every object is visible in some frame, late objects are absent from frame 0, and with
    `force_late` at least one object is late.
    """
    rng = np.random.default_rng([seed, index])
    min_area = max(16, int(0.004 * h * w))
    for _ in range(100):
        n = int(rng.integers(min(2, max_objects), max_objects + 1))
        late = [not davis and i > 0 and (rng.random() < 0.4 or (force_late and i == n - 1)) for i in range(n)]
        scene = _scene(rng, h, w, num_frames, n, late)
        labels = [scene.render(s, with_image=False)[1] for s in range(num_frames)]
        if davis:
            ok = (_areas(_void_band(labels[0]), n) >= min_area).all()
        else:
            seen = np.stack([_areas(lab, n) > 0 for lab in labels])
            ok = seen.any(0).all() and not any(seen[0, obj.id - 1] for obj in scene.objects if late[obj.id - 1])
        if ok:
            return scene, labels
    raise UserError(f"could not draw a valid synthetic video (seed {seed}, index {index}); "
                    f"try other --height/--objects")


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
        scene, labels = _draw_video(seed, index, height, width, num_frames, max_objects, True, False)
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
                label = _void_band(label)
            (dirs["JPEGImages"] / f"{s:05d}.jpg").write_bytes(_jpeg(frame))
            (dirs["Annotations"] / f"{s:05d}.png").write_bytes(_png(label, DAVIS_PALETTE))
            (dirs["Annotations_unsupervised"] / f"{s:05d}.png").write_bytes(_png(lut[label], DAVIS_PALETTE))
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
        scene, labels = _draw_video(seed, index, height, width, num_frames, max_objects, False, force_late)
        names = [f"{YTVOS_STEP * s:05d}" for s in range(num_frames)]
        jpeg_dir = out / split / "JPEGImages" / vid
        ann_dir = out / split / "Annotations" / vid
        jpeg_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        n = len(scene.objects)
        seen = np.stack([_areas(lab, n) > 0 for lab in labels])  # (frames, objects)
        first = seen.argmax(0)
        for s, (name, label) in enumerate(zip(names, labels)):
            (jpeg_dir / f"{name}.jpg").write_bytes(_jpeg(scene.render(s)[0]))
            if split == "train":
                (ann_dir / f"{name}.png").write_bytes(_png(label, YTVOS_PALETTE))
            elif (first == s).any():
                keep = np.isin(label, 1 + np.flatnonzero(first == s))
                (ann_dir / f"{name}.png").write_bytes(_png(np.where(keep, label, 0), YTVOS_PALETTE))
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
                (all_dir / f"{t:05d}.jpg").write_bytes(_jpeg(scene.render(t / YTVOS_STEP)[0]))
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
    if a.layout in BENCH_LAYOUTS:
        from .bench_synth import write_benchmark
        ids = write_benchmark(a.layout, a.out, num_videos=a.videos, num_frames=a.frames, seed=a.seed)
    else:
        ids = write(a.out, num_videos=a.videos, num_frames=a.frames, height=a.height, width=width,
                    max_objects=a.objects, seed=a.seed, num_val=a.val)
    print(f"wrote {len(ids)} {a.layout} videos x {a.frames} frames to {a.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m shards.synth"))
