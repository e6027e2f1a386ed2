"""STMAE inference with a bounded memory (`--max_mem_frames`): what is kept, what objects read, and that a bound
the video never reaches changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raytrain.config import EvalSTMAEConfig, parse
from raytrain.eval import vos
from raytrain.eval.stmae_vos import MaskMemory, propagate_video
from raytrain.models.stmae import STMAE

C, H, W = 8, 2, 3  # key channels and a 2x3 memory frame


def _frame(seed: int, objects: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, C, H, W, generator=g), torch.rand(objects, H, W, generator=g)


def test_memory_keeps_given_frames_and_the_newest_k():
    memory = MaskMemory(top_k=None, max_frames=1)
    frames = {0: _frame(0, 1), 1: _frame(1, 1), 2: _frame(2, 2), 3: _frame(3, 2), 4: _frame(4, 2)}
    given = {0, 2}  # object 2 joins at frame 2, a frame with a given mask
    for t, (key, masks) in frames.items():
        memory.add(key, masks, permanent=t in given)
    kept = [0, 2, 4]  # frames 1 and 3 were dropped when a newer unpinned frame arrived
    assert [size for size, _ in memory.frames] == [H * W] * 3
    torch.testing.assert_close(memory.keys, torch.cat([frames[t][0].flatten(2) for t in kept], 2))
    assert memory.starts == [0, H * W]  # object 2 now starts at the second kept frame
    values = torch.cat([torch.nn.functional.pad(frames[t][1].flatten(1), (0, 0, 0, 2 - len(frames[t][1])))
                        for t in kept], 1)
    torch.testing.assert_close(memory.values, values)

    q = torch.randn(1, C, H, W)
    out = memory.read(q)
    keys = memory.keys[0]
    sim_all = torch.einsum("cn,cp->np", keys, q.flatten(2)[0]).softmax(0)
    sim_new = torch.einsum("cn,cp->np", keys[:, H * W:], q.flatten(2)[0]).softmax(0)
    torch.testing.assert_close(out[0, 0].flatten(), values[0] @ sim_all)
    torch.testing.assert_close(out[0, 1].flatten(), values[1, H * W:] @ sim_new)


def test_unbounded_by_default():
    memory = MaskMemory(top_k=None)
    for t in range(6):
        memory.add(*_frame(t, 1))
    assert memory.keys.shape[2] == 6 * H * W


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 80, (48, 64, 3), dtype=np.uint8) for _ in range(9)]
    first = np.zeros((48, 64), np.uint8)
    first[8:30, 10:34] = 3
    for t, f in enumerate(frames):
        f[8:30, 10 + 2 * t:34 + 2 * t] = (220, 40, 40)
    torch.manual_seed(0)
    return STMAE().eval(), frames, first


def test_bounded_propagation_holds_its_bound_and_a_loose_bound_changes_nothing(video, monkeypatch, one_thread):
    model, frames, first = video
    kw = dict(mem_every=1, top_k=5, size=32)  # 48x64 -> 32x42, padded to 32x48: 2x3 keys
    unbounded = propagate_video(model, frames, {0: first}, **kw)
    loose = propagate_video(model, frames, {0: first}, max_mem_frames=len(frames), **kw)
    assert all(np.array_equal(a, b) for a, b in zip(unbounded, loose))

    sizes = []
    read = MaskMemory.read

    def recording_read(self, query_key):
        sizes.append(self.keys.shape[2])
        return read(self, query_key)

    monkeypatch.setattr(MaskMemory, "read", recording_read)
    bounded = propagate_video(model, frames, {0: first}, max_mem_frames=2, **kw)
    assert sizes == [6, 12, 18, 18, 18, 18, 18, 18]  # frame 0 plus at most the 2 newest frames
    assert all(m.shape == first.shape and set(np.unique(m)) <= {0, 3} for m in bounded)
    assert all(np.array_equal(a, b) for a, b in zip(unbounded[:4], bounded[:4]))  # same until the first drop


def test_the_flag_reaches_propagation(synth_davis, monkeypatch):
    assert parse(EvalSTMAEConfig, []).max_mem_frames == 0
    cfg = parse(EvalSTMAEConfig, ["--max_mem_frames", "7"])
    seen = {}

    def fake(model, frames, given, **kwargs):
        seen.update(kwargs)
        return [np.zeros((v.height, v.width), np.uint8) for _ in frames]

    item = vos.list_vos_videos("D17", str(synth_davis), "val")[0]
    v = item.video
    monkeypatch.setattr(vos, "propagate_video", fake)
    vos.segment_video(None, item, torch.device("cpu"), vos.VOSSettings(max_mem_frames=cfg.max_mem_frames))
    assert seen["max_mem_frames"] == 7
