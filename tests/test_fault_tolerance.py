"""Fault tolerance on a simulated multi-node cluster (`ray.cluster_utils.Cluster`: a 1-CPU head and three
3-CPU nodes on this machine):

- a node holding a training worker is removed after the first checkpoint: the run restarts its worker group
  on the surviving nodes, resumes from the last checkpoint, retrains at most a checkpoint interval and ends at
  the planned step; the recovery time (node removal -> first step after the resume) is printed;
- a Tune trial whose training worker dies (RAYTRAIN_INJECT_FAILURE, no Train-level restarts) is retried by
  Tune, resumes its Train run from the checkpoint and completes.

Each training worker reserves 2 CPUs, so no node can hold both workers of a run: they land on different nodes
and the third CPU of a node is left to the data tasks.
"""
from __future__ import annotations

import threading
import time

import pytest
import ray
import ray.train

from bench import steplog
from bench.steplog import StepLog, records
from conftest import packed_ytvos, private_cluster
from raytrain.config import parse
from raytrain.config import SMTCConfig
from raytrain.config import SMTCSweepConfig
from raytrain.checkpoints import load_checkpoint_state
from raytrain.train.loop import FAILURE_ENV, make_trainer
from raytrain.tune import run_sweep
from raytrain.methods.smtc import METHOD as SMTC_METHOD

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(steplog)  # StepLog runs in the Train controller

TINY = dict(resolution=64, num_slots=4, num_instance=2, batch_size=2, clips_per_video=2, grad_iter=0, lr=1e-4)


@pytest.fixture(scope="module")
def cluster():
    with private_cluster({"num_cpus": 1, "include_dashboard": False}, node_cpus=(3, 3, 3)) as c:
        yield c


@pytest.fixture(scope="module")
def shards(cluster):
    return packed_ytvos(cluster[2])


def _worker_nodes() -> set[str]:
    """Node ids holding the bundles of the running Train worker group (2 x {"CPU": 2})."""
    for pg in ray.util.placement_group_table().values():
        if pg["state"] == "CREATED" and pg["bundles"] and all(b.get("CPU") == 2.0 for b in pg["bundles"].values()):
            return set(pg["bundles_to_node_id"].values())
    return set()


def test_training_survives_the_loss_of_a_node(cluster, shards, tmp_path):
    c, nodes, _ = cluster
    steps, every = 7, 3
    cfg = SMTCConfig(data=shards, storage_path=str(tmp_path / "runs"), name="node-loss", num_workers=2,
                     cpus_per_worker=2, steps=steps, checkpoint_every=every, log_every=1, max_failures=2, **TINY)
    log = tmp_path / "reports.jsonl"
    removed: dict = {}

    def remove_a_worker_node() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            reports = [r for r in records(log) if "step" in r]
            first_checkpoint = next((r["step"] for r in reports if r["checkpoint"]), None)
            if first_checkpoint and reports[-1]["step"] > first_checkpoint:  # mid-way between checkpoints
                held = _worker_nodes()
                victims = [n for n in nodes if n.node_id in held]
                if len(held) == 2 and victims:
                    removed["t"] = time.time()
                    removed["step"] = reports[-1]["step"]
                    removed["node"] = victims[0].node_id
                    c.remove_node(victims[0], allow_graceful=False)
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=remove_a_worker_node, daemon=True)
    watcher.start()
    result = make_trainer(SMTC_METHOD, cfg, callbacks=[StepLog(str(log))]).fit()
    watcher.join(timeout=5)

    assert "t" in removed, "the run ended before a worker's node could be removed"
    logged = records(log)
    failure = next(i for i, r in enumerate(logged) if "failed_ranks" in r)
    before = [r for r in logged[:failure] if "step" in r]
    after = [r for r in logged[failure:] if "step" in r]
    last_checkpoint = max(r["step"] for r in before if r["checkpoint"])
    # Resumed right after the last checkpoint, on the surviving nodes, and ran to the planned step.
    assert after[0]["step"] == last_checkpoint + 1
    assert [r["step"] for r in after] == list(range(last_checkpoint + 1, steps + 1))
    assert before[-1]["step"] - last_checkpoint < every  # steps trained twice: fewer than a checkpoint interval
    assert load_checkpoint_state(result.checkpoint.path)["step"] == steps
    recovery = after[0]["t"] - removed["t"]
    detected = logged[failure]["t"] - removed["t"]
    print(f"\nnode removed at step {removed['step']}; failure seen by the controller after {detected:.1f} s; "
          f"first step after the resume (step {after[0]['step']}, from checkpoint {last_checkpoint}) "
          f"{recovery:.1f} s after the node removal; {before[-1]['step'] - last_checkpoint} step(s) retrained")


def test_tune_trial_is_retried_from_its_checkpoint(cluster, shards, tmp_path):
    c = cluster[0]
    marker = tmp_path / "killed"
    cfg = parse(SMTCSweepConfig, [
        "--data", shards, "--storage_path", str(tmp_path / "sweeps"), "--name", "retry", "--num_samples", "1",
        "--num_slots", "4", "--num_instance", "2", "--gap", "2", "--lr", "1e-4", "--resolution", "64",
        "--batch_size", "2", "--clips_per_video", "2", "--grad_iter", "0", "--steps", "8",
        "--checkpoint_every", "2", "--num_workers", "1", "--metric", "loss", "--mode", "min",
        "--max_failures", "0", "--trial_failures", "1"])
    # The training worker (rank 0) dies once, after training step 5; with no Train-level restarts the trial
    # fails and Tune retries it. The controller registers a report when it next polls the workers, so the
    # poll is made short here: the checkpoint of step 4 must be registered before the worker dies.
    ray.shutdown()
    ray.init(address=c.address, log_to_driver=False, runtime_env={"env_vars": {
        FAILURE_ENV: f"5:0:{marker}", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}})
    try:
        results, best = run_sweep(SMTC_METHOD, cfg)
    finally:
        ray.shutdown()
        ray.init(address=c.address, log_to_driver=False)

    assert marker.exists(), "the failure was not injected"
    (trial,) = list(results)
    assert trial.error is None
    assert trial.metrics["step"] == 8 and best["status"] == "done"
    assert load_checkpoint_state(trial.metrics["checkpoint_path"])["step"] == 8
    # TensorBoard of the trial's Train run, one event file per attempt: the retry resumed from a checkpoint
    # of the first attempt (step 4, or step 2 if the controller had not polled the last report yet), not
    # from scratch, and went on to step 8 (reports every 2 steps).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted((tmp_path / "sweeps" / "retry" / "train" / "trial_000" / "tensorboard").glob("events.*"))
    steps = [sorted({e.step for e in EventFileLoader(str(f)).Load() if e.summary.value}) for f in files]
    first, retry = steps
    resumed_at = retry[0] - 2
    assert resumed_at in first and first[-1] - resumed_at <= 2
    assert retry == list(range(resumed_at + 2, 9, 2))
