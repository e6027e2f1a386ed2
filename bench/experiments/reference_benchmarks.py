"""Faithfulness of the benchmarks beyond DAVIS-2017, side by side with the reference code itself (not a test: it
needs fetched copies of ajabri/videowalk and shvdiwnkozbw/SMTC, and opencv, scikit-image, imageio, einops).

    PYTHONPATH=. python bench/experiments/reference_benchmarks.py --crw /tmp/ref-crw/code --smtc_utils /tmp/ref-smtc/src/utils.py \
        --mg_utils /tmp/ref-mg/src/utils.py [--work DIR]

On synthetic JHMDB (320 x 240), VIP, SegTrack-v2 and FBMS sets it compares: the JHMDB label maps of every frame with
CRW's `JhmdbSet`; the map -> keypoint reading with CRW's `process_pose`; PCK of this project's job output scored by
this project and by CRW's `eval_pck.py` (its hard-coded list and prediction folder replaced); VIP mIoU of the job's
PNGs by this project and by `eval_vip.py`; the SMTC foreground IoU of random slot masks by this project and by
SMTC's `ensemble_hungarian_iou` (lines 290-342 of its src/utils.py, executed as they are), and the best-slot IoU
by this project and by motion-grouping's `ensemble_hungarian_iou` (lines 100-127 of its src/utils.py). Prints a
table.
"""
import argparse, importlib.util, os, re, shutil, subprocess, sys
from argparse import Namespace
from pathlib import Path

import einops
import numpy as np
import scipy.io
import torch
import torch.nn.functional as F

from raytrain.eval import foreground as fg
from raytrain.eval.bench_score import score_benchmark
from raytrain.eval.keypoints import label_map, read_keypoints
from shards.bench_layout import read_foreground, read_jhmdb
from shards.bench_synth import write_fbms, write_jhmdb, write_segtrackv2, write_vip

REPO = Path(__file__).resolve().parents[2]

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--crw", required=True, help="videowalk's code/ folder")
p.add_argument("--smtc_utils", required=True, help="SMTC's src/utils.py")
p.add_argument("--mg_utils", required=True, help="motion-grouping's src/utils.py (charigyang/motiongrouping)")
p.add_argument("--work", default="/tmp/reference-benchmarks", help="scratch folder (emptied)")
opts = p.parse_args()


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crw_jhmdb = _module("crw_jhmdb", f"{opts.crw}/data/jhmdb.py")
crw_tu = _module("crw_test_utils", f"{opts.crw}/utils/test_utils.py")
S = Path(opts.work)
shutil.rmtree(S, ignore_errors=True)
S.mkdir(parents=True)
env = {**os.environ, "PYTHONPATH": str(REPO)}
rows = []

def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    if r.returncode: print(r.stdout[-2000:], r.stderr[-3000:]); raise SystemExit(1)
    return r.stdout

# ---- JHMDB at JHMDB's 320 x 240, CRW's list with absolute paths
write_jhmdb(S / "jhmdb", num_videos=3, num_frames=6, height=240, width=320, seed=1)
lines = (S / "jhmdb/test.split.v2.txt").read_text().split("\n")
(S / "jhmdb/crw_list.txt").write_text("".join(f"{S/'jhmdb'/a} {S/'jhmdb'/b}\n" for a, b in (l.split() for l in lines if l)))
videos = read_jhmdb(str(S / "jhmdb"))
args = Namespace(filelist=str(S / "jhmdb/crw_list.txt"), imgSize=320, videoLen=20, mapScale=np.array([8, 8]),
                 texture=False, round=False)
crw_jhmdb.sio = scipy.io  # jhmdb.py uses sio without importing it (upstream as committed)
dataset = crw_jhmdb.JhmdbSet(args)
worst = 0.0
for v in videos:
    lbls = dataset[v.index][3].numpy()  # [20 + T, 40, 40, 16]
    for t in range(v.joints.shape[2]):
        ours = label_map(v.joints[:, :, t], (240, 320), (40, 40)).transpose(1, 2, 0)
        worst = max(worst, np.abs(ours - lbls[20 + t]).max())
rows.append(("JHMDB first-frame label maps (every frame, 3 videos)", "max abs(ours - JhmdbSet)", f"{worst:.3g}"))

# process_pose vs read_keypoints on propagated-like soft maps (random non-negative maps, some channels zeroed)
g = torch.Generator().manual_seed(0); worst = 0.0
for k in range(20):
    soft = torch.rand(16, 40, 40, generator=g) ** 8
    soft[1 + k % 15] = 0
    a = read_keypoints(soft)
    b, _ = crw_tu.process_pose(soft.permute(1, 2, 0).clone(), np.zeros((16, 3)))
    worst = max(worst, (a - b).abs().max().item())
