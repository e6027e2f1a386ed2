"""STMAE single-video inference on a tiny synthetic video: files, ids, palette, late objects, memory groups."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from raytrain.eval.stmae_vos import MaskMemory, propagate_video
from raytrain.models.stmae import STMAE, load_checkpoint
from shards.palettes import DAVIS_PALETTE

torch.set_num_threads(2)
H, W, N = 64, 96, 12


def make_video(root: Path) -> tuple[list[Path], dict[int, Path]]:
    """JPEG frames with a square (id 2) moving right; a second square (id 5) given from frame 10 on."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    frames, annotations = [], {}
    for t in range(N):
        img = rng.integers(0, 80, (H, W, 3), dtype=np.uint8)
        ids = np.zeros((H, W), np.uint8)
        ids[16:40, 8 + 4 * t:32 + 4 * t] = 2
        if t >= 10:
            ids[44:60, 60:84] = 5
        img[ids == 2] = (220, 40, 40)
        img[ids == 5] = (40, 220, 40)
        frames.append(root / "JPEGImages" / f"{t:05d}.jpg")
        Image.fromarray(img).save(frames[-1], quality=95)
        if t in (0, 10):
            given = ids if t == 0 else np.where(ids == 5, ids, 0).astype(np.uint8)  # only the new object
            im = Image.fromarray(given)
            im.putpalette(DAVIS_PALETTE)
            annotations[t] = root / "Annotations" / f"{t:05d}.png"
            im.save(annotations[t])
    return frames, annotations


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "stmae.pth"
    torch.save(STMAE().state_dict(), path)
    return path


def test_propagate_synthetic_video(tmp_path, checkpoint):
    frames, annotations = make_video(tmp_path / "video")
    given = {t: np.asarray(Image.open(p)) for t, p in annotations.items()}
    model = load_checkpoint(checkpoint).eval()
    masks = propagate_video(model, frames, given, mem_every=2, top_k=5, size=32)  # processed at 32x48
    assert len(masks) == N
    assert all(m.shape == (H, W) and m.dtype == np.uint8 for m in masks)
    assert np.array_equal(masks[0], given[0])  # the given mask wins in its frame
    assert all(set(np.unique(m)) <= {0, 2} for m in masks[:10])  # id 5 unknown before frame 10
    assert (masks[10][given[10] == 5] == 5).all() and set(np.unique(masks[10])) <= {0, 2, 5}
    assert set(np.unique(masks[11])) <= {0, 2, 5}



def test_frames_before_the_first_mask_are_background(checkpoint):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    first = np.zeros((40, 56), np.uint8)
    first[8:24, 8:24] = 7
    masks = propagate_video(load_checkpoint(checkpoint).eval(), frames, {1: first}, size=32, top_k=0)  # 32x44, padded to 32x48
    iou = ((masks[1] == 7) & (first == 7)).sum() / ((masks[1] == 7) | (first == 7)).sum()
    assert not masks[0].any() and iou > 0.8  # given mask, resized to 32x44 and back
    assert masks[2].shape == (40, 56) and set(np.unique(masks[2])) <= {0, 7}


def test_memory_groups_read_only_their_frames():
    memory = MaskMemory(top_k=None)
    k1, k2 = torch.randn(1, 8, 2, 3), torch.randn(1, 8, 2, 3)
    m1 = torch.rand(1, 2, 3)
    m2 = torch.rand(2, 2, 3)  # object 2 joins at the second memory frame
    memory.add(k1, m1)
    memory.add(k2, m2)
    assert memory.starts == [0, 6] and memory.values.shape == (2, 12)
    q = torch.randn(1, 8, 2, 3)
    out = memory.read(q)
    keys = torch.cat([k1.flatten(2), k2.flatten(2)], 2)[0]
    sim_all = torch.einsum("cn,cp->np", keys, q.flatten(2)[0]).softmax(0)
    sim_new = torch.einsum("cn,cp->np", k2.flatten(2)[0], q.flatten(2)[0]).softmax(0)
    torch.testing.assert_close(out[0, 0].flatten(), torch.cat([m1[0].flatten(), m2[0].flatten()]) @ sim_all)
    torch.testing.assert_close(out[0, 1].flatten(), m2[1].flatten() @ sim_new)


def test_frames_without_a_given_mask_use_the_models_probabilities(tmp_path, checkpoint, monkeypatch):
    """Memory values and output masks of propagated frames come from `decode_coarse` as returned (already
    soft-aggregated, with background), not from a second aggregation."""
    frames, annotations = make_video(tmp_path / "video")
    first = np.asarray(Image.open(annotations[0]))
    model = load_checkpoint(checkpoint).eval()
    events: list[tuple[str, torch.Tensor]] = []
    decode, add = model.decode_coarse, MaskMemory.add

    def recording_decode(*args, **kwargs):
        out = decode(*args, **kwargs)
        events.append(("decode", out[2][0].clone()))
        return out

    def recording_add(self, key, masks, **kwargs):
        events.append(("add", masks.clone()))
        return add(self, key, masks, **kwargs)

    monkeypatch.setattr(model, "decode_coarse", recording_decode)
    monkeypatch.setattr(MaskMemory, "add", recording_add)
    # 64x96 processed at 32x48 (a multiple of 16: no padding); f16 is 2x3
    masks = propagate_video(model, frames, {0: first}, mem_every=2, top_k=5, size=32)
    decoded = [p for kind, p in events if kind == "decode"]
    assert len(decoded) == N - 1  # frames 1..N-1
    added = 0
    for i, (kind, p) in enumerate(events):
        if kind == "add" and i > 0:  # a memory frame after frame 0: the decode of that frame precedes it
            assert events[i - 1][0] == "decode"
            fg = events[i - 1][1][None, 1:]
            assert torch.equal(p, F.interpolate(fg, size=(2, 3), mode="bilinear", align_corners=False)[0])
            added += 1
    assert added == len(range(2, N - 1, 2))
    for t, prob in enumerate(decoded, start=1):
        assert prob.shape == (2, 32, 48)
        up = F.interpolate(prob[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        expected = np.array([0, 2], np.uint8)[up.argmax(0).numpy()]
        assert np.array_equal(masks[t], expected)
