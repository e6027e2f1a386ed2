"""Elastic training and decode locality on a simulated cluster: what losing a node costs a run, and how many
bytes of decoded clips cross nodes per training step.

    python bench/cluster.py [--start_timeouts 60 15] [--replace_after 60] [--locality_modes spread node] [--json FILE]

One run starts a `ray.cluster_utils.Cluster` on this machine (a 1-CPU head and two 3-CPU nodes; a training
worker reserves 2 CPUs, so a node holds exactly one and its third CPU is left to data tasks) and trains small
SMTC runs (32 px, 4 frames, 2 x 2 slots, 2 clips per worker and step, a checkpoint every 3 steps, a report
every step) on synthetic YouTube-VOS shards. It prints two tables:

1. Recovery after node loss. After the first checkpoint and one step more, the node of a training worker is
   removed (killed, not drained). Rows:
   - fixed: `--num_workers 2` (the baseline). It can only restart on two workers, so a node replaces the lost
     one `--replace_after` seconds later (a fast cloud replacement; minutes are common);
   - elastic, for each of `--start_timeouts`: `--num_workers 2 --min_workers 1` with Ray Train's worker-group
     start timeout (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S; Ray's default is 60 s) at that value. Once the run
     has trained two steps on one worker a node joins, and the row below it ("grows back") times the resize.
   Columns: seconds from the loss (or the node's return) to the report of the next trained step; steps trained
   twice (steps whose clips were trained before the restart and again after it: the clip log); the failed
   tries to start the worker group on two workers (timeouts, from Train's controller log); the ratio of the
   seconds to the baseline's.
2. Decoded bytes that cross nodes per step: two workers, one per node, with their data tasks spread over the
   cluster (RAYTRAIN_DECODE_LOCALITY=spread: Ray Data's default, the behaviour before; the baseline), on their
   own node (the default) and, with `--locality_modes ... prefer`, on their own node while a CPU is free there.
   Bytes are Ray's own count: the raylets' `ray_object_manager_bytes{Type="Received"}` counter (bytes an object
   manager received from another node's), summed over the nodes over the whole run (Train's start-up included),
   per step. Data tasks off their trainer's node come from the locality audit (RAYTRAIN_CLIP_LOG). These runs
   train at 64 px with RAYTRAIN_BLOCK_BYTES (`--block_kib`) at 512 KiB: every block then goes through the
   object store, as a full-size run's do (Ray returns objects of 100 KiB and less inline, which its
   object-manager counter does not see), and a data task covers six steps (the default 32 MiB blocks would
   put the whole small run in one task per worker).

Ray Train's controller polls the workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (`--health_check`, Ray's
default 2 s): a report is registered, and its time taken, at the next poll. An elastic run checks for room for
more workers every RAYTRAIN_RESIZE_INTERVAL_S (`--resize_interval`; Ray's default is 60 s).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
import ray.train

from bench.steplog import StepLog, records
from raytrain.config import SMTCConfig
from raytrain.data.pipeline import clip_bytes
from raytrain.data.plan import stream_config
from raytrain.train.loop import make_trainer
from raytrain.methods.smtc import METHOD as SMTC_METHOD
from shards.pack import pack
from shards.synth import write_ytvos

CPUS_PER_WORKER = 2
TINY = dict(resolution=32, num_slots=2, num_instance=2, batch_size=2, grad_iter=0, lr=1e-4, clips_per_video=2,
            cpus_per_worker=CPUS_PER_WORKER, checkpoint_every=3, log_every=1, max_failures=3)
TIMEOUT_MESSAGE = "worker group startup timed out"
# Decoded blocks of 100 KiB and less are returned inline to their owner (core worker RPC), not through the object
# store, and Ray counts no object-manager bytes for them. 64 px clips (48 KiB) and 512 KiB blocks put every
# block in the object store (as a full-size run's 32 MiB blocks are), six steps to a data task.
LOCALITY_RESOLUTION = 64
PLACEMENTS = {"spread": "spread over the cluster (Ray Data's default; before)",
              "node": "the trainer's node (now; RAYTRAIN_DECODE_LOCALITY=node)",
              "prefer": "the trainer's node while a CPU is free there (RAYTRAIN_DECODE_LOCALITY=prefer)"}


def attempts(folder: Path) -> list[set[int]]:
    """The steps each start of the worker group trained, in order (rank 0's files of the clip log of
    `raytrain.train.loop`: one per worker process)."""
    out = []
    for f in folder.glob("rank0-*.jsonl"):
        out.append({json.loads(line)["step"] for line in f.read_text().splitlines()})
    return sorted(out, key=min)


@contextlib.contextmanager
def sim_cluster(node_cpus: tuple[int, ...]) -> Iterator[tuple[Any, Path]]:
    """A head (1 CPU) and nodes of `node_cpus` CPUs on this machine, private (own RAY_TMPDIR), with the raylets'
    metrics exported every second; this process connected. Yields (cluster, temp folder)."""
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="rtb-", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    os.environ.update({"RAY_TMPDIR": str(root), "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "_system_config": {"metrics_report_interval_ms": 1000}})
    try:
        for n in node_cpus:
            cluster.add_node(num_cpus=n)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, root
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def received_bytes(cluster: Any) -> float:
    """Bytes the object managers of the live nodes received from other nodes (Ray's own counter)."""
    total = 0.0
    for node in [cluster.head_node, *cluster.worker_nodes]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_export_port}/metrics", timeout=10).read()
        for line in text.decode().splitlines():
            if line.startswith("ray_object_manager_bytes{") and 'Type="Received"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def worker_nodes() -> list[str]:
    """Node ids holding the bundles of the running Train worker group."""
    for pg in ray.util.placement_group_table().values():
        bundles = pg["bundles"]
        if pg["state"] == "CREATED" and bundles and all(b.get("CPU") == CPUS_PER_WORKER for b in bundles.values()):
            return list(pg["bundles_to_node_id"].values())
    return []