rows.append(("JHMDB map -> keypoint (20 random maps)", "max abs(ours - process_pose)", f"{worst:.3g}"))

# PCK: our job's predictions scored by CRW's eval_pck.py (list and prediction folder patched in)
run([sys.executable, str(REPO / "jobs/eval_smtc.py"), "--dataset", "jhmdb", "--data", str(S / "jhmdb"), "--serial",
     "--out", str(S / "ours-jhmdb")])
ours = score_benchmark("pck", str(S / "jhmdb"), str(S / "ours-jhmdb/keypoints"))
(S / "dat").mkdir()
for f in (S / "ours-jhmdb/keypoints").glob("*.npy"):
    shutil.copy(f, S / "dat" / f"{f.stem}.dat")
src = Path(f"{opts.crw}/eval/eval_pck.py").read_text()
src = src.replace("/scratch/ajabri/data/jhmdb/test.split.v2.txt", str(S / "jhmdb/crw_list.txt")).replace("/tmp/jhmdb/", str(S / "dat") + "/")
(S / "eval_pck.py").write_text(src)
theirs = run([sys.executable, str(S / "eval_pck.py")])
for a in ("0.1", "0.2", "0.3", "0.4", "0.5"):
    mine = ours[f"PCK@{a}"]
    ref = float(re.search(rf"^{a}: \[([\d.]+)\]", theirs, re.M).group(1))
    rows.append((f"JHMDB PCK@{a}", f"ours {mine:.4f} / eval_pck.py {ref:.4f}", f"{abs(mine - ref):.3g}"))

# ---- VIP: our job's PNGs scored by CRW's eval_vip.py
write_vip(S / "vip", num_videos=2, num_frames=5, seed=1)
run([sys.executable, str(REPO / "jobs/eval_smtc.py"), "--dataset", "vip", "--data", str(S / "vip"), "--serial",
     "--out", str(S / "ours-vip")])
ours = score_benchmark("vip", str(S / "vip"), str(S / "ours-vip/parts"))
theirs = run([sys.executable, f"{opts.crw}/eval/eval_vip.py", "-g", str(S / "vip/Category_ids") + "/",
              "-p", str(S / "ours-vip/parts")])
mine = ours["mIoU"]; ref = float(re.search(r">>> mean IU ([\d.]+)", theirs).group(1))
rows.append(("VIP mIoU (one confusion matrix, frame 1 included)", f"ours {mine:.4f} / eval_vip.py {ref:.4f}", f"{abs(mine - ref):.3g}"))

# ---- foreground IoU: SMTC's ensemble_hungarian_iou (lines 290-342 of src/utils.py, run as is) on the same slots
ns = {"torch": torch, "F": F, "einops": einops, "np": np}
exec("\n".join(Path(opts.smtc_utils).read_text().splitlines()[289:342]), ns)
mg = {"torch": torch, "F": F, "einops": einops, "np": np}
exec("\n".join(Path(opts.mg_utils).read_text().splitlines()[99:127]), mg)
for name, write, ds in (("SegTrack-v2", write_segtrackv2, "segtrackv2"), ("FBMS-59", write_fbms, "fbms")):
    write(S / ds, seed=1)
    got = {"smtc": ([], []), "best-slot": ([], [])}
    for v in read_foreground(str(S / ds), ds):
        g = torch.Generator().manual_seed(len(v.id))
        for frame in v.annotations:
            gt = torch.as_tensor(fg.read_mask(v, frame))
            slots = torch.rand(8, 6, 9, generator=g) ** 4
            slots = slots / slots.sum(0, keepdim=True)  # slot masks on a feature grid, a softmax over slots
            up = F.interpolate(slots[None], size=tuple(gt.shape), mode="nearest")[0]
            for rule in got:
                got[rule][0].append(float(fg.iou(fg.foreground(up, gt, rule), gt)))
            ref = ns["ensemble_hungarian_iou"](slots[None, :, None], torch.zeros(1, 1, 4, 4), gt.float()[None, None])[2]
            got["smtc"][1].append(float(np.asarray(ref).reshape(-1)[0]))
            ref = mg["ensemble_hungarian_iou"](slots[None, :, None], gt.float()[None, None])[2]
            got["best-slot"][1].append(float(np.asarray(ref).reshape(-1)[0]))
    for rule, who in (("smtc", "SMTC ensemble_hungarian_iou"), ("best-slot", "motion-grouping ensemble_hungarian_iou")):
        mine, ref = np.array(got[rule][0]), np.array(got[rule][1])
        rows.append((f"{name} foreground IoU, {rule} rule ({len(mine)} frames)",
                     f"ours {mine.mean():.4f} / {who} {ref.mean():.4f}", f"{np.abs(mine - ref).max():.3g}"))

print("| check | numbers | max difference |\n|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
