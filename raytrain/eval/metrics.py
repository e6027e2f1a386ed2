"""DAVIS-2017 region (J) and contour (F) accuracy and their statistics.

Same math as the official davis2017-evaluation toolkit (`db_eval_iou`, `f_measure`, `_seg2bmap`,
`db_statistics`), vectorised over frames:

- J = |P∩G| / |P∪G| with void pixels removed from both; an empty union scores 1.
- F: a pixel is a boundary pixel when it differs from its east, south or south-east neighbour (only the
  neighbours inside the image count: the last row uses east only, the last column south only, the
  bottom-right pixel is never a boundary). A boundary pixel is matched when a boundary pixel of the other
  mask lies within the tolerance disk x²+y² ≤ r², r = ceil(0.008·‖(H, W)‖) — this is what upstream's
  `cv2.dilate` with `skimage.morphology.disk(r)` computes. Instead of dilating whole frames we look the
  nearest boundary pixel up in a k-d tree over all frames at once; `tests/test_metrics.py` checks the
  result against `scipy.ndimage.binary_dilation` with the same footprint.
- Mean = nanmean, Recall = fraction of frames > 0.5, Decay = mean of the first minus the last of four
  bins whose edges are round(linspace(1, N, 5) + 1e-10) - 1 taken modulo 256: upstream casts them to uint8
  (past 256 frames the last bin comes out empty and Decay NaN); its `+ 1` on the end edge does not wrap, as
  under numpy < 1.24, which its `np.bool` requires.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.spatial import cKDTree


def disk(radius: int) -> np.ndarray:
    """skimage's `disk(radius)` footprint: the (2r+1)² grid points with x² + y² ≤ r²."""
    span = np.arange(-radius, radius + 1)
    return span[:, None] ** 2 + span[None, :] ** 2 <= radius**2


