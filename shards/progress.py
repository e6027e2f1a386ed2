"""Progress of long command-line work: a tqdm bar on a terminal, plain periodic lines in a log.

    with Progress(len(videos), "eval", unit="video") as bar:
        for v in videos:
            ...
            bar.update(note=v.id)
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from tqdm import tqdm


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class Progress:
    """Counts done out of `total`. On a terminal: a tqdm bar (counts, rate, ETA). Otherwise one line
    `[desc] done/total units, rate, elapsed, ETA (note)` at each tenth of the work (the last one included)
    and every `every` seconds, written to `stream` or handed to `log`."""

    def __init__(self, total: int, desc: str, unit: str = "item", every: float = 30.0,
                 stream: TextIO | None = None, log: Callable[[str], None] | None = None):
        self.total, self.desc, self.unit, self.every, self.log = total, desc, unit, every, log
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last = time.perf_counter()
        self._next_tenth = 1
        tty = log is None and self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream) if tty else None

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        tenth = self.total > 0 and self.done * 10 >= self._next_tenth * self.total
        if tenth or now - self.last >= self.every or self.done == self.total:
            while self.total > 0 and self.done * 10 >= self._next_tenth * self.total:
                self._next_tenth += 1
            self.last = now
            if self.log is not None:
                self.log(self.line(note))
            else:
                print(self.line(note), file=self.stream, flush=True)

    def line(self, note: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        parts = [f"[{self.desc}] {self.done}/{self.total} {self.unit}s", f"{rate:.2f} {self.unit}s/s",
                 f"{_duration(elapsed)} elapsed"]
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {_duration(eta)}")
        return ", ".join(parts) + (f" ({note})" if note else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
