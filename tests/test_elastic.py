"""Elastic training and decode locality on a simulated cluster (`ray.cluster_utils.Cluster`: a 1-CPU head and
3-CPU nodes on this machine). Each training worker reserves 2 CPUs, so a node holds exactly one, and its third
CPU is left to the worker's data tasks.

- Decode locality: the data tasks of each rank run on its training worker's node (the locality audit of
  RAYTRAIN_CLIP_LOG names the node of every data task and of its rank's worker).
- Elastic: a run with --num_workers 2 --min_workers 1 loses the node of a training worker (killed) after a
  checkpoint. It goes on with one worker from that checkpoint, at the same global batch, before any node
  replaces the lost one; when a node joins, it grows back to two workers (from its latest checkpoint). Every
  step trains exactly the clips the plan gives it, whatever the number of workers. How Ray Train 2.60 gets
  there (a first try on two workers that times out, the resize check) is in docs/cluster.md.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import ray
import ray.train

from bench import steplog
from bench.steplog import StepLog, records
from conftest import packed_ytvos, private_cluster
from raytrain.config import SMTCConfig
from raytrain.checkpoints import load_checkpoint_state
from raytrain.data.plan import Plan
from raytrain.data.sources import load_source
from raytrain.data.plan import stream_config
from raytrain.train.loop import CLIP_LOG_ENV, make_trainer
from raytrain.methods.smtc import METHOD as SMTC_METHOD

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(steplog)  # StepLog runs in the Train controller

CPUS_PER_WORKER = 2
TINY = dict(resolution=32, num_slots=2, num_instance=2, batch_size=2, clips_per_video=2, grad_iter=0, lr=1e-4,
            cpus_per_worker=CPUS_PER_WORKER)


def _reports(log: Path) -> list[dict]:
    """The step reports of a StepLog (its failure records left out)."""
    return [r for r in records(log) if "step" in r]


@pytest.fixture(scope="module")
def cluster():
    with private_cluster({"num_cpus": 1, "include_dashboard": False}, node_cpus=(3, 3)) as c:
        yield c


@pytest.fixture(scope="module")
def shards(cluster):
    return packed_ytvos(cluster[2])


def _two_worker_nodes(c) -> None:
    """Exactly two nodes that fit a training worker (earlier tests may have removed or added some)."""
    nodes = sorted(c.worker_nodes, key=lambda n: n.node_id)
    for node in nodes[2:]:
        c.remove_node(node)
    for _ in range(2 - len(nodes)):
        c.add_node(num_cpus=3)
    c.wait_for_nodes()


def _worker_nodes() -> list[str]:
    """Node ids holding the bundles of the running Train worker group."""
    for pg in ray.util.placement_group_table().values():
        bundles = pg["bundles"]
        if pg["state"] == "CREATED" and bundles and all(b.get("CPU") == CPUS_PER_WORKER for b in bundles.values()):
            return list(pg["bundles_to_node_id"].values())
    return []


def _fit_while(cfg: SMTCConfig, log: Path, watch: Callable[[Callable[[], bool]], None]) -> Any:
    """Fit in a thread while `watch(running)` runs here: nodes can only be added from the main thread."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = make_trainer(SMTC_METHOD, cfg, callbacks=[StepLog(str(log))]).fit()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        watch(thread.is_alive)
    finally:
        thread.join(timeout=600)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _wait(what: Callable[[], Any], running: Callable[[], bool], timeout: float, what_for: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running():
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"the run {'ended' if not running() else 'went on'} without {what_for}")


