"""Synthetic data sets in the published layouts of JHMDB, VIP, SegTrack-v2 and FBMS-59 (DAVIS-2016:
`shards.synth.write_davis2016`). Deterministic: every random choice comes from a generator seeded by (seed, video).

- JHMDB (CRW's reading, reference/eval-more.md §2): `Rename_Images/<action>/<video>/00001.png ...` and
  `joint_positions/<action>/<video>/joint_positions.mat` holding `pos_img` (2 x 15 x T, 1-based pixel x, y),
  `pos_world`, `scale`, `viewpoint`; `test.split.v2.txt` with one `<frame dir> <mat file>` line per video
  (paths relative to the root; CRW's lists hold absolute ones, which the reader takes too). A stick person whose
  15 joints (JHMDB order, `JHMDB_JOINTS`) move; one wrist leaves the frame in the second half of odd videos.
- VIP (`Images/<video>/<12-digit frame>.jpg`, `Category_ids/<video>/<frame>.png`, single-channel ids 0..19,
  `lists/val_videos.txt` in CRW's `<image dir> <label dir>` form): a person of the 19 part classes of
  `VIP_CLASSES` (0 background) moving over a textured background.
- SegTrack-v2 as motion-grouping's cleaning leaves it: `STv2_img/JPEGImages/<seq>/00000.jpg ...` and
  `STv2_gt&pred/STv2_gt/GroundTruth/<seq>/00000.png` for every frame, the objects merged to one 0/255 foreground.
- FBMS-59 as motion-grouping's `FBMS_clean.py` leaves it: `FBMS/<seq>/00001.jpg ...` (renumbered from 1) and
  `FBMS_annotation/<seq>/<frame>.png` 0/255 foregrounds on every 20th frame (00001, 00021, ...), named by frame.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from .draw import draw_background, draw_texture, draw_video, jpeg_bytes

JHMDB_JOINTS = ("neck", "belly", "face", "right shoulder", "left shoulder", "right hip", "left hip",
                "right elbow", "left elbow", "right knee", "left knee", "right wrist", "left wrist",
                "right ankle", "left ankle")
JHMDB_LIST = "test.split.v2.txt"
VIP_CLASSES = ("background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks", "pants",
               "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm", "right-leg", "left-leg",
               "right-shoe", "left-shoe")
VIP_LIST = "lists/val_videos.txt"
STV2_IMAGES, STV2_GT = "STv2_img/JPEGImages", "STv2_gt&pred/STv2_gt/GroundTruth"
FBMS_IMAGES, FBMS_GT = "FBMS", "FBMS_annotation"
FBMS_STEP = 20

# Skeleton: (joint, parent) pairs drawn as limbs; joint offsets from the belly in units of the body height.
_BONES = ((0, 1), (2, 0), (3, 0), (4, 0), (5, 1), (6, 1), (7, 3), (8, 4), (9, 5), (10, 6), (11, 7), (12, 8),
          (13, 9), (14, 10))
_POSE = np.array([(0, -.28), (0, 0), (0, -.40), (-.12, -.26), (.12, -.26), (-.08, .08), (.08, .08),
                  (-.2, -.1), (.2, -.1), (-.1, .28), (.1, .28), (-.24, .08), (.24, .08), (-.1, .48), (.1, .48)])


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _joints(rng: np.random.Generator, h: int, w: int, num_frames: int, off_frame: bool) -> np.ndarray:
    """0-based pixel positions [2, 15, T] of a person walking and swinging its limbs."""
    body = rng.uniform(0.55, 0.7) * h
    start = np.array([rng.uniform(0.35, 0.65) * w, 0.42 * h])
    velocity = rng.uniform(-0.02, 0.02, 2) * np.array([w, h * 0.2])
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.6)
    out = np.zeros((2, 15, num_frames))
    for t in range(num_frames):
        swing = 0.08 * np.sin(freq * t + phase)
        pose = _POSE.copy()
        pose[[7, 11], 0] -= swing * np.array([1, 2])  # right arm forward, left back
        pose[[8, 12], 0] += swing * np.array([1, 2])
        pose[[9, 13], 0] += swing * np.array([0.5, 1])
        pose[[10, 14], 0] -= swing * np.array([0.5, 1])
        xy = start + velocity * t + pose * body
        if off_frame and t >= num_frames // 2:  # the left wrist leaves the frame
            xy[12] = (w + 4 + 2 * t, xy[12, 1])
        out[:, :, t] = xy.T
    return out


def write_jhmdb(out: str | Path, *, num_videos: int = 3, num_frames: int = 8, height: int = 60, width: int = 80,
                seed: int = 0) -> list[str]:
    """JHMDB layout (module docstring); returns the `<action>/<video>` names in list order."""
    out = Path(out)
    names, lines = [], []
    colours = np.random.default_rng([seed, 7]).integers(40, 256, (15, 3))
    for index in range(num_videos):
        rng = np.random.default_rng([seed, index])
        name = f"{('walk', 'wave', 'jump')[index % 3]}/synthetic_person_{index}"
        frames, mats = out / "Rename_Images" / name, out / "joint_positions" / name
        frames.mkdir(parents=True)
        mats.mkdir(parents=True)
        joints = _joints(rng, height, width, num_frames, off_frame=index % 2 == 1)
        background = draw_background(rng, height, width)
        for t in range(num_frames):
            img = background.copy()
            draw = ImageDraw.Draw(img)
            xy = joints[:, :, t].T
            for j, parent in _BONES:
                draw.line([tuple(xy[j]), tuple(xy[parent])], fill=tuple(int(c) for c in colours[j] // 2), width=3)
            for j, (x, y) in enumerate(xy):
                draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=tuple(int(c) for c in colours[j]))
            (frames / f"{t + 1:05d}.png").write_bytes(_png(np.asarray(img)))
        scipy.io.savemat(mats / "joint_positions.mat", {
            "pos_img": joints + 1, "pos_world": (joints - joints.mean((1, 2), keepdims=True)) / height,
            "scale": np.full((1, num_frames), 1.0), "viewpoint": np.array(["E"])})
        names.append(name)
        lines.append(f"Rename_Images/{name} joint_positions/{name}/joint_positions.mat\n")
    (out / JHMDB_LIST).write_text("".join(lines))
    return names


# VIP parts: (class, x0, y0, x1, y1) boxes in units of the body height around the body centre, back to front.
_PARTS = ((6, -.2, -.25, .2, .1), (5, -.16, -.2, .16, .15), (4, -.14, -.22, .14, .05), (12, -.05, -.25, .05, -.2),
          (11, -.15, .05, .15, .2), (8, -.13, .1, .13, .32), (16, -.12, .25, -.02, .45), (17, .02, .25, .12, .45),
          (7, -.12, .42, .12, .46), (18, -.14, .45, -.02, .5), (19, .02, .45, .14, .5),
          (14, -.26, -.2, -.15, .05), (15, .15, -.2, .26, .05), (9, -.28, .04, -.2, .1), (9, .2, .04, .28, .1),
          (10, -.1, -.27, .1, -.22), (2, -.09, -.45, .09, -.35), (13, -.07, -.4, .07, -.28),
          (3, -.06, -.37, .06, -.34), (1, -.1, -.5, .1, -.43))


def write_vip(out: str | Path, *, num_videos: int = 2, num_frames: int = 6, height: int = 128, width: int = 192,
              seed: int = 0) -> list[str]:
    """VIP layout (module docstring); returns the video names."""
    out = Path(out)
    names = [f"videos{i + 1}" for i in range(num_videos)]
    textures = [draw_texture(np.random.default_rng([seed, 9, c]), height) for c in range(len(VIP_CLASSES))]
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        images, labels = out / "Images" / name, out / "Category_ids" / name
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        background = draw_background(rng, height, width)
        body = rng.uniform(0.8, 0.95) * height
        start = np.array([rng.uniform(0.35, 0.65) * width, 0.5 * height])
        velocity = rng.uniform(-0.02, 0.02, 2) * np.array([width, height * 0.3])
        for t in range(num_frames):
            img, label = background.copy(), np.zeros((height, width), np.uint8)
            cx, cy = start + velocity * t
            for c, x0, y0, x1, y1 in _PARTS:
                box = np.round([cx + x0 * body, cy + y0 * body, cx + x1 * body, cy + y1 * body]).astype(int)
                xa, ya, xb, yb = max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)
                if xa >= xb or ya >= yb:
                    continue
                label[ya:yb, xa:xb] = c
                img.paste(textures[c].crop((0, 0, xb - xa, yb - ya)), (xa, ya))
            stem = f"{t + 1:012d}"
            (images / f"{stem}.jpg").write_bytes(jpeg_bytes(img))
            (labels / f"{stem}.png").write_bytes(_png(label))
    (out / VIP_LIST).parent.mkdir(parents=True, exist_ok=True)
    (out / VIP_LIST).write_text("".join(f"Images/{n} Category_ids/{n}\n" for n in names))
    return names


def _foreground_videos(out: Path, images: str, gt: str, names: list[str], num_frames: int, height: int, width: int,
                       max_objects: int, seed: int, first: int, annotated: Callable[[int], bool]) -> list[str]:
    for index, name in enumerate(names):
        scene, labels = draw_video(seed, index, height, width, num_frames, max_objects, True, False)
        (out / images / name).mkdir(parents=True)
        (out / gt / name).mkdir(parents=True)
        for s, label in enumerate(labels):
            stem = f"{s + first:05d}"
            (out / images / name / f"{stem}.jpg").write_bytes(jpeg_bytes(scene.render(s)[0]))
            if annotated(s):
                (out / gt / name / f"{stem}.png").write_bytes(_png(np.where(label > 0, 255, 0).astype(np.uint8)))
    return names


def write_segtrackv2(out: str | Path, *, num_videos: int = 3, num_frames: int = 6, height: int = 64,
                     width: int = 96, max_objects: int = 2, seed: int = 0) -> list[str]:
    """SegTrack-v2 layout (module docstring); returns the sequence names."""
    names = [f"stv2seq{i}" for i in range(num_videos)]
    return _foreground_videos(Path(out), STV2_IMAGES, STV2_GT, names, num_frames, height, width, max_objects, seed,
                              0, lambda s: True)


def write_fbms(out: str | Path, *, num_videos: int = 2, num_frames: int = 22, height: int = 64, width: int = 96,
               max_objects: int = 2, seed: int = 0) -> list[str]:
    """FBMS-59 layout (module docstring): every `FBMS_STEP`th frame annotated; returns the sequence names."""
    names = [f"fbmsseq{i}" for i in range(num_videos)]
    return _foreground_videos(Path(out), FBMS_IMAGES, FBMS_GT, names, num_frames, height, width, max_objects, seed,
                              1, lambda s: s % FBMS_STEP == 0)


def write_benchmark(layout: str, out: str | Path, *, num_videos: int, num_frames: int, seed: int = 0) -> list[str]:
    """`python -m shards.synth --layout jhmdb|vip|segtrackv2|fbms`: the set at its default frame size (DAVIS-2016:
    `shards.synth.write_davis2016`)."""
    write = {"jhmdb": write_jhmdb, "vip": write_vip, "segtrackv2": write_segtrackv2, "fbms": write_fbms}[layout]
    return write(out, num_videos=num_videos, num_frames=num_frames, seed=seed)
