"""The Ray Data clip pipeline on real shards: content, determinism on resume, corrupt-data skipping, and a
2-worker TorchTrainer fed with equal batches per rank."""
from __future__ import annotations

import itertools
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from conftest import pack_synthetic
from raytrain.data import decode, pipeline, plan, sources
from raytrain.data.pipeline import DataHealth, clip_batches, coalesce
from raytrain.data.plan import ClipSource, Plan, StreamConfig
from shards.errors import UserError
from shards.pack import read_index

# Functions of this module run inside Ray workers, where the tests folder is not importable.
ray.cloudpickle.register_pickle_by_value(__import__(__name__))


@pytest.fixture(scope="module")
def data(ray_local, tmp_path_factory):
    return pack_synthetic(tmp_path_factory.mktemp("pipeline"), num_videos=6, yt_frames=16, davis_frames=10,
                          seed=1, shard_size="40KB")


def _cfg(kind, **kw):
    base = dict(sampler={"smtc": "gap", "stmae": "max_skip"}[kind], seed=0, rank=0, world_size=1, batch_size=4, steps=6, clips_per_video=2,
                num_frames=4, size=32)
    return StreamConfig(**{**base, **kw})


def _batches(shards, cfg, start_step=0, health=None):
    source = ClipSource.from_index(str(shards), read_index(str(shards)))
    return list(itertools.islice(clip_batches(ray.put(source), cfg, start_step, health), cfg.steps - start_step))


def test_smtc_batches_hold_the_planned_frames(data):
    shards = data / "yt_shards"
    assert len(set(read_index(str(shards)).column("shard").to_pylist())) >= 2
    cfg = _cfg("smtc")
    batches = _batches(shards, cfg)
    assert len(batches) == cfg.steps
    b = batches[0]
    assert b["frames"].shape == (4, 4, 3, 32, 32) and b["frames"].dtype == torch.uint8
    assert (b["frame_idx"].diff(dim=1) > 0).all()
    videos = read_index(str(shards)).column("video").to_pylist()
    for i in range(4):
        video = videos[int(b["video_ordinal"][i])]
        names = sorted(p.name for p in (data / "yt/train/JPEGImages" / video).iterdir())
        for t, k in enumerate(b["frame_idx"][i].tolist()):
            src = (data / "yt/train/JPEGImages" / video / names[k]).read_bytes()
            assert np.array_equal(b["frames"][i, t].permute(1, 2, 0).numpy(), decode.smtc_frame(src, 32))


def test_gpu_decode_stream_gives_the_cpu_stream_frames(data):
    """`--decode gpu` through the real stream, decoding on the CPU device (raytrain.data.device_decode): 64 px
    sources at 64² decode at full scale on both paths, so the frames are identical."""
    shards = data / "yt_shards"
    cpu = _batches(shards, _cfg("smtc", size=64, steps=3))
    gpu = _batches(shards, _cfg("smtc", size=64, steps=3, decode="gpu"))
    assert len(gpu) == 3
    for a, b in zip(cpu, gpu):
        assert b.keys() == a.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_stmae_batches_start_at_frame_zero_with_remapped_objects(data):
    cfg = _cfg("stmae", size=48, max_skip=(3,))
    for b in _batches(data / "davis_shards", cfg):
        assert b["frames"].shape == (4, 4, 3, 48, 48) and b["masks"].shape == (4, 4, 48, 48)
        assert (b["frame_idx"][:, 0] == 0).all()
        assert (b["frame_idx"].diff(dim=1) <= 3).all()
        for i in range(4):
            k = int(b["num_objects"][i])
            assert 1 <= k <= 3 and int(b["masks"][i].max()) <= k
            assert set(b["masks"][i, 0].unique().tolist()) <= set(range(k + 1))


@pytest.mark.parametrize("kind,folder", [("smtc", "yt_shards"), ("stmae", "davis_shards")])
def test_resumed_stream_sees_the_same_clips(data, kind, folder):
    cfg = _cfg(kind, steps=8)
    full = _batches(data / folder, cfg)
    resumed = _batches(data / folder, cfg, start_step=3)
    assert resumed[0]["position"][0] == 3 * cfg.batch_size
    assert len(resumed) == cfg.steps - 3
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["position"], b["position"])
        assert torch.equal(a["frames"], b["frames"])
        if kind == "stmae":
            assert torch.equal(a["masks"], b["masks"])