def controller_timeouts(root: Path) -> int:
    """Failed worker-group starts (placement-group timeouts) in the Train controller's log so far."""
    n = 0
    for path in glob.glob(str(root / "**" / "session_latest" / "logs" / "train" / "ray-train-sys-controller-*.log"),
                          recursive=True):
        with open(path, errors="replace") as f:
            n += sum(TIMEOUT_MESSAGE in line and '"ERROR"' in line for line in f)
    return n


def train(cfg: SMTCConfig, log: Path, watch: Callable[[], None]) -> None:
    """Fit in a thread while `watch` runs here (nodes can only be added from the main thread)."""
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            make_trainer(SMTC_METHOD, cfg, callbacks=[StepLog(str(log))]).fit()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    watch()
    thread.join()
    if "error" in box:
        raise box["error"]


def wait_for(what: Callable[[], Any], timeout: float = 900, what_for: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError(f"waited {timeout:.0f} s for {what_for}")


def node_loss_run(cluster: Any, root: Path, shards: str, name: str, steps: int, elastic: bool,
                  replace_after: float) -> list[dict]:
    """One run that loses a worker's node after its first checkpoint (and a step more): rows of table 1."""
    log, clips = root / f"{name}.jsonl", root / f"clips-{name}"
    clips.mkdir()
    os.environ["RAYTRAIN_CLIP_LOG"] = str(clips)
    cfg = SMTCConfig(data=shards, storage_path=str(root / "runs"), name=name, num_workers=2,
                     min_workers=1 if elastic else 0, steps=steps, **TINY)
    ev: dict[str, Any] = {}

    def watch() -> None:
        def mid_interval() -> bool:
            reports = [r for r in records(log) if "step" in r]
            first = next((r["step"] for r in reports if r["checkpoint"]), None)
            return bool(first and reports[-1]["step"] > first and len(worker_nodes()) == 2)

        wait_for(mid_interval, what_for="a report after the first checkpoint")
        victim = next(n for n in cluster.worker_nodes if n.node_id in worker_nodes())
        ev["loss"] = time.time()
        ev["timeouts0"] = controller_timeouts(root)
        cluster.remove_node(victim, allow_graceful=False)
        if elastic:  # two steps on one worker, then a node joins
            wait_for(lambda: len([r for r in records(log) if r.get("world") == 1 and r["t"] > ev["loss"]]) >= 2,
                     what_for="two steps on one worker")
        else:
            time.sleep(replace_after)
        ev["timeouts1"] = controller_timeouts(root)
        ev["return"] = time.time()
        cluster.add_node(num_cpus=3)

    train(cfg, log, watch)
    time.sleep(1)
    reports = [r for r in records(log) if "step" in r]
    before = [r for r in reports if r["t"] < ev["loss"]]
    after = [r for r in reports if r["t"] > ev["loss"]]
    starts = attempts(clips)
    twice = [len(a & b) for a, b in zip(starts, starts[1:])]  # steps trained again by the next start
    resumed = after[0]
    rows = [{"run": "fixed (baseline)" if not elastic else "elastic", "event": "node lost",
             "at_step": before[-1]["step"], "seconds": resumed["t"] - ev["loss"], "steps_repeated": twice[0],
             "workers_after": resumed["world"], "timeouts": ev["timeouts1"] - ev["timeouts0"]}]
    if elastic:
        grown = next((r for r in reports if r["t"] > ev["return"] and r["world"] == 2), None)
        at = max(r["step"] for r in reports if r["t"] < ev["return"])
        rows.append({"run": "elastic", "event": "node returns", "at_step": at,
                     "seconds": grown["t"] - ev["return"] if grown else float("nan"),
                     "steps_repeated": twice[1] if len(twice) > 1 else 0, "workers_after": 2 if grown else 1,
                     "timeouts": controller_timeouts(root) - ev["timeouts1"]})
    return rows


def locality_run(cluster: Any, root: Path, shards: str, mode: str, steps: int) -> dict:
    """A two-worker run with the data tasks placed by `mode`: a row of table 2."""
    log, clips = root / f"loc-{mode}.jsonl", root / f"clips-loc-{mode}"
    clips.mkdir()
    os.environ["RAYTRAIN_CLIP_LOG"] = str(clips)
    os.environ["RAYTRAIN_DECODE_LOCALITY"] = mode
    cfg = SMTCConfig(data=shards, storage_path=str(root / "runs"), name=f"loc-{mode}", num_workers=2,
                     steps=steps, **{**TINY, "resolution": LOCALITY_RESOLUTION})
    time.sleep(2.5)  # the raylets export their counters every second: let the last run's settle
    before = received_bytes(cluster)
    started = time.time()
    train(cfg, log, lambda: None)
    seconds = time.time() - started
    time.sleep(2.5)
    crossed = received_bytes(cluster) - before
    tasks = [json.loads(line) for f in (clips / "decode").glob("*.jsonl") for line in f.read_text().splitlines()]
    decoded = clip_bytes(stream_config(SMTC_METHOD, cfg, 0, 1)) * cfg.batch_size * cfg.num_workers
    return {"placement": PLACEMENTS[mode], "mode": mode, "steps": steps, "decoded_kib_per_step": decoded / 1024,
            "cross_node_kib_per_step": crossed / steps / 1024,
            "data_tasks": len(tasks), "off_node": sum(t["node"] != t["consumer"] for t in tasks), "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=32, help="steps of each elastic run (it grows back on the way)")
    p.add_argument("--fixed_steps", type=int, default=12, help="steps of the fixed-size run")
    p.add_argument("--locality_steps", type=int, default=18, help="steps of each decode-locality run")
    p.add_argument("--locality_modes", nargs="*", default=["spread", "node"], choices=list(PLACEMENTS),
                   help="RAYTRAIN_DECODE_LOCALITY of each locality run (the first is the baseline)")
    p.add_argument("--start_timeouts", type=float, nargs="*", default=[60.0, 15.0],
                   help="RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S of each elastic run (none: no elastic run)")
    p.add_argument("--replace_after", type=float, default=60.0,
                   help="seconds before the fixed-size run's lost node is replaced (negative: no fixed run)")
    p.add_argument("--resize_interval", type=float, default=5.0, help="RAYTRAIN_RESIZE_INTERVAL_S")
    p.add_argument("--health_check", type=float, default=2.0, help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    p.add_argument("--block_kib", type=int, default=512,
                   help="RAYTRAIN_BLOCK_BYTES / 1024 in the locality runs (data tasks of a few steps)")
    p.add_argument("--locality_health_check", type=float, default=0.5,
                   help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S in the locality runs (it paces the steps)")
    p.add_argument("--json", default="", help="append each row as a JSON line to this file ('-': stdout)")
    a = p.parse_args(argv)

    os.environ["RAYTRAIN_RESIZE_INTERVAL_S"] = str(a.resize_interval)
    recovery: list[dict] = []
    locality: list[dict] = []
    started = time.time()
    with sim_cluster((3, 3)) as (cluster, root):
        write_ytvos(root / "yt", num_videos=6, num_frames=12, height=64, num_val=1, seed=4)
        pack(str(root / "yt"), str(root / "shards"), layout="ytvos", split="train", shard_size="60KB")
        shards = str(root / "shards")
        if a.locality_modes:
            os.environ.update({"RAYTRAIN_BLOCK_BYTES": str(a.block_kib * 1024),
                               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(a.locality_health_check)})
            for mode in a.locality_modes:
                locality.append(locality_run(cluster, root, shards, mode, a.locality_steps))
            for k in ("RAYTRAIN_DECODE_LOCALITY", "RAYTRAIN_BLOCK_BYTES"):
                os.environ.pop(k)
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(a.health_check)
        if a.replace_after >= 0:
            os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "600"  # waits for the replacement
            for row in node_loss_run(cluster, root, shards, "fixed", a.fixed_steps, False, a.replace_after):
                recovery.append({**row, "start_timeout_s": 600.0, "replace_after_s": a.replace_after})
        for timeout in a.start_timeouts:
            os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(timeout)
            for row in node_loss_run(cluster, root, shards, f"elastic-{timeout:g}", a.steps, True, 0):
                recovery.append({**row, "start_timeout_s": timeout})

    print(f"\nsimulated cluster on this machine ({os.cpu_count()} cores): a 1-CPU head and 3-CPU nodes, one training "
          f"worker ({CPUS_PER_WORKER} CPUs) per node; SMTC 32 px, 2 clips per worker and step, checkpoint every "
          f"3 steps; Train polls every {a.health_check:g} s, resize check every {a.resize_interval:g} s; "
          f"{time.time() - started:.0f} s in all\n")
    if recovery:
        base = next((r["seconds"] for r in recovery if r["run"].startswith("fixed")), None)
        print("Recovery after the node of a training worker is lost (and when a node returns)\n")
        print("| run | worker-group start timeout | event | at step | seconds to the next trained step | "
              "steps trained twice | workers after | failed starts on 2 workers | vs fixed |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in recovery:
            run = r["run"] + (f", replaced after {r['replace_after_s']:g} s" if "replace_after_s" in r else "")
            ratio = f"{r['seconds'] / base:.2f}x" if base and r["event"] == "node lost" else "-"
            print(f"| {run} | {r['start_timeout_s']:g} s | {r['event']} | {r['at_step']} | {r['seconds']:.1f} | "
                  f"{r['steps_repeated']} | {r['workers_after']} | {r['timeouts']} | {ratio} |")
    if locality:
        base = locality[0]["cross_node_kib_per_step"]
        print(f"\nDecoded clips crossing nodes: 2 workers on 2 nodes, SMTC {LOCALITY_RESOLUTION} px, blocks of "
              f"{a.block_kib} KiB and more\n")
        print("| data tasks run on | steps | decoded KiB per step | KiB received from another node per step "
              "| vs spread | data tasks off their trainer's node | run (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in locality:
            ratio = f"{r['cross_node_kib_per_step'] / base:.2f}x" if base else "-"
            print(f"| {r['placement']} | {r['steps']} | {r['decoded_kib_per_step']:.1f} | "
                  f"{r['cross_node_kib_per_step']:.1f} | {ratio} | {r['off_node']} of {r['data_tasks']} | "
                  f"{r['seconds']:.0f} |")
    if a.json:
        lines = [json.dumps({"bench": "cluster_recovery", **r}) + "\n" for r in recovery]
        lines += [json.dumps({"bench": "cluster_locality", **r}) + "\n" for r in locality]
        if a.json == "-":
            sys.stdout.writelines(lines)
        else:
            with open(a.json, "a") as f:
                f.writelines(lines)


if __name__ == "__main__":
    main()
