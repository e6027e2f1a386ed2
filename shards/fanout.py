"""Fanning work out over Ray (tasks or actor calls): the largest items first, a bounded number in flight, each
result as it arrives, a word while nothing finishes, and an error the user can act on raised as it is.

`pack` (shard tasks), the scorer (sequence tasks) and the evaluation pool (video calls on actors) all use it.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

from .errors import find_user_error


def fan_out(count: int, submit: Callable[[int], Any], *, slots: int | None = None,
            cost: Callable[[int], float] | None = None, on_result: Callable[[int, Any], None] | None = None,
            on_error: Callable[[int, BaseException], bool] | None = None, stall_s: float = 60.0,
            on_stall: Callable[[list[int], float], None] | None = None) -> list[Any]:
    """Run `submit(i)` (an object ref) for every i in range(`count`) and return the results in index order.

    - The largest `cost(i)` go out first, so no worker is left with a long one at the end.
    - At most `slots` are in flight (None: all at once).
    - `on_result(i, value)` runs as each result arrives.
    - A call that raised goes to `on_error(i, error)`: True submits it again (first in line); otherwise the
      UserError behind it is raised as it is (`shards.errors.find_user_error`), any other error as it came.
    - While nothing finishes, `on_stall(running indices, seconds since the last result)` runs every `stall_s`
      (it may raise to give up).
    """
    import ray

    order = deque(sorted(range(count), key=lambda i: -cost(i)) if cost else range(count))
    results: list[Any] = [None] * count
    running: dict[Any, int] = {}
    last = time.monotonic()
    while order or running:
        while order and (slots is None or len(running) < slots):
            i = order.popleft()
            running[submit(i)] = i
        ready, _ = ray.wait(list(running), num_returns=1, timeout=stall_s)
        if not ready:
            if on_stall is not None:
                on_stall(sorted(running.values()), time.monotonic() - last)
            continue
        last = time.monotonic()
        i = running.pop(ready[0])
        try:
            results[i] = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - handed to on_error, else raised below
            if on_error is not None and on_error(i, e):
                order.appendleft(i)
                continue
            raise (find_user_error(e) or e) from None
        if on_result is not None:
            on_result(i, results[i])
    return results
