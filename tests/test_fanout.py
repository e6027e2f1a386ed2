"""shards.fanout.fan_out, the one fan-out of pack, the scorer and the evaluation pool, on a private Ray: results in
item order, the largest out first, at most `slots` in flight, a retry on request, the user's error raised as it
is, a word while nothing finishes."""
from __future__ import annotations

import time

import pytest
import ray

from shards.errors import UserError
from shards.fanout import fan_out


@ray.remote(num_cpus=0)
def _work(i: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    if i < 0:
        raise UserError(f"item {i}: bad input")
    return i * i


@ray.remote(num_cpus=0)
class _Counter:
    def __init__(self) -> None:
        self.now = self.most = 0

    def enter(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def leave(self) -> None:
        self.now -= 1

    def peak(self) -> int:
        return self.most


@ray.remote(num_cpus=0)
def _counted(i: int, counter) -> int:
    ray.get(counter.enter.remote())
    time.sleep(0.2)
    ray.get(counter.leave.remote())
    return i


def test_results_in_order_largest_first_and_bounded(ray_local):
    submitted, arrived = [], []

    def submit(i: int):
        submitted.append(i)
        return _work.remote(i)

    out = fan_out(6, submit, slots=2, cost=lambda i: [3, 9, 1, 7, 5, 2][i], on_result=lambda i, v: arrived.append(i))
    assert out == [0, 1, 4, 9, 16, 25]
    assert submitted == [1, 3, 4, 0, 5, 2]  # by cost, largest first
    assert sorted(arrived) == list(range(6))
    counter = _Counter.remote()
    assert fan_out(6, lambda i: _counted.remote(i, counter), slots=2) == list(range(6))
    assert ray.get(counter.peak.remote()) == 2


def test_a_retry_on_request_and_the_users_error_as_it_is(ray_local):
    tries = []

    def submit(i: int):
        tries.append(i)
        return _work.remote(-1 if len(tries) == 1 else i)  # the first call fails

    assert fan_out(1, submit, on_error=lambda i, e: True) == [0]
    assert tries == [0, 0]
    with pytest.raises(UserError, match="^item -1: bad input$"):
        fan_out(2, lambda i: _work.remote(-1))


def test_a_word_while_nothing_finishes(ray_local):
    stalls = []
    assert fan_out(1, lambda i: _work.remote(3, 1.5), stall_s=0.5,
                   on_stall=lambda running, since: stalls.append((running, since))) == [9]
    assert stalls and all(running == [0] for running, _ in stalls)
    assert stalls[-1][1] > stalls[0][1]
