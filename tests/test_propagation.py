"""Label propagation: presets, perfect-feature recovery, both implementations against the upstream algorithm
written out here, feature extraction rules."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from raytrain.eval import propagation as prop
from raytrain.eval.propagation import DINO, SMTC_A, SMTC_B


def _moving_blocks(num_frames: int, height: int, width: int, block: int) -> np.ndarray:
    """Id maps [T, H, W] of objects 3 and 7 made of whole grid cells, moving one cell every 2 frames."""
    cells = np.zeros((num_frames, height // block, width // block), np.uint8)
    for t in range(num_frames):
        s = t // 2
        cells[t, 1:3, 1 + s:4 + s] = 3
        cells[t, 3:5, 6 - s:9 - s] = 7
    return cells.repeat(block, 1).repeat(block, 2)


def _perfect_features(labels: np.ndarray, grid: tuple[int, int], channels: int = 48) -> torch.Tensor:
    """One-hot of the ids on the grid spread over random channel directions, plus small noise."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.as_tensor(prop.pil_nearest(torch.as_tensor(labels), grid).numpy().astype(np.int64))
    codes = F.normalize(torch.randn(256, channels, generator=gen), dim=1)
    feats = codes[ids].permute(0, 3, 1, 2) + 0.02 * torch.randn(len(ids), channels, *grid, generator=gen)
    return F.normalize(feats, dim=1)


