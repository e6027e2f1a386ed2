"""The steps of bench/gpu_check.sh, run one by one, and the Markdown file they make.

Each step is a subprocess under `bench/gpu/without_ray.py` (the GPU machine has no Ray) with its own time cap, all
of them inside one budget (default 450 s, so the whole check ends within 8 minutes). A step that fails or
runs out of time is marked so in the table and the check goes on. Results reach this script as JSON lines
(`--json` of each bench) and as pytest's JUnit XML; their output goes to gpu_check.log.

Writes gpu_check.md and gpu_check.log to $OUT (default: the current folder). Start it through
bench/gpu_check.sh, which checks for a GPU and installs the wheels that travel with the tree.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
TIMM_VIT_S = 1053  # img/s, ViT-S/16 training at 224² with AMP on an RTX 3090 (timm's published benchmark)
TIMM_AT_256 = TIMM_VIT_S * 196 / 256  # the same per token: 196 patches at 224², 256 at 256²
XMEM_FPS = (22.6, 33.9)  # XMem on DAVIS, 2080 Ti: fp32, AMP


def steps(smoke: bool, rows: str, junit: str) -> list[tuple[str, list[str], int]]:
    """(name, argv after `python bench/gpu/without_ray.py`, time cap in seconds), most important first."""
    pytest = ["-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", f"--junitxml={junit}",
              "-o", "junit_family=xunit1", "-p", "no:cacheprovider"]
    if smoke:
        return [
            ("pytest -m gpu", pytest, 60),
            ("SMTC step", ["bench/smtc_step.py", "--cpu_batch", "1", "--steps", "1", "--warmup", "1", "--resolution",
                           "32", "--num_slots", "4", "--num_instance", "2", "--num_frames", "2", "--json", rows], 60),
            ("STMAE step and inference", ["bench/stmae_step.py", "--device", "cpu", "--batch", "1", "--size", "32",
                                          "--num_frames", "2", "--num_ref_frames", "1", "--steps", "1", "--warmup",
                                          "0", "--video_frames", "2", "--video_size", "32", "56", "--variants",
                                          "raytrain", "--json", rows], 60),
            ("decode and data wait", ["bench/gpu/gpu_decode.py", "--tiny", "--device", "cpu", "--json", rows], 60),
            ("profile", ["bench/gpu/gpu_profile.py", "--model", "smtc", "stmae", "--tiny", "--device", "cpu", "--warmup",
                         "0", "--steps", "1", "--profile_steps", "1", "--top", "3", "--trials", "channels_last",
                         "compile", "--compile_backend", "eager", "--json", rows], 90),
        ]
    return [
        ("pytest -m gpu", pytest, 120),
        ("SMTC step", ["bench/smtc_step.py", "--cpu_batch", "0", "--cuda_batch", "32", "--steps", "5", "--warmup", "3",
                       "--json", rows], 60),
        ("STMAE step and inference", ["bench/stmae_step.py", "--device", "cuda", "--batch", "8", "--steps", "5",
                                      "--warmup", "2", "--video_frames", "60", "--json", rows], 90),
        ("decode and data wait", ["bench/gpu/gpu_decode.py", "--json", rows], 80),
        ("profile", ["bench/gpu/gpu_profile.py", "--model", "smtc", "stmae", "--json", rows], 150),
    ]


def run_steps(plan: list[tuple[str, list[str], int]], budget: float, log: Path, env: dict[str, str]
              ) -> dict[str, str]:
    """Run each step within its cap and what is left of `budget`; its status: ok, failed (...), timed out."""
    status, start = {}, time.monotonic()
    with open(log, "a") as out:
        for name, argv, cap in plan:
            left = budget - (time.monotonic() - start)
            if left < 10:
                status[name] = "not run: out of time"
                continue
            limit = min(cap, left)
            out.write(f"\n===== {name}: {' '.join(argv)} (cap {limit:.0f} s)\n")
            out.flush()
            t0 = time.monotonic()
            try:
                rc = subprocess.run([sys.executable, "bench/gpu/without_ray.py", *argv], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=limit).returncode
                status[name] = "ok" if rc == 0 else f"failed (exit {rc}; see gpu_check.log)"
            except subprocess.TimeoutExpired:
                status[name] = f"timed out after {limit:.0f} s (rows measured before are kept)"
            status[name] += f", {time.monotonic() - t0:.0f} s"
            print(f"gpu_check: {name}: {status[name]}", flush=True)
    return status


def junit_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = tag if tag == "skipped" else f"{tag}: {(node.get('message') or '')[:120]}"
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"name": case.get("name"), "outcome": outcome, "properties": props})
    return tests


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _number(text: str) -> str:
    try:
        return _fmt(float(text))
    except ValueError:
        return text


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows)]


def report(rows: list[dict[str, Any]], tests: list[dict[str, Any]], status: dict[str, str], smoke: bool) -> str:
    def by(bench: str) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("bench") == bench]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke run: tiny sizes, no GPU)"
    lines = [f"# GPU check{' (CPU smoke run: sizes are tiny, numbers mean nothing)' if smoke else ''}", "",
             f"{device}; {os.cpu_count()} cores; torch {torch.__version__}; Python {platform.python_version()}; "
             f"{datetime.datetime.now().isoformat(timespec='minutes')}.", "",
             "## Checks and step benchmarks", ""]
    table: list[list[Any]] = []
    for t in tests:
        props = ", ".join(f"{k} {_number(v)}" for k, v in t["properties"].items())
        table.append([f"test `{t['name']}`", t["outcome"] + (f" ({props})" if props else ""), "tests/test_gpu.py"])
    if not tests:
        table.append(["`pytest -m gpu`", status.get("pytest -m gpu", "not run"), ""])
    for r in by("smtc_step"):
        table.append([f"SMTC step, {r['device']} {r['precision']}, batch {r['batch']}",
                      f"{_fmt(r['s/step'])} s/step, {_fmt(r['clips/s'])} clips/s, {_fmt(r['images/s'])} student "
                      f"images/s, peak {_fmt(r['peak MiB'])} MiB",
                      f"timm ViT-S/16 training: {TIMM_VIT_S} img/s at 224² (AMP, RTX 3090), "
                      f"{TIMM_AT_256:.0f} at 256²"])
    for r in by("matching"):
        table.append([f"batched Hungarian, {r['device']}, {r['problems']} problems of 4×4",
                      f"{_fmt(r['batched ms'])} ms, same assignments as scipy: {r['same assignments']}",
                      f"scipy loop {_fmt(r['scipy loop ms'])} ms ({_fmt(r['speed-up'])}× faster)"])
    for r in by("stmae_step"):
        table.append([f"STMAE step ({r['variant']} encoding), {r['device']}, batch {r['batch']}, {r['num_frames']} "
                      f"frames, {r['size']}²", f"{_fmt(r['s_per_step'])} s/step, {_fmt(r['clips_per_s'])} clips/s, "
                      f"peak {_fmt(r['peak_gib'])} GiB", "upstream: every frame encoded with autograd"])
    for r in by("stmae_inference"):
        table.append([f"STMAE inference, {r['height']}×{r['width']}, {r['frames']} frames, "
                      f"{'bf16' if r['amp'] else 'fp32'}", f"{_fmt(r['frames_per_s'])} frames/s",
                      f"XMem: {XMEM_FPS[0]} FPS fp32 / {XMEM_FPS[1]} AMP (2080 Ti)"])
    for r in by("decode"):
        per_core = f", {_fmt(r['frames/s'] / r['processes'])} per process" if r["processes"] > 1 else ""
        table.append([r["what"], f"{_fmt(r['frames/s'])} frames/s{per_core}",
                      "480p JPEG → 256² (smoke: 64 px → 32²)"])
    for r in by("data_wait"):
        table.append([f"SMTC data wait, --decode {r['mode']} ({r['loader workers']} loader workers), batch "
                      f"{r['batch']}", f"{100 * r['data wait']:.1f} % of step time, {_fmt(r['s/step'])} s/step",
                      "target ≤ 5 %; DataLoader stand-in for Ray Data"])
    lines += _table(["check", "result", "reference"], table)
    lines += ["", "Steps: " + "; ".join(f"{k}: {v}" for k, v in status.items()) + ".", "", "## Profile", ""]
    for model in ("smtc", "stmae"):
        kernels = [r for r in by("profile") if r["model"] == model and r["section"] == "kernels"]
        trials = [r for r in by("profile") if r["model"] == model and r["section"] == "trial"]
        if not kernels and not trials:
            lines += [f"{model.upper()}: no profile ({status.get('profile', 'not run')}).", ""]
            continue
        lines += [f"**{model.upper()}**, top kernels by self device time:", ""]
        lines += _table(["kernel", "ms/step", "share", "calls/step"],
                        [[f"`{r['kernel']}`", r["ms/step"], f"{100 * r['share']:.1f} %", r["calls/step"]]
                         for r in kernels])
        eager = next((r["s/step"] for r in trials if r["trial"] == "eager"), None)
        lines += ["", f"**{model.upper()}** trials:", ""]
        lines += _table(["trial", "s/step", "vs eager", "first step s (holds compilation)"],
                        [[r["trial"], r["s/step"], f"{eager / r['s/step']:.2f}×" if eager else "", r["first step s"]]
                         for r in trials])
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="every step at a tiny size on the CPU")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together")
    args = p.parse_args()
    out = Path(os.environ.get("OUT") or ".").resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.cpu_smoke:
        env["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend
    with tempfile.TemporaryDirectory() as tmp:
        rows_file, junit = Path(tmp) / "rows.jsonl", Path(tmp) / "junit.xml"
        status = run_steps(steps(args.cpu_smoke, str(rows_file), str(junit)), args.budget, log, env)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
        text = report(rows, junit_results(junit), status, args.cpu_smoke)
    (out / "gpu_check.md").write_text(text)
    print(text)
    print(f"gpu_check: wrote {out / 'gpu_check.md'} and {log}")


if __name__ == "__main__":
    main()
