"""STMAE dataset-level evaluation: a valid YouTube-VOS submission zip, DAVIS-2017 results whose reported
numbers are the DAVIS scores of the PNGs written (checked with tests/davis_reference.py, which shares no code
with raytrain), DAVIS-2016's 0/255 masks. Random STMAE (weights saved to a file), one torch thread: these inputs are
so small that a second thread only adds synchronisation on busy cores."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import davis_reference as ref
from raytrain.eval import vos
from raytrain.cli.evaluate import main_stmae
from raytrain.models.stmae import STMAE
from shards.palettes import DAVIS_PALETTE, YTVOS_PALETTE
from shards.synth import write_davis2016, write_ytvos

FAST = ["--serial", "--size", "32", "--overlays", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_ytvos(tmp_path_factory):
    """One valid video of 4 every-5th frames (16 frames in valid_all_frames), one object appearing late."""
    root = tmp_path_factory.mktemp("ytvos_small")
    write_ytvos(root, num_videos=2, num_frames=4, height=64, num_val=1, seed=0)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("stmae") / "random.pth"
    torch.save({"network": STMAE(value_dim=64).state_dict()}, path)
    return path


def test_youtube_submission_zip(small_ytvos, weights, tmp_path):
    summary = main_stmae(["--dataset", "Y18", "--data", str(small_ytvos), "--checkpoint", str(weights),
                          "--out", str(tmp_path), "--serial", "--size", "0"])
    assert "global_results" not in summary and not summary["random_weights"]
    meta = json.loads((small_ytvos / "valid" / "meta.json").read_text())["videos"]
    (vid,) = meta
    wanted = sorted({f for o in meta[vid]["objects"].values() for f in o["frames"]})
    assert wanted[1] == "00005"  # meta.json lists every 5th frame; the model runs on all frames:
    assert vos.list_vos_videos("Y18", str(small_ytvos))[0].video.frames == [f"{i:05d}" for i in range(16)]
    with zipfile.ZipFile(tmp_path / summary["submission"]) as z:
        assert sorted(z.namelist()) == [f"Annotations/{vid}/{f}.png" for f in wanted]
        preds = {}
        for f in wanted:
            with Image.open(io.BytesIO(z.read(f"Annotations/{vid}/{f}.png"))) as im:
                assert im.mode == "P" and im.size == (114, 64)
                assert bytes(im.getpalette()) == YTVOS_PALETTE
                preds[f] = np.array(im)
    ids = {int(k) for k in meta[vid]["objects"]}
    assert set(np.unique(np.stack(list(preds.values())))) <= ids | {0}
    # Every object's mask is given where it first appears (objects can start after frame 0) and, at the original
    # size (--size 0), comes back exactly.
    late = False
    for png in sorted((small_ytvos / "valid" / "Annotations" / vid).glob("*.png")):
        given = np.array(Image.open(png))
        late |= png.stem != "00000"
        for k in set(np.unique(given)) - {0}:
            assert (preds[png.stem][given == k] == k).all()
    assert late
    assert (tmp_path / "overlays" / f"{vid}.gif").is_file()


def test_davis17_results_and_their_reported_scores(synth_davis, weights, tmp_path):
    # Checkpoint and output folder given as URIs (s3:// on a cluster): fetched first, uploaded at the end.
    summary = main_stmae(["--dataset", "D17", "--data", str(synth_davis), "--checkpoint", f"file://{weights}",
                          "--out", f"file://{tmp_path}", *FAST])
    assert summary["model"] == f"file://{weights}"
    seqs = (synth_davis / "ImageSets" / "2017" / "val.txt").read_text().split()
    scored = []
    for seq in seqs:
        pngs = sorted((tmp_path / seq).glob("*.png"))
        jpgs = (synth_davis / "JPEGImages" / "480p" / seq).glob("*.jpg")
        assert [p.stem for p in pngs] == sorted(p.stem for p in jpgs)
        with Image.open(pngs[0]) as im:
            assert im.mode == "P" and bytes(im.getpalette()) == DAVIS_PALETTE
        gt = ref.read_pngs(synth_davis / "Annotations" / "480p" / seq)
        j, f = ref.semi(gt, ref.read_pngs(tmp_path / seq))  # the official semi-supervised rules, written anew
        scored.append((seq, j, f))
    expected, rows = ref.global_results(scored)
    assert 0 < expected["J-Mean"] < 1 and 0 < expected["F-Mean"] < 1
    assert summary["global_results"] == pytest.approx(expected, rel=0, abs=1e-12)
    assert [o[0] for o in summary["objects"]] == [r[0] for r in rows]
    np.testing.assert_allclose([o[1:] for o in summary["objects"]], [r[1:] for r in rows], rtol=0, atol=1e-12)
    csv = (tmp_path / "global_results-val.csv").read_text().splitlines()
    assert csv == [",".join(expected), ",".join("%.3f" % v for v in expected.values())]
    per_seq = (tmp_path / "per-sequence_results-val.csv").read_text().splitlines()
    assert per_seq == ["Sequence,J-Mean,F-Mean"] + [f"{name},{j:.3f},{f:.3f}" for name, j, f in rows]


def test_davis16_binary_masks(tmp_path, weights):
    write_davis2016(tmp_path / "d16", num_videos=2, num_frames=5, height=64, num_val=1)
    (item,) = vos.list_vos_videos("D16", str(tmp_path / "d16"))
    from raytrain.models.stmae import load_checkpoint

    model = load_checkpoint(weights).eval()
    result = vos.segment_video(model, item, torch.device("cpu"), vos.VOSSettings(size=0))
    gt = np.stack([np.array(Image.open(item.video.annotations[f])) for f in item.video.frames])
    assert set(np.unique(gt)) == {0, 255}
    preds = []
    for png in result.masks.values():
        with Image.open(io.BytesIO(png)) as im:
            assert im.mode == "L"  # written like the grey-level 2016 annotations
            preds.append(np.array(im))
    preds = np.stack(preds)
    assert set(np.unique(preds)) <= {0, 255}
    assert (preds[0] == gt[0]).all()  # the given first frame comes back as 255
    j, f = ref.semi(gt // 255, preds // 255)
    assert j.shape == (1, len(gt) - 2)
    np.testing.assert_allclose(result.scores.j, j, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.scores.f, f, rtol=0, atol=1e-12)