def test_decode_tasks_run_on_their_trainers_node(cluster, shards, tmp_path, monkeypatch):
    c = cluster[0]
    _two_worker_nodes(c)
    clips = tmp_path / "clips"
    clips.mkdir()
    monkeypatch.setenv(CLIP_LOG_ENV, str(clips))
    monkeypatch.setenv("RAYTRAIN_BLOCK_BYTES", "1")  # blocks of three batches: a data task per four steps
    cfg = SMTCConfig(data=shards, storage_path=str(tmp_path / "runs"), name="locality", num_workers=2, steps=8,
                     checkpoint_every=8, log_every=4, max_failures=0, **TINY)
    make_trainer(SMTC_METHOD, cfg).fit()

    tasks = [json.loads(line) for f in (clips / "decode").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {t["rank"] for t in tasks} == {0, 1}
    assert len(tasks) >= 4, tasks  # two or more data tasks per rank
    trainer_node = {t["rank"]: t["consumer"] for t in tasks}
    assert len(set(trainer_node.values())) == 2  # one training worker per node
    assert set(trainer_node.values()) <= {n.node_id for n in c.worker_nodes}
    off = [t for t in tasks if t["node"] != trainer_node[t["rank"]]]
    assert not off, f"data tasks ran away from their training worker's node: {off}"


def test_an_elastic_run_goes_on_without_a_lost_node_and_grows_back(cluster, shards, tmp_path, monkeypatch):
    c = cluster[0]
    _two_worker_nodes(c)
    clips = tmp_path / "clips"
    clips.mkdir()
    monkeypatch.setenv(CLIP_LOG_ENV, str(clips))
    monkeypatch.setenv("RAYTRAIN_RESIZE_INTERVAL_S", "1")  # the check for room for more workers (default 60 s)
    # Train first tries to restart on two workers (see docs/cluster.md): this bounds that try (default 60 s;
    # the test cluster's 600 s is meant for slow starts on a busy machine).
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
    # Train takes each report at its next poll of the workers (every 2 s), so a step takes 2 s or more: the node
    # joins by step 6 or so, and the run grows back in 40 s at most (the resize check sees the node within 20 s),
    # well before step 32.
    steps, every = 32, 3
    cfg = SMTCConfig(data=shards, storage_path=str(tmp_path / "runs"), name="elastic", num_workers=2,
                     min_workers=1, steps=steps, checkpoint_every=every, log_every=1, max_failures=2, **TINY)
    log = tmp_path / "reports.jsonl"
    ev: dict[str, Any] = {}

    def watch(running: Callable[[], bool]) -> None:
        def mid_interval() -> bool:  # a step after the first checkpoint, both workers up
            reports = _reports(log)
            first = next((r["step"] for r in reports if r["checkpoint"]), None)
            return bool(first and reports[-1]["step"] > first and len(_worker_nodes()) == 2)

        _wait(mid_interval, running, 600, "a report after the first checkpoint")
        victim = next(n for n in c.worker_nodes if n.node_id in _worker_nodes())
        ev["loss"] = time.time()
        c.remove_node(victim, allow_graceful=False)
        _wait(lambda: len([r for r in _reports(log) if r["t"] > ev["loss"] and r["world"] == 1]) >= 2, running,
              600, "two steps on one worker after the node loss")
        ev["return"] = time.time()
        c.add_node(num_cpus=3)

    result = _fit_while(cfg, log, watch)

    reports = _reports(log)
    # A report is timed when the controller hears it: one in flight when the node went may come after ev["loss"]
    # and still be a two-worker step (seen: step 5 heard after the loss, the checkpoint at 3).
    first_alone = next(i for i, r in enumerate(reports) if r["world"] == 1)
    back = next((i for i, r in enumerate(reports) if r["t"] > ev["return"]), len(reports))
    before, alone, after = reports[:first_alone], reports[first_alone:back], reports[back:]
    assert {r["world"] for r in before} == {2} and all(r["t"] > ev["loss"] for r in alone)
    # Went on with one worker from the last checkpoint, before any node came back.
    loss_checkpoint = max(r["step"] for r in before if r["checkpoint"])
    assert alone[0]["step"] == loss_checkpoint + 1 and {r["world"] for r in alone} == {1}
    assert before[-1]["step"] - loss_checkpoint < every  # steps trained twice: fewer than a checkpoint interval
    # Grew back to two workers once the node joined, from the latest checkpoint, and ran to the planned step.
    grown = next((i for i, r in enumerate(after) if r["world"] == 2), None)
    assert grown is not None, f"still one worker after the node joined: {after}"
    resize_checkpoint = max(r["step"] for r in reports[:len(before) + len(alone) + grown] if r["checkpoint"])
    assert after[grown]["step"] == resize_checkpoint + 1
    assert {r["world"] for r in after[grown:]} == {2} and after[-1]["step"] == steps
    state = load_checkpoint_state(result.checkpoint.path)
    assert state["step"] == steps and state["starts"] == [0, loss_checkpoint, resize_checkpoint]
    assert state["sampler"]["global_batch_size"] == 4

    # Every step trained exactly its planned clips: each worker its slice of the same global batch of 4.
    plan = Plan(load_source([shards]), stream_config(SMTC_METHOD, cfg, 0, 1))
    trained: dict[int, set[tuple[int, int]]] = {}  # step -> (world size, rank) of the records
    for f in clips.glob("*.jsonl"):
        for r in map(json.loads, f.read_text().splitlines()):
            world, rank, step = r["world_size"], r["rank"], r["step"]
            share = plan.global_batch(step)[rank * 4 // world:(rank + 1) * 4 // world]
            assert r["positions"] == [x.position for x in share], (step, world, rank)
            assert r["videos"] == [x.video_ordinal for x in share], (step, world, rank)
            assert r["frames"] == [list(x.frame_idx) for x in share], (step, world, rank)
            trained.setdefault(step, set()).add((world, rank))
    assert sorted(trained) == list(range(steps))
    assert all({(1, 0)} <= ranks or {(2, 0), (2, 1)} <= ranks for ranks in trained.values())
    assert any((1, 0) in ranks for ranks in trained.values())

    t_alone, t_grown = alone[0]["t"] - ev["loss"], after[grown]["t"] - ev["return"]
    print(f"\nnode lost at step {before[-1]['step']}: first step on one worker (step {alone[0]['step']}, from "
          f"checkpoint {loss_checkpoint}) {t_alone:.1f} s later; node back at step {alone[-1]['step']}: first "
          f"step on two workers (step {after[grown]['step']}, from checkpoint {resize_checkpoint}) "
          f"{t_grown:.1f} s later")
