"""JHMDB keypoint propagation and PCK, as CRW (ajabri/videowalk) computes them (reference/eval-more.md §2).

- First frame: joints scaled to the label grid (x * grid_w / W, y * grid_h / H after CRW's squash to 320 x 320
  and division by the stride), one channel per joint holding CRW's Gaussian (sigma 0.5 cells: a 4 x 4 window
  from `int(c - 1.5)`, values written over, clipped at the border, nothing when the window is off the grid),
  and a background channel first (1 where every joint channel is 0): 16 channels.
- Propagation: `raytrain.eval.propagation.propagate_soft` with the `JHMDB` preset; frame 0's map is its
  ground truth.
- Reading back (`read_keypoints`): per joint the top-3 grid cells, their weights renormalised to sum to 1, the
  weighted mean cell (x, y); an all-zero channel gives (-1, -1). Predictions are `<list index>.npy`, 2 x 15 x T
  grid coordinates, frame 0 included (CRW dumps the same array pickled as `<index>.dat`; `np.load` reads both).
- PCK (eval_pck.py): grid coordinates times W / feat_res (H / feat_res); a joint counts where the prediction's
  x >= 0; per frame the normaliser is 0.6 x the diagonal of the box around the ground-truth joints counted;
  frame 0 is skipped; per joint the percentage of normalised distances <= alpha; the score is the mean over
  the 15 joints, for alpha in 0.1 ... 0.5.

Deviation: a joint never counted (eval_pck divides by zero there) is left out of the mean, and said so.
"""
from __future__ import annotations

import io
from functools import partial

import numpy as np
import torch

from raytrain.eval.propagation import JHMDB, Preset, encode_tokens, propagate_soft, vit_features
from raytrain.eval.video_io import VideoResult, read_clip
from raytrain.models.vit import ViTEncoder
from shards.bench_layout import JointsVideo

NUM_JOINTS = 15
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)  # eval_pck.py
FEAT_RES = 40  # eval_pck.py: the grid predictions are given on
SIGMA = 0.5


def draw_gaussian(channel: np.ndarray, x: float, y: float, sigma: float = SIGMA) -> None:
    """CRW's labelmap drawing, in place: an unnormalised Gaussian (peak 1) written over `channel` [h, w]."""
    ul = [int(x - 3 * sigma), int(y - 3 * sigma)]
    br = [int(x + 3 * sigma + 1), int(y + 3 * sigma + 1)]
    h, w = channel.shape
    if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
        return
    size = 6 * sigma + 1
    grid = np.arange(0, size, 1, float)
    centre = size // 2
    g = np.exp(-((grid[None, :] - centre) ** 2 + (grid[:, None] - centre) ** 2) / (2 * sigma ** 2))
    gx, gy = (max(0, -ul[0]), min(br[0], w) - ul[0]), (max(0, -ul[1]), min(br[1], h) - ul[1])
    ix, iy = (max(0, ul[0]), min(br[0], w)), (max(0, ul[1]), min(br[1], h))
    channel[iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]


def label_map(joints: np.ndarray, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """First-frame labels [16, gh, gw] (background, then the 15 joints) from 0-based pixel joints [2, 15] of a
    frame of `size` (H, W)."""
    maps = np.zeros((NUM_JOINTS, *grid))
    for j in range(NUM_JOINTS):
        draw_gaussian(maps[j], joints[0, j] * grid[1] / size[1], joints[1, j] * grid[0] / size[0])
    background = (maps.sum(0) == 0).astype(np.float64)
    return np.concatenate([background[None], maps])


def read_keypoints(soft: torch.Tensor, topk: int = 3) -> torch.Tensor:
    """Grid coordinates [2, 15] (x, y) from soft labels [16, gh, gw]: weighted mean of each joint's top-k cells."""
    maps = soft[1:].permute(1, 2, 0)  # [gh, gw, 15]
    flat = maps.flatten(0, 1)
    vals, idx = torch.topk(flat, k=min(len(flat), topk), dim=0)
    vals = vals / vals.sum(0)[None]
    xx, yy = idx % maps.shape[1], idx // maps.shape[1]
    coords = torch.stack([(xx * vals).sum(0), (yy * vals).sum(0)])
    coords[:, flat.sum(0) == 0] = -1
    return coords


def pck_distances(pred: np.ndarray, gt: np.ndarray, height: int, width: int, feat_res: int = FEAT_RES
                  ) -> list[np.ndarray]:
    """Per joint, the normalised distances of one video: pred [2, 15, T] grid coordinates, gt [2, 15, T]
    0-based pixels, frames `height` x `width`."""
    if pred.shape != gt.shape:
        raise ValueError(f"predicted keypoints {pred.shape} vs ground truth {gt.shape}")
    visible = pred[0] >= 0  # [15, T]
    px, py = pred[0] / feat_res * width, pred[1] / feat_res * height
    out: list[list[float]] = [[] for _ in range(pred.shape[1])]
    for k in range(1, pred.shape[2]):
        seen = visible[:, k]
        if not seen.any():
            continue
        xs, ys = gt[0, seen, k], gt[1, seen, k]
        box = 0.6 * np.hypot(max(xs.max(), -1) - min(xs.min(), 1e6), max(ys.max(), -1) - min(ys.min(), 1e6))
        for j in np.flatnonzero(seen):
            out[j].append(np.hypot(px[j, k] - gt[0, j, k], py[j, k] - gt[1, j, k]) / box)
    return [np.array(d) for d in out]


def pck(distances: list[list[np.ndarray]], thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, float]:
    """Mean over joints of the % of normalised distances <= alpha, over the videos' `pck_distances`."""
    joints = [np.concatenate([v[j] for v in distances]) for j in range(NUM_JOINTS)]
    counted = [d for d in joints if len(d)]
    out = {f"PCK@{a:g}": float(np.mean([100.0 * (d <= a).sum() / len(d) for d in counted])) if counted
           else float("nan") for a in thresholds}
    out["joints_never_counted"] = NUM_JOINTS - len(counted)
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@torch.inference_mode()
def keypoint_video(encoder: ViTEncoder, item: JointsVideo, device: torch.device, preset: Preset = JHMDB
                   ) -> VideoResult:
    """Propagate frame 0's joints through a JHMDB video; its predictions (`keypoints/<index>.npy`) and distances."""
    video = item.video
    frames = read_clip(video)
    feats = vit_features(partial(encode_tokens, encoder, preset), frames, preset, device=device)
    grid = tuple(feats.shape[-2:])
    first = torch.as_tensor(label_map(item.joints[:, :, 0], (video.height, video.width), grid), dtype=torch.float32)
    labels = propagate_soft(feats, first.flatten(1), preset).view(len(frames), -1, *grid)
    coords = torch.stack([read_keypoints(labels[t]) for t in range(len(frames))], dim=-1).cpu().numpy()
    coords = coords * FEAT_RES / np.array(grid[::-1], dtype=np.float64)[:, None, None]  # on eval_pck's 40 x 40
    stats = pck_distances(coords, item.joints, video.height, video.width)
    return VideoResult(str(item.index), {}, None, extra={f"keypoints/{item.index}.npy": npy_bytes(coords)},
                       stats=stats)
