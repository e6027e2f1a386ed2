"""bench/gpu_check.sh on this CPU machine, as CI runs it so that the GPU check cannot rot: without a GPU it says
so and exits 0; `--cpu-smoke` runs every step at a tiny size with `ray` unimportable (as on the GPU machine)
and writes both sections of its Markdown file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], out: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    r = _run(["bash", "bench/gpu_check.sh"], tmp_path, 120)
    assert r.returncode == 0, r.stderr
    assert "no CUDA GPU on this machine" in r.stdout and "nothing measured" in r.stdout
    assert not (tmp_path / "gpu_check.md").exists()


def test_without_ray_blocks_ray_imports(tmp_path):
    script = tmp_path / "imports.py"
    script.write_text("try:\n    import raytrain.data.pipeline\nexcept ImportError as e:\n    print('blocked:', e)\n")
    r = _run([sys.executable, "bench/gpu/without_ray.py", str(script)], tmp_path, 120)
    assert r.returncode == 0, r.stderr
    assert "blocked: import of ray halted" in r.stdout


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_section(tmp_path):
    r = _run(["bash", "bench/gpu_check.sh", "--cpu-smoke"], tmp_path, 600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    md = (tmp_path / "gpu_check.md").read_text()
    steps = md.split("Steps: ", 1)[1].split("\n", 1)[0]
    for step in ("pytest -m gpu", "SMTC step", "STMAE step and inference", "decode and data wait", "profile"):
        assert f"{step}: ok" in steps, (step, steps, (tmp_path / "gpu_check.log").read_text()[-3000:])
    gpu_tests = [line for line in md.splitlines() if line.startswith("| test `")]
    assert len(gpu_tests) >= 6 and all("| skipped |" in line for line in gpu_tests)  # collected, no CUDA
    for row in ("SMTC step, cpu fp32", "batched Hungarian", "STMAE step (raytrain encoding)", "STMAE inference",
                "CPU decode + resize, 1 process", "device decode + resize (cpu", "SMTC data wait, --decode cpu",
                "SMTC data wait, --decode gpu", "**SMTC**, top kernels", "**STMAE** trials"):
        assert row in md, row
    assert md.count("| compile |") == 2 and md.count("| channels_last |") == 2
