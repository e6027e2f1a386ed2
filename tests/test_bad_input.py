"""Bad input and faults, as a user meets them: through the real command lines (`jobs/*.py`, `python -m shards`).

Every refusal that can be known on the driver must come in seconds, before Ray starts, as one or two lines
naming the flag or file, without a traceback, with exit status 2 for a usage error and 1 otherwise. Most cases
run in one subprocess that executes each entry point as `__main__` in turn (runpy: the real file, its real
`sys.exit`), so the imports are paid once; it records each case's exit status, stderr, time, and whether Ray
was started. A few cases run as processes of their own, and one trains on a data set whose every frame is
corrupt: it must end with an error naming the data set, not hang.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import pack_serially
from raytrain.config import SMTCConfig, parse, to_dict
from raytrain.checkpoints import write_checkpoint
from shards.cluster import cluster_address
from shards.layout import list_videos
from shards.pack import INDEX
from shards.synth import write_davis, write_ytvos

REPO = Path(__file__).resolve().parents[1]
DRIVER_S = 20.0  # a driver-side refusal, imports excluded (measured in the runner, on a loaded 2-core machine)

RUNNER = r"""
import contextlib, io, json, runpy, sys, time, traceback
# the jobs' imports, once, before the cases are timed
import raytrain.cli.evaluate, raytrain.cli.sweep, raytrain.cli.train, raytrain.eval.score_cli, shards.pack
source, target = sys.argv[1:3]
cases, records = json.load(open(source)), []
for case in cases:
    sys.argv = [case["script"], *case["args"]]
    err, out, code, start = io.StringIO(), io.StringIO(), None, time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            if case["script"].startswith("-m "):
                runpy.run_module(case["script"][3:], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(case["script"], run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:  # what the interpreter would print, uncaught
            code = "uncaught"
            traceback.print_exc(file=err)
    ray = sys.modules.get("ray")
    records.append({"code": code, "stderr": err.getvalue(), "stdout": out.getvalue(),
                    "seconds": time.perf_counter() - start, "ray": bool(ray and ray.is_initialized())})
json.dump(records, open(target, "w"))
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAYTRAIN_CACHE": str(tmp / "cache"), "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Tiny data sets and files, good and bad, shared by the cases."""
    t = tmp_path_factory.mktemp("bad")
    write_ytvos(t / "yt", num_videos=3, num_frames=6, height=32, num_val=1, seed=1)
    write_davis(t / "davis", num_videos=3, num_frames=5, height=64, num_val=1, seed=1)  # 64: propagation grid
    pack_serially(t / "yt", t / "yt_shards", "ytvos", "train")
    pack_serially(t / "davis", t / "davis_shards", "davis", "train")
    p = {"t": t, "yt": t / "yt", "davis": t / "davis", "yt_shards": t / "yt_shards",
         "davis_shards": t / "davis_shards"}

    p["no_index"] = t / "no_index"
    p["no_index"].mkdir()
    p["bad_index"] = t / "bad_index"
    shutil.copytree(p["yt_shards"], p["bad_index"])
    (p["bad_index"] / INDEX).write_bytes(b"PAR1 this is not parquet")

    val = list_videos(str(p["davis"]), "davis", "val")[0]
    p["partial_gt"] = t / "partial_gt"  # one annotation of the val sequence missing
    shutil.copytree(p["davis"], p["partial_gt"])
    (p["partial_gt"] / "Annotations/480p" / val.id / f"{val.frames[2]}.png").unlink()
    p["wrong_size"] = t / "wrong_size"  # one annotation of the wrong size
    shutil.copytree(p["davis"], p["wrong_size"])
    png = p["wrong_size"] / "Annotations/480p" / val.id / f"{val.frames[3]}.png"
    Image.open(png).resize((20, 12), Image.NEAREST).save(png)
    p["no_gt"] = t / "no_gt"  # only first-frame annotations (as DAVIS test-dev): nothing to score
    shutil.copytree(p["davis"], p["no_gt"])
    for frame in val.frames[1:]:
        (p["no_gt"] / "Annotations/480p" / val.id / f"{frame}.png").unlink()
    p["stale_out"] = t / "stale_out"  # what an earlier evaluation left (an evaluation writes only into its own)
    p["stale_out"].mkdir()
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
        (p["stale_out"] / name).write_text("J&F-Mean\n0.99\n")
    (p["stale_out"] / "summary.json").write_text("{}")

    train = list_videos(str(p["davis"]), "davis", "train")[0]
    p["bad_first_frame"] = t / "bad_first_frame"
    shutil.copytree(p["davis"], p["bad_first_frame"])
    (p["bad_first_frame"] / "JPEGImages/480p" / train.id / f"{train.frames[0]}.jpg").write_bytes(b"\xff\xd8junk")
    p["bad_first_png"] = t / "bad_first_png"
    shutil.copytree(p["davis"], p["bad_first_png"])
    (p["bad_first_png"] / "Annotations/480p" / train.id / f"{train.frames[0]}.png").write_bytes(b"junk")
    p["locked"] = t / "locked"  # a pack that is alive (this test process) holds the folder
    shutil.copytree(p["yt_shards"], p["locked"])
    (p["locked"] / ".pack.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                        "run": "live"}))

    p["junk"] = t / "junk.pth"
    p["junk"].write_bytes(b"these bytes are no torch file")
    p["unsafe"] = t / "unsafe.pth"  # a pickled global that a weights_only load refuses
    torch.save({"f": functools.partial(print, "x")}, p["unsafe"])
    p["resnet"] = t / "resnet18.pth"  # ResNet-18 names and shapes (a few): not a ViT, not a ResNet-50
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)},
               p["resnet"])

    base = SMTC_ARGS(p)
    p["run"] = t / "runs" / "r"  # a run to resume, checkpointed at step 4 with `base`
    _checkpoint(p["run"] / "checkpoint_2026-01-01_00-00-04.000000", parse(SMTCConfig, base), 4)
    p["other_job"] = t / "runs" / "s"
    _checkpoint(p["other_job"] / "checkpoint_2026-01-01_00-00-04.000000", parse(SMTCConfig, base), 4, "stmae")
    p["damaged"] = t / "runs" / "d"
    for step in (2, 4):
        folder = p["damaged"] / f"checkpoint_2026-01-01_00-00-0{step}.000000"
        _checkpoint(folder, parse(SMTCConfig, base), step)
        state = folder / "state.pt"
        state.write_bytes(state.read_bytes()[:100])  # cut short, as by an interrupted copy
    return p


def _checkpoint(folder: Path, cfg: SMTCConfig, step: int, job: str = "smtc") -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(write_checkpoint({"task": {}, "step": step, "starts": [0], "job": job, "config": to_dict(cfg)}),
                folder)


def SMTC_ARGS(p: dict[str, Path]) -> list[str]:  # noqa: N802 - a constant of the fixture's paths
    return ["--data", str(p["yt_shards"]), "--storage_path", str(p["t"] / "runs"), "--steps", "4",
            "--num_workers", "1", "--batch_size", "2", "--resolution", "32", "--num_slots", "2",
            "--num_instance", "2", "--clips_per_video", "1", "--num_frames", "2", "--gap", "1"]


TRAIN, STMAE, EVAL, EVAL_STMAE, TUNE, TUNE_STMAE, SHARDS = (
    "jobs/train_smtc.py", "jobs/train_stmae.py", "jobs/eval_smtc.py", "jobs/eval_stmae.py", "jobs/tune_smtc.py",
    "jobs/tune_stmae.py", "-m shards")


def _cases(p: dict[str, Path]) -> list[tuple[str, list[str], int, tuple[str, ...]]]:
    """(entry point, arguments, exit status, what stderr must name) for every driver-side refusal."""
    s = {k: str(v) for k, v in p.items()}
    base = SMTC_ARGS(p)
    loss = ["--metric", "loss", "--mode", "min"]
    return [
        # flag ranges
        (TRAIN, ["--steps", "-5"], 2, ("--steps", "-5")),
        (TRAIN, ["--batch_size", "0"], 2, ("--batch_size",)),
        (TRAIN, ["--checkpoint_every", "0"], 2, ("--checkpoint_every",)),
        (TRAIN, ["--log_every", "0"], 2, ("--log_every",)),
        (TRAIN, ["--num_instance", "0"], 2, ("--num_instance",)),
        (TRAIN, ["--num_slots", "0"], 2, ("--num_slots",)),
        (TRAIN, ["--clips_per_video", "0"], 2, ("--clips_per_video",)),
        (TRAIN, ["--num_workers", "0"], 2, ("--num_workers", "local mode")),
        (TRAIN, ["--gap", "0"], 2, ("--gap",)),
        (TRAIN, ["--num_frames", "1"], 2, ("--num_frames",)),
        (TRAIN, ["--lr", "0"], 2, ("--lr",)),
        (TRAIN, ["--resolution", "100"], 2, ("--resolution", "multiple of 16")),
        (TRAIN, ["--seed", "-1"], 2, ("--seed",)),
        (TRAIN, ["--instance_mask", "sigmoid"], 2, ("--instance_mask", "sigmoid")),
        (TRAIN, ["--use_gpu"], 2, ("--use_gpu",)) if not torch.cuda.is_available() else None,
        (TRAIN, ["--val_use_gpu"], 2, ("--val_use_gpu", "no GPU")) if not torch.cuda.is_available() else None,
        (TRAIN, ["--val_tasks", "0"], 2, ("--val_tasks",)),
        (TRAIN, ["--jitter_order", "random"], 2, ("--jitter_order", "random")),
        (TRAIN, ["--no_such_flag", "1"], 2, ("--no_such_flag",)),
        (STMAE, ["--num_ref_frames", "0"], 2, ("--num_ref_frames",)),
        (STMAE, ["--max_skip", "5", "10", "--max_skip_at", "0"], 2, ("--max_skip",)),
        (STMAE, ["--crop", "50"], 2, ("--crop",)),
        (STMAE, ["--similarity", "cosine"], 2, ("--similarity", "cosine")),
        (STMAE, ["--bn_calibration", "imagenet"], 2, ("--bn_calibration", "one of first_batch, none")),
        (STMAE, ["--val_size", "-1"], 2, ("--val_size", "at least 0")),
        # --data, --val_data and weights files, read on the driver
        (TRAIN, ["--data", s["t"] + "/nowhere"], 1, ("--data", "nowhere", "index.parquet")),
        (TRAIN, ["--data", s["no_index"]], 1, ("--data", "no_index", "index.parquet")),
        (TRAIN, ["--data", s["bad_index"]], 1, ("--data", "bad_index", "unreadable")),
        (TRAIN, base + ["--data", s["yt_shards"] + ":0"], 2, ("--data", ":0", "positive integer")),
        (TRAIN, base + ["--data", s["yt_shards"], s["t"] + "/nowhere:2"], 1, ("--data", "nowhere", "index.parquet")),
        (TRAIN, base + ["--global_batch_size", "3", "--num_workers", "2"], 2,
         ("--global_batch_size 3", "divisible by --num_workers 2")),
        (TRAIN, base + ["--num_workers", "4", "--min_workers", "3"], 2,
         ("--batch_size 2 x --num_workers 4", "--min_workers 3", "not by 3")),
        (TRAIN, base + ["--num_frames", "12"], 1, ("--data", "12-frame", "--num_frames")),
        # workers a private Ray would start on this machine beyond its CPUs (before Ray starts)
        (TRAIN, base + ["--cpus_per_worker", "64"], 2, ("--cpus_per_worker 64 needs 64 CPU", "this machine has"))
        if cluster_address() is None else None,
        (STMAE, ["--data", s["yt_shards"], "--num_frames", "20"], 1, ("--data", "annotated first frame")),
        (TRAIN, base + ["--val_data", s["yt"]], 1, ("--val_data", "ImageSets")),
        (TRAIN, base + ["--val_data", s["partial_gt"]], 1, ("--val_data", "annotation for every frame")),
        (TRAIN, base + ["--dino_path", s["resnet"]], 1, ("--dino_path", "resnet18.pth", "ViT-S/16")),
        (TRAIN, base + ["--dino_path", s["junk"]], 1, ("--dino_path", "junk.pth", "not a torch file")),
        (TRAIN, base + ["--dino_path", s["unsafe"]], 1, ("--dino_path", "functools.partial", "refuses")),
        (TRAIN, base + ["--dino_path", s["t"] + "/none.pth"], 1, ("--dino_path", "none.pth", "does not exist")),
        (STMAE, ["--data", s["davis_shards"], "--num_frames", "4", "--resnet50_path", s["resnet"]], 1,
         ("--resnet50_path", "resnet18.pth", "ResNet depth")),
        # a run folder that is resumed
        (TRAIN, base + ["--name", "r", "--batch_size", "4"], 2,
         ("run ", "--batch_size 2 -> 4", "--allow_config_change")),
        (TRAIN, base + ["--name", "s"], 1, ("--name s", "'stmae'")),
        (TRAIN, base + ["--name", "d"], 1, ("none of its 2 checkpoints is intact",)),
        # evaluation
        (EVAL, ["--task", "segment"], 2, ("--task", "segment")),
        (EVAL, ["--preset", "C"], 2, ("--preset",)),
        (EVAL, ["--mode", "best"], 2, ("--mode",)),
        (EVAL, ["--overlay_format", "jpg"], 2, ("--overlay_format", "jpg")),
        (EVAL, ["--height", "4"], 2, ("--height",)),
        (EVAL, ["--checkpoint", s["t"] + "/none.pth"], 1, ("--checkpoint", "none.pth")),
        (EVAL, ["--checkpoint", s["junk"]], 1, ("--checkpoint", "junk.pth", "not a torch file")),
        (EVAL, ["--checkpoint", s["damaged"]], 1, ("--checkpoint", "none of its 2 checkpoints is intact")),
        (EVAL, ["--data", s["yt"]], 1, ("--data", "ImageSets")),
        (EVAL, ["--data", s["partial_gt"]], 1, ("--data", "partial ground truth", "00002")),
        (EVAL_STMAE, ["--dataset", "D18"], 2, ("--dataset", "D18")),
        (EVAL_STMAE, ["--checkpoint", s["resnet"]], 1, ("--checkpoint", "resnet18.pth", "not an STMAE")),
        (EVAL_STMAE, ["--mem_every", "0"], 2, ("--mem_every",)),
        (EVAL_STMAE, ["--similarity", "cos"], 2, ("--similarity", "cos")),
        # sweeps: every searched value is checked before trials start
        (TUNE, ["--data", s["yt_shards"], *loss, "--num_slots", "0", "8"], 2, ("--num_slots", "got 0")),
        (TUNE, ["--data", s["yt_shards"], *loss, "--lr", "1e-5", "1e-4", "1e-3"], 2, ("--lr",)),
        (TUNE, ["--data", s["yt_shards"], *loss, "--reduction_factor", "1"], 2, ("--reduction_factor",)),
        (TUNE, ["--data", s["yt_shards"]], 2, ("--metric val_jf", "--val_data")),
        (TUNE_STMAE, ["--data", s["davis_shards"], *loss, "--num_frames", "4", "40"], 1, ("--data", "40-frame")),
        # packing
        (SHARDS, ["pack", "--src", s["t"] + "/nowhere", "--out", s["t"] + "/o1"], 1, ("nowhere", "no such folder")),
        (SHARDS, ["pack", "--src", s["bad_first_frame"], "--layout", "davis", "--out", s["t"] + "/o2"], 1,
         ("bad_first_frame", ".jpg", "cannot read the frame")),
        (SHARDS, ["pack", "--src", s["bad_first_png"], "--layout", "davis", "--out", s["t"] + "/o3"], 1,
         ("bad_first_png", ".png", "cannot read the annotation")),
        (SHARDS, ["pack", "--src", s["yt"], "--out", s["t"] + "/o4", "--shard-size", "0"], 2, ("--shard-size",)),
        (SHARDS, ["pack", "--src", s["yt"], "--out", s["locked"]], 1, ("another pack", ".pack.lock",
                                                                         f"pid {os.getpid()}")),
        (SHARDS, ["check", s["bad_index"]], 1, ("bad_index", "index.parquet", "unreadable")),
    ]


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory):
    """Every case of `_cases`, plus the in-process evaluations below, run in one subprocess."""
    t = tmp_path_factory.mktemp("runner")
    s = {k: str(v) for k, v in inputs.items()}
    cases = [c for c in _cases(inputs) if c is not None]
    extra = [  # serial evaluations (no Ray): a wrong-size PNG found while scoring, and a run that scores nothing
        (EVAL, ["--serial", "--data", s["wrong_size"], "--out", s["t"] + "/ws"], 1, ()),
        (EVAL, ["--serial", "--data", s["no_gt"], "--out", s["stale_out"], "--overlays", "0"], 0, ()),
        (TRAIN, ["--steps", "-5", "--debug"], "uncaught", ()),
    ]
    (t / "cases.json").write_text(json.dumps([{"script": c[0], "args": c[1]} for c in cases + extra]))
    subprocess.run([sys.executable, "-c", RUNNER, str(t / "cases.json"), str(t / "records.json")], cwd=REPO,
                   env=_env(t), check=True, timeout=900)
    records = json.loads((t / "records.json").read_text())
    return {(c[0], tuple(c[1])): (c, r) for c, r in zip(cases + extra, records)}


def test_refused_on_the_driver_in_seconds(results, inputs):
    """Each case: its exit status, the flag or file named, no traceback, a line or two, no Ray, seconds."""
    failures = []
    for case in (c for c in _cases(inputs) if c is not None):
        script, args, code, names = case
        _, record = results[(script, tuple(args))]
        err, text = record["stderr"], record["stderr"] + record["stdout"]
        problems = [f"exit status {record['code']}, not {code}"] if record["code"] != code else []
        problems += ["a traceback"] if "Traceback" in text else []
        problems += [f"{name!r} not named" for name in names if name not in text]
        lines = [line for line in err.splitlines() if line.strip()]
        if "usage:" not in err and len(lines) > 2:  # argparse's own errors come after its usage lines
            problems.append(f"{len(lines)} lines")
        problems += ["Ray was started"] if record["ray"] else []
        problems += [f"{record['seconds']:.1f} s"] if record["seconds"] > DRIVER_S else []
        if problems:
            failures.append(f"{script} {' '.join(args)}: {'; '.join(problems)}\n    {text.strip()[-600:]}")
    assert not failures, "\n".join(failures)


def test_frame_errors_name_the_sequence_and_frame(results, inputs):
    val = list_videos(str(inputs["davis"]), "davis", "val")[0]
    _, record = results[(EVAL, ("--serial", "--data", str(inputs["wrong_size"]), "--out", str(inputs["t"] / "ws")))]
    assert record["code"] == 1 and "Traceback" not in record["stderr"], record["stderr"]
    assert f"video {val.id!r}, frame {val.frames[3]}" in record["stderr"] and "20x12" in record["stderr"]


def test_stale_results_are_removed_when_nothing_is_scored(results, inputs):
    out = inputs["stale_out"]
    _, record = results[(EVAL, ("--serial", "--data", str(inputs["no_gt"]), "--out", str(out), "--overlays", "0"))]
    assert record["code"] == 0, record["stderr"]
    assert not list(out.glob("*results-val.csv"))
    assert json.loads((out / "summary.json").read_text())["videos"] == 1


def test_debug_shows_the_traceback(results):
    _, record = results[(TRAIN, ("--steps", "-5", "--debug"))]
    assert record["code"] == "uncaught" and "Traceback" in record["stderr"] and "UsageError" in record["stderr"]


@pytest.mark.parametrize("argv,code,name", [
    (["jobs/train_smtc.py", "--steps", "-5"], 2, "--steps"),
    (["-m", "shards", "pack", "--src", "/nowhere/at/all", "--out", "/nowhere/out"], 1, "/nowhere/at/all"),
])
def test_a_real_process_exits_with_the_status(argv, code, name, tmp_path):
    start = time.perf_counter()
    run = subprocess.run([sys.executable, *argv], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == code and name in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert time.perf_counter() - start < 60


def _all_frames_corrupt(shards: Path, out: Path) -> Path:
    """A copy of `shards` with every JPEG member garbled (sizes kept, so the index still matches)."""
    shutil.copytree(shards, out)
    table = pq.read_table(out / INDEX).to_pylist()
    for shard in {r["shard"] for r in table}:
        raw = bytearray((out / shard).read_bytes())
        for r in (r for r in table if r["shard"] == shard):
            for name, off, size in zip(r["members"], r["offsets"], r["sizes"]):
                if name.endswith(".jpg"):
                    raw[off + 4:off + size] = b"\x00" * (size - 4)
        (out / shard).write_bytes(bytes(raw))
    return out


@pytest.mark.slow
def test_an_all_corrupt_data_set_ends_the_run_with_an_error(inputs, tmp_path):
    """Every JPEG of every shard garbled: each clip is dropped, and the stream stops after a round of the
    shards with an error naming the data set and the skip counts (here with no restart: --max_failures 0)."""
    bad = _all_frames_corrupt(inputs["yt_shards"], tmp_path / "corrupt")
    args = [a if a != str(inputs["yt_shards"]) else str(bad) for a in SMTC_ARGS(inputs)]
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "jobs/train_smtc.py", *args, "--storage_path", str(tmp_path / "runs"),
                          "--max_failures", "0"], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=600)
    seconds = time.perf_counter() - start
    errors = [line for line in run.stderr.splitlines() if line.startswith("train_smtc.py: error:")]
    assert run.returncode == 1 and len(errors) == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert str(bad) in errors[0] and "no usable clip" in errors[0] and "frame " in errors[0], errors[0]
    assert "Traceback" not in run.stderr.split(errors[0])[1], run.stderr[-3000:]  # none after the error line
    print(f"all-corrupt data set: refused after {seconds:.1f} s")


@pytest.mark.slow
def test_a_sweep_in_which_no_trial_finished_exits_non_zero(inputs, tmp_path):
    bad = _all_frames_corrupt(inputs["yt_shards"], tmp_path / "corrupt")
    args = [a if a != str(inputs["yt_shards"]) else str(bad) for a in SMTC_ARGS(inputs)]  # one value per search
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "jobs/tune_smtc.py", *args, "--storage_path", str(tmp_path / "sweeps"),
                          "--name", "sw", "--metric", "loss", "--mode", "min", "--num_samples", "1", "--lr", "1e-4",
                          "--max_failures", "0", "--trial_failures", "0"],
                         cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    errors = [line for line in run.stderr.splitlines() if line.startswith("tune_smtc.py: error:")]
    assert run.returncode == 1 and len(errors) == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "no trial finished (1 of 1 failed" in errors[0] and "no usable clip" in errors[0], errors[0]
    print(f"failed sweep: exit 1 after {time.perf_counter() - start:.1f} s")


def test_a_second_pack_into_the_same_folder_is_refused_and_temp_files_are_its_own(inputs, tmp_path):
    """The lock file: a dead pack's lock is taken over and only its temp files are removed; a live one's is
    refused (in `_cases`). In-process, without Ray: `_locked` is what `pack` holds around its work."""
    from shards.errors import UserError
    from shards.pack import _locked

    fs = pafs.LocalFileSystem()
    out = tmp_path / "out"
    out.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (out / ".pack.lock").write_text(json.dumps({"pid": ended.pid, "host": socket.gethostname(), "run": "dead"}))
    with _locked(fs, str(out), str(out)) as (run, stale):
        assert stale == "dead" and run != "dead"
        assert json.loads((out / ".pack.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match="another pack"):
            with _locked(fs, str(out), str(out)):
                pass
    assert not (out / ".pack.lock").exists()


def test_a_damaged_kept_shard_is_named(inputs, tmp_path):
    from shards.errors import UserError
    from shards.pack import index_shard, read_index

    out = tmp_path / "kept"
    shutil.copytree(inputs["yt_shards"], out)
    index = read_index(str(out)).to_pylist()
    shard = index[0]["shard"]
    data = (out / shard).read_bytes()
    (out / shard).write_bytes(data[:700])
    expected = [r["video"] for r in index if r["shard"] == shard]
    with pytest.raises(UserError, match=rf"{shard}: this shard, kept from an earlier run, is damaged"):
        index_shard(pafs.LocalFileSystem(), str(out), shard, expected)
