"""Semi-supervised label propagation with frozen ViT features (CRW / SMTC and DINO protocols).

Each target frame takes its labels from a context of earlier frames: the first frame plus the `context`
previous ones. For every target position, the affinity to all context positions is the cosine similarity
(features are L2-normalised) masked to a spatial neighbourhood; the `topk` best keys are softmax-weighted
(temperature `temperature`) and their labels averaged. Predictions are kept soft and fed back as context.

Presets (reference/eval.md §3, reference/smtc.md §6):
- `SMTC_A`: CRW code with SMTC's ViT-S/16 — stride 16, top-7, radius 7, T 0.2, 20 context frames, frame 0 not
  restricted; the video is prepended with 20 copies of frame 0, so early targets see frame 0 (with its GT
  labels) repeatedly; first-frame labels bilinearly downsampled to ⌊H/s⌋×⌊W/s⌋; Euclidean window
  (grid distance < radius) on the short-term context only.
- `SMTC_B`: stride 8 (features bilinearly upsampled to the ⌊H/8⌋×⌊W/8⌋ grid), top-28, radius 35.
- `DINO`: 7 context frames (no padding), top-5, T 0.1, square window of half-width 12 on every context frame
  including frame 0, nearest-downsampled hard first labels, per-channel min-max normalisation of the upsampled
  map before the argmax, DINO's input size (short side 480, long side floored to a multiple of 64).

`propagation_video` is the per-video work of the evaluation jobs and of in-training validation: ViT
features of every frame, propagation from frame 0, DAVIS semi-supervised scores.

`propagate` is the batched implementation: per target frame one matrix product against all distinct context
frames (CRW's repeated copies of frame 0 are scored once and counted with their multiplicity in the top k), a
precomputed neighbourhood mask, top-k, softmax and a weighted label sum, in query chunks bounded by
`max_elements`, on the features' device. `propagate_reference` computes the same thing on the schedule of
videowalk's test_utils (one target at a time, 100 queries at a time, every context entry scored, repeated
copies included, additive -1e10 mask, top-k over the key axis) and is the baseline in tests and
bench/propagation.py. Nothing is cached on disk.

Deviations from upstream:
- Object ids come from the first frame's id map and are written back as ids (upstream round-trips through
  palette colours, and its palette only matches DAVIS's for ids 0-8). Void (255) in the first frame counts as
  background; upstream propagates it as an extra label that the DAVIS evaluator then rejects.
- Frame 0 of the output is the given first-frame map (it is not scored).
- DINO weights are a softmax over exactly the top k (DINO keeps every key tied with the k-th value), and
  min-max normalisation leaves a constant channel as it is instead of dividing by zero.
- DINO's frame resize is bilinear on float pixels rounded back to 8 bits (torch), not cv2's fixed-point
  bilinear, so a resized pixel can differ by one grey level.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raytrain.augment import IMAGENET_MEAN, IMAGENET_STD
from raytrain.eval import davis
from raytrain.eval.video_io import VideoResult, encode_png, read_clip, read_ground_truth, read_png
from raytrain.models.vit import ViTEncoder
from shards.palettes import DAVIS_PALETTE

DINO_STD = (0.228, 0.224, 0.225)  # DINO's eval_video_segmentation.py typo (0.228 for 0.229), kept for exactness
VOID = 255


@dataclass(frozen=True)
class Preset:
    """One label-propagation protocol."""

    name: str
    stride: int  # label grid stride s
    topk: int
    temperature: float
    context: int  # short-term context frames
    radius: float
    square_window: bool  # |dy|, |dx| <= radius (DINO) instead of grid distance < radius (CRW)
    restrict_first: bool  # the window also applies to the first frame (DINO)
    pad_with_first: bool  # CRW: `context` copies of frame 0 precede the video
    soft_first: bool  # first-frame one-hot downsampled bilinearly (CRW) instead of nearest (DINO)
    minmax: bool  # per-channel min-max of the upsampled map before the argmax (DINO)
    dino_input: bool  # DINO input size rule instead of SMTC's (floor to a multiple of the stride)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    short_side: int = 480  # DINO input rule only
    squash: int = 0  # CRW's JHMDB loader: frames resized to squash x squash whatever their aspect (0: off)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the frames are resized to before the encoder."""
        if self.squash:
            return self.squash, self.squash
        if not self.dino_input:
            return height // self.stride * self.stride, width // self.stride * self.stride
        if height > width:
            return int(self.short_side * height / width // 64 * 64), self.short_side
        return self.short_side, int(self.short_side * width / height // 64 * 64)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Label / feature grid for an original frame size."""
        if self.dino_input or self.squash:
            h, w = self.input_size(height, width)
            return h // self.stride, w // self.stride
        return height // self.stride, width // self.stride


SMTC_A = Preset("smtc-a", stride=16, topk=7, temperature=0.2, context=20, radius=7, square_window=False,
                restrict_first=False, pad_with_first=True, soft_first=True, minmax=False, dino_input=False)
SMTC_B = replace(SMTC_A, name="smtc-b", stride=8, topk=28, radius=35)
DINO = Preset("dino", stride=16, topk=5, temperature=0.1, context=7, radius=12, square_window=True,
              restrict_first=True, pad_with_first=False, soft_first=False, minmax=True, dino_input=True,
              std=DINO_STD)
# JHMDB: CRW test.py's parser defaults (arguments.py:26-35; the repo has no JHMDB command) on CRW's 320x320
# squash, stride 8 as eval_pck.py's feat_res=40 assumes (ViT-S/16 tokens interpolated to 40x40, as in SMTC_B).
JHMDB = replace(SMTC_A, name="jhmdb", stride=8, topk=10, radius=12, temperature=0.07, squash=320)
# VIP: SMTC's DAVIS settings (eval_prop.sh) at the native resolution; neither repo gives VIP settings.
VIP = replace(SMTC_A, name="vip")
PRESETS = {"A": SMTC_A, "B": SMTC_B, "dino": DINO, "jhmdb": JHMDB, "vip": VIP}  # by their --preset names


# ---------------------------------------------------------------------------------------------- features

@torch.no_grad()
def vit_features(encode_fn: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor | np.ndarray,
                 preset: Preset, batch_size: int = 16, device: torch.device | str | None = None) -> torch.Tensor:
    """L2-normalised features [T, C, h, w] on the preset's label grid.

    frames: uint8 RGB [T, 3, H, W]. encode_fn maps a normalised float batch [B, 3, H', W'] to patch tokens
    [B, h', w', C]. SMTC presets resize frames to a multiple of the stride and interpolate the tokens
    bilinearly to ⌊H/s⌋×⌊W/s⌋; the DINO preset resizes to its input size and needs the token grid to match.
    """
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    height, width = frames.shape[-2:]
    size, grid = preset.input_size(height, width), preset.grid(height, width)
    device = torch.device(device) if device is not None else frames.device
    mean = torch.tensor(preset.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preset.std, device=device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(frames), batch_size):
        x = frames[start:start + batch_size].to(device).float()
        if preset.dino_input:  # DINO: resize the 8-bit image, then scale and normalise
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
            x = (x / 255 - mean) / std
        else:  # SMTC: normalise, then resize (upstream's trilinear over (3, H, W) is bilinear per frame)
            x = F.interpolate((x / 255 - mean) / std, size=size, mode="bilinear", align_corners=False)
        tokens = encode_fn(x)
        if tokens.ndim != 4 or tokens.shape[0] != len(x):
            raise ValueError(f"encode_fn must return tokens [B, h, w, C], got {tuple(tokens.shape)}")
        feats = tokens.permute(0, 3, 1, 2).float()
        if tuple(feats.shape[-2:]) != grid:
            if preset.dino_input:
                raise ValueError(f"token grid {tuple(feats.shape[-2:])} does not match the {preset.name} grid {grid}"
                                 f" for {size[0]}x{size[1]} inputs at stride {preset.stride}")
            feats = F.interpolate(feats, size=grid, mode="bilinear", align_corners=False)
        out.append(F.normalize(feats, dim=1))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ labels

def _pil_index(n_in: int, n_out: int) -> np.ndarray:
    # PIL's NEAREST resize: source = int(s/2 + x*s), the position accumulated by repeated float64 additions.
    steps = np.full(n_out, n_in / n_out)
    steps[0] *= 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)


def pil_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize the last two dims of `x` exactly as PIL's `Image.resize(size[::-1], NEAREST)` does."""
    rows = torch.as_tensor(_pil_index(x.shape[-2], size[0]), device=x.device)
    cols = torch.as_tensor(_pil_index(x.shape[-1], size[1]), device=x.device)
    return x[..., rows[:, None], cols[None, :]]


def _first_labels(first: np.ndarray, preset: Preset, grid: tuple[int, int],
                  device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """Soft first-frame labels [L, h*w] on the grid and the object id of each channel."""
    first = np.where(first == VOID, 0, first)
    ids = np.unique(first)
    index = torch.as_tensor(np.searchsorted(ids, first), device=device)
    if preset.soft_first:
        onehot = F.one_hot(index, len(ids)).permute(2, 0, 1).float()[None]
        labels = F.interpolate(onehot, size=grid, mode="bilinear", align_corners=False)[0]
    else:
        labels = F.one_hot(pil_nearest(index, grid), len(ids)).permute(2, 0, 1).float()
    return labels.flatten(1), ids


def _decode(soft: torch.Tensor, grid: tuple[int, int], preset: Preset, ids: np.ndarray,
            out_size: tuple[int, int]) -> np.ndarray:
    """Soft labels [L, h*w] -> id map at out_size."""
    soft = soft.view(1, -1, *grid)
    if not preset.minmax:
        up = F.interpolate(soft, size=out_size, mode="bilinear", align_corners=False)[0]
        return ids[up.argmax(0).cpu().numpy()]
    up = F.interpolate(soft, scale_factor=preset.stride, mode="bilinear", align_corners=False)[0]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    scale = (up.amax(dim=(1, 2), keepdim=True) > 0) & (span > 0)
    up = torch.where(scale, (up - low) / torch.where(scale, span, 1.0), up)
    return ids[pil_nearest(up.argmax(0), out_size).cpu().numpy()]


def context_frames(target: int, preset: Preset) -> list[int]:
    """Context of a target frame: frame 0, then the short-term frames (CRW: frame 0 stands in before the start)."""
    if preset.pad_with_first:
        return [0] + [max(0, target - preset.context + j) for j in range(preset.context)]
    return [0] + list(range(max(1, target - preset.context), target))


def neighbourhood(grid: tuple[int, int], preset: Preset, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool [h*w (keys), h*w (queries)]: whether a key lies in the query's spatial window."""
    y, x = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij")
    y, x = y.flatten(), x.flatten()
    dy, dx = y[:, None] - y[None, :], x[:, None] - x[None, :]
    if preset.square_window:
        return (dy.abs() <= preset.radius) & (dx.abs() <= preset.radius)
    return (dy * dy + dx * dx).float().sqrt() < preset.radius


def _check(features: torch.Tensor, first: np.ndarray, preset: Preset) -> tuple[int, int]:
    if features.ndim != 4:
        raise ValueError(f"features must be [T, C, h, w], got {tuple(features.shape)}")
    if first.ndim != 2:
        raise ValueError(f"first-frame labels must be an [H, W] id map, got shape {first.shape}")
    grid = preset.grid(*first.shape)
    if tuple(features.shape[-2:]) != grid:
        raise ValueError(f"feature grid {tuple(features.shape[-2:])} does not match the {preset.name} grid {grid} "
                         f"of a {first.shape[0]}x{first.shape[1]} first frame")
    return grid


# ----------------------------------------------------------------------------------------- propagation

@torch.no_grad()
def propagate(features: torch.Tensor, first_labels: np.ndarray, preset: Preset,
              out_size: tuple[int, int] | None = None, max_elements: int = 2**26) -> list[np.ndarray]:
    """Id maps for every frame (frame 0 is `first_labels`) at `out_size` (default: the first frame's size).

    features: L2-normalised [T, C, h, w] on the preset's grid (see `vit_features`); work happens on their
    device. max_elements bounds the affinity chunk (queries × context positions).
    """
    first_labels = np.asarray(first_labels)
    grid = _check(features, first_labels, preset)
    out_size = tuple(out_size) if out_size is not None else first_labels.shape
    soft, ids = _first_labels(first_labels, preset, grid, features.device)
    labels = propagate_soft(features, soft, preset, max_elements)
    return [first_labels.copy()] + [_decode(labels[t], grid, preset, ids, out_size).astype(first_labels.dtype)
                                    for t in range(1, len(features))]


@torch.no_grad()
def propagate_soft(features: torch.Tensor, first: torch.Tensor, preset: Preset, max_elements: int = 2**26
                   ) -> torch.Tensor:
    """Soft labels [T, L, h*w] of every frame from frame 0's `first` [L, h*w] (the batched propagation)."""
    device, grid = features.device, tuple(features.shape[-2:])
    hw = grid[0] * grid[1]
    if first.shape[-1] != hw:
        raise ValueError(f"first-frame labels cover {first.shape[-1]} positions, the feature grid {hw}")
    keys = features.flatten(2).transpose(1, 2).float()  # [T, hw, C]
    labels = torch.zeros(len(features), len(first), hw, device=device)
    labels[0] = first.to(device)
    outside = ~neighbourhood(grid, preset, device).T  # [queries, keys]
    for target in range(1, len(features)):
        ctx = context_frames(target, preset)
        uniq = sorted(set(ctx))  # frame 0 first
        # CRW repeats frame 0 in the context: score each distinct frame once and count its copies instead.
        free = torch.zeros(len(uniq), device=device)  # copies without the window
        windowed = torch.zeros(len(uniq), device=device)  # copies with the window
        for j, frame in enumerate(ctx):
            (windowed if j > 0 or preset.restrict_first else free)[uniq.index(frame)] += 1
        ctx_keys = keys[uniq].reshape(-1, keys.shape[-1])  # [U*hw, C]
        ctx_labels = labels[uniq].permute(1, 0, 2).reshape(len(first), -1)  # [L, U*hw]
        chunk = max(1, max_elements // (len(uniq) * hw))
        pred = torch.empty(len(first), hw, device=device)
        for q0 in range(0, hw, chunk):
            aff = (keys[target, q0:q0 + chunk] @ ctx_keys.T).view(-1, len(uniq), hw)  # [nq, U, hw]
            windowed_only = aff if preset.restrict_first else aff[:, 1:]
            windowed_only.masked_fill_(outside[q0:q0 + chunk, None, :], float("-inf"))
            vals, idx = aff.view(len(aff), -1).topk(preset.topk, dim=1)  # distinct entries, best first
            frame, pos = idx // hw, idx % hw
            inside = ~outside[q0:q0 + chunk].gather(1, pos)
            copies = free[frame] + windowed[frame] * inside  # [nq, k]
            taken = (copies.cumsum(1) - copies).clamp(max=preset.topk)  # copies already in the top k
            copies = torch.minimum(copies, preset.topk - taken)
            weights = copies * torch.exp((vals - vals[:, :1]) / preset.temperature)
            weights = weights / weights.sum(1, keepdim=True)  # softmax over the top-k multiset
            pred[:, q0:q0 + chunk] = (ctx_labels[:, idx] * weights).sum(-1)
        labels[target] = pred
    return labels


@torch.no_grad()
def propagate_reference(features: torch.Tensor, first_labels: np.ndarray, preset: Preset,
                        out_size: tuple[int, int] | None = None, query_chunk: int = 100) -> list[np.ndarray]:
    """`propagate` computed on videowalk's test_utils schedule: one target frame at a time, 100 queries at a
    time, an einsum against every context entry (CRW's repeated frame-0 copies included) with an additive
    -1e10 window mask, division by the temperature, top-k over the keys, softmax, then the label sum."""
    first_labels = np.asarray(first_labels)
    grid = _check(features, first_labels, preset)
    out_size = tuple(out_size) if out_size is not None else first_labels.shape
    device, hw = features.device, grid[0] * grid[1]
    feats = features.flatten(2).float()  # [T, C, hw]
    soft, ids = _first_labels(first_labels, preset, grid, device)
    labels = [soft] + [None] * (len(features) - 1)
    bias = torch.where(neighbourhood(grid, preset, device), 0.0, -1e10)  # [keys, queries]
    first_masked = 0 if preset.restrict_first else 1
    outputs = [first_labels.copy()]
    for target in range(1, len(features)):
        ctx = context_frames(target, preset)
        keys = feats[ctx]  # [n_ctx, C, hw]
        ctx_labels = torch.cat([labels[c] for c in ctx], dim=1)  # [L, n_ctx*hw]
        pred = []
        for q0 in range(0, hw, query_chunk):
            aff = torch.einsum("tck,cq->tkq", keys, feats[target, :, q0:q0 + query_chunk])
            aff[first_masked:] += bias[:, q0:q0 + query_chunk]
            aff = aff.reshape(-1, aff.shape[-1]) / preset.temperature
            weights, idx = torch.topk(aff, preset.topk, dim=0)
            weights = F.softmax(weights, dim=0)
            pred.append((ctx_labels[:, idx] * weights[None]).sum(1))
        labels[target] = torch.cat(pred, dim=1)
        outputs.append(_decode(labels[target], grid, preset, ids, out_size).astype(first_labels.dtype))
    return outputs


# ------------------------------------------------------------------------------------- one DAVIS video

def encode_tokens(encoder: ViTEncoder, preset: Preset, x: Tensor) -> Tensor:
    """Last-block patch tokens [B, h, w, C]: before the final LayerNorm (SMTC presets) or after it (DINO)."""
    tokens = encoder.features(x).tokens.permute(0, 2, 3, 1)
    return encoder.norm(tokens) if preset.name == DINO.name else tokens


@torch.inference_mode()
def propagation_video(encoder: ViTEncoder, video: Any, device: torch.device, preset: Preset) -> VideoResult:
    """Propagate frame 0's annotation through a DAVIS video with frozen ViT features and score the result."""
    frames = read_clip(video)
    feats = vit_features(partial(encode_tokens, encoder, preset), frames, preset, device=device)
    first, palette = read_png(video, video.frames[0])
    preds = propagate(feats, first, preset)
    gt = read_ground_truth(video)
    scores = None if gt is None else davis.score_semi(gt, np.stack(preds), video.id, video.frames)
    masks = {f: encode_png(p, palette or DAVIS_PALETTE) for f, p in zip(video.frames, preds)}
    return VideoResult(video.id, masks, scores)
