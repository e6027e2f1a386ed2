"""Photometric clip augmentation on the device, in plain torch (SMTC's kornia `VideoSequential` pipeline).

Per clip, with the same parameters for every frame of the clip:
1. grayscale with p = 0.2;
2. ColorJitter(brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1) with p = 0.8, torchvision semantics
   (multiplicative brightness, blends with the per-frame grey mean / grey image, hue shift in HSV), the four
   operations in a random order: one per view of the batch as kornia draws it (SMTC's default), or one per clip
   (`--jitter_order clip`);
3. Gaussian blur with p = 0.5, kernel `blur_kernel_size(resolution)` (25 at 256^2), reflect padding,
   sigma ~ U(0.1, 2);
4. ImageNet normalisation.
Random parameters are drawn on the CPU from a caller-supplied `torch.Generator` (`sample_clip_params`), so views
are reproducible; with one generator per clip (`stack_params`) and the order per clip, a clip's view does not
depend on its batch.

Deviations from upstream:
- Blur sigma is drawn per clip from U(0.1, 2). Upstream draws it once per process (`random.uniform` when the
  kornia pipeline is built), so each GPU blurs every clip of the whole run with one fixed sigma.
- ColorJitter follows torchvision's definitions; which kornia version upstream ran (its older ColorJitter used
  additive brightness) is not recorded.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = (0.2989, 0.587, 0.114)


class ClipParams(NamedTuple):
    """Augmentation parameters for B clips (CPU tensors)."""

    gray: Tensor  # B bool
    jitter: Tensor  # B bool
    factors: Tensor  # B x 4: brightness, contrast, saturation, hue
    order: Tensor  # B x 4, per clip a permutation of the jitter operations
    blur: Tensor  # B bool
    sigma: Tensor  # B


def blur_kernel_size(resolution: int) -> int:
    """Odd kernel of about 10 % of the frame size, as upstream: int(0.1 * resolution) // 2 * 2 + 1."""
    return int(0.1 * resolution) // 2 * 2 + 1


def sample_clip_params(batch: int, generator: torch.Generator) -> ClipParams:
    u = torch.rand(batch, 8, generator=generator)
    low = torch.tensor([0.6, 0.6, 0.6, -0.1])  # ColorJitter(0.4, 0.4, 0.4, 0.1) ranges
    width = torch.tensor([0.8, 0.8, 0.8, 0.2])
    order = torch.rand(batch, 4, generator=generator).argsort(1)
    return ClipParams(gray=u[:, 0] < 0.2, jitter=u[:, 1] < 0.8, factors=low + width * u[:, 2:6], order=order,
                      blur=u[:, 6] < 0.5, sigma=0.1 + 1.9 * u[:, 7])


def stack_params(params: list[ClipParams]) -> ClipParams:
    """The parameters of several batches (e.g. one clip each, from a generator of its own) as one batch."""
    return ClipParams(*(torch.cat(field) for field in zip(*params)))


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """[..., 3, H, W] -> [..., 1, H, W] luma (ITU-R 601-2, torchvision's weights)."""
    r, g, b = x.unbind(-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def _per_clip(f: Tensor, x: Tensor) -> Tensor:
    return f.to(x).reshape(-1, *([1] * (x.ndim - 1)))


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    return (f * x + (1 - f) * other).clamp(0, 1)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    """x: B x T x 3 x H x W in [0, 1]; f: B factors."""
    return (x * _per_clip(f, x)).clamp(0, 1)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), _per_clip(f, x))


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, rgb_to_grayscale(x), _per_clip(f, x))


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(dim=-3), x.amin(dim=-3)
    chroma = maxc - minc
    flat = chroma == 0
    s = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    c = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / c, (maxc - g) / c, (maxc - b) / c
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], dim=-3)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(-3)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).reshape(3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(-3), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0, 1)
    return (v.unsqueeze(-3) * (1 - s.unsqueeze(-3) * ramp)).clamp(0, 1)


def adjust_hue(x: Tensor, f: Tensor) -> Tensor:
    """Shift hue by f (in [-0.5, 0.5], fraction of the colour wheel) per clip."""
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[..., 0, :, :] + _per_clip(f, hsv[..., 0, :, :]), 1.0)
    return _hsv_to_rgb(torch.stack([h, hsv[..., 1, :, :], hsv[..., 2, :, :]], dim=-3))


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with reflect padding; x: B x T x C x H x W, one sigma per clip."""
    if kernel_size <= 1:
        return x
    b, t, c, h, w = x.shape
    half = kernel_size // 2
    coords = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - half
    kernel = torch.exp(-0.5 * (coords / sigma.to(x).unsqueeze(-1)) ** 2)
    kernel = (kernel / kernel.sum(-1, keepdim=True)).repeat_interleave(t * c, dim=0)
    y = F.pad(x.reshape(1, b * t * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * t * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * t * c)
    return y.reshape(b, t, c, h, w)


_JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _on(x: Tensor, select: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Apply fn(clips, their CPU indices) to the clips where `select` holds."""
    idx = select.nonzero().flatten()
    if idx.numel() == 0:
        return x
    dev_idx = idx.to(x.device)
    return x.index_copy(0, dev_idx, fn(x.index_select(0, dev_idx), idx))


def apply_clip_params(x: Tensor, params: ClipParams, kernel_size: int) -> Tensor:
    """Grayscale, ColorJitter and blur of clips x (B x T x 3 x H x W, float in [0, 1]) with `params`."""
    x = _on(x, params.gray, lambda v, _: rgb_to_grayscale(v).expand_as(v))

    def jitter(v: Tensor, idx: Tensor) -> Tensor:
        order = params.order[idx]
        for i in range(order.shape[1]):
            for op, fn in enumerate(_JITTER):
                v = _on(v, order[:, i] == op, lambda u, j: fn(u, params.factors[idx[j], op]))
        return v

    x = _on(x, params.jitter, jitter)
    return _on(x, params.blur, lambda v, idx: gaussian_blur(v, params.sigma[idx], kernel_size))


def normalize(x: Tensor) -> Tensor:
    """ImageNet normalisation of [..., 3, H, W] in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).reshape(3, 1, 1)
    return (x - mean) / std


def normalize_uint8(frames: Tensor) -> Tensor:
    """uint8 RGB [..., 3, H, W] -> ImageNet-normalised float32."""
    return normalize(frames.float() / 255)


def augment_clips(frames: Tensor, params: ClipParams) -> Tensor:
    """One augmented, normalised float32 view of uint8 clips B x T x 3 x H x W with `params` (one row per clip)."""
    x = frames.float() / 255.0
    return normalize(apply_clip_params(x, params, blur_kernel_size(frames.shape[-1])))