@pytest.mark.parametrize("preset", [SMTC_A, SMTC_B, replace(DINO, short_side=96)], ids=lambda p: p.name)
def test_perfect_features_reproduce_ground_truth(preset):
    height, width = 96, 192  # multiples of 16 and 64: every preset's grid cells are whole blocks
    labels = _moving_blocks(8, height, width, preset.stride)
    grid = preset.grid(height, width)
    feats = _perfect_features(labels, grid)
    # On the grid the recovery is exact (at full size bilinear upsampling rounds the objects' corners).
    out = prop.propagate(feats, labels[0], preset, out_size=grid)
    cells = labels[:, preset.stride // 2::preset.stride, preset.stride // 2::preset.stride]
    assert len(out) == len(labels)
    for t in range(1, len(labels)):
        assert (out[t] == cells[t]).all(), f"frame {t}"
    full = prop.propagate(feats, labels[0], preset)
    assert full[0].shape == labels[0].shape and (full[0] == labels[0]).all()
    assert np.mean([(f == g).mean() for f, g in zip(full[1:], labels[1:])]) > 0.97


# The upstream protocols (shared/reference/eval.md §3.1-3.3), written out here rather than read from the presets.
UPSTREAM = {
    "smtc-a": dict(stride=16, topk=7, temperature=0.2, radius=7, dino=False),  # CRW code, SMTC's setting A
    "smtc-b": dict(stride=8, topk=28, temperature=0.2, radius=35, dino=False),
    "dino": dict(stride=16, topk=5, temperature=0.1, radius=12, dino=True),
}


def _bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[L, h, w] -> [L, *size]: bilinear with half-pixel centres, no antialiasing (cv2.resize INTER_LINEAR,
    F.interpolate(align_corners=False))."""
    def taps(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, wy = taps(x.shape[1], size[0])
    x0, x1, wx = taps(x.shape[2], size[1])
    rows = x[:, y0] * (1 - wy)[None, :, None] + x[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def _pil_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize with PIL itself ('L' for ids, 'F' for floats)."""
    mode = "L" if x.dtype == np.uint8 else "F"
    return np.array(Image.fromarray(x.astype(np.uint8 if mode == "L" else np.float32), mode).resize(
        size[::-1], Image.NEAREST))


def _top2_margin(x: np.ndarray) -> np.ndarray:
    top = np.sort(x, axis=0)
    return top[-1] - top[-2]


def upstream_propagation(feats: np.ndarray, first: np.ndarray, context: int, stride: int, topk: int,
                         temperature: float, radius: float, dino: bool):
    """videowalk's test_utils (CRW / SMTC) or DINO's eval_video_segmentation, one target frame at a time in
    float64, with the deviations raytrain documents (void is background, ids kept, DINO keeps exactly k keys
    and leaves a constant channel as it is). feats [T, C, h, w]; returns per target frame the soft labels
    [L, h*w], the id map at the first frame's size, and the argmax margin of that map's scores."""
    t_len, _, h, w = feats.shape
    first = np.where(first == 255, 0, first)
    ids = np.unique(first)
    yy, xx = np.divmod(np.arange(h * w), w)
    dy, dx = yy[:, None] - yy[None, :], xx[:, None] - xx[None, :]  # [keys, queries]
    window = (np.abs(dy) <= radius) & (np.abs(dx) <= radius) if dino else np.sqrt(dy * dy + dx * dx) < radius
    if dino:  # first labels: nearest resize (PIL), one-hot
        small = _pil_resize(np.searchsorted(ids, first).astype(np.uint8), (h, w))
        labels = [np.stack([small == i for i in range(len(ids))]).reshape(len(ids), -1).astype(np.float64)]
    else:  # one-hot, bilinearly resized
        onehot = np.stack([first == i for i in ids]).astype(np.float64)
        labels = [_bilinear(onehot, (h, w)).reshape(len(ids), -1)]
    keys = feats.reshape(t_len, -1, h * w).astype(np.float64)
    padded = [0] * context + list(range(t_len))  # CRW: the video preceded by `context` copies of frame 0
    queue: list[int] = []  # DINO: the last `context` targets
    soft, maps, margins = [], [], []
    for target in range(1, t_len):
        if dino:
            ctx = [0] + queue
        else:
            at = context + target
            ctx = [0] + padded[at - context:at]
        scores = []
        for j, c in enumerate(ctx):
            aff = keys[c].T @ keys[target]  # [keys, queries]
            if dino:
                scores.append(np.exp(aff / temperature) * window)  # the window on every frame
            else:
                scores.append((aff + np.where(window | (j == 0), 0.0, -1e10)) / temperature)  # frame 0 free
        scores = np.concatenate(scores)  # [n_ctx * hw, queries]
        ctx_labels = np.concatenate([labels[c] for c in ctx], axis=1)  # [L, n_ctx * hw]
        best = np.argsort(-scores, axis=0, kind="stable")[:topk]  # [k, queries]
        top = np.take_along_axis(scores, best, axis=0)
        weights = top / top.sum(0) if dino else np.exp(top - top.max(0)) / np.exp(top - top.max(0)).sum(0)
        pred = (ctx_labels[:, best] * weights[None]).sum(1)  # [L, queries]
        labels.append(pred)
        soft.append(pred)
        grid = pred.reshape(len(ids), h, w)
        if dino:
            up = _bilinear(grid, (h * stride, w * stride))
            low, high = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
            scale = (high > 0) & (high > low)
            up = np.where(scale, (up - low) / np.where(scale, high - low, 1), up)
            maps.append(ids[_pil_resize(up.argmax(0).astype(np.uint8), first.shape)])
            margins.append(_pil_resize(_top2_margin(up), first.shape))
        else:
            up = _bilinear(grid, first.shape)
            maps.append(ids[up.argmax(0)])
            margins.append(_top2_margin(up))
        queue = (queue + [target])[-context:]
    return soft, maps, margins


@pytest.mark.parametrize("preset,grid", [(replace(SMTC_A, context=4), (5, 9)), (replace(SMTC_B, context=3), (10, 18)),
                                         (replace(DINO, short_side=80, context=3), (5, 8))],
                         ids=["smtc-a", "smtc-b", "dino"])
def test_propagation_follows_the_upstream_algorithm(preset, grid, monkeypatch):
    """`propagate` (batched, distinct context frames scored once) and `propagate_reference` (videowalk's
    schedule) against `upstream_propagation` above, which shares no code with raytrain: the soft labels of every
    target frame and the id maps (where the reference's best two scores are not within 1e-4)."""
    height, width = 80, 150
    labels = np.zeros((height, width), np.uint8)
    labels[10:50, 20:80] = 2
    labels[40:70, 90:140] = 5
    labels[:3, :3] = 255  # void: background for propagation
    assert preset.grid(height, width) == grid  # 80 x 150: floor(H / s) x floor(W / s); DINO 80 x 128 / 16
    feats = F.normalize(torch.randn(7, 16, *grid, generator=torch.Generator().manual_seed(1)), dim=1)
    soft = []  # the soft label maps each implementation decodes
    decode = prop._decode
    monkeypatch.setattr(prop, "_decode", lambda s, *args: soft.append(s.clone()) or decode(s, *args))
    fast = prop.propagate(feats, labels, preset, max_elements=5000)  # small chunks exercise the chunking
    videowalk = prop.propagate_reference(feats, labels, preset)
    ref_soft, ref_maps, margins = upstream_propagation(feats.numpy(), labels, preset.context,
                                                       **UPSTREAM[preset.name])
    assert len(fast) == len(videowalk) == 7 and (fast[0] == labels).all()
    assert len(soft) == 2 * len(ref_soft)
    for ours in (soft[:6], soft[6:]):
        for t, (a, b) in enumerate(zip(ours, ref_soft)):
            np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=1e-5, err_msg=f"frame {t + 1}")
    for ours in (fast, videowalk):
        for t, (a, b, margin) in enumerate(zip(ours[1:], ref_maps, margins)):
            assert a.dtype == np.uint8 and a.shape == labels.shape
            sure = margin > 1e-4
            assert sure.mean() > 0.9 and (a[sure] == b[sure]).all(), f"frame {t + 1}"
    assert set(np.unique(np.concatenate([o.ravel() for o in fast[1:]]))) == {0, 2, 5}


