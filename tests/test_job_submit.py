"""`ray job submit` end to end: a local head on loopback, a training job that writes its checkpoint, and a
failing job reported as FAILED.

The head is isolated from any other Ray instance on the machine: its own --temp-dir (which also holds the
ray_current_cluster file that a bare `ray.init()` would otherwise join), a fresh HOME (no stray
~/.ray/auth_token) and RAY_AUTH_MODE=disabled for `ray start` and every client alike. It is started with
`--block` and stopped by interrupting that process, which shuts down its own processes only: `ray stop` would
kill every Ray instance on the machine.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from raytrain.checkpoints import load_checkpoint_state
from shards.synth import write_ytvos

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    """Stop the head started with --block, then anything left of its session (by pid)."""
    head.send_signal(signal.SIGINT)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if temp_dir.encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture(scope="module")
def cluster():
    """A fresh local head: {"url": dashboard URL, "gcs": GCS address, "env": Ray client environment, "root"}."""
    root = Path(tempfile.mkdtemp(prefix="rtjob-", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    temp_dir = str(root / "ray")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="disabled", HOME=str(root / "home"), RAY_TMPDIR=str(root))
    (root / "home").mkdir()
    # Every port on its own: another Ray on the machine may hold the defaults (the job agent's 52365, say).
    port, dashboard, agent, agent_grpc = _free_port(), _free_port(), _free_port(), _free_port()
    log = open(root / "head.log", "w")
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 240
        while subprocess.run(["ray", "job", "list", "--address", url], env=env, capture_output=True,
                             timeout=120).returncode != 0:
            assert head.poll() is None, (root / "head.log").read_text()
            assert time.monotonic() < deadline, "the head's Jobs API did not come up"
            time.sleep(3)
        yield {"url": url, "gcs": f"127.0.0.1:{port}", "env": env, "root": root}
    finally:
        _stop(head, temp_dir)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _submit(c: dict, submission_id: str, *entrypoint: str) -> subprocess.CompletedProcess:
    """`ray job submit` of `entrypoint` with the repository as working dir; waits and streams the logs.

    Retried while the head's job agent is still starting (it comes up after the dashboard).
    """
    for _ in range(30):
        run = subprocess.run(["ray", "job", "submit", "--address", c["url"], "--submission-id", submission_id,
                              "--working-dir", str(REPO), "--", *entrypoint],
                             env=c["env"], capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in run.stderr:
            return run
        time.sleep(5)
    logs = c["root"] / "ray" / "session_latest" / "logs"
    agent = "".join(f"\n{f.name}: " + f.read_text()[-1500:] for f in logs.glob("dashboard_agent.*"))
    raise AssertionError(f"the head's job agent never came up:{agent}")


def _status(c: dict, submission_id: str) -> str:
    """The last line of `ray job status`, e.g. "Job 'x' succeeded", in lower case."""
    out = subprocess.run(["ray", "job", "status", "--address", c["url"], submission_id], env=c["env"],
                         capture_output=True, text=True, timeout=120).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out).lower()  # no colours
    return [line for line in out.splitlines() if f"job '{submission_id}'" in line][-1]


def test_training_job_writes_its_checkpoint_and_a_bad_job_fails(cluster):
    c, root = cluster, cluster["root"]
    write_ytvos(root / "yt", num_videos=3, num_frames=12, height=64, num_val=1, seed=3)
    shards = root / "shards"
    # The packer's Ray tasks run on the head, as they would on a real cluster.
    subprocess.run([sys.executable, "-m", "shards", "pack", "--src", str(root / "yt"), "--layout", "ytvos",
                    "--out", str(shards), "--shard-size", "60KB"],
                   env={**c["env"], "RAY_ADDRESS": c["gcs"]}, check=True, timeout=300, cwd=REPO)

    steps = 4
    run = _submit(c, "train-ok", "python", "jobs/train_smtc.py", "--data", str(shards),
                  "--storage_path", str(root / "runs"), "--name", "submitted", "--num_workers", "2",
                  "--steps", str(steps), "--checkpoint_every", "2", "--log_every", "2", "--resolution", "64",
                  "--num_slots", "4", "--num_instance", "2", "--batch_size", "2", "--clips_per_video", "2",
                  "--grad_iter", "0")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert _status(c, "train-ok").endswith("succeeded")
    checkpoints = sorted(p for p in (root / "runs" / "submitted").glob("checkpoint_*") if p.is_dir())
    assert checkpoints, run.stdout[-4000:]
    assert load_checkpoint_state(checkpoints[-1])["step"] == steps
    assert f"finished submitted at step {steps} of {steps}" in run.stdout
    assert "global batch 4 clips per step (2 workers x 2), lr 2e-05" in run.stdout  # said before Ray starts
    assert "warning: SMTC: no --dino_path" in run.stdout

    bad = _submit(c, "train-bad", "python", "jobs/train_smtc.py", "--no_such_flag", "1")
    assert bad.returncode != 0
    assert "failed" in _status(c, "train-bad")
    assert "unrecognized arguments: --no_such_flag" in bad.stdout + bad.stderr
