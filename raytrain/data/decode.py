"""Frame and mask decoding, and the CPU-side clip transforms (run inside Ray Data `map_batches`)."""
from __future__ import annotations

import io
import math

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IM_MEAN_FILL = (124, 116, 104)  # ImageNet mean in 0..255, STMAE's affine fill colour


def decode_jpeg(data: bytes, min_size: int = 0) -> np.ndarray:
    """RGB uint8 HxWx3. With `min_size`, libjpeg-turbo decodes at the smallest 1/2, 1/4 or 1/8 scale whose
    height and width are still >= min_size. Those scales are fast DCT paths; the n/8 scales in between can
    be slower than a full decode, so they are never picked."""
    if min_size <= 0:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    d = max(d for d in (1, 2, 4, 8) if d == 1 or min(h, w) >= d * min_size)
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-h // d), min_width=-(-w // d))


def jpeg_header(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's header; raises ValueError when the header does not parse."""
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    return h, w


def decode_png(data: bytes) -> np.ndarray:
    """Palette-index (object id) map HxW uint8 of an annotation PNG."""
    im = Image.open(io.BytesIO(data))
    if im.mode not in ("P", "L"):
        raise ValueError(f"annotation PNG has mode {im.mode}; expected a palette (P) or L image of ids")
    return np.asarray(im, dtype=np.uint8)


def smtc_frame(data: bytes, size: int) -> np.ndarray:
    """An SMTC training frame, size x size x 3 uint8: decoded at reduced scale, resized (aspect ignored, as
    upstream) with antialiased bilinear filtering on uint8. Channels stay last, as decoded."""
    hwc = decode_jpeg(data, min_size=size)
    if hwc.shape[:2] == (size, size):
        return hwc
    chw = TF.resize(torch.from_numpy(hwc).permute(2, 0, 1), [size, size], InterpolationMode.BILINEAR,
                    antialias=True)
    return chw.permute(1, 2, 0).numpy()


def _resized_crop_box(h: int, w: int, rng: np.random.Generator, scale=(0.36, 1.0),
                      ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop's box rule, driven by a numpy Generator."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _color_jitter(img: torch.Tensor, rng: np.random.Generator, b: float, c: float, s: float) -> torch.Tensor:
    """ColorJitter(b, c, s, 0) with torchvision's random order of the three adjustments."""
    ops = [(TF.adjust_brightness, b), (TF.adjust_contrast, c), (TF.adjust_saturation, s)]
    for k in rng.permutation(3):
        fn, strength = ops[k]
        if strength > 0:
            img = fn(img, float(rng.uniform(max(0.0, 1 - strength), 1 + strength)))
    return img


def stmae_clip(frames: list[np.ndarray], masks: list[np.ndarray], rng: np.random.Generator, size: int,
               max_objects: int, finetune: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """STMAE's training augmentation (upstream `VOSDataset`) for one clip.

    Whole clip: horizontal flip, RandomResizedCrop(size, scale 0.36-1), ColorJitter(0.1, 0.03, 0.03) and
    RandomGrayscale(0.05). Per frame: RandomAffine(15 deg, shear 10; off when `finetune`) and
    ColorJitter(0.01, 0.01, 0.01). Objects are picked in the augmented frame 0 (at most `max_objects`, at
    random, retrying the crop up to 5 times when frame 0 shows none) and renumbered 1..K in every frame.
    Void (255) is background here; upstream would have picked it as an object.

    Returns frames T x size x size x 3 uint8 (channels last, as `smtc_frame`), masks T x size x size uint8,
    and K (at least 1, as upstream).
    """
    imgs = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # T3HW uint8
    gts = torch.from_numpy(np.stack(masks))[:, None]  # T1HW uint8
    h, w = imgs.shape[-2:]
    for _ in range(5):
        flip = rng.random() < 0.5
        top, left, ch, cw = _resized_crop_box(h, w, rng)
        im = TF.resized_crop(imgs, top, left, ch, cw, [size, size], InterpolationMode.BILINEAR, antialias=True)
        gt = TF.resized_crop(gts, top, left, ch, cw, [size, size], InterpolationMode.NEAREST)
        if flip:
            im, gt = TF.horizontal_flip(im), TF.horizontal_flip(gt)
        im = _color_jitter(im, rng, 0.1, 0.03, 0.03)
        if rng.random() < 0.05:
            im = TF.rgb_to_grayscale(im, num_output_channels=3)
        out_im, out_gt = [], []
        for t in range(im.shape[0]):
            fi, fg = im[t], gt[t]
            if not finetune:
                angle = float(rng.uniform(-15, 15))
                shear = [float(rng.uniform(-10, 10)), 0.0]
                fi = TF.affine(fi, angle=angle, translate=[0, 0], scale=1.0, shear=shear,
                               interpolation=InterpolationMode.BILINEAR, fill=list(IM_MEAN_FILL))
                fg = TF.affine(fg, angle=angle, translate=[0, 0], scale=1.0, shear=shear,
                               interpolation=InterpolationMode.NEAREST, fill=[0])
            out_im.append(_color_jitter(fi, rng, 0.01, 0.01, 0.01))
            out_gt.append(fg[0])
        gt_all = torch.stack(out_gt).numpy()
        labels = [int(v) for v in np.unique(gt_all[0]) if v not in (0, 255)]
        if labels:
            break
    if len(labels) > max_objects:
        labels = sorted(rng.choice(labels, size=max_objects, replace=False).tolist())
    remapped = np.zeros_like(gt_all)
    for k, obj in enumerate(labels, start=1):
        remapped[gt_all == obj] = k
    return torch.stack(out_im).permute(0, 2, 3, 1).numpy(), remapped, max(1, len(labels))
