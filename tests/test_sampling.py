"""Clip sampling rules and the deterministic per-rank plan (no Ray needed)."""
import numpy as np
import pyarrow as pa
import pytest

from raytrain.data import plan, sampling, sources
from raytrain.data.plan import ClipSource, Plan, StreamConfig
from shards.errors import UsageError


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


def _rows(num_shards=3, videos=4, frames=30, annotate_first=True, prefix="v", step=5):
    rows = []
    for s in range(num_shards):
        for v in range(videos):
            names = [f"{step * i:05d}" for i in range(frames - v)]
            annotated = names if annotate_first or v else names[1:]
            video = f"{prefix}{s}{v}"
            members = sorted([f"{video}.{n}.jpg" for n in names] + [f"{video}.{n}.png" for n in annotated])
            rows.append({"shard": f"s-{s:06d}.tar", "video": video, "frames": names, "annotated": annotated,
                         "members": members, "sizes": [1000] * len(members),
                         "offsets": [1536 * (k + 1) for k in range(len(members))]})
    return rows


def _source(root="/data/shards", weight=1, layout=None, split=None, **kw):
    return ClipSource.from_index(root, pa.Table.from_pylist(_rows(**kw)), weight, layout, split)


def _cfg(**kw):
    base = dict(sampler="gap", seed=3, rank=0, world_size=1, batch_size=4, steps=50, clips_per_video=2,
                num_frames=4, size=64, shard_window=2)
    return StreamConfig(**{**base, **kw})


def _stream(source, cfg, start_step=0):
    return Plan(source, cfg).rank_clips(start_step, cfg.steps - start_step)


