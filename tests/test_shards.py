"""Layout readers, shard packing (plan, resume, index, resize), `check`, and reading back with Ray Data."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shards.__main__ import main
from shards.check import check
from shards.layout import Video, detect_layout, list_videos
from shards.pack import pack, parse_size, plan_shards, read_index, shard_urls

COLUMNS = {"shard", "video", "frames", "annotated", "num_frames", "bytes", "objects", "object_ids", "categories",
           "height", "width", "members", "sizes", "crc32", "offsets"}


def _members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _mtimes(folder) -> dict[str, int]:
    return {p: os.stat(os.path.join(folder, p)).st_mtime_ns for p in sorted(os.listdir(folder)) if p.endswith(".tar")}


def _target(root) -> int:
    """A shard size that puts the first two of the three DAVIS train videos in one shard, the third alone."""
    return sum(v.bytes for v in list_videos(str(root), "davis", "train")[:2])


@pytest.fixture(scope="module")
def packed(ray_local, synth_davis, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "davis"
    pack(str(synth_davis), str(out), "davis", "train", shard_size=_target(synth_davis))
    return out


def test_list_videos(synth_davis, synth_ytvos, tmp_path):
    assert detect_layout(str(synth_davis)) == "davis" and detect_layout(str(synth_ytvos)) == "ytvos"
    train = list_videos(str(synth_davis))
    val = list_videos(str(synth_davis), split="valid")
    assert [v.id for v in train] == (synth_davis / "ImageSets/2017/train.txt").read_text().split()
    assert len(val) == 1 and len(list_videos(f"file://{synth_davis}", "davis", "all")) == 4
    v = train[0]
    assert v.frames == [f"{i:05d}" for i in range(8)] and (v.height, v.width) == (64, 114)
    assert v.jpegs[3] == str(synth_davis / "JPEGImages/480p" / v.id / "00003.jpg")
    assert list(v.annotations) == v.frames and set(v.objects.values()) == {""}
    first = np.asarray(Image.open(v.annotations["00000"]))
    assert max(v.objects) == first[first < 255].max()
    assert v.bytes == sum(os.path.getsize(p) for p in v.jpegs + list(v.annotations.values()))

    meta = json.loads((synth_ytvos / "valid/meta.json").read_text())["videos"]
    (yv,) = list_videos(str(synth_ytvos), split="val")
    assert yv.objects == {int(k): o["category"] for k, o in meta[yv.id]["objects"].items()}
    assert list(yv.annotations) == sorted({o["frames"][0] for o in meta[yv.id]["objects"].values()})
    (allf,) = list_videos(str(synth_ytvos), "ytvos", "valid_all_frames")
    assert len(allf.frames) == 36 and allf.annotations == yv.annotations and allf.objects == yv.objects
    ytrain = list_videos(str(synth_ytvos), "ytvos")
    assert len(ytrain) == 3 and all(list(t.annotations) == t.frames for t in ytrain)

    with pytest.raises(ValueError, match=str(tmp_path)):
        list_videos(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="test-dev.txt"):
        list_videos(str(synth_davis), split="test-dev")
    with pytest.raises(FileNotFoundError, match="test/JPEGImages"):
        list_videos(str(synth_ytvos), split="test")


def test_plan_and_sizes():
    videos = [Video(id=i, frames=[], jpegs=[], annotations={}, objects={}, height=1, width=1, bytes=b)
              for i, b in zip("edcba", (50, 40, 120, 30, 30))]
    plan = plan_shards(videos, 100, "p")
    assert [(n, [v.id for v in vs]) for n, vs in plan] == [
        ("p-000000.tar", ["a", "b"]), ("p-000001.tar", ["c"]), ("p-000002.tar", ["d", "e"])]
    assert plan_shards(list(reversed(videos)), 100, "p") == plan
    assert parse_size("200MB") == 200_000_000 and parse_size("1.5GiB") == 3 * 2**29 and parse_size(7) == 7
    with pytest.raises(ValueError, match="shard-size"):
        parse_size("lots")


@pytest.mark.slow
def test_pack_index_and_members(packed, synth_davis):
    index = read_index(str(packed))
    assert set(index.column_names) == COLUMNS
    rows = index.to_pylist()
    videos = {v.id: v for v in list_videos(str(synth_davis), "davis", "train")}
    assert [r["video"] for r in rows] == sorted(videos)
    shards = sorted({r["shard"] for r in rows})
    assert shards == ["davis-train-000000.tar", "davis-train-000001.tar"]
    assert [r["shard"] for r in rows] == [shards[0], shards[0], shards[1]]
    assert shard_urls(str(packed)) == [str(packed / s) for s in shards]
    assert json.loads((packed / "plan.json").read_text())["shards"] == {
        s: [r["video"] for r in rows if r["shard"] == s] for s in shards}
    for shard in shards:
        members = _members(packed / shard)
        names = [n for n, _ in members]
        raw = (packed / shard).read_bytes()
        in_shard = [r for r in rows if r["shard"] == shard]
        assert names == [m for r in in_shard for m in r["members"]]
        for r in in_shard:
            v = videos[r["video"]]
            block = [(n, d) for n, d in members if n.split(".")[0] == v.id]
            assert [n for n, _ in block] == sorted(n for n, _ in block)  # contiguous (above) and sorted
            data = dict(block)
            assert all(data[f"{v.id}.{f}.jpg"] == open(p, "rb").read() for f, p in zip(v.frames, v.jpegs))
            assert all(data[f"{v.id}.{f}.png"] == open(p, "rb").read() for f, p in v.annotations.items())
            meta = json.loads(data[f"{v.id}.json"])
            assert meta == {"video": v.id, "layout": "davis", "split": "train", "frames": v.frames,
                            "annotated": list(v.annotations), "height": 64, "width": 114,
                            "objects": {str(k): c for k, c in v.objects.items()}}
            assert r["frames"] == v.frames and r["annotated"] == v.frames and r["num_frames"] == 8
            assert r["object_ids"] == sorted(v.objects) and r["objects"] == len(v.objects)
            assert (r["height"], r["width"]) == (64, 114)
            assert r["sizes"] == [len(d) for _, d in block] and r["bytes"] == sum(r["sizes"])
            assert [raw[o:o + n] for o, n in zip(r["offsets"], r["sizes"])] == [d for _, d in block]


@pytest.mark.slow
def test_resume_rewrites_only_missing_shard(packed, synth_davis, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(packed, out)  # keeps the mtimes
    before = read_index(str(out))
    mtimes = _mtimes(out)
    victim = sorted(mtimes)[1]
    original = (out / victim).read_bytes()
    (out / victim).unlink()
    (out / "index.parquet").unlink()
    # The interrupted run died holding its lock; its temp files carry its run id. A user's own dotfile stays.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (out / ".pack.lock").write_text(json.dumps({"pid": ended.pid, "host": socket.gethostname(), "run": "0123"}))
    (out / f".{victim}.tmp-0123").write_bytes(b"partial")
    (out / ".notes.tmp-mine").write_bytes(b"the user's")
    after = pack(str(synth_davis), str(out), "davis", "train", shard_size=_target(synth_davis))
    now = _mtimes(out)
    assert sorted(now) == sorted(mtimes)
    assert [name for name in now if now[name] != mtimes[name]] == [victim]
    assert (out / victim).read_bytes() == original  # same plan, same bytes
    assert after.equals(before) and read_index(str(out)).equals(before)
    assert [p for p in os.listdir(out) if ".tmp-" in p] == [".notes.tmp-mine"]
    assert not (out / ".pack.lock").exists()


@pytest.mark.slow
def test_pack_refuses_other_plan_and_dotted_ids(packed, synth_davis, tmp_path):
    with pytest.raises(ValueError, match="different plan"):
        pack(str(synth_davis), str(packed), "davis", "train", shard_size="1GB")
    src = tmp_path / "dotted"
    shutil.copytree(synth_davis, src)
    seq = (src / "ImageSets/2017/val.txt").read_text().split()[0]
    for folder in ("JPEGImages", "Annotations"):
        (src / folder / "480p" / seq).rename(src / folder / "480p" / "bad.name")
    (src / "ImageSets/2017/val.txt").write_text("bad.name\n")
    with pytest.raises(ValueError, match="bad.name"):
        pack(str(src), str(tmp_path / "out"), "davis", "val")


@pytest.mark.slow
def test_pack_ytvos_resized_to_uri(ray_local, synth_ytvos, tmp_path):
    out = f"file://{tmp_path}/yt"
    assert main(["pack", "--src", str(synth_ytvos), "--out", out, "--split", "val", "--resize-short", "32"]) == 0
    (row,) = read_index(out).to_pylist()
    assert (row["height"], row["width"]) == (32, 57) and row["shard"] == "ytvos-valid-000000.tar"
    assert shard_urls(out) == [f"{out}/ytvos-valid-000000.tar"]
    (video,) = list_videos(str(synth_ytvos), split="valid")
    data = dict(_members(tmp_path / "yt" / row["shard"]))
    for frame, path in video.annotations.items():
        small = Image.open(io.BytesIO(data[f"{video.id}.{frame}.png"]))
        source = Image.open(path)
        assert small.mode == "P" and small.size == (57, 32) and small.getpalette() == source.getpalette()
        assert set(np.unique(small).tolist()) <= set(np.unique(source).tolist())  # nearest: no new ids
    assert Image.open(io.BytesIO(data[f"{video.id}.00000.jpg"])).size == (57, 32)
    assert row["object_ids"] == sorted(video.objects) and row["categories"] == [
        video.objects[i] for i in sorted(video.objects)]
    assert check(out).ok


@pytest.mark.slow
def test_check_finds_problems_by_name(packed, tmp_path, capsys):
    assert main(["check", str(packed)]) == 0
    assert "OK" in capsys.readouterr().out
    out = tmp_path / "broken"
    shutil.copytree(packed, out)
    rows = read_index(str(out)).to_pylist()
    shards = sorted({r["shard"] for r in rows})

    # flip bytes of two JPEGs inside the first shard: one in its header, one in its entropy-coded data
    with tarfile.open(out / shards[0]) as tar:
        jpegs = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
    blob = bytearray((out / shards[0]).read_bytes())
    head, body = jpegs[0], jpegs[5]
    for i in range(head.offset_data, head.offset_data + 4):
        blob[i] ^= 0xFF
    for i in range(body.offset_data + body.size // 2, body.offset_data + body.size // 2 + 16):
        blob[i] ^= 0x5A
    (out / shards[0]).write_bytes(bytes(blob))
    # cut the second shard in the middle of a member
    second = (out / shards[1]).read_bytes()
    (out / shards[1]).write_bytes(second[:len(second) // 2 + 100])

    report = check(str(out))
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"{shards[0]}: undecodable member {head.name}" in text
    assert f"{shards[0]}: corrupted member {body.name}" in text
    assert f"{shards[1]}: truncated tar" in text and f"{shards[1]}: truncated member" in text
    assert f"{shards[1]}: missing member" in text
    assert main(["check", str(out)]) == 1
    assert "problem(s)" in capsys.readouterr().out.splitlines()[-1]
    (out / shards[1]).unlink()
    assert f"{shards[1]}: missing shard (1 videos)" in check(str(out)).problems


def test_check_finds_wrong_offsets_and_old_index_is_refused(packed, tmp_path):
    out = tmp_path / "offsets"
    shutil.copytree(packed, out)
    index = read_index(str(out))
    rows = index.to_pylist()
    rows[0]["offsets"][2] += 512
    pq.write_table(pa.Table.from_pylist(rows, schema=index.schema), out / "index.parquet")
    assert f"member {rows[0]['members'][2]} starts at byte" in "\n".join(check(str(out)).problems)
    pq.write_table(index.drop_columns(["offsets"]), out / "index.parquet")
    with pytest.raises(ValueError, match="without member offsets.*pack"):
        read_index(str(out))


@pytest.mark.slow
def test_cached_synthetic_set_of_an_older_version_is_reindexed(ray_local, tmp_path, monkeypatch):
    from shards import cache

    monkeypatch.setattr(cache, "CACHE", tmp_path)
    out = Path(cache.synthetic_shards("davis", "train"))
    index = read_index(str(out))
    pq.write_table(index.drop_columns(["offsets"]), out / "index.parquet")  # as an older version wrote it
    mtimes = _mtimes(out)
    assert cache.synthetic_shards("davis", "train") == str(out)
    assert read_index(str(out)).equals(index)
    assert _mtimes(out) == mtimes  # shards kept


@pytest.mark.slow
def test_read_back_with_ray_data(packed, synth_davis):
    import ray

    rows = ray.data.read_webdataset(shard_urls(str(packed)), decoder=None).take_all()
    videos = {v.id: v for v in list_videos(str(synth_davis), "davis", "train")}
    assert sorted(r["__key__"] for r in rows) == sorted(videos)
    for r in rows:
        v = videos[r["__key__"]]
        assert {k for k in r if r[k] is not None} == {"__key__", "__url__", "json"} | {
            f"{f}.jpg" for f in v.frames} | {f"{f}.png" for f in v.annotations}
        assert r["00004.jpg"] == open(v.jpegs[4], "rb").read()
        assert json.loads(r["json"])["frames"] == v.frames
