"""DAVIS J / F / statistics against hand-computed values and a literal dense implementation."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from raytrain.eval.metrics import (Boundary, bound_pix, disk, f_measure, frame_boxes, jaccard, label_boundaries,
                                   seg2bmap, statistics)


def _dense_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None, radius: int) -> float:
    """Upstream's f_measure written literally: shifted-XOR boundaries, binary dilation with disk(r)."""
    if void is not None:
        gt, pred = gt & ~void, pred & ~void

    def bmap(seg):
        e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
        e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
        b = (seg ^ e) | (seg ^ s) | (seg ^ se)
        b[-1, :] = seg[-1, :] ^ e[-1, :]
        b[:, -1] = seg[:, -1] ^ s[:, -1]
        b[-1, -1] = False
        return b

    fb, gb = bmap(pred), bmap(gt)
    fd = ndimage.binary_dilation(fb, structure=disk(radius))
    gd = ndimage.binary_dilation(gb, structure=disk(radius))
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        p, r = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, r = 1, 1
    else:
        p, r = (fb & gd).sum() / float(n_fg), (gb & fd).sum() / float(n_gt)
    return 0 if p + r == 0 else 2 * p * r / (p + r)


def test_disk_is_skimage_footprint():
    for r, ones in ((8, 197), (9, 253), (10, 317)):  # skimage.morphology.disk(r).sum()
        d = disk(r)
        assert d.shape == (2 * r + 1, 2 * r + 1) and d.sum() == ones
        assert (d == d.T).all() and (d == d[::-1]).all()
    assert disk(1).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def test_bound_pix_from_diagonal():
    assert bound_pix((480, 854)) == 8
    assert bound_pix((480, 910)) == 9
    assert bound_pix((480, 1152)) == 10
    assert bound_pix((100, 100)) == math.ceil(0.008 * math.hypot(100, 100)) == 2
    assert bound_pix((480, 854), bound_th=3) == 3


