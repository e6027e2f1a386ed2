"""The cluster path on object storage, as users run it: every `s3://` path goes to a real S3 API server (moto's,
on 127.0.0.1) through the real command lines, run as subprocesses.

One story, in order: pack and check shards on S3; train with `--data`, `--val_data` and `--storage_path` on S3
(exit 0, the start and end lines); resubmit with a killed worker (the restarted group resumes from the newest
checkpoint on S3); resubmit with a changed flag (refused before Ray starts, from the manifest); damage the
newest checkpoint on S3 (training resume and evaluation both skip it and name it); evaluate from a run folder,
a checkpoint folder and a state.pt on S3 into an S3 results folder; score that folder. Bad storage settings
(a missing bucket, an endpoint where nothing answers, refused credentials) get one line before Ray starts.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest

from conftest import make_bucket, pack_serially, private_cluster, s3_server
from raytrain.checkpoints import load_checkpoint
from raytrain.config import SMTCSweepConfig, parse
from raytrain.tune import run_sweep
from raytrain.methods.smtc import METHOD as SMTC_METHOD
from shards.synth import write_davis, write_ytvos

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = ["--resolution", "32", "--num_slots", "2", "--num_instance", "2", "--batch_size", "2", "--num_frames", "2",
         "--gap", "1", "--grad_iter", "0", "--clips_per_video", "2", "--checkpoint_every", "2", "--log_every", "1",
         "--val_videos", "1", "--lr", "1e-3"]


def _run(args: list[str], tmp: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """A command line as a user runs it, in its own environment (this process's S3 settings, no RAY_ADDRESS)."""
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full.update(PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", RAYTRAIN_CACHE=str(tmp / "cache"), **env)
    return subprocess.run([sys.executable, *args], cwd=tmp, env=full, capture_output=True, text=True,
                          timeout=timeout)


def _ok(p: subprocess.CompletedProcess, worker_errors: bool = False) -> str:
    """The output of a command that succeeded without a traceback (`worker_errors`: except those Ray forwards
    from the actors of a worker group that lost a worker)."""
    Path("/tmp/s3try/last.log").write_text(p.stdout + p.stderr)
    assert p.returncode == 0, p.stdout[-3000:] + "\n".join(p.stderr.splitlines()[-40:])
    lines = p.stderr.splitlines()
    assert not any("Traceback" in line and not (worker_errors and " pid=" in line) for line in lines)
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 server, a bucket, and the synthetic sets: YouTube-VOS packed to S3 by `shards pack`, DAVIS copied
    to S3 as its folder (validation and evaluation data)."""
    tmp = tmp_path_factory.mktemp("s3")
    write_ytvos(tmp / "yt", num_videos=3, num_frames=8, height=32, num_val=1, seed=3)
    write_davis(tmp / "davis", num_videos=3, num_frames=5, height=64, num_val=1, seed=3)
    with s3_server() as endpoint:
        bucket = make_bucket("raytrain")
        fs, _ = pafs.FileSystem.from_uri(bucket)
        pafs.copy_files(str(tmp / "davis"), "raytrain/davis", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
        yield {"tmp": tmp, "bucket": bucket, "endpoint": endpoint, "fs": fs}


def _checkpoints(fs: pafs.FileSystem, run: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(run, allow_not_found=True))
    return sorted((i.path for i in infos if i.base_name.startswith("checkpoint_")
                   and i.type == pafs.FileType.Directory), reverse=True)


def _flip_a_byte(key: str) -> None:
    """Damage an object in place (one GET and one PUT: the server answers each ranged read of a large object
    by reading all of it)."""
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket, name = key.split("/", 1)
    data = bytearray(s3.get_object(Bucket=bucket, Key=name)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=name, Body=bytes(data))


def test_the_whole_cluster_path_on_s3(s3):
    tmp, bucket, fs = s3["tmp"], s3["bucket"], s3["fs"]
    shards, runs, davis = f"{bucket}/shards", f"{bucket}/runs", f"{bucket}/davis"

    out = _ok(_run(["-m", "shards", "pack", "--src", str(tmp / "yt"), "--split", "train", "--out", shards], tmp))
    assert f"in {shards}" in out
    assert "OK" in _ok(_run(["-m", "shards", "check", shards], tmp))

    # One worker: an SMTC checkpoint is about 350 MB (ViT-S/16 student, teacher and AdamW state), and each
    # upload and download goes through the S3 server in this process, on 2 cores.
    train = [str(REPO / "jobs/train_smtc.py"), "--data", shards, "--val_data", davis, "--storage_path", runs,
             "--name", "p", "--num_workers", "1", *SMALL]
    out = _ok(_run([*train, "--steps", "2"], tmp))
    assert "finished p at step 2 of 2" in out
    assert re.search(r"loss: +[\d.]+ \(step 1\) -> [\d.]+ \(step 2\)", out), out
    assert re.search(r"val J&F: +[\d.]+ \(step 0\) -> [\d.]+ \(step 2\)", out), out
    assert f"checkpoint: {runs}/p/checkpoint_" in out
    assert len(_checkpoints(fs, "raytrain/runs/p")) == 1

    # The worker killed at step 3: the restarted group resumes from the step-2 checkpoint on S3.
    marker = tmp / "killed"
    out = _ok(_run([*train, "--steps", "4", "--max_failures", "1"], tmp,
                   RAYTRAIN_INJECT_FAILURE=f"3:0:{marker}"), worker_errors=True)
    assert marker.exists() and "finished p at step 4 of 4" in out
    assert "resuming s3://raytrain/runs/p from checkpoint_" in out and "(step 2)" in out
    assert out.count("resuming p from step 2") == 2, out  # the first group and the restarted one

    # A changed flag: refused on the driver, from the newest manifest, before Ray starts.
    start = time.perf_counter()
    p = _run([*train, "--steps", "6", "--lr", "1e-2"], tmp)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "trained with other flags: --lr 0.001 -> 0.01" in p.stderr and "(step 4)" in p.stderr
    assert "Started a local Ray" not in p.stderr and time.perf_counter() - start < 60

    # One byte of the newest state.pt flipped on S3: evaluation and training both skip it and name it.
    newest, previous = _checkpoints(fs, "raytrain/runs/p")[:2]
    _flip_a_byte(f"{newest}/state.pt")
    evaluate = [str(REPO / "jobs/eval_smtc.py"), "--data", davis, "--task", "propagation", "--serial"]
    p = _run([*evaluate, "--checkpoint", f"s3://{newest}/state.pt", "--out", f"{bucket}/eval/bad"], tmp)
    assert p.returncode == 1 and "does not match the SHA-256 in its manifest" in p.stderr, p.stderr[-2000:]
    out = _ok(_run([*evaluate, "--checkpoint", f"{runs}/p", "--out", f"{bucket}/eval/run"], tmp))
    assert f"skipped checkpoint s3://{newest}" in out
    assert f"using its newest intact checkpoint, {previous.rsplit('/', 1)[1]}" in out
    for source, name in ((f"s3://{previous}", "folder"), (f"s3://{previous}/state.pt", "file")):
        _ok(_run([*evaluate, "--checkpoint", source, "--out", f"{bucket}/eval/{name}"], tmp))
    summaries = [json.loads(fs.open_input_stream(f"raytrain/eval/{n}/summary.json").read())
                 for n in ("run", "folder", "file")]
    assert summaries[0]["global_results"] == summaries[1]["global_results"] == summaries[2]["global_results"]

    out = _ok(_run([str(REPO / "jobs/score.py"), "--results", f"{bucket}/eval/run", "--davis", davis,
                    "--num_workers", "1"], tmp))
    assert "J&F-Mean" in out

    out = _ok(_run([*train, "--steps", "6"], tmp))
    assert f"skipped checkpoint s3://{newest}" in out and "finished p at step 6 of 6" in out
    assert "resuming p from step 2" in out


def test_bad_storage_settings_get_one_line_before_ray_starts(s3, tmp_path):
    base = [str(REPO / "jobs/train_smtc.py"), "--data", f"{s3['bucket']}/no-shards", "--steps", "2"]
    cases = [
        ({}, ["--storage_path", "s3://no-such-bucket/runs"], "--storage_path s3://no-such-bucket/runs: the bucket "
                                                           "no-such-bucket does not exist"),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, ["--storage_path", f"{s3['bucket']}/runs"],
         "cannot reach the S3 endpoint http://127.0.0.1:9 (AWS_ENDPOINT_URL)"),
    ]
    for env, args, message in cases:
        start = time.perf_counter()
        p = _run([*base, *args], tmp_path, timeout=120, **env)
        assert p.returncode == 1 and message in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr and "Started a local Ray" not in p.stderr
        assert time.perf_counter() - start < 60


def test_refused_credentials_are_named(tmp_path, monkeypatch):
    """A server that checks every request's signature (moto's IAM checks on from the first request) and a key it
    does not know."""
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with s3_server():
        p = _run([str(REPO / "jobs/train_smtc.py"), "--data", "s3://any-bucket/shards", "--storage_path",
                  "s3://any-bucket/runs"], tmp_path, timeout=120, AWS_ACCESS_KEY_ID="AKIAUNKNOWN",
                 AWS_SECRET_ACCESS_KEY="wrong")
    assert p.returncode == 1 and "refused the credentials" in p.stderr, p.stderr[-2000:]
    assert "--storage_path s3://any-bucket/runs" in p.stderr and "Traceback" not in p.stderr


def test_a_sweep_on_s3_is_interrupted_and_restored(s3):
    """A sweep whose storage is on S3, stopped (as on Ctrl+C) once a trial has checkpointed, restored by running
    it again, and summarized there; the best checkpoint is given as a URI that loads."""
    tmp, fs = s3["tmp"], s3["fs"]
    pack_serially(tmp / "yt", tmp / "sweep_shards", "ytvos", "train")
    cfg = parse(SMTCSweepConfig, [
        "--data", str(tmp / "sweep_shards"), "--val_data", f"{s3['bucket']}/davis", "--val_videos", "1",
        "--storage_path", f"{s3['bucket']}/sweeps", "--name", "sw", "--num_samples", "1",
        "--max_concurrent_trials", "1", "--steps", "4", "--checkpoint_every", "2", "--grace_steps", "4",
        "--num_slots", "2", "--num_instance", "2", "--gap", "1", "--num_frames", "2", "--lr", "1e-4", "1e-3",
        "--resolution", "32", "--batch_size", "2", "--clips_per_video", "2", "--grad_iter", "0"])
    checkpointed: list[str] = []

    def interrupt_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not checkpointed:
            for trial in fs.get_file_info(pafs.FileSelector("raytrain/sweeps/sw/train", allow_not_found=True)):
                checkpointed.extend(_checkpoints(fs, trial.path))
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop, as on Ctrl+C

    with private_cluster({"num_cpus": 4, "include_dashboard": True, "object_store_memory": int(1e9)}):
        watcher = threading.Thread(target=interrupt_after_first_checkpoint, daemon=True)
        watcher.start()
        results, _ = run_sweep(SMTC_METHOD, cfg)
        watcher.join(timeout=1)
        first = {Path(r.path).name: (r.metrics or {}).get("step") for r in results}
        assert checkpointed and any(step != 4 for step in first.values()), first
        results, best = run_sweep(SMTC_METHOD, cfg)
    with fs.open_input_stream("raytrain/sweeps/sw/trials.csv") as f:
        rows = list(csv.DictReader(io.StringIO(f.read().decode())))
    assert [r["trial"] for r in rows] == ["trial_000"]
    assert all(r["status"] == "done" and r["step"] == "4" for r in rows), rows
    assert best["checkpoint"].startswith("s3://raytrain/sweeps/sw/train/trial_")
    assert load_checkpoint(best["checkpoint"])["step"] == 4
    for trial, step in first.items():
        if step is not None and 0 < step < 4:  # stopped after a checkpoint: went on from it, not from scratch
            last = load_checkpoint(f"s3://{_checkpoints(fs, f'raytrain/sweeps/sw/train/{trial}')[0]}")
            assert last["step"] == 4 and last["starts"][-1] >= 2, last["starts"]
