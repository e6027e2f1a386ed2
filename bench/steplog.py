"""A Ray Train callback that logs each report (step, reporting workers, checkpoint, wall time) and each worker
failure as JSON lines, for the cluster benchmark and the fault-tolerance tests to read back."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import ray.train


class StepLog(ray.train.UserCallback):
    """Appends each report's step, number of reporting workers and wall time (and failures) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({**record, "t": time.time()}) + "\n")

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self._write({"step": metrics[0]["step"], "world": len(metrics), "checkpoint": checkpoint is not None})

    def after_exception(self, run_context, worker_exceptions) -> None:
        self._write({"failed_ranks": sorted(worker_exceptions)})


def records(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file (one may be half-written)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out