def test_blocks_end_on_batch_boundaries(data, monkeypatch):
    monkeypatch.setattr(pipeline, "BLOCK_BYTES", 1)  # blocks of three batches and more
    cfg = _cfg("smtc", batch_size=2, clips_per_video=3)
    shards = str(data / "yt_shards")
    source = ClipSource.from_index(shards, read_index(shards))
    per_item = pipeline.steps_per_item(source, cfg)
    items = plan.plan_items(0, 7 * per_item, per_item)
    blocks = list(pipeline.clip_dataset(ray.put(source), cfg, items).iter_batches(batch_size=None))
    assert len(blocks) == len(items) == 7
    assert np.concatenate([b["position"] for b in blocks]).tolist() == list(range(7 * per_item * cfg.batch_size))
    cut = 1.1 * 3 * cfg.batch_size
    for b in blocks:  # whole batches, 1.1-1.43x the target
        assert len(b["position"]) % cfg.batch_size == 0 and cut <= len(b["position"]) < cut + cfg.batch_size


def test_a_mixture_streams_each_source_at_its_weight(data):
    """DAVIS x3 + YouTube-VOS through the real stream: every batch holds the frames its index row names, and a
    round holds each DAVIS video three times, each YouTube-VOS video once."""
    mixed = sources.load_source([f"{data / 'davis_shards'}:3", str(data / "yt_shards")])
    assert mixed.weights == (3, 1)
    cfg = _cfg("smtc", clips_per_video=1, batch_size=3, steps=8)
    rows = read_index(str(data / "davis_shards")).to_pylist() + read_index(str(data / "yt_shards")).to_pylist()
    stream = Plan(mixed, cfg)
    batches = list(itertools.islice(clip_batches(ray.put(mixed), cfg), cfg.steps))
    ordinals = [o for b in batches for o in b["video_ordinal"].tolist()]
    assert ordinals == [c.video_ordinal for c in stream.rank_clips(0, cfg.steps)]
    davis = sum(len(v) for v, owner in zip(mixed.videos, mixed.shard_source) if owner == 0)
    n = stream.round_length
    assert n == 3 * davis + (len(rows) - davis)
    first_round = [stream.clip(p).video_ordinal for p in range(n)]
    assert all(first_round.count(o) == (3 if o < davis else 1) for o in range(len(rows)))
    for b in batches[:2]:
        for i, ordinal in enumerate(b["video_ordinal"].tolist()):
            folder = data / ("davis/JPEGImages/480p" if ordinal < davis else "yt/train/JPEGImages")
            names = rows[ordinal]["frames"]
            for t, k in enumerate(b["frame_idx"][i].tolist()):
                src = (folder / rows[ordinal]["video"] / f"{names[k]}.jpg").read_bytes()
                assert np.array_equal(b["frames"][i, t].permute(1, 2, 0).numpy(), decode.smtc_frame(src, 32))


def test_members_are_read_in_runs_split_at_large_gaps():
    spans = [(5000, 100), (512, 1000), (2048, 500), (512, 1000), (9000, 10)]
    assert coalesce(spans, 1024) == [(512, 2548, [(512, 1000), (2048, 500)]), (5000, 5100, [(5000, 100)]),
                                     (9000, 9010, [(9000, 10)])]
    assert coalesce(spans, 1 << 20) == [(512, 9010, [(512, 1000), (2048, 500), (5000, 100), (9000, 10)])]


