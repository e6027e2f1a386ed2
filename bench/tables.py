"""What every benchmark shares: timing (wall and CPU), its Markdown tables, and `--json` rows.

Benchmarks import it as `bench.tables` (`bench/` is part of the installed package set; on the GPU machine
`bench/gpu_check.sh` puts the repository on PYTHONPATH).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Iterable, Sequence


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn(), wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def best_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """The fastest wall time of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return min(timed(fn)[1] for _ in range(max(repeats, 1)))


def fmt(value: Any) -> str:
    """A cell: floats to 3 significant digits, the rest as they are."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The rows as a Markdown table (columns: the first row's keys unless given)."""
    cols = list(columns or rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows])


def save_json(path: str, rows: Iterable[dict[str, Any]], **common: Any) -> None:
    """Append each row, with the `common` fields, as one JSON line to `path` ("-": stdout; "": nowhere)."""
    if not path:
        return
    lines = [json.dumps({**common, **r}) + "\n" for r in rows]
    if path == "-":
        sys.stdout.writelines(lines)
        return
    with open(path, "a") as f:
        f.writelines(lines)
