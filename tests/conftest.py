"""Shared fixtures: a local Ray instance and small synthetic DAVIS / YouTube-VOS datasets."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# Every Ray instance a test starts, in-process or with `ray start`, runs without token auth. Set once for the
# whole session: a client and a cluster that disagree on the mode cannot talk (see shared/reference/ray.md §5).
os.environ["RAY_AUTH_MODE"] = "disabled"

from shards.pack import pack
from shards.synth import write_davis, write_ytvos

# Small enough for 2 CPU cores; tests that need other sizes call write_davis/write_ytvos themselves.
SYNTH = dict(num_videos=4, num_frames=8, height=64, max_objects=3, seed=0)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for the module (4 logical CPUs so Ray Data tasks fit next to workers)."""
    import ray
    from ray.data import DataContext

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=int(1e9), ignore_reinit_error=True,
             log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_davis(tmp_path_factory) -> Path:
    """DAVIS-2017 layout: 4 sequences (3 train, 1 val) x 8 frames, 64 x 114 px, up to 3 objects."""
    root = tmp_path_factory.mktemp("davis")
    write_davis(root, **SYNTH)
    return root


@pytest.fixture(scope="session")
def synth_ytvos(tmp_path_factory) -> Path:
    """YouTube-VOS layout: 4 videos (3 train, 1 valid with a late object) x 8 frames, 64 x 114 px."""
    root = tmp_path_factory.mktemp("ytvos")
    write_ytvos(root, **SYNTH)
    return root


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: timings and results do not depend on the machine's cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pack_synthetic(root: Path, num_videos: int, yt_frames: int, davis_frames: int, seed: int,
                   shard_size: str) -> Path:
    """Synthetic YouTube-VOS and DAVIS sets at 64 px under `root`, packed into `yt_shards` / `davis_shards`."""
    write_ytvos(root / "yt", num_videos=num_videos, num_frames=yt_frames, height=64, num_val=1, seed=seed)
    write_davis(root / "davis", num_videos=num_videos, num_frames=davis_frames, height=64, num_val=1, seed=seed)
    pack(str(root / "yt"), str(root / "yt_shards"), layout="ytvos", split="train", shard_size=shard_size)
    pack(str(root / "davis"), str(root / "davis_shards"), layout="davis", split="train", shard_size=shard_size)
    return root


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def private_cluster(head: dict, node_cpus: tuple[int, ...] = ()) -> Iterator[tuple]:
    """A `ray.cluster_utils.Cluster` (head plus nodes of `node_cpus` CPUs) with this process connected to it.

    Its processes get their own RAY_TMPDIR, which holds the cluster's address file, so nothing on the machine
    joins it by accident and its state API finds it. Train worker groups may take minutes to start on a busy
    machine. Yields (cluster, nodes, temp folder).
    """
    import ray
    from ray.cluster_utils import Cluster

    root = tempfile.mkdtemp(prefix="rtc-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    env = {"RAY_TMPDIR": root, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600"}
    if head.get("include_dashboard"):  # a free port (another Ray may hold 8265), and the state API pointed at it
        head = {"dashboard_port": _free_port(), **head}
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{head['dashboard_port']}"
    saved = {k: os.environ.get(k) for k in (*env, "RAY_ADDRESS")}
    os.environ.update(env)  # inherited by the cluster's processes
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        nodes = [cluster.add_node(num_cpus=n) for n in node_cpus]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, nodes, Path(root)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pack_serially(src: Path, out: Path, layout: str, split: str, shard_size: int = 40_000) -> None:
    """What `pack` writes (shards and index), in this process and without Ray, for tests that must not start one."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from shards.layout import list_videos
    from shards.pack import INDEX, SCHEMA, plan_shards, write_shard

    out.mkdir(parents=True)
    rows = []
    for name, videos in plan_shards(list_videos(str(src), layout, split), shard_size, f"{layout}-{split}"):
        rows += write_shard(pafs.LocalFileSystem(), str(out), name, videos, layout, split, None, "test")
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / INDEX)


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server(**server_env: str) -> Iterator[str]:
    """An S3 API server (moto's) on 127.0.0.1 and a free port, with the AWS_* settings of every client that
    this process and its children start pointed at it; yields its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", **server_env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_bucket(name: str) -> str:
    """A new bucket on the S3 server the environment points at; returns `s3://<name>`."""
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"


def packed_ytvos(root: Path) -> str:
    """A small YouTube-VOS-layout set (4 videos of 12 frames, 64p) packed into ~60 KB shards under `root`."""
    from shards.pack import pack
    from shards.synth import write_ytvos

    write_ytvos(root / "yt", num_videos=4, num_frames=12, height=64, num_val=1, seed=4)
    pack(str(root / "yt"), str(root / "shards"), layout="ytvos", split="train", shard_size="60KB")
    return str(root / "shards")
