"""Scoring speed: `raytrain.eval.score` against a per-object, per-frame reference written the way the official
davis2017-evaluation computes J and F, on a DAVIS-2017-val-sized synthetic set, both protocols.

    python bench/score.py [--root DIR] [--sequences 30 --frames 70 --height 480 --objects 5]
                          [--ref-semi 30 --ref-unsup 3] [--workers 2]

The workload (written once into `--root`, reused when it is there): `shards.synth.write_davis` sequences with
2-5 objects, void bands in every other sequence, and two results folders made by perturbing the ground
truth. Semi-supervised results shift each object along a drift of up to 12 px, erode or dilate it by up to
3 px and drop it from a few frames. Unsupervised results do the same to the `Annotations_unsupervised`
objects under ids drawn from 1..20, and fill the other ids up to 20 with moving boxes over part of the
video, so every sequence has 20 proposals (the toolkit's limit and what it is benchmarked with).

The reference (`reference_*` below, this file only) reads every PNG into float arrays, splits objects into
boolean masks and scores each (object, frame) pair, or each (proposal, object, frame) triple, with a
full-frame boundary map and a full-frame dilation by the disk: `cv2.dilate` when OpenCV is installed (the
toolkit's own call), else an exact OpenCV-free dilation (Euclidean distance transform <= r). Its statistics
use the toolkit's uint8 bin edges. The reference can be timed on the first `--ref-semi` / `--ref-unsup`
sequences only (it takes about 35 CPU-s per unsupervised sequence); the speed-up is then measured on that
subset, and the full-set reference time is extrapolated per object (the cost is linear in the objects at a
fixed frame and proposal count).

The scorer is timed on the full set in this process (1 worker) and with `--workers` Ray tasks (everything
after `ray.init`), `--repeats` times each, alternating, and the medians are reported; the first Ray run,
whose workers import the scorer first, is shown too.
Every run's numbers are compared with the reference's or the serial ones.

Real masks (`--toolkit DIR`, a checkout of davisvideochallenge/davis2017-evaluation with its `results/`): the
official toolkit's `evaluation_method.py --task semi-supervised` (run as it ships, by `--toolkit-python`,
which needs OpenCV, scikit-image, pandas and tqdm) and the scorer in this process on the same masks, each
`--real-repeats` times, alternating; the best (lowest) wall time of each is reported, and the toolkit's
per-sequence and global CSV files are compared with the scorer's line by line (all printed decimals). With
`--davis` (a DAVIS-2017 trainval root) the ground truth is DAVIS-17 val's and the predictions are the OSVOS
masks the toolkit ships. The toolkit ships no ground truth, so without `--davis` a stand-in is built in
`--real-root`: the OSVOS masks of its 30 val sequences (61 objects in their first frames, as DAVIS-17 val
has) serve as ground truth, and the RVOS masks it ships, ids above each sequence's object count cleared,
as predictions: real shapes on both sides. Without `--toolkit` that part is skipped.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from raytrain.eval import davis, score
from shards.palettes import DAVIS_PALETTE
from shards.synth import write_davis

try:
    import cv2
except ImportError:  # the reference then dilates with a distance transform
    cv2 = None

PROPOSALS = 20


# --------------------------------------------------------------------------------------------- workload

def _save(path: Path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids.astype(np.uint8))
    im.putpalette(DAVIS_PALETTE)
    im.save(path)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def _morph(mask: np.ndarray, r: int) -> np.ndarray:
    if r == 0 or not mask.any():
        return mask
    op = ndimage.binary_dilation if r > 0 else ndimage.binary_erosion
    return op(mask, iterations=abs(r))


def _perturbed(label: np.ndarray, ids: dict[int, int], params: dict[int, tuple], t: int, n: int,
               rng: np.random.Generator) -> np.ndarray:
    """Objects of `label` under new ids, each drifted, eroded or dilated, and sometimes dropped."""
    out = np.zeros(label.shape, np.uint8)
    for k, new in ids.items():
        drift, radius = params[k]
        if rng.random() < 0.04:
            continue
        dy, dx = np.round(drift * t / max(n - 1, 1)).astype(int) + rng.integers(-1, 2, 2)
        out[_morph(_shift(label == k, int(dy), int(dx)), radius)] = new
    return out


def write_workload(root: Path, sequences: int, frames: int, height: int, objects: int, seed: int = 0) -> None:
    """DAVIS layout under `root` plus `results-semi/` and `results-unsup/` (skipped when already there)."""
    if (root / "results-unsup" / ".done").is_file():
        return
    write_davis(root, num_videos=sequences, num_frames=frames, height=height, max_objects=objects, seed=seed,
                num_val=sequences)
    for name in davis.read_sequence_list(root, "val"):
        rng = np.random.default_rng([seed, sum(map(ord, name))])
        for task in (davis.SEMI, davis.UNSUP):
            gt, frame_ids = davis.read_gt(davis.annotation_dir(root, task), name)
            gt = np.where(gt == davis.VOID, 0, gt)
            n = int(gt[0].max())
            params = {k: (rng.uniform(-12, 12, 2), int(rng.integers(-3, 4))) for k in range(1, n + 1)}
            if task == davis.SEMI:
                ids = {k: k for k in range(1, n + 1)}
                boxes = []
            else:
                perm = rng.permutation(np.arange(1, PROPOSALS + 1))
                ids = {k: int(perm[k - 1]) for k in range(1, n + 1)}
                boxes = [(int(p), rng.uniform(0.08, 0.25, 2) * gt.shape[1:], rng.uniform(0, 1, 2) * gt.shape[1:],
                          rng.uniform(-3, 3, 2), sorted(rng.integers(0, frames, 2))) for p in perm[n:]]
                boxes[-1] = boxes[-1][:4] + ([0, frames - 1],)  # the last box spans the video
            folder = root / ("results-semi" if task == davis.SEMI else "results-unsup") / name
            folder.mkdir(parents=True, exist_ok=True)
            for t, (label, frame) in enumerate(zip(gt, frame_ids)):
                out = np.zeros(label.shape, np.uint8)
                for pid, size, origin, velocity, (a, b) in boxes:
                    if a <= t <= max(b, a + 4):
                        y, x = np.clip(origin + velocity * t, 0, label.shape - size).astype(int)
                        out[y:y + int(size[0]), x:x + int(size[1])] = pid
                fg = _perturbed(label, ids, params, t, len(gt), rng)
                out[fg > 0] = fg[fg > 0]
                _save(folder / f"{frame}.png", out)
    (root / "results-unsup" / ".done").touch()


# -------------------------------------------------------------------------------------------- reference

def _read_stack(folder: Path, frame_ids: list[str]) -> np.ndarray:
    """The maps of a sequence in a float64 stack, as the toolkit holds them."""
    first = np.array(Image.open(folder / f"{frame_ids[0]}.png"))
    out = np.zeros((len(frame_ids), *first.shape))
    for i, f in enumerate(frame_ids):
        out[i] = np.array(Image.open(folder / f"{f}.png"))
    return out


def _split(masks: np.ndarray, count: int) -> np.ndarray:
    """Boolean masks [count, T, H, W] of ids 1..count, through a float stack of the ids as the toolkit does."""
    ids = np.ones((count, *masks.shape)) * np.arange(1, count + 1)[:, None, None, None]
    return ids == masks[None]


def reference_bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def reference_dilate(b: np.ndarray, r: float) -> np.ndarray:
    r = int(r)
    span = np.arange(-r, r + 1)
    footprint = (span[:, None] ** 2 + span[None, :] ** 2 <= r * r).astype(np.uint8)  # skimage's disk(r)
    if cv2 is not None:
        return cv2.dilate(b.astype(np.uint8), footprint)
    if not b.any():
        return np.zeros(b.shape, np.uint8)
    return (ndimage.distance_transform_edt(~b) <= r).astype(np.uint8)  # sqrt of an integer square is exact


def reference_f(fg: np.ndarray, gt: np.ndarray, void: np.ndarray | None, bound_th: float = 0.008) -> float:
    void = np.zeros_like(fg).astype(bool) if void is None else void.astype(bool)
    r = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(fg.shape))
    fb, gb = reference_bmap(fg * np.logical_not(void)), reference_bmap(gt * np.logical_not(void))
    fd, gd = reference_dilate(fb, r), reference_dilate(gb, r)
    gt_match, fg_match = gb * fd, fb * gd
    n_fg, n_gt = np.sum(fb), np.sum(gb)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision, recall = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def reference_j(gt: np.ndarray, fg: np.ndarray, void: np.ndarray | None) -> np.ndarray:
    gt, fg = gt.astype(bool), fg.astype(bool)
    void = np.zeros_like(fg) if void is None else void.astype(bool)
    inter = np.sum((fg & gt) & np.logical_not(void), axis=(-2, -1))
    union = np.sum((fg | gt) & np.logical_not(void), axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    j[np.isclose(union, 0)] = 1
    return j


def reference_boundary(gt: np.ndarray, fg: np.ndarray, void: np.ndarray | None) -> np.ndarray:
    return np.array([reference_f(fg[t], gt[t], None if void is None else void[t]) for t in range(len(gt))])


def reference_statistics(x: np.ndarray) -> tuple[float, float, float]:
    mean, recall = np.nanmean(x), np.nanmean(x > 0.5)
    ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.int64).astype(np.uint8)
    bins = [x[ids[i]:ids[i + 1] + np.uint8(1)] for i in range(4)]  # uint8 + 1 wraps, as under numpy 2
    return mean, recall, np.nanmean(bins[0]) - np.nanmean(bins[3])


def reference_sequence(root: Path, results: Path, seq: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    """J and F [objects, frames] of one sequence, object by object and frame by frame."""
    ann = Path(davis.annotation_dir(root, task)) / seq
    frame_ids = sorted(p.stem for p in ann.glob("*.png"))
    masks = _read_stack(ann, frame_ids)
    void = np.zeros_like(masks)
    for t in range(len(masks)):
        void[t] = masks[t] == davis.VOID
        masks[t, masks[t] == davis.VOID] = 0
    gt = _split(masks, int(np.max(masks[0])))
    if task == davis.SEMI:
        gt, frame_ids = gt[:, 1:-1], frame_ids[1:-1]
    res = _read_stack(results / seq, frame_ids)
    res = _split(res, int(np.max(res)))
    if len(res) > (len(gt) if task == davis.SEMI else PROPOSALS):
        raise ValueError(f"{seq}: {len(res)} ids, too many")
    if len(res) < len(gt):
        res = np.concatenate([res, np.zeros((len(gt) - len(res), *res.shape[1:]))])
    if task == davis.SEMI:
        j = np.array([reference_j(gt[k], res[k], None) for k in range(len(gt))])
        f = np.array([reference_boundary(gt[k], res[k], None) for k in range(len(gt))])
        return j, f
    j = np.zeros((len(res), len(gt), gt.shape[1]))
    f = np.zeros_like(j)
    for k in range(len(gt)):
        for p in range(len(res)):
            j[p, k] = reference_j(gt[k], res[p], void)
            f[p, k] = reference_boundary(gt[k], res[p], void)
    rows, cols = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    return j[rows, cols], f[rows, cols]


def reference(root: Path, results: Path, sequences: list[str], task: str) -> davis.Report:
    js, fs, objects = [], [], []
    for seq in sequences:
        j, f = reference_sequence(root, results, seq, task)
        for k in range(len(j)):
            js.append(reference_statistics(j[k]))
            fs.append(reference_statistics(f[k]))
            objects.append((f"{seq}_{k + 1}", js[-1][0], fs[-1][0]))
    means = [float(np.mean([row[i] for row in rows])) for rows in (js, fs) for i in range(3)]
    return davis.Report(*means, objects=objects)


# ---------------------------------------------------------------------------------------------- timing

def _timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _same(a: davis.Report, b: davis.Report) -> str:
    if a == b:
        return "identical"
    diff = max(abs(x - y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))
    return f"differ (max {diff:.2e})"


# ------------------------------------------------------------------------------------------- real masks

def write_real_workload(toolkit: Path, root: Path) -> tuple[Path, Path]:
    """A DAVIS root whose GT are the toolkit's OSVOS masks, and RVOS predictions for it (see the module doc).

    JPEGImages holds one link to a tiny JPEG per frame: the toolkit lists the images but never reads them."""
    davis_root, results = root / "davis", root / "rvos-semi"
    if (root / ".done").is_file():
        return davis_root, results
    osvos, rvos = toolkit / "results" / "semi-supervised" / "osvos", toolkit / "results" / "unsupervised" / "rvos"
    names = sorted(p.name for p in osvos.iterdir() if p.is_dir())
    (davis_root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (davis_root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    jpeg = root / "blank.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    for name in names:
        frames = sorted(osvos.glob(f"{name}/*.png"))
        n = int(np.asarray(Image.open(frames[0])).max())
        for sub in ("Annotations", "JPEGImages"):
            (davis_root / sub / "480p" / name).mkdir(parents=True, exist_ok=True)
        (results / name).mkdir(parents=True, exist_ok=True)
        for png in frames:
            shutil.copyfile(png, davis_root / "Annotations" / "480p" / name / png.name)
            link = davis_root / "JPEGImages" / "480p" / name / f"{png.stem}.jpg"
            link.unlink(missing_ok=True)
            link.symlink_to(jpeg)
            with Image.open(rvos / name / png.name) as im:
                ids = np.asarray(im).copy()
                palette = im.getpalette()
            ids[ids > n] = 0
            out = Image.fromarray(ids)
            out.putpalette(palette)
            out.save(results / name / png.name)
    (root / ".done").touch()
    return davis_root, results


def run_toolkit(toolkit: Path, python: str, davis_root: Path, results: Path, work: Path) -> tuple[float, float, Path]:
    """Wall and CPU seconds of the toolkit's evaluation_method.py on a fresh copy of `results` (it would reuse
    CSV files left there), and the folder its CSV files went to."""
    copy = work / "toolkit-results"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("*.csv"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run([python, "evaluation_method.py", "--task", "semi-supervised", "--davis_path",
                          str(davis_root), "--results_path", str(copy)], cwd=toolkit, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"the toolkit failed ({python} evaluation_method.py in {toolkit}):\n{run.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), copy


def _same_csv(a: Path, b: Path) -> str:
    rows = [(a / f).read_text().splitlines() != (b / f).read_text().splitlines()
            for f in ("global_results-val.csv", "per-sequence_results-val.csv")]
    lines = [x != y for x, y in zip((a / "per-sequence_results-val.csv").read_text().splitlines(),
                                    (b / "per-sequence_results-val.csv").read_text().splitlines())]
    return "identical CSVs" if not any(rows) else f"differ: global {rows[0]}, {sum(lines)} per-object rows"


def real_masks(args: argparse.Namespace) -> None:
    toolkit = Path(args.toolkit)
    if not (toolkit / "evaluation_method.py").is_file() or not (toolkit / "results").is_dir():
        sys.exit(f"--toolkit {toolkit}: not a davis2017-evaluation checkout (evaluation_method.py and results/)")
    work = Path(args.real_root)
    if args.davis:
        davis_root, results = Path(args.davis), toolkit / "results" / "semi-supervised" / "osvos"
        masks = "DAVIS-17 val GT, OSVOS predictions"
    else:
        davis_root, results = write_real_workload(toolkit, work)
        masks = "stand-in: OSVOS masks as GT, RVOS masks as predictions"
    work.mkdir(parents=True, exist_ok=True)
    ours_out = work / "raytrain-results"
    toolkit_runs, ours_runs = [], []
    for _ in range(args.real_repeats):  # alternating, so a change in load hits both alike
        wall, cpu, toolkit_out = run_toolkit(toolkit, args.toolkit_python, davis_root, results, work)
        toolkit_runs.append((wall, cpu))
        report, wall, cpu = _timed(score.score_folder, davis_root, results, "semi", out=ours_out)
        ours_runs.append((wall, cpu))
        print(f"real masks: toolkit {toolkit_runs[-1][0]:.1f} s ({toolkit_runs[-1][1]:.1f} CPU s), raytrain "
              f"{wall:.2f} s ({cpu:.2f} CPU s), load average {os.getloadavg()[0]:.1f}", flush=True)
    same = _same_csv(toolkit_out, ours_out)
    (t_wall, t_cpu), (o_wall, o_cpu) = min(toolkit_runs), min(ours_runs)
    print(f"\nReal masks ({masks}; {davis_root}), semi-supervised, best of {args.real_repeats} alternating runs:\n")
    print("| protocol | masks | sequences | objects | official toolkit s (CPU s) | raytrain, 1 process s (CPU s) "
          "| speed-up wall (CPU) | numbers |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    print(f"| semi-supervised | {masks} | {len(davis.read_sequence_list(davis_root, 'val'))} | "
          f"{len(report.objects)} | {t_wall:.1f} ({t_cpu:.1f}) | {o_wall:.2f} ({o_cpu:.2f}) | "
          f"{t_wall / o_wall:.1f}x ({t_cpu / o_cpu:.1f}x) | {same} |")
    print(f"(all runs, toolkit: {', '.join(f'{w:.1f}' for w, _ in toolkit_runs)} s; raytrain: "
          f"{', '.join(f'{w:.2f}' for w, _ in ours_runs)} s)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/tmp/raytrain-bench-score", help="workload folder (reused when present)")
    p.add_argument("--sequences", type=int, default=30)
    p.add_argument("--frames", type=int, default=70)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--objects", type=int, default=5, help="at most this many objects per sequence (from 2)")
    p.add_argument("--ref-semi", type=int, default=30, help="sequences the semi-supervised reference is timed on "
                                                          "(0: no reference)")
    p.add_argument("--ref-unsup", type=int, default=3, help="sequences the unsupervised reference is timed on "
                                                           "(0: no reference)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers to compare with the serial scorer")
    p.add_argument("--repeats", type=int, default=3, help="alternating serial / Ray runs of the full set")
    p.add_argument("--toolkit", default="", help="a davis2017-evaluation checkout: also time it against the scorer "
                                              "on real masks (skipped without)")
    p.add_argument("--toolkit-python", default=sys.executable, help="the Python that runs the toolkit (needs cv2, "
                                                                     "skimage, pandas, tqdm)")
    p.add_argument("--davis", default="", help="a DAVIS-2017 trainval root: real GT for the real-mask part")
    p.add_argument("--real-root", default="/tmp/raytrain-bench-score-real", help="real-mask workload folder")
    p.add_argument("--real-repeats", type=int, default=3, help="alternating toolkit / scorer runs on real masks")
    p.add_argument("--only-real", action="store_true", help="skip the synthetic part")
    args = p.parse_args(argv)
    if args.only_real and not args.toolkit:
        p.error("--only-real needs --toolkit")
    if not args.only_real:
        synthetic(args)
    if args.toolkit:
        real_masks(args)
    else:
        print("\nReal masks: skipped (give --toolkit DIR, a davis2017-evaluation checkout, to time the official "
              "toolkit against the scorer on the masks it ships)")


def synthetic(args: argparse.Namespace) -> None:

    root = Path(args.root)
    start = time.perf_counter()
    write_workload(root, args.sequences, args.frames, args.height, args.objects)
    names = davis.read_sequence_list(root, "val")
    print(f"workload: {len(names)} sequences x {args.frames} frames at {args.height} px in {root} "
          f"({time.perf_counter() - start:.0f} s to prepare); {os.cpu_count()} CPU cores; reference dilation: "
          f"{'cv2.dilate' if cv2 is not None else 'distance transform (no OpenCV)'}\n")

    import ray

    ray.init(num_cpus=max(args.workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    tasks = ((davis.SEMI, "results-semi", args.ref_semi), (davis.UNSUP, "results-unsup", args.ref_unsup))
    timing: dict[str, dict[str, list[float]]] = {}
    full: dict[str, davis.Report] = {}
    same_ray: dict[str, str] = {}
    for task, folder, _ in tasks:  # serial and Ray runs alternate, so a change in load hits both alike
        timing[task] = {"serial": [], "serial_cpu": [], "ray": []}
        for _ in range(args.repeats):
            full[task], wall, cpu = _timed(score.score_folder, root, root / folder, task)
            timing[task]["serial"].append(wall)
            timing[task]["serial_cpu"].append(cpu)
            report, wall, _ = _timed(score.score_folder, root, root / folder, task, num_workers=args.workers,
                                     log=lambda s: None)
            timing[task]["ray"].append(wall)
            same_ray[task] = _same(report, full[task])
        print(f"{task}: J&F {full[task].jf_mean:.4f} over {len(full[task].objects)} objects; serial "
              f"{timing[task]['serial']}, {args.workers} workers {timing[task]['ray']}", flush=True)
    ray.shutdown()
    med = {t: {k: float(np.median(v)) for k, v in d.items()} for t, d in timing.items()}

    rows = []
    for task, folder, subset in tasks:
        if subset <= 0:
            continue
        sub = names[:subset]
        fast, f_wall, f_cpu = _timed(score.score_folder, root, root / folder, task, sequences=sub)
        ref, r_wall, r_cpu = _timed(reference, root, root / folder, sub, task)
        rows.append((task, f"{len(sub)} (measured)", len(ref.objects), r_wall, r_cpu, f_wall, f_cpu, None,
                     _same(fast, ref)))
        if len(sub) < len(names):
            scale = len(full[task].objects) / len(ref.objects)
            rows.append((task, f"{len(names)} (reference: the {len(sub)} x {scale:.2f}, per object)",
                         len(full[task].objects), r_wall * scale, r_cpu * scale, med[task]["serial"],
                         med[task]["serial_cpu"], med[task]["ray"], "-"))
        else:
            rows[-1] = rows[-1][:7] + (med[task]["ray"],) + rows[-1][8:]
        print(f"reference {task}: {r_wall:.1f} s ({r_cpu:.1f} CPU s) on {len(sub)} sequences", flush=True)

    print("\n| protocol | sequences | objects | reference s (CPU s) | raytrain, 1 worker: s (CPU s) | speed-up "
          f"(CPU) | raytrain, {args.workers} workers: s | speed-up | numbers |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for task, seqs, objs, r_wall, r_cpu, f_wall, f_cpu, ray_wall, same in rows:
        ray_cols = "- | -" if ray_wall is None else f"{ray_wall:.2f} | {r_wall / ray_wall:.1f}x"
        print(f"| {task} | {seqs} | {objs} | {r_wall:.1f} ({r_cpu:.1f}) | {f_wall:.2f} ({f_cpu:.2f}) | "
              f"{r_wall / f_wall:.1f}x ({r_cpu / f_cpu:.1f}x) | {ray_cols} | {same} |")

    print(f"\n| protocol | 1 worker (in-process) s | {args.workers} workers (Ray tasks) s | ratio | first {args.workers}-"
          "worker run (fresh Ray workers) s | numbers vs serial |")
    print("|---|---:|---:|---:|---:|---|")
    for task, _, _ in tasks:
        m = med[task]
        print(f"| {task} | {m['serial']:.2f} | {m['ray']:.2f} | {m['serial'] / m['ray']:.2f}x | "
              f"{timing[task]['ray'][0]:.2f} | {same_ray[task]} |")
    print(f"(medians of {args.repeats} alternating runs; load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
