"""Clip sampling rules and the deterministic per-rank plan (no Ray needed)."""
import numpy as np
import pyarrow as pa
import pytest

from raytrain.data import plan, sampling
from raytrain.data.plan import ClipSource, StreamConfig


@pytest.mark.parametrize("length", [20, 40, 100])
def test_smtc_frames_follow_upstream_offsets(length):
    rng = np.random.default_rng(0)
    centres = set()
    for _ in range(300):
        idx = sampling.smtc_frames(length, 4, 4, rng)
        assert np.diff(idx).tolist() == [4, 4, 4]
        centre = idx[2]
        assert 8 <= centre <= length - 9  # upstream: randint(gap*T//2, len - gap*T//2 - 1)
        centres.add(centre)
    assert min(centres) == 8 and max(centres) == length - 9  # the whole range is reachable


def test_smtc_gap_shrinks_for_short_videos():
    rng = np.random.default_rng(0)
    assert np.diff(sampling.smtc_frames(17, 4, 4, rng)).tolist() == [3, 3, 3]  # upstream: gap - 1
    assert np.diff(sampling.smtc_frames(6, 4, 4, rng)).tolist() == [1, 1, 1]
    assert sampling.smtc_frames(4, 4, 4, rng) is None


def test_smtc_gap_one_on_the_shortest_video_repeats_a_frame():
    """5 frames, 4-frame clips, gap 1: upstream lowers the gap to 0, so one frame is repeated."""
    rng = np.random.default_rng(0)
    clips = [sampling.smtc_frames(5, 4, 1, rng) for _ in range(100)]
    assert all(len(c) == 4 and len(set(c)) == 1 for c in clips)
    assert {c[0] for c in clips} == set(range(5))  # the centre is uniform over the whole video
    assert np.diff(sampling.smtc_frames(6, 4, 1, rng)).tolist() == [1, 1, 1]
    assert sampling.smtc_frames(4, 4, 1, rng) is None
    entry = plan.VideoEntry("v", tuple(f"{i:05d}" for i in range(5)), ((0, 1),) * 5, {}, 0)
    assert plan.usable(entry, _cfg(gap=1))


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 5, 8])
def test_smtc_usable_agrees_with_the_sampler(num_frames):
    """Every video `usable` admits gets a valid clip from `smtc_frames`, and no other video does."""
    rng = np.random.default_rng(0)
    for gap in range(1, 7):
        cfg = _cfg(num_frames=num_frames, gap=gap)
        for length in range(1, 40):
            entry = plan.VideoEntry("v", tuple(f"{i:05d}" for i in range(length)), ((0, 1),) * length, {}, 0)
            for _ in range(5):
                idx = sampling.smtc_frames(length, num_frames, gap, rng)
                assert (idx is not None) == plan.usable(entry, cfg), (num_frames, gap, length)
                if idx is not None:
                    assert len(idx) == num_frames and all(0 <= i < length for i in idx)
                    assert idx == sorted(idx) and len(set(np.diff(idx).tolist())) <= 1  # evenly spaced


def test_smtc_gap_below_one_is_refused():
    with pytest.raises(ValueError, match="--gap"):
        sampling.smtc_frames(20, 4, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="--gap"):
        _cfg(gap=0)


def test_stmae_frames_start_at_zero_within_max_skip():
    rng = np.random.default_rng(1)
    for max_jump in (1, 3, 5, 15):
        for _ in range(200):
            idx = sampling.stmae_frames(50, 8, max_jump, rng)
            assert idx[0] == 0 and len(set(idx)) == 8 and idx == sorted(idx)
            assert 0 not in idx[1:]
            # every frame is within max_jump of an earlier-chosen one: sorted gaps are bounded
            assert max(np.diff(idx)) <= max_jump
    assert sampling.stmae_frames(7, 8, 5, rng) is None
    assert sampling.stmae_frames(8, 8, 1, rng) == list(range(8))


def test_max_skip_schedule_and_stride():
    values, starts = [5, 10, 15, 10, 5], [0.0, 35 / 370, 105 / 370, 175 / 370, 245 / 370]
    assert sampling.max_skip_at(0, 370, values, starts) == 5
    assert sampling.max_skip_at(34, 370, values, starts) == 5
    assert sampling.max_skip_at(35, 370, values, starts) == 10
    assert sampling.max_skip_at(110, 370, values, starts) == 15
    assert sampling.max_skip_at(369, 370, values, starts) == 5
    assert sampling.frame_stride(["00000", "00005", "00010"]) == 5
    assert sampling.frame_stride(["00000", "00001"]) == 1


