"""DAVIS-2017 region (J) and contour (F) accuracy and their statistics.

Same math as the official davis2017-evaluation toolkit (`db_eval_iou`, `f_measure`, `_seg2bmap`,
`db_statistics`), vectorised over frames:

- J = |P∩G| / |P∪G| with void pixels removed from both; an empty union scores 1.
- F: a pixel is a boundary pixel when it differs from its east, south or south-east neighbour (only the
  neighbours inside the image count: the last row uses east only, the last column south only, the
  bottom-right pixel is never a boundary). A boundary pixel is matched when a boundary pixel of the other
  mask lies within the tolerance disk x²+y² ≤ r², r = ceil(0.008·‖(H, W)‖) — this is what upstream's
  `cv2.dilate` with `skimage.morphology.disk(r)` computes. Instead of dilating whole frames, one boundary is
  dilated as a bit-packed bitmap (64 columns a word) that covers only its per-frame boxes grown by r, all
  frames of an object at once, and the other boundary's pixels are looked up in it; `tests/test_metrics.py`
  checks the result against `scipy.ndimage.binary_dilation` with the same footprint.
- Mean = nanmean, Recall = fraction of frames > 0.5, Decay = mean of the first minus the last of four
  bins x[e_i : e_{i+1} + 1], whose edges e = round(linspace(1, N, 5) + 1e-10) - 1 upstream casts to uint8.
  Both the edges and the `+ 1` wrap modulo 256, as the toolkit's current code computes them under numpy 2
  (NEP 50: uint8 + a Python int stays uint8). So a bin whose end edge is 255 mod 256 is empty, and Decay is
  NaN when the first or last bin is empty: for every N that is a multiple of 256, and for many N > 256.
  (Under numpy 1's value-based casting the `+ 1` did not wrap, so N = 256, 512, ... gave a number.)
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np


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


class Boundary:
    """Boundary pixels (t, y, x) of a binary mask sequence [T, H, W], with per-frame boxes for tolerance look-ups."""

    def __init__(self, masks: np.ndarray, pixels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        """From binary masks, or with `pixels`, from their boundary pixels (t, y, x) sorted by frame and
        `masks` only giving the shape."""
        if pixels is None:
            masks = _as_frames(masks)
            if masks.ndim == 2:
                masks = masks[None]
            pixels = _boundary_pixels(masks)
        self.shape = tuple(masks.shape)
        t, y, x = pixels
        self.frame = t
        self.points = np.stack([t, y, x], axis=1).astype(np.int64)
        self.count = np.bincount(t, minlength=self.shape[0])
        self._box: tuple[np.ndarray, np.ndarray] | None = None
        self._bits: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # radius -> `_dilated(radius)`

    def matched(self, other: "Boundary", radius: int) -> np.ndarray:
        """Per frame: how many of our boundary pixels lie within `radius` of one of `other`'s."""
        if self.shape != other.shape:
            raise ValueError(f"boundary shapes differ: {self.shape} vs {other.shape}")
        out = np.zeros(self.shape[0], dtype=np.int64)
        if len(self.points) == 0 or len(other.points) == 0:
            return out
        r = min(radius, sum(self.shape[1:]))  # covers every in-frame pair
        lo, hi = other._boxes()
        # Our points inside the other boundary's per-frame box grown by r, in its dilated bitmap's rows and columns.
        rows = self.points[:, 1] - (lo[self.frame, 0] - r)
        cols = self.points[:, 2] - (lo[self.frame, 1] - r)
        keep = (rows >= 0) & (self.points[:, 1] <= hi[self.frame, 0] + r)
        keep &= (cols >= 0) & (self.points[:, 2] <= hi[self.frame, 1] + r)
        if not keep.any():
            return out
        if r not in other._bits:  # kept: unsupervised scoring matches each boundary against many
            other._bits[r] = other._dilated(r)
        bits, start = other._bits[r]
        rows = (start[self.frame[keep]] + rows[keep]).astype(np.int64)
        cols = cols[keep].astype(np.int64)
        hit = (bits[rows, cols >> 6] >> (cols & 63).astype(np.uint64)) & np.uint64(1)
        return np.bincount(self.frame[keep][hit.astype(bool)], minlength=self.shape[0])

    def _dilated(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """The boundary dilated by the disk x² + y² ≤ r², as a bitmap [rows, words] of uint64 (column c of a row
        is bit c % 64 of word c // 64), and each frame's first row. Frame t's rows are its box's rows grown by r
        (zero rows between frames, so no dilation crosses frames); its columns start r left of its box."""
        lo, hi = self._boxes()
        present = self.count > 0
        heights = np.where(present, hi[:, 0] - lo[:, 0] + 1 + 2 * r, 0).astype(np.int64)
        start = np.concatenate([[0], np.cumsum(heights)[:-1]])
        words = int((hi[present, 1] - lo[present, 1]).max()) // 64 + 2 * r // 64 + 2
        rows = start[self.frame] + (self.points[:, 1] - lo[self.frame, 0] + r).astype(np.int64)
        cols = (self.points[:, 2] - lo[self.frame, 1] + r).astype(np.int64)
        flat = np.zeros(int(heights.sum()) * words, dtype=np.uint64)
        np.bitwise_or.at(flat, rows * words + (cols >> 6), np.left_shift(np.uint64(1), (cols & 63).astype(np.uint64)))
        wide = _row_dilations(flat.reshape(-1, words), [math.isqrt(r * r - dy * dy) for dy in range(r + 1)])
        out = np.zeros_like(wide[0])
        n = len(out)
        for dy in range(-r, r + 1):  # row y takes the row y + dy, dilated by the disk's half-width at dy
            src = wide[abs(dy)]
            if dy >= 0:
                out[:n - dy] |= src[dy:]
            else:
                out[-dy:] |= src[:n + dy]
        return out, start

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


def _shift_columns(bits: np.ndarray, s: int) -> np.ndarray:
    """Packed rows with every set column c also set at c - s and c + s (columns outside are dropped)."""
    q, b = divmod(s, 64)
    n = bits.shape[1]
    out = bits.copy()
    if q >= n:
        return out
    tmp = np.empty_like(bits[:, q:])
    ub, rb = np.uint64(b), np.uint64(64 - b)
    out[:, q:] |= np.left_shift(bits[:, :n - q], ub, out=tmp)  # toward higher columns
    out[:, :n - q] |= np.right_shift(bits[:, q:], ub, out=tmp)  # toward lower columns
    if b and q + 1 < n:  # the bits that cross into the next / previous word
        out[:, q + 1:] |= np.right_shift(bits[:, :n - q - 1], rb, out=tmp[:, 1:])
        out[:, :n - q - 1] |= np.left_shift(bits[:, q + 1:], rb, out=tmp[:, 1:])
    return out


def _row_dilations(bits: np.ndarray, widths: Sequence[int]) -> list[np.ndarray]:
    """For each width w: the packed rows dilated along the row by [-w, w]."""
    done: dict[int, np.ndarray] = {0: bits}
    cur, have = bits, 0
    for w in sorted(set(widths)):
        while have < w:
            step = min(w - have, 2 * have + 1)  # [-have, have] grown by ±step stays gap-free
            cur, have = _shift_columns(cur, step), have + step
        done[w] = cur
    return [done[w] for w in widths]


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


Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (ends exclusive)


def frame_boxes(*maps: np.ndarray) -> list[Box | None]:
    """Per frame of id-map sequences [T, H, W]: the bounding box of the pixels non-zero in any map (None: none)."""
    out: list[Box | None] = []
    for frames in zip(*maps):
        m = frames[0] if len(frames) == 1 else np.bitwise_or.reduce(frames)
        rows = np.flatnonzero(m.any(axis=1))
        if not len(rows):
            out.append(None)
            continue
        cols = np.flatnonzero(m[rows[0]:rows[-1] + 1].any(axis=0))
        out.append((int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1))
    return out


def label_boundaries(ids: np.ndarray, n: int, boxes: Sequence[Box | None] | None = None) -> list[Boundary]:
    """`Boundary(ids == k)` for k = 1..n of an id-map sequence [T, H, W], from one pass over each frame's box.

    A pixel is on object k's boundary when it differs from an in-image east, south or south-east neighbour
    in being k. So a pixel that differs from some neighbour is on its own id's boundary and on each
    differing neighbour's (each id counted once), and no other pixel is on any (ids above n are background
    to every object). `boxes` (default `frame_boxes(ids)`) must hold every pixel of ids 1..n; the pass covers
    each box grown by one pixel, outside which no boundary lies. Points come sorted by frame only.
    """
    ids = np.asarray(ids)
    if ids.ndim == 2:
        ids = ids[None]
    _, h, w = ids.shape
    labels, where = [], []
    for t, box in enumerate(frame_boxes(ids) if boxes is None else boxes):
        if box is None:
            continue
        y0, x0 = max(box[0] - 1, 0), max(box[2] - 1, 0)
        crop = ids[t, y0:min(box[1] + 1, h), x0:min(box[3] + 1, w)]
        cw = crop.shape[1]
        e, s, se = (np.zeros(crop.shape, bool) for _ in range(3))  # differs from its E / S / SE neighbour
        np.not_equal(crop[:, :-1], crop[:, 1:], out=e[:, :-1])
        np.not_equal(crop[:-1], crop[1:], out=s[:-1])
        np.not_equal(crop[:-1, :-1], crop[1:, 1:], out=se[:-1, :-1])
        flat, e, s, se = crop.reshape(-1), e.ravel(), s.ravel(), se.ravel()
        any_ = np.bitwise_or(e, s)
        own = np.flatnonzero(np.bitwise_or(any_, se, out=any_))
        east, south, diag = own[e[own]], own[s[own]], own[se[own]]  # sparse: only where some neighbour differs
        south = south[~(e[south] & (flat[south + cw] == flat[np.minimum(south + 1, flat.size - 1)]))]
        diag = diag[~((e[diag] & (flat[diag + cw + 1] == flat[diag + 1])) |
                      (s[diag] & (flat[diag + cw + 1] == flat[diag + cw])))]
        for at, label in ((own, flat[own]), (east, flat[east + 1]), (south, flat[south + cw]),
                          (diag, flat[diag + cw + 1])):
            keep = (label > 0) & (label <= n)
            at = at[keep]
            labels.append(label[keep])
            where.append((t * h + y0 + at // cw) * w + x0 + at % cw)
    label = np.concatenate(labels) if labels else np.zeros(0, ids.dtype)
    order = np.argsort(label, kind="stable")  # by object; frame order is kept within each
    label, pixel = label[order], np.concatenate(where)[order] if where else np.zeros(0, np.int64)
    bounds = np.searchsorted(label, np.arange(1, n + 2))
    return [Boundary(ids, np.unravel_index(pixel[bounds[k]:bounds[k + 1]], ids.shape)) for k in range(n)]


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


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame J or F values, as upstream's `db_statistics`."""
    x = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(x)
        recall = np.nanmean(x > 0.5)
        starts = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.int64) % 256
        ends = (starts + 1) % 256
        decay = np.nanmean(x[starts[0]:ends[1]]) - np.nanmean(x[starts[3]:ends[4]])
    return float(mean), float(recall), float(decay)
