"""Pictures of predictions: frames with their id maps blended in colour, as an animated GIF or a PNG strip."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from shards.palettes import DAVIS_PALETTE

FORMATS = ("gif", "png")


def blend(frame: np.ndarray, ids: np.ndarray, palette: Sequence[int] | bytes | None = None,
          alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 [H, W, 3]: `frame` with every non-zero id painted in its palette colour at opacity `alpha`."""
    if frame.shape[:2] != ids.shape:
        raise ValueError(f"frame {frame.shape[:2]} and mask {ids.shape} sizes differ")
    colours = np.frombuffer(bytes(palette if palette is not None else DAVIS_PALETTE), np.uint8)
    colours = np.pad(colours, (0, max(0, 768 - len(colours)))).reshape(-1, 3)
    painted = (1 - alpha) * frame + alpha * colours[ids]
    return np.where(ids[..., None] > 0, painted, frame).round().astype(np.uint8)


def _resize(image: np.ndarray, height: int) -> Image.Image:
    im = Image.fromarray(image)
    if height and im.height != height:
        im = im.resize((max(1, round(im.width * height / im.height)), height), Image.BILINEAR)
    return im


def save_overlay(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], path: str | Path,
                 palette: Sequence[int] | bytes | None = None, *, height: int = 240, max_frames: int = 8,
                 duration_ms: int = 200) -> Path:
    """Write frames + coloured masks to `path`: `.gif` (every frame, animated) or `.png` (a horizontal strip
    of `max_frames` evenly spaced frames). Pictures are scaled to `height` pixels."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"{path}: overlay format must be one of {', '.join(FORMATS)}")
    if len(frames) != len(masks) or not frames:
        raise ValueError(f"{path}: need the same non-zero number of frames and masks ({len(frames)} vs {len(masks)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        pick = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
        tiles = [_resize(blend(frames[i], masks[i], palette), height) for i in pick]
        strip = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height))
        x = 0
        for tile in tiles:
            strip.paste(tile, (x, 0))
            x += tile.width
        strip.save(path)
    else:
        images = [_resize(blend(f, m, palette), height) for f, m in zip(frames, masks)]
        images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path