def bound_pix(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Boundary tolerance in pixels: `bound_th` itself when ≥ 1, else ceil(bound_th · image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask [..., H, W] (upstream's `_seg2bmap` neighbour rule)."""
    seg = np.asarray(seg, dtype=bool)
    b = np.zeros_like(seg)
    b[..., :, :-1] |= seg[..., :, :-1] ^ seg[..., :, 1:]
    b[..., :-1, :] |= seg[..., :-1, :] ^ seg[..., 1:, :]
    b[..., :-1, :-1] |= seg[..., :-1, :-1] ^ seg[..., 1:, 1:]
    return b


def _as_frames(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=bool)
    if x.ndim not in (2, 3):
        raise ValueError(f"masks must be [H, W] or [T, H, W], got shape {x.shape}")
    return x


def _check(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"annotation {gt.shape} and segmentation {pred.shape} shapes differ")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"annotation {gt.shape} and void {void.shape} shapes differ")


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray | float:
    """Region similarity J per frame for binary masks [T, H, W] (a float for one [H, W] frame)."""
    gt, pred = _as_frames(gt), _as_frames(pred)
    void = None if void is None else _as_frames(void)
    _check(gt, pred, void)
    inter, union = gt & pred, gt | pred
    if void is not None:
        inter &= ~void
        union &= ~void
    i = inter.sum(axis=(-2, -1))
    u = union.sum(axis=(-2, -1))
    j = np.where(u == 0, 1.0, i / np.maximum(u, 1))
    return float(j) if j.ndim == 0 else j


class Boundary:
    """Boundary pixels of a binary mask sequence [T, H, W], indexed for tolerance look-ups."""

    def __init__(self, masks: np.ndarray):
        masks = _as_frames(masks)
        if masks.ndim == 2:
            masks = masks[None]
        self.shape = masks.shape
        t, y, x = _boundary_pixels(masks)
        self.frame = t
        # Frames are stacked along a third axis, H + W + 2 apart: farther than any two pixels of one frame.
        self.points = np.stack([t * float(sum(self.shape[1:]) + 2), y, x], axis=1).astype(np.float64)
        self.count = np.bincount(t, minlength=self.shape[0])
        self._tree: cKDTree | None = None
        self._box: tuple[np.ndarray, np.ndarray] | None = None

    def matched(self, other: "Boundary", radius: int) -> np.ndarray:
        """Per frame: how many of our boundary pixels lie within `radius` of one of `other`'s."""
        if self.shape != other.shape:
            raise ValueError(f"boundary shapes differ: {self.shape} vs {other.shape}")
        out = np.zeros(self.shape[0], dtype=np.int64)
        if len(self.points) == 0 or len(other.points) == 0:
            return out
        radius = min(radius, sum(self.shape[1:]))  # covers every in-frame pair, never reaches another frame
        # Only points inside the other boundary's per-frame box grown by `radius` can match.
        lo, hi = other._boxes()
        yx = self.points[:, 1:]
        keep = np.all((yx >= lo[self.frame] - radius) & (yx <= hi[self.frame] + radius), axis=1)
        if not keep.any():
            return out
        if other._tree is None:
            other._tree = cKDTree(other.points)
        # Integer coordinates: the nearest squared distance is an integer, so `d <= radius` is exact.
        d, _ = other._tree.query(self.points[keep], k=1, distance_upper_bound=radius + 0.5)
        return np.bincount(self.frame[keep][d <= radius], minlength=self.shape[0])

    def _boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame (min, max) of (y, x); empty frames get a box no point can reach."""
        if self._box is None:
            lo = np.full((self.shape[0], 2), np.inf)
            hi = np.full((self.shape[0], 2), -np.inf)
            present = np.flatnonzero(self.count)
            starts = np.concatenate([[0], np.cumsum(self.count)[:-1]])[present]  # points are sorted by frame
            lo[present] = np.minimum.reduceat(self.points[:, 1:], starts, axis=0)
            hi[present] = np.maximum.reduceat(self.points[:, 1:], starts, axis=0)
            self._box = lo, hi
        return self._box


def _boundary_pixels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, y, x) of the seg2bmap pixels of [T, H, W], computed inside the masks' bounding box plus one pixel.

    Outside that box every pixel and its neighbours are 0, so no boundary lies there; inside, the margin (or
    the real image edge) gives the same neighbour comparisons as the full frame.
    """
    support = masks.any(axis=0)
    rows = np.flatnonzero(support.any(axis=1))
    if len(rows) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    cols = np.flatnonzero(support.any(axis=0))
    y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, masks.shape[1])
    x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, masks.shape[2])
    crop = seg2bmap(masks[:, y0:y1, x0:x1])
    t, y, x = np.unravel_index(np.flatnonzero(crop), crop.shape)  # much faster than 3-D np.nonzero
    return t, y + y0, x + x0


def f_from_boundaries(gt: Boundary, pred: Boundary, radius: int) -> np.ndarray:
    """Contour accuracy F per frame from two boundary sets (upstream's precision/recall edge cases)."""
    n_fg, n_gt = pred.count, gt.count
    fg_match = pred.matched(gt, radius)
    gt_match = gt.matched(pred, radius)
    # No predicted boundary: P = 1; no GT boundary: R = 1 (then fg_match = 0 makes P = 0 when n_fg > 0).
    precision = np.where(n_fg > 0, fg_match / np.maximum(n_fg, 1), 1.0)
    recall = np.where(n_gt > 0, gt_match / np.maximum(n_gt, 1), 1.0)
    denom = precision + recall
    return np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)


def f_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
              bound_th: float = 0.008) -> np.ndarray | float:
    """Contour accuracy F per frame for binary masks [T, H, W] (a float for one [H, W] frame).

    Void pixels are cleared from both masks before their boundaries are taken, as upstream does.
    """
    gt, pred = _as_frames(gt), _as_frames(pred)
    void = None if void is None else _as_frames(void)
    _check(gt, pred, void)
    single = gt.ndim == 2
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    radius = bound_pix(gt.shape[-2:], bound_th)
    f = f_from_boundaries(Boundary(gt), Boundary(pred), radius)
    return float(f[0]) if single else f


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame J or F values, as upstream's `db_statistics`."""
    x = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(x)
        recall = np.nanmean(x > 0.5)
        ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.int64) % 256
        decay = np.nanmean(x[ids[0]:ids[1] + 1]) - np.nanmean(x[ids[3]:ids[4] + 1])
    return float(mean), float(recall), float(decay)