def test_context_rules():
    assert prop.context_frames(3, replace(SMTC_A, context=5)) == [0, 0, 0, 0, 1, 2]
    assert prop.context_frames(30, SMTC_A) == [0] + list(range(10, 30))
    assert prop.context_frames(1, DINO) == [0]
    assert prop.context_frames(10, DINO) == [0, 3, 4, 5, 6, 7, 8, 9]


def test_windows():
    grid = (40, 40)
    centre = 20 * 40 + 20
    euclid = prop.neighbourhood(grid, SMTC_A)[:, centre]
    assert euclid.sum() == sum(dy * dy + dx * dx < 49 for dy in range(-7, 8) for dx in range(-7, 8)) == 145
    assert prop.neighbourhood(grid, DINO)[:, centre].sum() == 25 * 25
    corner = prop.neighbourhood(grid, DINO)[:, 0]
    assert corner.sum() == 13 * 13


def test_pil_nearest_matches_pillow():
    rng = np.random.default_rng(0)
    for h, w, oh, ow in [(480, 854, 30, 52), (480, 832, 480, 854), (128, 192, 120, 214), (480, 896, 480, 910)]:
        ids = rng.integers(0, 200, (h, w)).astype(np.uint8)
        expected = np.array(Image.fromarray(ids).resize((ow, oh), Image.NEAREST))
        assert (prop.pil_nearest(torch.as_tensor(ids), (oh, ow)).numpy() == expected).all()


def test_input_and_grid_rules():
    assert SMTC_A.input_size(480, 854) == (480, 848) and SMTC_A.grid(480, 854) == (30, 53)
    assert SMTC_B.input_size(480, 854) == (480, 848) and SMTC_B.grid(480, 854) == (60, 106)
    assert DINO.input_size(480, 854) == (480, 832) and DINO.grid(480, 854) == (30, 52)
    assert DINO.input_size(480, 910) == (480, 896)
    assert DINO.input_size(854, 480) == (832, 480)


def _patch_encoder(patch: int, channels: int = 8):
    calls = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.clone())
        pooled = F.avg_pool2d(x, patch)  # [B, 3, h, w], floors like a patch embedding
        return pooled.repeat(1, channels // 3 + 1, 1, 1)[:, :channels].permute(0, 2, 3, 1) + 0.1

    return encode, calls


def test_vit_features_smtc_rules():
    frames = torch.full((5, 3, 100, 170), 128, dtype=torch.uint8)
    frames[:, 1] = 30
    encode, calls = _patch_encoder(16)
    feats = prop.vit_features(encode, frames, SMTC_A, batch_size=2)
    assert [tuple(c.shape) for c in calls] == [(2, 3, 96, 160), (2, 3, 96, 160), (1, 3, 96, 160)]
    assert calls[0][0, 0, 0, 0].item() == pytest.approx((128 / 255 - 0.485) / 0.229, abs=1e-5)
    assert calls[0][0, 1, 0, 0].item() == pytest.approx((30 / 255 - 0.456) / 0.224, abs=1e-5)
    assert feats.shape == (5, 8, 6, 10)
    assert torch.allclose(feats.norm(dim=1), torch.ones(5, 6, 10))
    encode, calls = _patch_encoder(16)
    feats = prop.vit_features(encode, frames, SMTC_B)  # 96x168 input, 6x10 tokens upsampled to 12x21
    assert tuple(calls[0].shape[-2:]) == (96, 168) and feats.shape == (5, 8, 12, 21)


def test_vit_features_dino_rules():
    frames = torch.full((2, 3, 100, 170), 200, dtype=torch.uint8)
    encode, calls = _patch_encoder(16)
    feats = prop.vit_features(encode, frames, DINO)
    assert tuple(calls[0].shape[-2:]) == (480, 768) and feats.shape == (2, 8, 30, 48)
    assert calls[0][0, 0, 5, 5].item() == pytest.approx((200 / 255 - 0.485) / 0.228, abs=1e-5)
    encode, _ = _patch_encoder(8)
    with pytest.raises(ValueError, match="token grid"):
        prop.vit_features(encode, frames, DINO)
    with pytest.raises(ValueError, match="uint8"):
        prop.vit_features(encode, frames.float(), DINO)


def test_propagate_checks_the_grid():
    labels = np.zeros((96, 160), np.uint8)
    with pytest.raises(ValueError, match=r"feature grid \(5, 10\) does not match the smtc-a grid \(6, 10\)"):
        prop.propagate(torch.zeros(3, 4, 5, 10), labels, SMTC_A)