def _corrupt(shards: Path, out: Path) -> tuple[str, str]:
    """Copy `shards`, garble one JPEG member of the first shard and truncate the second."""
    shutil.copytree(shards, out)
    tars = sorted(out.glob("*.tar"))
    with tarfile.open(tars[0]) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".jpg"))
    raw = bytearray(tars[0].read_bytes())
    raw[member.offset_data + 20: member.offset_data + member.size] = b"\x00" * (member.size - 20)
    tars[0].write_bytes(bytes(raw))
    data = tars[1].read_bytes()
    tars[1].write_bytes(data[: len(data) // 2])
    return member.name, tars[1].name


def test_corrupt_frames_and_truncated_shards_are_skipped_and_counted(data, tmp_path):
    bad_member, truncated = _corrupt(data / "yt_shards", tmp_path / "bad")
    health = DataHealth.remote()
    cfg = _cfg("smtc", clips_per_video=6)  # every frame is used somewhere
    batches = _batches(tmp_path / "bad", cfg, health=health)
    assert len(batches) == cfg.steps  # the run goes on
    snap = ray.get(health.snapshot.remote())
    assert snap["counts"].get("frame", 0) >= 1 and snap["counts"].get("shard", 0) >= 1
    text = "\n".join(snap["recent"])
    assert bad_member.split(".")[0] in text and truncated in text


def test_a_stream_resumed_where_it_was_goes_on_over_damaged_clips(data, tmp_path):
    """Dropped clips close up the batches behind them, so step k trains on clips planned later than k: the
    checkpoint's `next_clip` (rank_index of the clip after the last trained one) resumes exactly there; the
    step's planned clips would not."""
    _corrupt(data / "yt_shards", tmp_path / "bad")
    cfg = _cfg("smtc", steps=8, clips_per_video=6)
    full = _batches(tmp_path / "bad", cfg)
    after = [plan.rank_index(cfg, int(b["position"][-1])) + 1 for b in full]  # next_clip after each step
    # A step after which the stream is ahead of the plan by part of a batch (the resume skips into a slice).
    k = next(k for k in range(1, 6) if after[k - 1] > k * cfg.batch_size and after[k - 1] % cfg.batch_size)
    source = ClipSource.from_index(str(tmp_path / "bad"), read_index(str(tmp_path / "bad")))
    resumed = list(itertools.islice(clip_batches(ray.put(source), cfg, k, start_clip=after[k - 1]), cfg.steps - k))
    for a, b in zip(full[k:], resumed, strict=True):
        assert torch.equal(a["position"], b["position"]) and torch.equal(a["frames"], b["frames"])
    planned = _batches(tmp_path / "bad", cfg, start_step=k)  # what a resume at the step's planned clips trains on
    assert not torch.equal(planned[0]["position"], full[k]["position"])


def test_a_stream_of_only_corrupt_frames_stops_with_an_error(data, tmp_path):
    """Re-planning would start Datasets forever: after a whole round of the shards without a clip, the stream
    stops, naming the data set and what was skipped."""
    bad = tmp_path / "corrupt"
    shutil.copytree(data / "yt_shards", bad)
    index = read_index(str(bad)).to_pylist()
    for shard in {r["shard"] for r in index}:
        raw = bytearray((bad / shard).read_bytes())
        for r in (r for r in index if r["shard"] == shard):
            for name, off, size in zip(r["members"], r["offsets"], r["sizes"]):
                if name.endswith(".jpg"):
                    raw[off + 4:off + size] = b"\x00" * (size - 4)
        (bad / shard).write_bytes(bytes(raw))
    health = DataHealth.remote()
    with pytest.raises(UserError, match=rf"{bad}: no usable clip in any of its \d+ shards .*skipped: frame \d+"):
        _batches(bad, _cfg("smtc", world_size=2, rank=1), health=health)


@pytest.mark.slow
def test_two_worker_trainer_gets_equal_batches(data, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    shards = str(data / "yt_shards")

    def loop(config):
        import torch.distributed as dist

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        cfg = _cfg("smtc", rank=rank, world_size=world, steps=5)
        source = ray.put(ClipSource.from_index(shards, read_index(shards)))
        model = ray.train.torch.prepare_model(torch.nn.Linear(3, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        seen = []
        for batch in itertools.islice(clip_batches(source, cfg), cfg.steps):
            x = batch["frames"].float().mean(dim=(1, 3, 4)) / 255
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen.append([int(batch["frames"].shape[0]), batch["video_ordinal"].tolist()])
        weights = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(weights, model.module.bias.detach().reshape(1))
        Path(config["out"], f"rank{rank}.json").write_text(
            json.dumps({"batches": seen, "bias": [w.item() for w in weights]}))

    TorchTrainer(loop, train_loop_config={"out": str(tmp_path)},
                 scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(name="pipeline-ddp", storage_path=str(tmp_path / "runs"))).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 5
    assert all(n == 4 for r in ranks for n, _ in r["batches"])
    assert ranks[0]["batches"] != ranks[1]["batches"]  # each rank streams its own slice of the global batches
    assert ranks[0]["bias"][0] == ranks[0]["bias"][1]  # DDP kept the replicas in sync
