"""Bad input and faults, round two, as a user meets them: through the real command lines.

- No command writes into an input: an output folder that is, lies inside or holds what the command reads, or a
  non-empty folder that the command did not write, is refused before anything is written (evaluation, scoring,
  pack, synth, the training run folder).
- One folder spelled two ways is one folder (`--data`, resubmitting a run).
- One line, not a traceback: corrupt PNGs while scoring, an `--out` or `--storage_path` that is a file, lies
  under one or cannot be written, a weight like `²`, a `plan.json` holding `[]`, synth's ranges.
- Inputs that would exhaust memory (a huge `--data` weight, more workers than the machine has CPUs) and small
  ones (`--max_proposals -3`, `--steps` below the checkpoint, a mistyped sweep `--metric`).

As in test_bad_input.py, the driver-side cases run in one subprocess (the real entry points as `__main__`),
each with its exit status, the names its message must hold, no traceback, no Ray, a bounded time; the input
folders are compared, file by file, before and after all of them.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import pack_serially
from raytrain.config import SMTCConfig, parse
from raytrain.methods.smtc import METHOD as SMTC_METHOD
from shards.cluster import cluster_address
from shards.layout import list_videos
from shards.synth import write_davis, write_ytvos
from test_bad_input import DRIVER_S, REPO, RUNNER, SMTC_ARGS, _checkpoint, _env

TRAIN, EVAL, EVAL_STMAE, TUNE, SHARDS, SYNTH, SCORE = (
    "jobs/train_smtc.py", "jobs/eval_smtc.py", "jobs/eval_stmae.py", "jobs/tune_smtc.py", "-m shards",
    "-m shards.synth", "jobs/score.py")
INPUTS = ("davis", "yt", "yt_shards", "results", "bad_results", "bad_gt", "plan_list", "leftover", "runs")
UNWRITABLE = "/sys/raytrain-test-out"  # refused even to root (as is a read-only mount)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    t = tmp_path_factory.mktemp("bad2")
    write_ytvos(t / "yt", num_videos=3, num_frames=6, height=32, num_val=1, seed=1)
    write_davis(t / "davis", num_videos=3, num_frames=5, height=64, num_val=1, seed=1)
    pack_serially(t / "yt", t / "yt_shards", "ytvos", "train")
    p = {name: t / name for name in ("t", *INPUTS)}
    p["t"] = t
    val = list_videos(str(p["davis"]), "davis", "val")[0]
    p["val"], p["frame"] = val.id, val.frames[2]

    shutil.copytree(t / "davis" / "Annotations" / "480p", p["results"])  # perfect results of every sequence
    shutil.copytree(p["results"], p["bad_results"])
    _truncate(p["bad_results"] / val.id / f"{val.frames[2]}.png")
    shutil.copytree(p["davis"], p["bad_gt"])
    _truncate(p["bad_gt"] / "Annotations" / "480p" / val.id / f"{val.frames[2]}.png")
    shutil.copytree(p["yt_shards"], p["plan_list"])
    (p["plan_list"] / "plan.json").write_text("[]")
    shutil.copytree(p["yt_shards"], p["leftover"])  # as an interrupted pack left it, and its rerun finished
    (p["leftover"] / ".ytvos-train-000000.tar.tmp-0123456789abcdef").write_bytes(b"partial")
    p["file"] = t / "a_file"
    p["file"].write_text("not a folder")
    p["mix"] = t / "mix.json"  # one folder twice: with a trailing slash, and as ./
    p["mix"].write_text(json.dumps([{"path": "yt_shards/", "weight": 2}, {"path": "./yt_shards"}]))

    base = parse(SMTCConfig, SMTC_ARGS(p))  # runs to resume, checkpointed at step 4
    _checkpoint(p["runs"] / "r" / "checkpoint_2026-01-01_00-00-04.000000", base, 4)
    gbs = parse(SMTCConfig, SMTC_ARGS(p) + ["--global_batch_size", "4", "--batch_size", "32"])
    _checkpoint(p["runs"] / "g" / "checkpoint_2026-01-01_00-00-04.000000", gbs, 4)
    return p


def _cases(p: dict[str, Path]) -> list[tuple[str, list[str], int, tuple[str, ...]]]:
    s = {k: str(v) for k, v in p.items()}
    t, davis, val = s["t"], s["davis"], s["val"]
    gt = f"{davis}/Annotations/480p"
    base = SMTC_ARGS(p)
    ev = ["--serial", "--data", davis]
    sc = ["--davis", davis, "--results", s["results"]]
    pk = ["pack", "--src", davis, "--layout", "davis"]
    cases = [
        # 1. no command writes into an input
        (EVAL_STMAE, [*ev, "--out", gt], 2, ("--out", "is inside --data", davis)),
        (EVAL, [*ev, "--out", davis + "/"], 2, ("--out", "is --data", "itself")),
        (EVAL, [*ev, "--out", t], 2, ("--out", "holds --data")),
        (EVAL, [*ev, "--out", s["yt"]], 1, ("--out", "no evaluation wrote")),
        (EVAL, ["--serial", "--data", f"{t}/./davis//", "--out", gt], 2, ("--out", "is inside --data")),
        (SCORE, [*sc, "--out", gt], 2, ("--out", "is inside --davis")),
        (SCORE, ["--davis", davis, "--results", gt], 2, ("--results", "--davis", "give --out")),
        (SCORE, [*sc, "--out", f"{s['results']}/{val}"], 2, ("--out", "is inside --results")),
        (SCORE, [*sc, "--out", s["yt"]], 1, ("--out", "not this scorer's CSV files")),
        (SHARDS, [*pk, "--out", f"{davis}/shards"], 2, ("--out", "is inside --src")),
        (SHARDS, [*pk, "--out", f"{davis}/../davis"], 2, ("--out", "is --src", "itself")),
        (SHARDS, [*pk, "--out", s["yt"]], 1, ("--out", "no pack wrote")),
        (SYNTH, ["--layout", "davis", "--out", s["yt"], "--videos", "2"], 1, ("--out", "not empty")),
        (TRAIN, base + ["--storage_path", s["yt_shards"], "--name", "."], 2, ("--storage_path/--name", "--data")),
        # 3. one folder, two spellings
        (TRAIN, base + ["--data", s["yt_shards"], f"{t}/./yt_shards/"], 2, ("--data", "more than once")),
        (TRAIN, base + ["--data", s["yt_shards"], f"{t}//yt_shards"], 2, ("--data", "more than once")),
        (TRAIN, base + ["--data", s["mix"]], 2, ("--data", "yt_shards", "more than once")),
        (TRAIN, base + ["--data", s["yt_shards"] + "/", "--name", "r", "--lr", "1e-3"], 2,
         ("--lr", "--allow_config_change")),  # --data is not named below: `DIR/` is `DIR`
        # 4. one line, not a traceback
        (SCORE, ["--davis", davis, "--results", s["bad_results"], "--out", f"{t}/out_bad_results"], 1,
         (f"sequence {val!r}", f"frame {p['frame']}", f"bad_results/{val}/{p['frame']}.png", "cannot read")),
        (SCORE, ["--davis", s["bad_gt"], "--results", s["results"], "--out", f"{t}/out_bad_gt"], 1,
         (f"sequence {val!r}", f"frame {p['frame']}", "ground truth", f"bad_gt/Annotations/480p/{val}")),
        (SCORE, [*sc, "--out", s["file"]], 1, ("--out", "is a file")),
        (SCORE, [*sc, "--out", s["file"] + "/sub"], 1, ("--out", "which is a file")),
        (EVAL, [*ev, "--out", s["file"]], 1, ("--out", "is a file")),
        (EVAL_STMAE, [*ev, "--out", s["file"] + "/sub"], 1, ("--out", "which is a file")),
        (SHARDS, [*pk, "--out", s["file"]], 1, ("--out", "is a file")),
        (TRAIN, base + ["--storage_path", s["file"]], 1, ("--storage_path", "is a file")),
        (TRAIN, base + ["--storage_path", s["file"] + "/runs"], 1, ("--storage_path", "which is a file")),
        (TRAIN, base + ["--data", s["yt_shards"] + ":²"], 2, ("--data", "positive integer", "'²'")),
        (TRAIN, base + ["--data", s["plan_list"]], 1, ("--data", "plan.json", "not a pack plan")),
        (SYNTH, ["--layout", "davis", "--out", f"{t}/synth_h", "--height", "10"], 2, ("--height", "32")),
        (SYNTH, ["--layout", "ytvos", "--out", f"{t}/synth_v", "--videos", "-1"], 2, ("--videos", "-1")),
        # 5. leftovers
        (SHARDS, ["check", s["leftover"]], 1, (".ytvos-train-000000.tar.tmp-0123456789abcdef", "interrupted pack")),
        # 6. small
        (SCORE, [*sc, "--task", "unsup", "--max_proposals", "-3"], 2, ("--max_proposals", "-3")),
        (SCORE, [*sc, "--num_workers", "-2"], 2, ("--num_workers", "-2")),
        (TRAIN, base + ["--name", "r", "--steps", "2"], 2, ("--steps 2", "already at step 4")),
        (TRAIN, base + ["--name", "g"], 2, ("--global_batch_size 4 -> --batch_size 2 x --num_workers 1",
                                            "global batch 4 -> 2")),
        # 7. sweeps
        (TUNE, ["--data", s["yt_shards"], "--metric", "los", "--mode", "min"], 2, ("--metric", "'los'", "loss")),
        # 8. what would exhaust memory
        (TRAIN, base + ["--data", s["yt_shards"] + ":1000000000"], 2, ("--data", "round of the plan", "weight")),
    ]
    if (os.cpu_count() or 1) < 16 and cluster_address() is None:  # a private Ray: the workers run here
        cases.append((TRAIN, base + ["--num_workers", "16"], 2, ("--num_workers 16", "this machine has")))
    if os.path.isdir("/sys"):
        cases += [(EVAL, [*ev, "--out", UNWRITABLE], 1, ("--out", "cannot write")),
                  (SCORE, [*sc, "--out", UNWRITABLE], 1, ("--out", "cannot write"))]
    return cases


def _snapshot(p: dict[str, Path]) -> dict[str, tuple[int, int]]:
    """Every file and folder of the input folders: (size, mtime) of a file, (0, 0) of a folder."""
    out = {}
    for name in INPUTS:
        for path in p[name].rglob("*"):
            stat = path.stat()
            out[str(path)] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else (0, 0)
    return out


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory):
    t = tmp_path_factory.mktemp("runner2")
    cases = _cases(inputs)
    before = _snapshot(inputs)
    (t / "cases.json").write_text(json.dumps([{"script": c[0], "args": c[1]} for c in cases]))
    subprocess.run([sys.executable, "-c", RUNNER, str(t / "cases.json"), str(t / "records.json")], cwd=REPO,
                   env=_env(t), check=True, timeout=900)
    records = json.loads((t / "records.json").read_text())
    return cases, records, before, _snapshot(inputs)


def test_refused_in_one_line_in_seconds(results):
    """Each case: its exit status, the cause named, no traceback, a line or two, no Ray, seconds."""
    cases, records, _, _ = results
    failures = []
    for (script, args, code, names), record in zip(cases, records):
        err, text = record["stderr"], record["stderr"] + record["stdout"]
        problems = [f"exit status {record['code']}, not {code}"] if record["code"] != code else []
        problems += ["a traceback"] if "Traceback" in text else []
        problems += [f"{name!r} not named" for name in names if name not in text]
        lines = [line for line in err.splitlines() if line.strip()]
        problems += [f"{len(lines)} lines"] if "usage:" not in err and len(lines) > 2 else []
        problems += ["Ray was started"] if record["ray"] else []
        problems += [f"{record['seconds']:.1f} s"] if record["seconds"] > DRIVER_S else []
        if problems:
            failures.append(f"{script} {' '.join(args)}: {'; '.join(problems)}\n    {text.strip()[-600:]}")
    assert not failures, "\n".join(failures)


def test_nothing_was_written_into_an_input(results, inputs):
    _, _, before, after = results
    assert after == before  # no file or folder added, removed or rewritten in any input folder
    assert not (inputs["davis"] / "shards").exists() and not (inputs["yt"] / "JPEGImages").exists()


def test_a_data_change_names_only_what_changed(results):
    """`DIR/` for `DIR` is no data change; the refusal for a changed batch names no unused default."""
    cases, records, _, _ = results
    err = {tuple(c[1]): r["stderr"] for c, r in zip(cases, records)}
    lr = next(e for a, e in err.items() if "--lr" in a and "1e-3" in a)
    assert "--data" not in lr.split("other flags:")[1], lr
    batch = next(e for a, e in err.items() if a[-2:] == ("--name", "g"))
    assert "--batch_size 32" not in batch, batch


def _run(argv: list[str], tmp: Path, timeout: float = 300, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, *argv], cwd=REPO, env={**_env(tmp), **env}, capture_output=True,
                         text=True, timeout=timeout)
    return run, time.perf_counter() - start


def test_pack_with_an_unreachable_ray_address_fails_fast(inputs, tmp_path):
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run, seconds = _run(["-m", "shards", "pack", "--src", str(inputs["davis"]), "--layout", "davis",
                         "--out", str(tmp_path / "out")], tmp_path, RAY_ADDRESS=f"127.0.0.1:{port}")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"RAY_ADDRESS=127.0.0.1:{port}" in run.stderr and "no Ray cluster answers" in run.stderr, run.stderr
    assert seconds < 60, seconds


def test_synth_writes_more_videos_than_it_has_names(tmp_path):
    """630 distinct DAVIS-like names; past them, numbered ones (it used to draw forever)."""
    run, seconds = _run(["-m", "shards.synth", "--layout", "davis", "--out", str(tmp_path / "d"), "--videos", "700",
                         "--frames", "2", "--height", "32", "--width", "32", "--objects", "1"], tmp_path)
    assert run.returncode == 0, run.stderr
    names = os.listdir(tmp_path / "d" / "JPEGImages" / "480p")
    assert len(names) == len(set(names)) == 700 and sum(n.endswith("-2") for n in names) == 70
    assert seconds < 120, seconds


def test_a_round_too_large_is_refused_before_any_list_is_built(inputs):
    from raytrain.data import plan as plan_module
    from raytrain.data.sources import load_source
    from raytrain.data.plan import stream_config

    cfg = parse(SMTCConfig, SMTC_ARGS(inputs) + ["--data", f"{inputs['yt_shards']}:1000000000"])
    start = time.perf_counter()
    with pytest.raises(ValueError, match="round of the plan"):
        plan_module.Plan(load_source(cfg.data), stream_config(SMTC_METHOD, cfg, 0, 1))
    assert time.perf_counter() - start < 5  # 10^9 shard reads were never listed


def test_a_restored_sweep_names_the_saved_settings_that_override_the_flags(tmp_path, capsys):
    from raytrain.config import SMTCSweepConfig
    from raytrain.tune import SETTINGS, saved_settings

    first = parse(SMTCSweepConfig, ["--storage_path", str(tmp_path), "--name", "sw", "--num_samples", "4",
                                    "--metric", "loss", "--mode", "min"])
    assert saved_settings(SMTC_METHOD, first) == first
    assert json.loads((tmp_path / "sw" / SETTINGS).read_text())["num_samples"] == 4
    (tmp_path / "sw" / "tuner.pkl").write_bytes(b"")  # what makes Tune restore the folder
    again = parse(SMTCSweepConfig, ["--storage_path", str(tmp_path), "--name", "sw", "--num_samples", "16",
                                    "--metric", "loss", "--mode", "min", "--lr", "1e-4"])
    used = saved_settings(SMTC_METHOD, again)
    out = capsys.readouterr().out
    assert used.num_samples == 4 and used.lr == first.lr
    assert "override the flags given now" in out and "--num_samples 4 (given now: 16)" in out, out
    assert "--lr 1e-05 0.0001 (given now: 0.0001)" in out, out


@pytest.mark.slow
def test_a_corrupt_ground_truth_png_with_two_workers_is_one_line(inputs, tmp_path):
    """With --num_workers 2 (scored in this process when Ray's start would not pay, as here, else as Ray tasks,
    which tests/test_score.py covers): the error comes back as one line."""
    run, seconds = _run(["jobs/score.py", "--davis", str(inputs["bad_gt"]), "--results", str(inputs["results"]),
                         "--out", str(tmp_path / "out"), "--num_workers", "2"], tmp_path)
    errors = [line for line in run.stderr.splitlines() if line.startswith("score.py: error:")]
    assert run.returncode == 1 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"sequence {inputs['val']!r}, frame {inputs['frame']}" in errors[0] and "ground truth" in errors[0]
    assert not list((tmp_path / "out").glob("*.csv"))
    assert seconds < 120, seconds


@pytest.mark.slow
def test_pack_takes_jpeg_spellings_warns_of_odd_sizes_and_removes_leftovers(inputs, tmp_path):
    """Frames named .JPG and .jpeg are packed (with their annotations), a video whose frames differ in size is
    named, and the temp file an interrupted pack left is removed by the rerun."""
    src = tmp_path / "src"
    shutil.copytree(inputs["davis"], src)
    videos = list_videos(str(src), "davis", "all")
    one, two = videos[0], videos[1]
    frames = src / "JPEGImages" / "480p"
    (frames / one.id / f"{one.frames[1]}.jpg").rename(frames / one.id / f"{one.frames[1]}.JPG")
    (frames / one.id / f"{one.frames[2]}.jpg").rename(frames / one.id / f"{one.frames[2]}.jpeg")
    ann = src / "Annotations" / "480p" / two.id / f"{two.frames[1]}.png"
    with Image.open(ann) as im:
        im.resize((im.width // 2, im.height // 2), Image.NEAREST).save(ann)
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".davis-all-000000.tar.tmp-0123456789abcdef"
    leftover.write_bytes(b"partial")
    run, _ = _run(["-m", "shards", "pack", "--src", str(src), "--layout", "davis", "--split", "all",
                   "--out", str(out)], tmp_path, timeout=600)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("pack: warning:")]
    assert len(warnings) == 1 and f"video {two.id}" in warnings[0] and f"{two.frames[1]}.png" in warnings[0]
    assert not leftover.exists() and leftover.name in run.stderr
    import pyarrow.parquet as pq

    rows = {r["video"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert rows[one.id]["frames"] == one.frames and rows[one.id]["annotated"] == one.frames
    assert sorted(rows) == sorted(v.id for v in videos)


def test_an_output_uri_that_refuses_writes_is_named_before_the_work(tmp_path, monkeypatch):
    """A storage that lists and reads but refuses writes (as a bucket with read-only credentials): the probe
    that training (--storage_path), evaluation and scoring (--out) run before Ray starts names the flag."""
    import pyarrow.fs as pafs

    from raytrain.cli import checks
    from raytrain.eval.report import output_folder
    from shards import layout
    from shards.errors import UserError

    class ReadOnly(pafs.FileSystemHandler):
        def __init__(self, root):
            self.fs = pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())

        def get_type_name(self): return "read-only"
        def equals(self, other): return False
        def get_file_info(self, paths): return self.fs.get_file_info(paths)
        def get_file_info_selector(self, selector): return self.fs.get_file_info(selector)
        def open_input_stream(self, path): return self.fs.open_input_stream(path)
        def open_input_file(self, path): return self.fs.open_input_file(path)
        def normalize_path(self, path): return path

        def _refuse(self, *args, **kwargs):
            raise OSError("AWS Error ACCESS_DENIED during PutObject operation")

        create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = move = \
            copy_file = open_output_stream = open_append_stream = _refuse

    (tmp_path / "bucket").mkdir()
    def resolve(uri):
        return pafs.PyFileSystem(ReadOnly(tmp_path)), uri.split("://", 1)[1]

    monkeypatch.setattr(layout, "resolve", resolve)
    monkeypatch.setattr(checks, "resolve", resolve)
    for check, flag in ((lambda: checks.check_storage("--storage_path", "s3://bucket/runs"), "--storage_path"),
                        (lambda: output_folder("s3://bucket/eval", "eval/x"), "--out")):
        with pytest.raises(UserError, match=f"^{flag} s3://bucket/[a-z]+: cannot write there \\(the S3 server "
                                            "refused the credentials"):
            check()
    assert list((tmp_path / "bucket").iterdir()) == []
