"""Per-video evaluation fanned out over a Ray actor pool, or run serially in this process.

An evaluation is three picklable pieces: `build(spec, device) -> model`, `spec` (what to build, e.g. a
state dict) and `work(model, item, device) -> VideoResult` (one video). `EvalPool` starts `num_actors`
`EvalActor`s that each build the model once (one GPU per actor when the cluster has GPUs, else CPUs), hands
them one video at a time and gathers the results in input order; `run_serial` does the same in this process.
Both call the same `work`, so per-video scores, and `raytrain.eval.davis.combine` over them, are the same.

Fault tolerance, in two layers: Ray restarts a dead actor (`max_restarts`) and retries its in-flight call
(`max_task_retries`); when an actor is gone for good, the pool kills it, starts a fresh one and resubmits the
video (up to `max_resubmits` times per video). Errors raised by `work` itself (bad data) are not retried: they
stop the evaluation with the video's name.

Inputs are read by the actors through `Video.fs` (local folders, NFS, or any URI pyarrow understands), and the
results travel back as PNG bytes, so only the driver writes outputs: no shared output folder is needed.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Any, Callable, Sequence

import torch

from raytrain.eval.video_io import VideoResult
from shards.progress import Progress
from shards.errors import UsageError, UserError
from shards.fanout import fan_out

# Bounds on waiting for Ray: actors that cannot be placed, and a video that never finishes (seconds).
START_ENV, STALL_ENV = "RAYTRAIN_EVAL_START_S", "RAYTRAIN_EVAL_STALL_S"
START_S = float(os.environ.get(START_ENV, 900))
STALL_S = float(os.environ.get(STALL_ENV, 3600))

Build = Callable[[Any, torch.device], Any]
Work = Callable[[Any, Any, torch.device], VideoResult]
Log = Callable[[str], None]


def _progress(total: int, log: Log) -> Progress:
    """Videos done: a bar on a terminal, else lines on stdout (or through `log` when one is given)."""
    return Progress(total, "eval", unit="video", stream=sys.stdout, log=None if log is print else log)


def item_name(item: Any) -> str:
    return str(getattr(item, "id", item))


def item_cost(item: Any) -> int:
    """Frames x pixels of a video (or of the video a `VOSVideo` wraps); 0 for anything else."""
    video = getattr(item, "video", item)
    return len(getattr(video, "frames", ())) * getattr(video, "height", 0) * getattr(video, "width", 0)


def _timed(work: Work, model: Any, item: Any, device: torch.device) -> VideoResult:
    start = time.perf_counter()
    result = work(model, item, device)
    result.seconds = time.perf_counter() - start
    return result


def run_serial(build: Build, spec: Any, work: Work, items: Sequence, *, device: torch.device | str = "cpu",
               on_result: Callable[[int, VideoResult], None] | None = None, log: Log = print) -> list[VideoResult]:
    """Evaluate `items` one after the other in this process (no Ray)."""
    device = torch.device(device)
    model = build(spec, device)
    results: list[VideoResult] = []
    bar = _progress(len(items), log)
    for i, item in enumerate(items):
        results.append(_timed(work, model, item, device))
        if on_result is not None:
            on_result(i, results[-1])
        bar.update(note=results[-1].name)
    bar.close()
    return results


class EvalActor:
    """Holds one model (built once, in `__init__`) and evaluates the videos it is handed."""

    def __init__(self, build: Build, spec: Any, work: Work, threads: int = 1):
        import ray

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")
        self.work = work
        self.model = build(spec, self.device)

    def ready(self) -> str:
        return str(self.device)

    def run(self, item: Any) -> VideoResult:
        return _timed(self.work, self.model, item, self.device)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def default_actors(use_gpu: bool, cpus_per_actor: float, num_items: int) -> int:
    """One actor per GPU, or per `cpus_per_actor` CPUs, never more than there are videos."""
    import ray

    resources = ray.cluster_resources()
    slots = int(resources.get("GPU", 0)) if use_gpu else int(resources.get("CPU", 1) // cpus_per_actor)
    return max(1, min(slots, num_items))


class EvalPool:
    """`num_actors` `EvalActor`s with restarts, task retries and resubmission of videos whose actor died."""

    def __init__(self, build: Build, spec: Any, work: Work, *, num_actors: int = 0, use_gpu: bool | None = None,
                 cpus_per_actor: float = 1.0, max_restarts: int = 1, max_task_retries: int = 1,
                 max_resubmits: int = 2, num_items: int | None = None, log: Log = print):
        import ray

        self.use_gpu = cluster_has_gpus() if use_gpu is None else use_gpu
        if self.use_gpu and not cluster_has_gpus():
            raise UsageError("--use_gpu: the Ray cluster has no GPUs")
        self.num_actors = num_actors or default_actors(self.use_gpu, cpus_per_actor, num_items or 1 << 30)
        self.max_resubmits = max_resubmits
        self.log = log
        # The spec (weights) goes to the object store once, not once per actor. Ray logs that restartable actors
        # have constructor arguments there; the pool holds this reference as long as its actors may restart.
        self._spec = ray.put(spec)
        self._build, self._work = build, work
        self._options = dict(num_cpus=cpus_per_actor, num_gpus=1 if self.use_gpu else 0,
                             max_restarts=max_restarts, max_task_retries=max_task_retries)
        self._threads = max(1, int(cpus_per_actor))
        start = time.perf_counter()
        self.actors = [self._start() for _ in range(self.num_actors)]
        try:
            devices = self._wait_ready(cpus_per_actor)
        except BaseException:
            self.shutdown()
            raise
        self.startup_s = time.perf_counter() - start
        log(f"[eval] {self.num_actors} actor(s) ready on {', '.join(sorted(set(devices)))} "
            f"in {self.startup_s:.1f} s")

    def _wait_ready(self, cpus_per_actor: float) -> list[str]:
        """Wait for every actor to have built its model, saying so every minute; UserError after START_S."""
        import ray

        refs, start = [a.ready.remote() for a in self.actors], time.monotonic()
        while True:
            ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=60)
            if not waiting:
                return ray.get(ready)
            waited = time.monotonic() - start
            each = f"{cpus_per_actor:g} CPU{' and 1 GPU' if self.use_gpu else ''} each"
            free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            if waited > START_S:
                raise UserError(f"{len(waiting)} of {len(refs)} evaluation actors ({each}) did not start in "
                                f"{waited:.0f} s; the Ray cluster has {free or 'nothing'} free: lower --num_actors "
                                f"or --cpus_per_actor, or add nodes ({START_ENV} waits longer)")
            self.log(f"[eval] waiting for {len(waiting)} of {len(refs)} actors ({each}; free: {free}), "
                     f"{waited:.0f} s")

    def _start(self) -> Any:
        import ray

        return ray.remote(EvalActor).options(**self._options).remote(self._build, self._spec, self._work,
                                                                     self._threads)

    def map(self, items: Sequence, on_result: Callable[[int, VideoResult], None] | None = None
            ) -> list[VideoResult]:
        """Evaluate every item; results in input order. `on_result(index, result)` runs as each one arrives.

        The largest videos (frames x pixels) go out first (`shards.fanout`), so no actor is left with a long one
        at the end.
        """
        from ray.exceptions import RayActorError, RayTaskError

        idle = deque(range(len(self.actors)))
        slot_of: dict[int, int] = {}  # item index -> the actor slot it runs on
        resubmits = [0] * len(items)
        bar = _progress(len(items), self.log)

        def submit(i: int) -> Any:
            slot_of[i] = idle.popleft()
            return self.actors[slot_of[i]].run.remote(items[i])

        def done(i: int, result: VideoResult) -> None:
            idle.append(slot_of.pop(i))
            if on_result is not None:
                on_result(i, result)
            bar.update(note=result.name)

        def failed(i: int, e: BaseException) -> bool:
            slot = slot_of.pop(i)
            if isinstance(e, RayTaskError):
                if isinstance(e.cause, UserError):  # bad input of this video: named, no traceback
                    raise UserError(f"evaluating video {item_name(items[i])!r}: {e.cause}") from None
                raise RuntimeError(f"evaluating video {item_name(items[i])!r} failed: {e.cause!r}") from e
            if not isinstance(e, RayActorError):
                return False
            resubmits[i] += 1
            if resubmits[i] > self.max_resubmits:
                raise RuntimeError(f"video {item_name(items[i])!r}: its actor died {resubmits[i]} times; "
                                   f"giving up") from e
            self.log(f"[eval] actor {slot} died while on {item_name(items[i])!r} ({type(e).__name__}); "
                     f"starting a new actor and resubmitting (attempt {resubmits[i] + 1})")
            import ray

            ray.kill(self.actors[slot], no_restart=True)
            self.actors[slot] = self._start()
            idle.append(slot)
            return True

        def stalled(running: list[int], since: float) -> None:
            names = ", ".join(item_name(items[i]) for i in running)
            if since > STALL_S:
                raise TimeoutError(f"no video finished in {since:.0f} s (running: {names}); {STALL_ENV} waits "
                                   f"longer")
            self.log(f"[eval] still running: {names} ({since:.0f} s since the last video)")

        results = fan_out(len(items), submit, slots=len(self.actors), cost=lambda i: item_cost(items[i]),
                          on_result=done, on_error=failed, stall_s=60, on_stall=stalled)
        bar.close()
        return results

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def run_videos(build: Build, spec: Any, work: Work, items: Sequence, *, num_actors: int = 0,
               use_gpu: bool | None = None, cpus_per_actor: float = 1.0, max_restarts: int = 1,
               max_task_retries: int = 1, max_resubmits: int = 2,
               on_result: Callable[[int, VideoResult], None] | None = None, log: Log = print) -> list[VideoResult]:
    """Evaluate `items` on a fresh `EvalPool` (Ray must be initialised) and shut it down."""
    pool = EvalPool(build, spec, work, num_actors=num_actors, use_gpu=use_gpu, cpus_per_actor=cpus_per_actor,
                    max_restarts=max_restarts, max_task_retries=max_task_retries, max_resubmits=max_resubmits,
                    num_items=len(items), log=log)
    try:
        return pool.map(items, on_result)
    finally:
        pool.shutdown()