def _rows(num_shards=3, videos=4, frames=30, annotate_first=True):
    rows = []
    for s in range(num_shards):
        for v in range(videos):
            names = [f"{5 * i:05d}" for i in range(frames - v)]
            annotated = names if annotate_first or v else names[1:]
            members = sorted([f"v{s}{v}.{n}.jpg" for n in names] + [f"v{s}{v}.{n}.png" for n in annotated])
            rows.append({"shard": f"s-{s:06d}.tar", "video": f"v{s}{v}", "frames": names, "annotated": annotated,
                         "members": members, "sizes": [1000] * len(members),
                         "offsets": [1536 * (k + 1) for k in range(len(members))]})
    return rows


def _source(**kw):
    return ClipSource.from_index("/data/shards", pa.Table.from_pylist(_rows(**kw)))


def _cfg(**kw):
    base = dict(kind="smtc", seed=3, rank=0, world_size=1, batch_size=4, steps=50, clips_per_video=2,
                num_frames=4, size=64)
    return StreamConfig(**{**base, **kw})


def _stream(source, cfg, start_step=0):
    start = start_step * cfg.batch_size
    items = plan.plan_items(source, cfg, start, (cfg.steps - start_step) * cfg.batch_size)
    return [c for item in items for c in plan.item_clips(source, cfg, item)]


def test_plan_is_deterministic_and_resumes_exactly():
    src, cfg = _source(), _cfg()
    full = _stream(src, cfg)
    assert [c.position for c in full] == list(range(len(full)))
    assert full == _stream(src, cfg)
    resumed = _stream(src, cfg, start_step=7)
    assert resumed[0].position == 7 * cfg.batch_size
    assert resumed == full[7 * cfg.batch_size: 7 * cfg.batch_size + len(resumed)]
    assert len(full) >= cfg.steps * cfg.batch_size
    assert full[-1].position < (cfg.steps + 2 * 4) * cfg.batch_size  # no more than one item beyond
    assert all(c.step == c.position // cfg.batch_size for c in full)
    assert _stream(src, _cfg(seed=4))[:20] != full[:20]


def test_ranks_read_disjoint_shard_reads():
    src = _source(num_shards=4)
    seqs = []
    for r in range(2):
        it = plan.rank_items(4, _cfg(rank=r, world_size=2))
        seqs.append([next(it) for _ in range(6)])
    assert not set(seqs[0]) & set(seqs[1])
    assert {s for _, s in seqs[0][:2] + seqs[1][:2]} == {0, 1, 2, 3}  # round 0 split between the ranks
    for r in range(2):
        assert len(_stream(src, _cfg(rank=r, world_size=2))) >= 50 * 4


def test_stmae_plan_uses_max_skip_schedule_and_needs_annotated_first_frame():
    src = _source(annotate_first=False)
    cfg = _cfg(kind="stmae", num_frames=6, steps=40, max_skip=(5, 25), max_skip_at=(0.0, 0.5))
    clips = _stream(src, cfg)
    assert all(c.frame_idx[0] == 0 for c in clips)
    assert not any(c.video.endswith("0") for c in clips)  # video 0 of each shard lacks frame-0 masks
    # YouTube-VOS naming (stride 5): max-skip 5 -> jump 1 in the first half, 25 -> jump 5 after
    early = [c for c in clips if c.step < 20]
    late = [c for c in clips if c.step >= 20 and c.step < 40]
    assert max(max(np.diff(c.frame_idx)) for c in early) == 1
    assert max(max(np.diff(c.frame_idx)) for c in late) > 1
    assert all(c.png[0] is not None for c in clips)
    # each frame's JPEG and PNG are found at the index's offsets for that frame's members
    rows = {r["video"]: r for r in _rows(annotate_first=False)}
    for c in clips[:20]:
        r = rows[c.video]
        span = dict(zip(r["members"], zip(r["offsets"], r["sizes"])))
        names = [r["frames"][i] for i in c.frame_idx]
        assert list(c.jpg) == [span[f"{c.video}.{n}.jpg"] for n in names]
        assert list(c.png) == [span.get(f"{c.video}.{n}.png") for n in names]
