"""The synthetic DAVIS-2017 / YouTube-VOS writers: layout, palettes, ids, rules of each dataset, determinism."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from PIL import Image

from shards import synth
from shards.draw import CATEGORIES, draw_video
from shards.synth import write_davis, write_ytvos

# Palette facts checked on real annotations (reference/eval.md §6; XMem util/palette.py).
VOC = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 9: (192, 0, 0), 255: (224, 224, 192)}
YTVOS = {0: (0, 0, 0), 1: (236, 95, 103), 2: (249, 145, 87), 3: (250, 200, 99), 10: (101, 115, 126)}


def _png(path) -> tuple[Image.Image, np.ndarray]:
    img = Image.open(path)
    img.load()
    return img, np.asarray(img)


def _entry(img: Image.Image, i: int) -> tuple[int, ...]:
    return tuple(img.getpalette()[3 * i:3 * i + 3])


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_davis_layout(synth_davis):
    sets = synth_davis / "ImageSets" / "2017"
    train = sets.joinpath("train.txt").read_text().split()
    val = sets.joinpath("val.txt").read_text().split()
    seqs = sorted(p.name for p in (synth_davis / "JPEGImages" / "480p").iterdir())
    assert (len(train), len(val)) == (3, 1) and sorted(train + val) == seqs and train == sorted(train)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", s) for s in seqs)
    voids = []
    for seq in seqs:
        jpegs = sorted((synth_davis / "JPEGImages" / "480p" / seq).iterdir())
        assert [p.name for p in jpegs] == [f"{i:05d}.jpg" for i in range(8)]
        frame = Image.open(jpegs[0])
        assert (frame.format, frame.mode, frame.size) == ("JPEG", "RGB", (114, 64))
        anns = sorted((synth_davis / "Annotations" / "480p" / seq).iterdir())
        assert [p.name for p in anns] == [f"{i:05d}.png" for i in range(8)]
        img, first = _png(anns[0])
        assert img.mode == "P" and img.size == (114, 64)
        assert all(_entry(img, i) == rgb for i, rgb in VOC.items())
        assert img.getpalette() == list(synth.DAVIS_PALETTE)
        ids = set(np.unique(first).tolist()) - {0, 255}
        assert ids == set(range(1, max(ids) + 1)) and len(ids) <= 3  # every object visible in frame 0
        for p in anns[1:]:
            assert set(np.unique(_png(p)[1]).tolist()) <= ids | {0, 255}
        voids.append(bool((first == 255).any()))
    assert any(voids) and not all(voids)  # a void band in some sequences only


def test_davis_void_band_covers_boundaries(synth_davis):
    seq = (synth_davis / "ImageSets" / "2017" / "train.txt").read_text().split()[0]
    for p in sorted((synth_davis / "Annotations" / "480p" / seq).iterdir()):
        lab = _png(p)[1]
        void = lab == 255
        assert void.any()
        # no two different labels touch directly: every boundary lies inside the band
        for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[1:], lab[:-1])):
            assert not ((a != b) & (a != 255) & (b != 255)).any()
        # the band is thin: nearly every void pixel has a labelled pixel within 2 px (not slivers of objects)
        near = np.zeros_like(void)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                near |= np.roll(~void, (dy, dx), axis=(0, 1))
        assert near[void].mean() > 0.95


def test_davis_unsupervised_ids_are_a_permutation(synth_davis):
    permuted = 0
    for seq_dir in sorted((synth_davis / "Annotations" / "480p").iterdir()):
        mapping: dict[int, int] = {}
        for p in sorted(seq_dir.iterdir()):
            img, sup = _png(p)
            uimg, uns = _png(synth_davis / "Annotations_unsupervised" / "480p" / seq_dir.name / p.name)
            assert uimg.mode == "P" and uimg.getpalette() == img.getpalette()
            assert ((sup == 0) == (uns == 0)).all() and ((sup == 255) == (uns == 255)).all()
            for a, b in set(zip(sup.ravel().tolist(), uns.ravel().tolist())):
                assert mapping.setdefault(a, b) == b  # one consistent relabelling per sequence
        objects = {a: b for a, b in mapping.items() if a not in (0, 255)}
        assert sorted(objects.values()) == sorted(objects)
        permuted += any(a != b for a, b in objects.items())
    assert permuted > 0


def test_ytvos_train(synth_ytvos):
    meta = json.loads((synth_ytvos / "train" / "meta.json").read_text())["videos"]
    vids = sorted(p.name for p in (synth_ytvos / "train" / "JPEGImages").iterdir())
    assert sorted(meta) == vids and len(vids) == 3
    assert all(re.fullmatch(r"[0-9a-f]{10}", v) for v in vids)
    names = [f"{5 * i:05d}" for i in range(8)]
    for vid in vids:
        assert [p.stem for p in sorted((synth_ytvos / "train" / "JPEGImages" / vid).iterdir())] == names
        anns = sorted((synth_ytvos / "train" / "Annotations" / vid).iterdir())
        assert [p.stem for p in anns] == names  # every frame annotated
        present: dict[str, list[str]] = {}
        for p in anns:
            img, lab = _png(p)
            assert img.mode == "P" and all(_entry(img, i) == rgb for i, rgb in YTVOS.items())
            assert 255 not in lab
            for i in set(np.unique(lab).tolist()) - {0}:
                present.setdefault(str(i), []).append(p.stem)
        objects = meta[vid]["objects"]
        assert {k: o["frames"] for k, o in objects.items()} == present
        assert all(o["category"] in CATEGORIES for o in objects.values())


def test_ytvos_valid_first_appearance(synth_ytvos):
    meta = json.loads((synth_ytvos / "valid" / "meta.json").read_text())["videos"]
    assert len(meta) == 1
    names = [f"{5 * i:05d}" for i in range(8)]
    late = 0
    for vid, entry in meta.items():
        assert [p.stem for p in sorted((synth_ytvos / "valid" / "JPEGImages" / vid).iterdir())] == names
        first = {int(k): o["frames"][0] for k, o in entry["objects"].items()}
        for k, o in entry["objects"].items():
            assert o["frames"] == names[names.index(o["frames"][0]):]  # from first appearance to the end
        anns = {p.stem: _png(p)[1] for p in sorted((synth_ytvos / "valid" / "Annotations" / vid).iterdir())}
        assert sorted(anns) == sorted(set(first.values()))
        for frame, lab in anns.items():
            assert set(np.unique(lab).tolist()) - {0} == {i for i, f in first.items() if f == frame}
        late += sum(f != "00000" for f in first.values())
        all_frames = sorted((synth_ytvos / "valid_all_frames" / "JPEGImages" / vid).iterdir())
        assert [p.stem for p in all_frames] == [f"{t:05d}" for t in range(36)]
        for name in names:  # the every-5th frames are the same images
            assert (synth_ytvos / "valid" / "JPEGImages" / vid / f"{name}.jpg").read_bytes() == \
                (synth_ytvos / "valid_all_frames" / "JPEGImages" / vid / f"{name}.jpg").read_bytes()
    assert late >= 1


def test_objects_move_occlude_and_background_pans():
    moved = occluded = panned = 0
    for index in range(4):
        scene, labels = draw_video(3, index, 96, 171, 12, 3, True, False)
        assert scene.pan_velocity.any()
        first, last = scene.render(0)[0], scene.render(11)[0]
        panned += np.abs(np.asarray(first, int) - np.asarray(last, int)).mean() > 5
        for obj in scene.objects:
            alone = dataclasses.replace(scene, objects=[obj])
            for s in range(12):
                own = (alone.render(s, with_image=False)[1] == obj.id).sum()
                visible = (labels[s] == obj.id).sum()
                occluded += 0 < visible < own
            ys, xs = np.nonzero(labels[0] == obj.id)
            ye, xe = np.nonzero(alone.render(11, with_image=False)[1] == obj.id)
            moved += len(xe) == 0 or np.hypot(xs.mean() - xe.mean(), ys.mean() - ye.mean()) > 2
    assert panned >= 3 and occluded > 0 and moved >= 8


def test_deterministic(tmp_path):
    kw = dict(num_videos=2, num_frames=4, height=48, max_objects=2)
    for write in (write_davis, write_ytvos):
        a, b, c = tmp_path / f"{write.__name__}_a", tmp_path / f"{write.__name__}_b", tmp_path / f"{write.__name__}_c"
        assert write(a, seed=5, **kw) == write(b, seed=5, **kw)
        write(c, seed=6, **kw)
        files = _files(a)
        assert files == _files(b) and len(files) > 10
        assert files != _files(c)


def test_cli_and_errors(tmp_path, capsys):
    synth.main(["--layout", "ytvos", "--out", str(tmp_path / "y"), "--videos", "2", "--frames", "3",
                "--height", "40", "--objects", "1", "--width", "50"])
    assert "wrote 2 ytvos videos" in capsys.readouterr().out
    assert Image.open(next((tmp_path / "y" / "train" / "JPEGImages").rglob("*.jpg"))).size == (50, 40)
    with pytest.raises(ValueError, match="--height"):
        write_davis(tmp_path / "d", num_videos=1, num_frames=4, height=16)
    with pytest.raises(ValueError, match="--objects"):
        write_davis(tmp_path / "d", num_videos=1, num_frames=4, height=64, max_objects=0)
