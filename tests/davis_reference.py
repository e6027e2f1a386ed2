"""An independent DAVIS-2017 evaluator for the tests, written from the official toolkit's definitions
(shared/reference/eval.md §1) with numpy, scipy and PIL only. It imports nothing from `raytrain`, so a test
that compares the project's numbers with it compares two implementations, not the code with itself.

It is literal and slow on purpose: one object and one frame at a time, boundaries by shifted XORs, tolerance
by dilating with a disk, J by counting set operations. Decay is only defined here for sequences shorter than
256 frames (where the toolkit's uint8 bin edges do not wrap).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

VOID = 255


def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk(radius) as bool: grid points with x² + y² ≤ r²."""
    return np.array([[x * x + y * y <= radius * radius for x in range(-radius, radius + 1)]
                     for y in range(-radius, radius + 1)], dtype=bool)


def bound_pix(height: int, width: int, bound_th: float = 0.008) -> int:
    """Boundary tolerance: ceil(0.008 · image diagonal)."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * np.linalg.norm([height, width])))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The toolkit's `_seg2bmap` at the mask's own size: XOR with the east, south and south-east neighbours
    (zero outside the image), the last row by its east neighbour only, the last column by its south one only,
    the bottom-right pixel never."""
    seg = np.asarray(seg, dtype=bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def j_frame(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """|P ∩ G| / |P ∪ G| of one frame's binary masks, void pixels left out; 1 when the union is empty."""
    keep = np.ones(gt.shape, bool) if void is None else ~void
    g, p = np.flatnonzero(gt & keep), np.flatnonzero(pred & keep)  # pixel index sets
    union = np.union1d(g, p)
    return 1.0 if not len(union) else len(np.intersect1d(g, p, assume_unique=True)) / len(union)


def dilate(bmap: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with disk(radius) (what `cv2.dilate` with that kernel gives), computed on the bounding box
    of the set pixels grown by the radius: outside it the dilation is empty."""
    out = np.zeros_like(bmap)
    ys, xs = np.nonzero(bmap)
    if len(ys):
        y0, y1 = max(ys.min() - radius, 0), ys.max() + radius + 1
        x0, x1 = max(xs.min() - radius, 0), xs.max() + radius + 1
        out[y0:y1, x0:x1] = ndimage.binary_dilation(bmap[y0:y1, x0:x1], structure=disk(radius))
    return out


def boundary(mask: np.ndarray, void: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(boundary map, its dilation by the tolerance) of a binary mask with void pixels cleared first."""
    mask = np.asarray(mask, bool)
    if void is not None:
        mask = mask & ~void
    b = seg2bmap(mask)
    return b, dilate(b, bound_pix(*mask.shape))


def f_from(gt: tuple[np.ndarray, np.ndarray], pred: tuple[np.ndarray, np.ndarray]) -> float:
    """Contour accuracy from the (boundary, dilated boundary) pairs of GT and prediction."""
    (gb, gt_dil), (fg, fg_dil) = gt, pred
    n_fg, n_gt = int(fg.sum()), int(gb.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = int((fg & gt_dil).sum()) / n_fg
        recall = int((gb & fg_dil).sum()) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def f_frame(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """Contour accuracy of one frame's binary masks (void cleared from both before the boundaries)."""
    return f_from(boundary(gt, void), boundary(pred, void))


def num_objects(first_gt: np.ndarray) -> int:
    """N = the largest id of the first GT frame (void not counted)."""
    ids = np.asarray(first_gt)[np.asarray(first_gt) != VOID]
    return int(ids.max()) if ids.size else 0


def semi(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semi-supervised J, F [N, T - 2]: the middle frames only, void (255) is background, ids above N too.

    pred: the middle frames [T - 2, H, W] or all [T, H, W]."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if len(pred) == len(gt):
        pred = pred[1:-1]
    assert len(pred) == len(gt) - 2
    n = num_objects(gt[0])
    j, f = np.zeros((n, len(pred))), np.zeros((n, len(pred)))
    for k in range(1, n + 1):
        for t in range(len(pred)):
            g, p = gt[t + 1] == k, pred[t] == k
            j[k - 1, t], f[k - 1, t] = j_frame(g, p), f_frame(g, p)
    return j, f


def pair_scores(gt: np.ndarray, proposals: list[np.ndarray], void: np.ndarray, n_gt: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """J, F [proposals, objects] of one frame."""
    j, f = np.zeros((len(proposals), n_gt)), np.zeros((len(proposals), n_gt))
    objects = [boundary(gt == k, void) for k in range(1, n_gt + 1)]
    for p, mask in enumerate(proposals):
        ours = boundary(mask, void)
        for k in range(1, n_gt + 1):
            j[p, k - 1] = j_frame(gt == k, mask, void)
            f[p, k - 1] = f_from(objects[k - 1], ours)
    return j, f


def unsup(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unsupervised J, F [N, T]: every frame, void excluded, proposals 1..max(pred) (zero-padded to N), one
    Hungarian assignment per sequence on (mean J + mean F) / 2; rows in proposal order."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    n_gt = num_objects(gt[0])
    n_pred = max(int(pred.max()), n_gt)
    j, f = np.zeros((n_pred, n_gt, len(gt))), np.zeros((n_pred, n_gt, len(gt)))
    for t in range(len(gt)):
        j[:, :, t], f[:, :, t] = pair_scores(gt[t], [pred[t] == p for p in range(1, n_pred + 1)],
                                             gt[t] == VOID, n_gt)
    rows, cols = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    return j[rows, cols], f[rows, cols]


def paper(gt: np.ndarray, masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """SMTC's patched toolkit: per frame the (overlapping) proposal masks, zero-padded to the largest count
    (at least N), are matched to the objects by their own Hungarian assignment on J + F. J, F [N, T]."""
    gt = np.asarray(gt)
    n_gt = num_objects(gt[0])
    n_pad = max(max(len(m) for m in masks), n_gt)
    j_out, f_out = np.zeros((n_gt, len(gt))), np.zeros((n_gt, len(gt)))
    for t, props in enumerate(masks):
        props = list(props) + [np.zeros(gt.shape[1:], bool)] * (n_pad - len(props))
        j, f = pair_scores(gt[t], props, gt[t] == VOID, n_gt)
        rows, cols = linear_sum_assignment(-(j + f))
        j_out[cols, t], f_out[cols, t] = j[rows, cols], f[rows, cols]
    return j_out, f_out


def statistics(x: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame values (fewer than 256 frames)."""
    x = np.asarray(x, dtype=np.float64)
    assert len(x) < 256
    ids = np.round(np.linspace(1, len(x), 5) + 1e-10) - 1
    ids = ids.astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first, last = np.nanmean(x[ids[0]:ids[1] + 1]), np.nanmean(x[ids[3]:ids[4] + 1])
        return float(np.nanmean(x)), float(np.nanmean(x > 0.5)), float(first - last)


def global_results(sequences: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[dict[str, float], list]:
    """The global row (means over all objects) and the per-object rows (<seq>_<k>, J-Mean, F-Mean) of
    (sequence, J, F) triples."""
    j_stats, f_stats, rows = [], [], []
    for name, j, f in sequences:
        for k in range(len(j)):
            j_stats.append(statistics(j[k]))
            f_stats.append(statistics(f[k]))
            rows.append((f"{name}_{k + 1}", j_stats[-1][0], f_stats[-1][0]))
    jm, jr, jd = (float(np.mean([s[i] for s in j_stats])) for i in range(3))
    fm, fr, fd = (float(np.mean([s[i] for s in f_stats])) for i in range(3))
    return {"J&F-Mean": (jm + fm) / 2, "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
            "F-Mean": fm, "F-Recall": fr, "F-Decay": fd}, rows


def read_ids(path: str | Path) -> np.ndarray:
    """An id-map PNG (P or L mode) as its values."""
    with Image.open(path) as im:
        assert im.mode in ("P", "L"), im.mode
        return np.array(im)


def read_pngs(folder: str | Path) -> np.ndarray:
    """All PNGs of a folder, sorted by name, [T, H, W]."""
    return np.stack([read_ids(p) for p in sorted(Path(folder).glob("*.png"))])