def test_seg2bmap_neighbour_rule():
    seg = np.zeros((4, 4), bool)
    seg[1, 1] = True
    expected = np.zeros((4, 4), bool)
    expected[[0, 0, 1, 1], [0, 1, 0, 1]] = True  # itself, and the pixels whose E / S / SE neighbour it is
    assert (seg2bmap(seg) == expected).all()
    # The image border is no boundary: the last row compares east only, the last column south only.
    assert not seg2bmap(np.ones((3, 5), bool)).any()
    bottom = np.zeros((3, 3), bool)
    bottom[-1] = True
    assert seg2bmap(bottom).astype(int).tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]
    right = np.zeros((3, 3), bool)
    right[:, -1] = True
    assert seg2bmap(right).astype(int).tolist() == [[0, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_jaccard_hand_values_empty_and_void():
    gt = np.zeros((6, 6), bool)
    gt[0:2, 0:5] = True  # 10 px
    pred = np.zeros((6, 6), bool)
    pred[1:3, 0:5] = True  # overlaps 5, union 15
    assert jaccard(gt, pred) == pytest.approx(1 / 3)
    empty = np.zeros((6, 6), bool)
    assert jaccard(empty, empty) == 1.0  # empty union
    assert jaccard(empty, pred) == 0.0
    assert jaccard(gt, empty) == 0.0
    void = np.zeros((6, 6), bool)
    void[0, :] = void[2, :] = True  # hides every disagreeing pixel
    assert jaccard(gt, pred, void) == 1.0
    per_frame = jaccard(np.stack([gt, empty]), np.stack([pred, empty]))
    assert per_frame.shape == (2,) and per_frame.tolist() == pytest.approx([1 / 3, 1.0])


def test_f_hand_values_and_tolerance():
    gt = np.zeros((5, 5), bool)
    gt[2, 2] = True
    near, far = np.zeros_like(gt), np.zeros_like(gt)
    near[2, 3] = True
    far[2, 4] = True
    # radius 1 (plus-shaped disk): one pixel apart every boundary pixel is matched; two apart half of them.
    assert f_measure(gt, near, bound_th=1) == 1.0
    assert f_measure(gt, far, bound_th=1) == pytest.approx(0.5)
    # A square shifted by less than the tolerance scores 1, by more it does not.
    img = np.zeros((100, 100), bool)
    img[30:60, 30:60] = True
    assert bound_pix(img.shape) == 2
    assert f_measure(img, np.roll(img, 2, axis=1)) == 1.0
    assert f_measure(img, np.roll(img, 2, axis=0)) == 1.0
    assert f_measure(img, np.roll(img, 5, axis=1)) < 1.0


def test_f_empty_and_void_cases():
    empty = np.zeros((20, 20), bool)
    obj = np.zeros((20, 20), bool)
    obj[5:10, 5:10] = True
    assert f_measure(empty, empty) == 1.0  # no boundary anywhere: P = R = 1
    assert f_measure(obj, empty) == 0.0  # P = 1, R = 0
    assert f_measure(empty, obj) == 0.0  # P = 0, R = 1
    other = np.zeros((20, 20), bool)
    other[14:18, 14:18] = True
    void = other.copy()
    assert f_measure(empty, other, void) == 1.0  # void cleared before the boundaries are taken
    assert f_measure(obj, obj | other, void) == 1.0
    # Frames are scored separately even when the tolerance exceeds the frame size.
    assert f_measure(np.stack([obj, empty]), np.stack([empty, obj]), bound_th=100).tolist() == [0.0, 0.0]


def test_matches_literal_dense_implementation():
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = rng.integers(8, 90, size=2)
        yy, xx = np.mgrid[:h, :w]

        def blob():
            cy, cx = rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w
            ry, rx = rng.uniform(1, 0.6 * h), rng.uniform(1, 0.6 * w)
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            return m ^ (rng.random((h, w)) < 0.03) if trial % 3 == 0 else m

        gt = np.stack([blob() for _ in range(3)])
        pred = np.stack([blob(), np.roll(gt[1], int(rng.integers(-6, 7)), axis=1), np.zeros((h, w), bool)])
        void = rng.random((3, h, w)) < 0.05 if trial % 2 else None
        bound_th = [0.008, 0.05, 4][trial % 3]
        radius = bound_pix((h, w), bound_th)
        expected = [_dense_f(gt[t], pred[t], None if void is None else void[t], radius) for t in range(3)]
        assert f_measure(gt, pred, void, bound_th=bound_th).tolist() == expected  # bit-identical


def test_statistics_hand_vectors():
    mean, recall, decay = statistics([1, 1, 1, 1, 0, 0, 0, 0])
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)  # bins [0..2] and [5..7]
    mean, recall, decay = statistics([0.5, 0.5, 0.6, 0.4])
    assert mean == pytest.approx(0.5)
    assert recall == 0.25  # > 0.5 is strict
    assert decay == pytest.approx(0.0)  # bin edges 0,1,2,2,3: first bin [0.5, 0.5], last [0.6, 0.4]
    assert statistics([1.0, np.nan, 0.0])[0] == 0.5  # nanmean
    # Upstream casts the bin edges to uint8: with 300 frames the last edge wraps and the last bin is empty.
    assert np.isnan(statistics(np.ones(300))[2])
    # Under numpy 2 its `+ 1` on a uint8 edge wraps too: 255 + 1 = 0 empties the last bin at 256 frames.
    assert np.isnan(statistics(np.ones(256))[2]) and np.isnan(statistics(np.ones(1024))[2])
    assert statistics(np.ones(255))[2] == 0.0 and statistics(np.ones(400))[2] == 0.0


def test_statistics_match_the_toolkits_uint8_bins_under_numpy2():
    """Upstream's `db_statistics` binning written out with numpy 2's uint8 arithmetic, for 1..1100 frames."""
    for n in range(1, 1100):
        x = np.random.default_rng(n).random(n)
        x[n // 3] = np.nan
        edges = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64).astype(np.uint8)
        with np.errstate(over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            bins = [x[edges[i]:edges[i + 1] + np.uint8(1)] for i in (0, 3)]
            expected = np.nanmean(bins[0]) - np.nanmean(bins[1])
        np.testing.assert_equal(statistics(x)[2], expected)


def test_against_cv2_and_skimage_when_installed():
    """Optional cross-check with the libraries upstream uses (not project dependencies)."""
    cv2 = pytest.importorskip("cv2")
    morphology = pytest.importorskip("skimage.morphology")
    rng = np.random.default_rng(1)
    for r in (1, 2, 8, 9, 10):
        assert (morphology.disk(r).astype(bool) == disk(r)).all()
        b = rng.random((60, 80)) < 0.01
        ours = ndimage.binary_dilation(b, structure=disk(r))
        assert (cv2.dilate(b.astype(np.uint8), disk(r).astype(np.uint8)).astype(bool) == ours).all()


def test_label_boundaries_are_each_ids_mask_boundary():
    """All ids' boundaries from one pass over each frame's box, against `Boundary(ids == k)` one id at a time."""
    rng = np.random.default_rng(2)
    for trial in range(300):
        t, h, w = rng.integers(1, 4), rng.integers(1, 14), rng.integers(1, 14)
        ids = (rng.integers(0, 5, (t, h, w)) * (rng.random((t, h, w)) < 0.5)).astype(np.uint8)
        ids[ids == 4] = 255 if trial % 3 == 0 else 4  # ids above n: background to every object
        if trial % 5 == 0:
            ids[0] = 0
        n = int(rng.integers(0, 5))
        other = (rng.integers(0, 3, (t, h, w)) * (rng.random((t, h, w)) < 0.1)).astype(np.uint8)
        for got in (label_boundaries(ids, n), label_boundaries(ids, n, frame_boxes(ids, other))):
            for k in range(1, n + 1):
                ref, b = Boundary(ids == k), got[k - 1]
                assert (np.diff(b.frame) >= 0).all() and (b.count == ref.count).all()
                rows = [p[np.lexsort(p.T[::-1])] for p in (b.points, ref.points)]  # same pixels, any order
                assert np.array_equal(*rows)
