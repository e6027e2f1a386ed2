"""SMTC object discovery: windows, the similarity filter, candidates -> <= 20 consistent proposals (official),
the smtc-paper protocol, and one video end to end with a small random SMTC (one torch thread: the inputs are
tiny). Scores are checked against tests/davis_reference.py, which shares no code with raytrain."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

import davis_reference as ref
from raytrain.eval import davis, discovery
from raytrain.eval.discovery import OFFICIAL, PAPER, Candidates, DiscoverySettings
from raytrain.models.smtc import SMTC
from shards.layout import list_videos

NUM_CANDIDATES = 64  # 16 semantic x 4 instance slots


pytestmark = pytest.mark.usefixtures("one_thread")


def _gt(root) -> np.ndarray:
    """Unsupervised annotations [T, H, W] of the first synthetic sequence (with a void band)."""
    video = list_videos(str(root), "davis", "all", unsupervised=True)[0]
    return np.stack([np.array(Image.open(video.annotations[f])) for f in video.frames])


def _candidates(gt: np.ndarray, seed: int = 0) -> Candidates:
    """Candidates that partition every frame: each object is one candidate whose index changes from frame to
    frame (as random instance slots do), the background is cut into 8x8 tiles owned by flickering candidates,
    so there are far more than 20 short tracks."""
    rng = np.random.default_rng(seed)
    t, h, w = gt.shape
    n = int(gt[0][gt[0] != 255].max())
    owner = np.zeros((t, h, w), np.int64)
    for f in range(t):
        slots = rng.permutation(NUM_CANDIDATES)
        tiles = slots[n:][rng.integers(0, NUM_CANDIDATES - n, size=(h // 8 + 1, w // 8 + 1))]
        owner[f] = tiles.repeat(8, 0).repeat(8, 1)[:h, :w]
        for k in range(1, n + 1):
            owner[f][gt[f] == k] = slots[k - 1]
    soft = torch.nn.functional.one_hot(torch.as_tensor(owner), NUM_CANDIDATES).permute(0, 3, 1, 2).float()
    soft = 0.9 * soft + 0.1 / NUM_CANDIDATES  # soft, still summing to one
    return Candidates(soft, torch.ones(t, NUM_CANDIDATES, dtype=torch.bool))


def test_window_indices_pad_with_the_last_frames():
    assert discovery.window_indices(10, 4) == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 4), ([8, 9, 8, 9], 2)]
    assert discovery.window_indices(9, 4)[-1] == ([8, 6, 7, 8], 1)  # upstream: frames[-(4 - 1):]
    assert discovery.window_indices(8, 4) == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 4)]


def test_official_mode_gives_at_most_20_consistent_proposals(synth_davis):
    gt = _gt(synth_davis)
    c = _candidates(gt)
    maps = np.stack(discovery.official_proposals(c, gt.shape[1:]))
    assert maps.dtype == np.uint8 and maps.shape == gt.shape
    assert 0 < maps.max() <= 20 and len(np.unique(maps)) <= 21
    n = int(gt[0][gt[0] != 255].max())
    for k in range(1, n + 1):  # one id per object over the whole video, although its candidate index changes
        ids = np.unique(maps[gt == k])
        assert len(ids) == 1 and ids[0] > 0, (k, ids)
    j, f = ref.unsup(gt, maps)
    assert j.shape == (n, len(gt)) and (j == 1).all() and (f == 1).all()


def test_official_keeps_the_most_persistent_tracks():
    win = np.full((6, 4, 4), -1)
    win[:, :2, :2] = 5  # present in every frame
    win[:3, 2:, 2:] = 7  # three frames
    win[0, 0, 3] = 9  # one frame
    ids = discovery.link_tracks(win, 10, max_proposals=2)
    assert (ids[:, 5] == 1).all() and (ids[:3, 7] == 2).all() and ids[0, 9] == 0
    assert (ids[3:, 7] == 0).all()


def test_paper_mode_matches_every_frame_on_its_own(synth_davis):
    gt = _gt(synth_davis)
    c = _candidates(gt)
    masks = discovery.paper_masks(c, gt.shape[1:])
    assert all(m.dtype == bool and m.shape == (NUM_CANDIDATES, *gt.shape[1:]) for m in masks)
    scores = discovery.score_paper(gt, masks)
    assert np.allclose(scores.j, 1) and np.allclose(scores.f, 1)

    # Swap the objects' ids half-way: the official protocol (one matching per sequence) is penalised, the
    # per-frame matching of the paper protocol is not.
    swapped = np.where(gt == 255, 0, gt)
    half = len(gt) // 2
    a, b = swapped[half:] == 1, swapped[half:] == 2
    swapped[half:][a], swapped[half:][b] = 2, 1
    official = davis.combine([davis.score_unsup(gt, swapped)])
    per_frame = [np.stack([swapped[t] == k for k in range(1, 4)]) for t in range(len(gt))]
    paper = davis.combine([discovery.score_paper(gt, per_frame)])
    assert paper.jf_mean == pytest.approx(1.0) and official.jf_mean < 0.9


def test_paper_mode_thresholds_min_max_normalised_candidates():
    soft = torch.zeros(1, 3, 2, 2)
    soft[0, 0] = torch.tensor([[0.0, 0.25], [0.5, 1.0]])  # normalised: 0, .25, .5, 1 -> > 0.3: two pixels
    soft[0, 1] = 0.2  # constant: 0/0 -> empty, as upstream
    soft[0, 2] = torch.tensor([[0.1, 0.1], [0.1, 0.4]])
    valid = torch.tensor([[True, True, False]])
    (m,) = discovery.paper_masks(Candidates(soft, valid), (4, 4))  # nearest upsampling x2
    assert m.shape == (2, 4, 4)
    assert m[0].tolist() == [[False] * 4, [False] * 4, [True] * 4, [True] * 4]
    assert not m[1].any()


def test_paper_scores_pad_with_empty_proposals():
    gt = np.zeros((2, 16, 16), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[0, 10:14, 10:14] = 2  # object 2 leaves after frame 0
    masks = [np.stack([gt[0] == 1, gt[0] == 2]), np.stack([gt[1] == 1])]
    s = discovery.score_paper(gt, masks)
    assert s.j.shape == (2, 2)
    assert np.allclose(s.j, 1) and np.allclose(s.f, 1)  # absent object matched with an empty proposal
    with pytest.raises(ValueError, match="more than the 1 allowed"):
        discovery.score_paper(gt, masks, max_proposals=1)


@pytest.fixture(scope="module")
def tiny_smtc():
    torch.manual_seed(0)
    return SMTC(num_slots=4, num_instances=2, iters=3, resolution=64, drop_path=0.0).eval()


def _video(root, frames: int = 4):
    video = list_videos(str(root), "davis", "all", unsupervised=True)[0]
    return dataclasses.replace(video, frames=video.frames[:frames], jpegs=video.jpegs[:frames])


def _decode(result, video) -> np.ndarray:
    maps = []
    for png in result.masks.values():
        with Image.open(io.BytesIO(png)) as im:
            assert im.mode == "P" and im.size == (video.width, video.height)
            maps.append(np.array(im))
    return np.stack(maps)


def test_candidates_keep_similarity_of_at_least_one_half(tiny_smtc, monkeypatch):
    """Upstream keeps a candidate when cos(semantic slot, instance slot) >= 0.5: with the model's similarities
    set to 0.2, 0.4999, 0.5, 0.9, ... (the random model's are all below 0.5), exactly the last two of every four
    are kept, in every frame of every window, the padded last window included."""
    discover = tiny_smtc.discover
    pattern = torch.tensor([0.2, 0.4999, 0.5, 0.9])

    def set_similarity(frames, iters=None):
        out = discover(frames, iters)
        sim = pattern.repeat(out.similarity.numel() // 4)
        return out._replace(similarity=sim.view_as(out.similarity))

    monkeypatch.setattr(tiny_smtc, "discover", set_similarity)
    frames = torch.randint(0, 256, (6, 3, 40, 60), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    c = discovery.candidates(tiny_smtc, frames, size=(32, 48), window=4, iters=2, batch=1)
    assert c.valid.tolist() == [[False, False, True, True] * 2] * 6  # 4 semantic x 2 instance slots per frame
    assert c.soft.shape == (6, 8, 2, 3)


def test_discover_video_official(synth_davis, tiny_smtc, monkeypatch):
    # A random SMTC keeps no candidate at cos >= 0.5; accept them all so the proposals are not empty.
    monkeypatch.setattr(discovery, "SIMILARITY_THRESHOLD", -1.0)
    video = _video(synth_davis)
    settings = DiscoverySettings(mode=OFFICIAL, size=(64, 112), seed=3)
    result = discovery.discover_video(tiny_smtc, video, torch.device("cpu"), settings)
    assert list(result.masks) == video.frames and not result.extra
    maps = _decode(result, video)
    assert 0 < maps.max() <= 20
    j, f = ref.unsup(_gt(synth_davis)[:4], maps)  # the official protocol on the PNGs it wrote
    assert j.shape == result.scores.j.shape and 0 < j.mean() < 1
    np.testing.assert_allclose(result.scores.j, j, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.scores.f, f, rtol=0, atol=1e-12)
    again = discovery.discover_video(tiny_smtc, video, torch.device("cpu"), settings)
    assert again.masks == result.masks  # seeded instance slots: reproducible


def test_discover_video_paper(synth_davis, tiny_smtc, monkeypatch):
    monkeypatch.setattr(discovery, "SIMILARITY_THRESHOLD", -1.0)
    video = _video(synth_davis, frames=5)  # two windows, the second one padded
    settings = DiscoverySettings(mode=PAPER, size=(64, 112), seed=3)
    masks = []  # the proposals the paper protocol scores
    paper_masks = discovery.paper_masks
    monkeypatch.setattr(discovery, "paper_masks", lambda *a: masks.extend(paper_masks(*a)) or masks)
    result = discovery.discover_video(tiny_smtc, video, torch.device("cpu"), settings)
    assert _decode(result, video).max() <= 4 * 2  # per-frame previews: candidate index + 1
    gt = _gt(synth_davis)[:5]
    assert len(masks) == 5 and all(m.shape == (8, *gt.shape[1:]) for m in masks)  # all 8 kept (threshold -1)
    j, f = ref.paper(gt, masks)  # per-frame Hungarian on J + F, written independently
    assert result.scores.j.shape == result.scores.f.shape == j.shape == (ref.num_objects(gt[0]), 5)
    assert 0 < j.mean() < 1
    np.testing.assert_allclose(result.scores.j, j, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.scores.f, f, rtol=0, atol=1e-12)
    npz = np.load(io.BytesIO(result.extra[f"candidates/{video.id}.npz"]))
    assert npz["valid"].shape == (5, 8) and npz["valid"].all() and npz["soft"].shape == (5 * 8, 4, 7)
