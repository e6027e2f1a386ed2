"""JHMDB, VIP, SegTrack-v2, FBMS-59 and DAVIS-2016: layouts, CRW's keypoint maps, the metrics against hand-computed
cases, the jobs end to end (serial and on the actor pool, equal numbers) and the score CLI's refusals."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from raytrain.cli.evaluate import main_smtc
from raytrain.eval.score_cli import main as score_main
from raytrain.eval.foreground import foreground, iou, mean_iou, FrameIoUs
from raytrain.eval.keypoints import label_map, pck, pck_distances, read_keypoints
from raytrain.eval.parts import confusion, miou
from shards.bench_layout import read_foreground, read_jhmdb, read_vip
from shards.bench_synth import write_fbms, write_jhmdb, write_segtrackv2, write_vip
from shards.errors import UserError
from shards.synth import write_davis2016

ROOT = Path(__file__).resolve().parents[1]
E2, E4 = np.exp(-2), np.exp(-4)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bench")
    write_jhmdb(base / "jhmdb", num_videos=2, num_frames=4)
    write_vip(base / "vip", num_videos=2, num_frames=3, height=64, width=96)
    write_segtrackv2(base / "segtrackv2", num_videos=2, num_frames=3)
    write_fbms(base / "fbms", num_videos=2, num_frames=22)
    write_davis2016(base / "davis2016", num_videos=2, num_frames=3, height=48, num_val=2)
    return {p.name: p for p in base.iterdir()}


# ------------------------------------------------------------------------------------------------ layouts

def test_jhmdb_layout_and_reader(sets):
    root = sets["jhmdb"]
    lines = (root / "test.split.v2.txt").read_text().splitlines()
    assert lines[0] == "Rename_Images/walk/synthetic_person_0 joint_positions/walk/synthetic_person_0/joint_positions.mat"
    mat = scipy.io.loadmat(root / "joint_positions/walk/synthetic_person_0/joint_positions.mat")
    assert mat["pos_img"].shape == (2, 15, 4) and {"pos_world", "scale", "viewpoint"} <= set(mat)
    assert sorted(p.name for p in (root / "Rename_Images/walk/synthetic_person_0").iterdir()) == \
        ["00001.png", "00002.png", "00003.png", "00004.png"]
    videos = read_jhmdb(str(root))
    assert [v.index for v in videos] == [0, 1] and videos[0].id == "walk/synthetic_person_0"
    np.testing.assert_array_equal(videos[0].joints, mat["pos_img"] - 1)  # CRW: 1-based in the file
    assert (videos[0].video.height, videos[0].video.width) == (60, 80)
    assert (videos[1].joints[0, 12, 2:] >= 80).all()  # odd videos: the left wrist leaves the frame


def test_vip_layout_and_reader(sets):
    root = sets["vip"]
    videos = read_vip(str(root))
    assert [v.id for v in videos] == ["videos1", "videos2"]
    assert videos[0].frames == ["000000000001", "000000000002", "000000000003"]
    with Image.open(videos[0].annotations["000000000001"]) as im:
        assert im.mode == "L" and set(np.unique(np.asarray(im))) == set(range(20))  # background and 19 parts
    (root / "Category_ids/videos2/000000000003.png").rename(root / "gone.png")
    try:
        with pytest.raises(UserError, match="'videos2': 3 images but 2 label PNGs"):
            read_vip(str(root))
    finally:
        (root / "gone.png").rename(root / "Category_ids/videos2/000000000003.png")


def test_foreground_layouts_and_readers(sets):
    stv2 = read_foreground(str(sets["segtrackv2"]), "segtrackv2")
    assert (sets["segtrackv2"] / "STv2_gt&pred/STv2_gt/GroundTruth/stv2seq0/00000.png").is_file()
    assert all(list(v.annotations) == v.frames for v in stv2)
    with Image.open(stv2[0].annotations["00000"]) as im:
        assert set(np.unique(np.asarray(im))) == {0, 255}  # objects merged into one foreground
    fbms = read_foreground(str(sets["fbms"]), "fbms")
    assert fbms[0].frames[0] == "00001" and len(fbms[0].frames) == 22
    assert list(fbms[0].annotations) == ["00001", "00021"]  # every 20th frame, by frame number
    clean = sets["fbms"].parent / "fbms_clean"  # FBMS_clean.py's own folder names
    shutil.copytree(sets["fbms"] / "FBMS", clean / "JPEGImages")
    shutil.copytree(sets["fbms"] / "FBMS_annotation", clean / "Annotations")
    assert [list(v.annotations) for v in read_foreground(str(clean), "fbms")] == [["00001", "00021"]] * 2
    davis = read_foreground(str(sets["davis2016"]), "davis2016")
    assert len(davis) == 2 and all(len(v.annotations) == 3 for v in davis)
    gt = sets["segtrackv2"] / "STv2_gt&pred/STv2_gt/GroundTruth/stv2seq1/00002.png"
    gt.rename(gt.with_suffix(".bak"))
    try:
        with pytest.raises(UserError, match="'stv2seq1': no annotation for frame.s. 00002"):
            read_foreground(str(sets["segtrackv2"]), "segtrackv2")
    finally:
        gt.with_suffix(".bak").rename(gt)


# --------------------------------------------------------------------------------------- CRW keypoint maps

def test_label_map_is_crws_gaussian():
    joints = np.full((2, 15), -100.0)  # off the grid: all-zero channels
    joints[:, 0] = (10.3, 5.7)  # grid coordinates (a 40 x 40 frame on a 40 x 40 grid)
    joints[:, 1] = (1.2, 20.0)  # x < 1.5: int() truncates toward zero, the peak moves one cell right
    maps = label_map(joints, (40, 40), (40, 40))
    assert maps.shape == (16, 40, 40)
    peak = maps[1]
    assert peak[6, 10] == 1 and peak[6, 11] == peak[5, 10] == pytest.approx(E2) and peak[5, 9] == pytest.approx(E4)
    assert (peak > 0).sum() == (peak[4:8, 8:12] > 0).sum() == 16  # the 4 x 4 window from int(c - 1.5)
    assert maps[2][20, 2] == 1 and maps[2][20, 1] == pytest.approx(E2) and maps[2][20, 0] == pytest.approx(np.exp(-8))
    assert (maps[2] > 0).sum() == 12  # clipped: x from int(-0.3) = 0
    assert not maps[3:].any()
    assert (maps[0] == ((maps[1] == 0) & (maps[2] == 0))).all()  # background channel first


def test_label_map_scales_pixels_to_the_grid():
    joints = np.full((2, 15), -100.0)
    joints[:, 0] = (160.0, 60.0)  # a 320 x 240 frame: x * 40 / 320 = 20, y * 40 / 240 = 10
    maps = label_map(joints, (240, 320), (40, 40))
    assert maps[1][10, 20] == 1 and maps[1][9, 19] == pytest.approx(E4)


def test_read_keypoints_is_a_top3_soft_argmax():
    soft = torch.zeros(16, 5, 6)
    soft[1, 1, 2], soft[1, 1, 4], soft[1, 3, 4], soft[1, 0, 0] = 0.5, 0.3, 0.2, 0.1  # the 4th is dropped
    coords = read_keypoints(soft)
    assert coords[:, 0].tolist() == pytest.approx([0.5 * 2 + 0.3 * 4 + 0.2 * 4, 0.5 * 1 + 0.3 * 1 + 0.2 * 3])
    assert coords[:, 1].tolist() == [-1, -1]  # an all-zero channel


# ------------------------------------------------------------------------------------------------- metrics

def test_pck_hand_computed():
    gt = np.zeros((2, 15, 2))
    gt[:, :, 1] = np.array([15.0, 20.0])[:, None]
    gt[:, 0, 1], gt[:, 1, 1] = (0, 0), (30, 40)  # box diagonal 50: normaliser 30
    gt[:, 2, 1] = (200, 200)  # predicted invisible: neither scored nor in the box
    pred = gt.copy()  # on a 40 x 40 grid of a 40 x 40 frame: grid = pixels
    pred[0, 0, 1] += 3  # 3 / 30 = 0.1: counts at alpha 0.1 (<=)
    pred[1, 1, 1] += 6  # 0.2
    pred[:, 2, 1] = -1
    pred[:, :, 0] = -5  # frame 0 is never scored
    d = pck_distances(pred, gt, 40, 40)
    assert d[0].tolist() == [0.1] and d[1].tolist() == [0.2] and len(d[2]) == 0 and all(len(x) == 1 for x in d[3:])
    scores = pck([d])
    assert scores["PCK@0.1"] == pytest.approx(100 * 13 / 14) and scores["PCK@0.2"] == 100
    assert scores["joints_never_counted"] == 1
    scale = np.array([2.0, 3.0])[:, None, None]  # an 80 x 120 frame: pixels = grid x (80 / 40, 120 / 40)
    shifted = gt / scale
    shifted[0, 0, 1] += 1.5  # 3 px
    shifted[:, 2, 1] = -1
    d = pck_distances(shifted, gt, 120, 80)
    assert d[0].tolist() == pytest.approx([3 / 30]) and np.concatenate(d[3:]) == pytest.approx(0, abs=1e-12)


def test_vip_miou_hand_computed():
    gt, pred = np.array([[0, 0, 0], [1, 2, 255]]), np.array([[0, 1, 5], [1, 1, 3]])
    hist = confusion(gt, pred)
    assert hist.sum() == 5 and hist[0, 0] == hist[0, 1] == hist[0, 5] == hist[1, 1] == hist[2, 1] == 1  # void ignored
    out = miou(hist)
    # classes with an empty union drop out; in the GT but never hit, or predicted but absent (5): 0
    assert out["mIoU"] == pytest.approx((1 / 3 + 1 / 3 + 0 + 0) / 4)
    assert out["per_class"]["hat"] == pytest.approx(1 / 3) and out["per_class"]["dress"] == 0
    assert np.isnan(out["per_class"]["sun-glasses"]) and out["pixel_accuracy"] == 2 / 5
    # two frames, one matrix: (4/6 + 2/4 + 1/2 + 0) / 4, not the mean of the frames' mIoUs
    assert miou(hist + confusion(gt, gt))["mIoU"] == pytest.approx((4 / 6 + 2 / 4 + 1 / 2 + 0) / 4)


def test_foreground_rules_hand_computed():
    gt = torch.zeros(4, 4, dtype=torch.bool)
    gt[:, :2] = True
    slots = torch.zeros(3, 4, 4)
    slots[0, :2, :2] = 1.0
    slots[1, 2:, :2] = 0.6  # summed with slot 0 and renormalised: 0.6 > 0.5 stays in
    slots[2, :, 2:] = 1.0
    assert foreground(slots, gt, "smtc").equal(gt)
    assert iou(foreground(slots, gt, "best-slot"), gt) == 0.5  # slot 0: slot 1's 0.6 also passes 0.5, but ties
    slots[2, :, 2:] = 0.4  # best-slot thresholds the masks as they are (no normalisation): slot 2 is empty
    slots[1, 2:, :2] = 0.45
    assert iou(foreground(slots, gt, "best-slot"), gt) == 0.5 and foreground(slots[1:], gt, "best-slot").sum() == 0
    slots[1, 2:, :2] = 0.5  # now 0.5 after renormalising: not > 0.5
    assert iou(foreground(slots, gt, "smtc"), gt) == 0.5
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert iou(empty, empty) == 0  # SMTC's iou (OCLR's would give 1)
    scores = mean_iou([FrameIoUs("a", ("0", "1", "2"), (1.0, 0.0, 0.5)), FrameIoUs("b", ("0",), (1.0,))])
    assert scores["mIoU_per_frame"] == 0.625 and scores["mIoU_per_sequence"] == 0.75


# --------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["jhmdb", "vip", "fbms", "segtrackv2", "davis2016"])
def test_jobs_serial_and_pool_agree_and_the_files_score_the_same(dataset, sets, request, tmp_path, one_thread):
    if dataset not in ("segtrackv2", "davis2016"):
        request.getfixturevalue("ray_local")
    task = "propagation" if dataset in ("jhmdb", "vip") else "discovery"
    common = ["--dataset", dataset, "--task", task, "--data", str(sets[dataset]), "--height", "64", "--width", "96"]
    serial = main_smtc([*common, "--serial", "--out", str(tmp_path / "serial")])
    if dataset in ("segtrackv2", "davis2016"):  # the same pool path as fbms: serial, then scored from the files
        again = score_main(["--task", "fg-iou", "--data", str(sets[dataset]), "--dataset", dataset,
                            "--results", str(tmp_path / "serial" / "foreground")])
        assert again == serial["scores"] and again["frames"] == 6
        return
    pooled = main_smtc([*common, "--num_actors", "2", "--out", str(tmp_path / "pool")])
    assert serial["scores"] == pooled["scores"] and serial["videos"] == 2
    folder = {"jhmdb": "keypoints", "vip": "parts"}.get(dataset, "foreground")
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial" / folder).rglob("*.*"))
    assert files and all((tmp_path / "serial" / f).read_bytes() == (tmp_path / "pool" / f).read_bytes() for f in files)
    metric = {"jhmdb": "pck", "vip": "vip"}.get(dataset, "fg-iou")
    again = score_main(["--task", metric, "--data", str(sets[dataset]), "--dataset", dataset,
                        "--results", str(tmp_path / "pool" / folder)])
    assert again == pooled["scores"]
    if dataset == "fbms":
        assert pooled["scores"]["frames"] == 4  # annotated frames only
    if dataset == "jhmdb":
        pred = np.load(tmp_path / "pool" / "keypoints" / "0.npy")
        assert pred.shape == (2, 15, 4)
        video = read_jhmdb(str(sets["jhmdb"]))[0]
        first = torch.as_tensor(label_map(video.joints[:, :, 0], (60, 80), (40, 40)), dtype=torch.float32)
        np.testing.assert_allclose(pred[:, :, 0], read_keypoints(first).numpy())  # frame 0 from its ground truth


def _score_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "raytrain.eval", "score", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_score_cli_refuses_missing_and_stray_files(sets, tmp_path):
    results = tmp_path / "parts"
    for v in read_vip(str(sets["vip"])):
        for f in v.frames:
            (results / v.id).mkdir(parents=True, exist_ok=True)
            (results / v.id / f"{f}.png").write_bytes(Path(v.annotations[f]).read_bytes())
    (results / "videos1" / "000000000001_blend.jpg").write_bytes(b"x")  # what CRW's test.py leaves beside them
    (results / "videos2" / "000000000002.png").unlink()
    run = _score_cli("--task", "vip", "--data", str(sets["vip"]), "--results", str(results))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"python -m raytrain.eval score: error: --results {results}: no "
                                               "prediction videos2/000000000002.png"]
    (results / "videos2" / "000000000002.png").write_bytes(b"")  # present again (and empty: refused when read)
    with pytest.raises(UserError, match="videos1/000000000001_blend.jpg is not a prediction of this set"):
        score_main(["--task", "vip", "--data", str(sets["vip"]), "--results", str(results)])
    (results / "videos1" / "000000000001_blend.jpg").unlink()
    with pytest.raises(UserError, match="videos2/000000000002.png: cannot decode it"):
        score_main(["--task", "vip", "--data", str(sets["vip"]), "--results", str(results)])
    (results / "videos2" / "000000000002.png").write_bytes(
        Path(read_vip(str(sets["vip"]))[1].annotations["000000000002"]).read_bytes())
    assert score_main(["--task", "vip", "--data", str(sets["vip"]), "--results", str(results)])["mIoU"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "jhmdb", "--task", "discovery"], "--dataset jhmdb is evaluated with --task propagation"),
    (["--dataset", "fbms"], "--dataset fbms is evaluated with --task discovery"),
    (["--dataset", "kth"], "--dataset must be one of davis2017, jhmdb, vip, davis2016, segtrackv2, fbms"),
    (["--dataset", "fbms", "--task", "discovery", "--foreground", "union"], "--foreground must be one of"),
    (["--dataset", "vip", "--preset", "C"], "--preset must be one of"),
])
def test_bad_flags_are_refused_before_anything_runs(argv, message, tmp_path):
    with pytest.raises(UserError, match=message):
        main_smtc([*argv, "--serial", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_synth_cli_writes_the_benchmark_layouts(tmp_path):
    from shards.synth import main as synth_main

    synth_main(["--layout", "fbms", "--out", str(tmp_path / "fbms"), "--videos", "1", "--frames", "41"])
    assert list(read_foreground(str(tmp_path / "fbms"), "fbms")[0].annotations) == ["00001", "00021", "00041"]
    synth_main(["--layout", "jhmdb", "--out", str(tmp_path / "jhmdb"), "--videos", "2", "--frames", "3"])
    assert [v.joints.shape for v in read_jhmdb(str(tmp_path / "jhmdb"))] == [(2, 15, 3)] * 2
