"""DAVIS J / F / statistics as the evaluator computes them, against hand-computed values and an independent
implementation.

Production scores every sequence with `davis.score_semi` / `davis.score_unsup`: J from per-object pixel
counts, F from `metrics.label_boundaries` and the bitmap matching of `metrics.f_from_boundaries`, statistics
from `metrics.statistics` combined by `davis.combine`. So J and F are tested through `score_semi` /
`score_unsup`, and the reference is tests/davis_reference.py, a literal implementation of the official
toolkit's definitions that imports nothing from raytrain.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import davis_reference as ref
from raytrain.eval import davis
from raytrain.eval.metrics import bound_pix, disk, frame_boxes, label_boundaries, seg2bmap, statistics


def _semi(gt_mid: list[np.ndarray], pred_mid: list[np.ndarray], n: int = 1) -> davis.SequenceScores:
    """`score_semi` of the middle frames: the (unscored) first GT frame holds ids 1..n, the last is empty."""
    gt_mid = np.asarray(gt_mid, np.uint8)
    first = np.zeros_like(gt_mid[0])
    first.flat[:n] = np.arange(1, n + 1)
    gt = np.concatenate([first[None], gt_mid, np.zeros_like(gt_mid[:1])])
    return davis.score_semi(gt, np.asarray(pred_mid, np.uint8), "hand")


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


def test_j_hand_values_empty_and_void():
    gt = np.zeros((6, 6), np.uint8)
    gt[0:2, 0:5] = 1  # 10 px
    pred = np.zeros((6, 6), np.uint8)
    pred[1:3, 0:5] = 1  # overlaps 5, union 15
    empty = np.zeros_like(gt)
    s = _semi([gt, empty, empty, gt], [pred, empty, pred, empty])
    assert s.j[0].tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0])  # empty union: 1
    u = davis.score_unsup(np.stack([gt, empty, empty, gt]), np.stack([pred, empty, pred, empty]))
    assert u.j[0].tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0])
    voided = gt.copy()
    voided[0, :] = voided[2, :] = 255  # hides every pixel where GT and prediction disagree
    u = davis.score_unsup(np.stack([voided, voided]), np.stack([pred, pred]))
    assert u.j.tolist() == [[1.0, 1.0]] and u.f.tolist() == [[1.0, 1.0]]
    assert _semi([voided], [pred]).j.tolist() == [[0.5]]  # semi-supervised: void is background, 5 of 10 px


def test_f_hand_values_tolerance_and_empty_frames():
    # 5x5: tolerance ceil(0.008 * 7.07) = 1, a plus-shaped disk. The boundary of a lone pixel is itself and the
    # three pixels it is the E / S / SE neighbour of. One pixel apart, every boundary pixel is matched; two apart,
    # half of them (P = R = 1/2).
    gt = np.zeros((5, 5), np.uint8)
    gt[2, 2] = 1
    near, far, empty = np.zeros_like(gt), np.zeros_like(gt), np.zeros_like(gt)
    near[2, 3] = 1
    far[2, 4] = 1
    s = _semi([gt, gt, gt, gt, empty, empty], [near, far, gt, empty, near, empty])
    # no predicted boundary: P = 1, R = 0; no GT boundary: P = 0, R = 1; neither: 1. Frames 4 and 5 also show
    # that frames are scored separately (frame 4's GT pixel lies next to frame 5's prediction).
    assert s.f[0].tolist() == [1.0, 0.5, 1.0, 0.0, 0.0, 1.0]
    assert s.j[0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    # A 30 x 30 square in 100 x 100 (tolerance 2), shifted right by 2 and down by 2: every boundary pixel is
    # matched. Shifted right by 3: the boundaries are 31 x 31 rings of 120 pixels; of the predicted ring, the
    # left column matches on 6 rows (within 2 of GT's top / bottom rows), the right column on none, the top and
    # bottom rows (29 pixels each without corners) all: 64 / 120, and the same for the GT ring: F = 8 / 15.
    img = np.zeros((100, 100), np.uint8)
    img[30:60, 30:60] = 1
    s = _semi([img] * 3, [np.roll(img, 2, axis=1), np.roll(img, 2, axis=0), np.roll(img, 3, axis=1)])
    assert s.f[0].tolist() == pytest.approx([1.0, 1.0, 8 / 15], abs=1e-12)
    assert s.j[0].tolist() == pytest.approx([28 / 32, 28 / 32, 27 / 33], abs=1e-12)


def _blobs(rng: np.random.Generator, t: int, h: int, w: int, n: int) -> np.ndarray:
    """Id maps [t, h, w] of n drifting ellipses (later ids on top), some with salt noise; objects may start
    outside frame 0 (then they are background to the semi-supervised protocol) or leave the frame."""
    yy, xx = np.mgrid[:h, :w]
    ids = np.zeros((t, h, w), np.uint8)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
        ry, rx = rng.uniform(1, 0.5 * h), rng.uniform(1, 0.5 * w)
        vy, vx = rng.uniform(-0.15, 0.15, 2) * (h, w)
        noisy = rng.random() < 0.3
        for f in range(t):
            m = ((yy - cy - vy * f) / ry) ** 2 + ((xx - cx - vx * f) / rx) ** 2 < 1
            ids[f][m ^ (rng.random((h, w)) < 0.03) if noisy else m] = k
    return ids


def _cases(seed: int):
    """(name, gt, semi prediction, unsup prediction) of random sequences, one at DAVIS size (tolerance 8)."""
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(3, 8)), *rng.integers(6, 90, size=2)) for _ in range(24)] + [(4, 480, 854)]
    for i, (t, h, w) in enumerate(shapes):
        gt = _blobs(rng, t, h, w, int(rng.integers(1, 5)))
        if i % 3 == 0:  # a void band: background (semi), left out of both masks (unsup)
            y = int(rng.integers(0, h))
            gt[:, y:y + max(1, h // 8)] = 255
        n = ref.num_objects(gt[0])
        shift = (int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
        semi = np.roll(np.where(gt == 255, 0, gt), shift, (1, 2)) if i % 2 or h > 100 else _blobs(rng, t, h, w, n)
        semi = np.where(semi > n, 0, semi).astype(np.uint8)  # ids above N are an error in the semi protocol
        semi[rng.random(t) < 0.2] = 0  # frames that predict nothing
        ids = np.zeros(256, np.uint8)
        k = 20 if h < 100 else 5  # proposal ids: the objects' permuted, predicted on the void too
        ids[1:k + 1] = rng.permutation(k) + 1
        moved = np.roll(np.where(gt == 255, 1, gt) % 21, shift, (1, 2))
        unsup = ids[_blobs(rng, t, h, w, int(rng.integers(0, 7))) if i % 2 else moved]
        yield f"seq{i}", gt, semi, unsup


def test_scores_match_the_independent_reference():
    """score_semi / score_unsup per object and frame, and the global numbers of davis.combine, against
    tests/davis_reference.py on random multi-object sequences (void, late and vanishing objects, empty frames,
    permuted and surplus proposals)."""
    semi, unsup, ref_semi, ref_unsup = [], [], [], []
    for name, gt, pred_semi, pred_unsup in _cases(0):
        s = davis.score_semi(gt, pred_semi[1:-1], name)
        j, f = ref.semi(gt, pred_semi)
        assert s.j.shape == j.shape == (ref.num_objects(gt[0]), len(gt) - 2), name
        np.testing.assert_allclose(s.j, j, rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(s.f, f, rtol=0, atol=1e-12, err_msg=name)
        semi.append(s)
        ref_semi.append((name, j, f))
        u = davis.score_unsup(gt, pred_unsup, name)
        j, f = ref.unsup(gt, pred_unsup)
        np.testing.assert_allclose(u.j, j, rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(u.f, f, rtol=0, atol=1e-12, err_msg=name)
        unsup.append(u)
        ref_unsup.append((name, j, f))
    for ours, theirs in ((semi, ref_semi), (unsup, ref_unsup)):
        assert not all((s.j == 1).all() for s in ours) and not all((s.f == 0).all() for s in ours)
        report = davis.combine(ours)
        expected, rows = ref.global_results(theirs)
        assert report.as_dict() == pytest.approx(expected, rel=0, abs=1e-12)
        assert [name for name, _, _ in report.objects] == [name for name, _, _ in rows]
        assert [o[1:] for o in report.objects] == pytest.approx([r[1:] for r in rows], rel=0, abs=1e-12)


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


def test_label_boundaries_are_each_ids_mask_boundary():
    """All ids' boundaries from one pass over each frame's box, against the literal shifted-XOR boundary of
    `ids == k` one id and one frame at a time."""
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
            assert len(got) == n
            for k in range(1, n + 1):
                b = got[k - 1]
                expected = np.argwhere(np.stack([ref.seg2bmap(f == k) for f in ids]))  # (t, y, x), sorted
                assert (np.diff(b.frame) >= 0).all()
                assert (b.count == np.bincount(expected[:, 0], minlength=t)).all()
                pixels = np.stack([b.frame, b.points[:, 1], b.points[:, 2]], axis=1).astype(np.int64)
                assert np.array_equal(pixels[np.lexsort(pixels.T[::-1])], expected)
