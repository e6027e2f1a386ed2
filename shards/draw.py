"""Drawing the synthetic videos: textured shapes that move over a panning background, rendered to frames and
label maps (`Scene`), and their JPEG / PNG bytes. The data-set writers (`shards.synth`, `shards.bench_synth`)
lay them out in each data set's folders.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from .errors import UserError

JPEG_QUALITY = 90
VOID = 255
CATEGORIES = ("ellipse", "triangle", "square", "pentagon", "hexagon", "star")


@dataclass
class SceneObject:
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
class Scene:
    height: int
    width: int
    background: Image.Image  # larger than a frame; panned over
    pan_start: np.ndarray
    pan_velocity: np.ndarray
    objects: list[SceneObject]   # far to near

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


def smooth_noise(rng: np.random.Generator, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """RGB value noise: a random (gh, gw, 3) grid upsampled bicubically to `size` = (w, h); floats in 0..255."""
    small = (rng.random((*grid, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC), np.float32)


def draw_background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    low = smooth_noise(rng, (4, 6), (w, h))
    mid = smooth_noise(rng, (max(2, h // 16), max(2, w // 16)), (w, h))
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


def draw_texture(rng: np.random.Generator, side: int) -> Image.Image:
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
        p = smooth_noise(rng, (5, 5), (side, side))[..., 0] / 255
    img = c1 * (1 - p[..., None]) + c2 * p[..., None] + 8 * rng.standard_normal((side, side, 3), dtype=np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def outline(rng: np.random.Generator, category: str) -> np.ndarray:
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


def draw_scene(rng: np.random.Generator, h: int, w: int, num_frames: int, num_objects: int,
           late: list[bool]) -> Scene:
    """Draw a scene. Objects flagged in `late` start outside the frame and move in; the others start inside."""
    pan_velocity = rng.uniform(-0.01, 0.01, 2) * h
    extent = np.ceil(np.abs(pan_velocity) * max(num_frames - 1, 1)).astype(int) + 1
    pan_start = np.where(pan_velocity < 0, extent - 1, 0).astype(float)
    background = draw_background(rng, h + extent[1], w + extent[0])
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
        objects.append(SceneObject(
            id=i + 1, category=category, verts=outline(rng, category), radius=radius,
            texture=draw_texture(rng, side_px), start=start, velocity=velocity, wobble=wobble,
            wobble_freq=rng.uniform(0.2, 0.6), wobble_phase=rng.uniform(0, 2 * np.pi),
            scale_amp=scale_amp, scale_freq=rng.uniform(0.1, 0.4), scale_phase=rng.uniform(0, 2 * np.pi)))
    depth = rng.permutation(num_objects)
    return Scene(h, w, background, pan_start, pan_velocity, [objects[d] for d in depth])


def void_band(label: np.ndarray) -> np.ndarray:
    """Mark 255 on both sides of every label boundary (a band about 2 px wide, 4 px from 360 px up)."""
    k = 3 if label.shape[0] < 360 else 5
    band = ndimage.maximum_filter(label, k) != ndimage.minimum_filter(label, k)
    out = label.copy()
    out[band] = VOID
    return out


def areas(label: np.ndarray, num_objects: int) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=256)[1:num_objects + 1]


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def png_bytes(label: np.ndarray, palette: bytes) -> bytes:
    img = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def draw_video(seed: int, index: int, h: int, w: int, num_frames: int, max_objects: int,
                davis: bool, force_late: bool) -> tuple[Scene, list[np.ndarray]]:
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
        scene = draw_scene(rng, h, w, num_frames, n, late)
        labels = [scene.render(s, with_image=False)[1] for s in range(num_frames)]
        if davis:
            ok = (areas(void_band(labels[0]), n) >= min_area).all()
        else:
            seen = np.stack([areas(lab, n) > 0 for lab in labels])
            ok = seen.any(0).all() and not any(seen[0, obj.id - 1] for obj in scene.objects if late[obj.id - 1])
        if ok:
            return scene, labels
    raise UserError(f"could not draw a valid synthetic video (seed {seed}, index {index}); "
                    f"try other --height/--objects")