def test_plan_is_deterministic_and_resumes_exactly():
    src, cfg = _source(), _cfg()
    full = _stream(src, cfg)
    assert [c.position for c in full] == list(range(cfg.steps * cfg.batch_size))
    assert full == _stream(src, cfg)
    resumed = _stream(src, cfg, start_step=7)
    assert resumed[0].position == 7 * cfg.batch_size
    assert resumed == full[7 * cfg.batch_size:]
    assert all(c.step == c.position // cfg.batch_size for c in full)
    assert _stream(src, _cfg(seed=4))[:20] != full[:20]


def test_a_round_visits_every_video_clips_per_video_times():
    src, cfg = _source(num_shards=5), _cfg(clips_per_video=2, shard_window=3)
    plan_ = Plan(src, cfg)
    assert plan_.round_length == 5 * 4 * 2
    for rnd in range(3):
        clips = [plan_.clip(p) for p in range(rnd * plan_.round_length, (rnd + 1) * plan_.round_length)]
        videos = [c.video for c in clips]
        assert sorted(set(videos)) == sorted(r["video"] for r in _rows(num_shards=5))
        assert all(videos.count(v) == 2 for v in videos)


def test_global_stream_is_the_same_at_every_world_size():
    """Planned only: the clips of each global batch, in order, at 1, 2 and 4 workers (global batch 8)."""
    src = _source(num_shards=6)
    steps = 20
    one = Plan(src, _cfg(batch_size=8, steps=steps)).rank_clips(0, steps)
    for world in (2, 4):
        plans = [Plan(src, _cfg(rank=r, world_size=world, batch_size=8 // world, steps=steps))
                 for r in range(world)]
        per_rank = [p.rank_clips(0, steps) for p in plans]
        b = 8 // world
        joined = [c for s in range(steps) for clips in per_rank for c in clips[s * b:(s + 1) * b]]
        assert joined == one
        assert plans[1].global_batch(5) == one[40:48]


def test_batches_mix_videos_and_shards_as_reported():
    """`batch_mixing` counts what `rank_clips` plans; a window of shard reads and one clip per video mix
    batches far more than one shard at a time with 4 clips per video (the earlier plan)."""
    src = _source(num_shards=8, videos=6)
    mixed = Plan(src, _cfg(batch_size=6, world_size=2, clips_per_video=1, shard_window=4))
    stats = plan.batch_mixing(mixed, 30)
    counted = [len({c.video_ordinal for c in mixed.rank_clips(s, 1, r)}) for r in (0, 1) for s in range(30)]
    assert stats["videos"] == np.mean(counted) and stats["batch"] == 6
    single = plan.batch_mixing(Plan(src, _cfg(batch_size=6, world_size=2, clips_per_video=4, shard_window=1)), 30)
    assert stats["videos"] > 5.5 > single["videos"]
    assert stats["shards"] > 3 > 1.5 > single["shards"]


def test_mixture_proportions_over_a_round_match_the_weights():
    davis = _source("/data/davis", weight=5, layout="davis", prefix="d", num_shards=2, videos=3)
    yt = _source("/data/yt", weight=1, layout="ytvos", prefix="y", num_shards=4, videos=4)
    src = ClipSource.mix([davis, yt])
    assert src.roots == ("/data/davis", "/data/yt") and src.url(2) == "/data/yt/s-000000.tar"
    assert len({v.ordinal for vs in src.videos for v in vs}) == 2 * 3 + 4 * 4
    cfg = _cfg(batch_size=8, clips_per_video=1, shard_window=4)
    mixed = Plan(src, cfg)
    assert mixed.round_length == 5 * 6 + 16
    for rnd in range(2):
        clips = [mixed.clip(p) for p in range(rnd * mixed.round_length, (rnd + 1) * mixed.round_length)]
        counts = {v: [c.video for c in clips].count(v) for v in {c.video for c in clips}}
        assert len(counts) == 6 + 16
        assert all(n == (5 if v.startswith("d") else 1) for v, n in counts.items())
        # the five visits of a video are different clips
        d = [c for c in clips if c.video == "d00"]
        assert len({c.seed for c in d}) == 5


def test_each_source_keeps_its_layout_rule():
    """STMAE max-skip 10: jumps of up to 10 frames in a DAVIS source, 10 // 5 = 2 in a YouTube-VOS one, though
    both name their frames 00000, 00001, ... here (the rule follows the source's layout, as upstream)."""
    davis = _source("/data/davis", layout="davis", split="train", prefix="d", step=1)
    yt = _source("/data/yt", layout="ytvos", split="train", prefix="y", step=1)
    assert {v.stride for vs in davis.videos + yt.videos for v in vs} == {1, 5}
    cfg = _cfg(sampler="max_skip", num_frames=6, steps=60, max_skip=(10,), max_skip_at=(0.0,))
    clips = _stream(ClipSource.mix([davis, yt]), cfg)
    jumps = {p: max(max(np.diff(c.frame_idx)) for c in clips if c.video.startswith(p)) for p in "dy"}
    assert jumps["y"] == 2 and 2 < jumps["d"] <= 10
    # without a recorded layout, the frame names decide: stride-5 names are YouTube-VOS train's
    assert {v.stride for vs in _source().videos for v in vs} == {5}


def test_resume_over_a_mixture_is_exact():
    src = ClipSource.mix([_source("/a", weight=3, prefix="a", num_shards=2), _source("/b", prefix="b")])
    for world in (1, 2):
        cfg = _cfg(world_size=world, rank=world - 1, steps=40, clips_per_video=1, shard_window=3)
        full = _stream(src, cfg)
        assert _stream(src, cfg, start_step=13) == full[13 * cfg.batch_size:]


def test_stmae_plan_uses_max_skip_schedule_and_needs_annotated_first_frame():
    src = _source(annotate_first=False)
    cfg = _cfg(sampler="max_skip", num_frames=6, steps=40, max_skip=(5, 25), max_skip_at=(0.0, 0.5))
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


@pytest.mark.parametrize("data,message", [
    (["shards/a:0"], "--data shards/a:0: the weight after ':' must be a positive integer, got '0'"),
    (["shards/a:x"], "--data shards/a:x: the weight after ':' must be a positive integer, got 'x'"),
    (["shards/a:2", "shards/a/"], "--data names shards/a more than once"),
    ([":3"], "--data :3: no shard folder before ':'"),
])
def test_malformed_data_specs_are_refused(data, message):
    with pytest.raises(UsageError) as e:
        sources.parse_data(data)
    assert str(e.value).startswith(message)


def test_data_specs_with_weights_uris_and_json(tmp_path):
    assert sources.parse_data(["shards/d:5", "s3://bucket/yt", "s3://b/yt:2"]) == [
        ("shards/d", 5), ("s3://bucket/yt", 1), ("s3://b/yt", 2)]
    spec = tmp_path / "mix.json"
    spec.write_text('[{"path": "davis", "weight": 5}, {"path": "/abs/yt"}]')
    assert sources.parse_data([str(spec)]) == [(f"{tmp_path}/davis", 5), ("/abs/yt", 1)]
    spec.write_text('[{"path": "davis", "weight": 1.5}]')
    with pytest.raises(UsageError, match="weight of davis must be a positive integer, got 1.5"):
        sources.parse_data([str(spec)])
    spec.write_text('{"davis": 5}')
    with pytest.raises(UsageError, match="expected a non-empty JSON list"):
        sources.parse_data([str(spec)])
    listing = tmp_path / "mix.yaml"
    listing.write_text("- {path: davis, weight: 5}\n- path: s3://bucket/yt\n")
    assert sources.parse_data([str(listing)]) == [(f"{tmp_path}/davis", 5), ("s3://bucket/yt", 1)]
