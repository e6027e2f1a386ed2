"""Starting or joining Ray, for every command that uses it (pack, training, evaluation, scoring, sweeps).

A command joins the cluster it was given (`RAY_ADDRESS`, or the one `ray start` recorded on this machine) and
otherwise starts a private Ray; it never attaches to a Ray it was not given, such as another program's.
"""
from __future__ import annotations

import os
import socket

from .errors import UserError


def cluster_address() -> str | None:
    """The cluster a job may join: `RAY_ADDRESS` (set by `ray job submit`, or by the user), else the one
    `ray start` recorded on this machine (its address file), else None.

    Ray's own `address="auto"` would also attach to any Ray process it finds on the machine, such as another
    program's private instance; a job must not.
    """
    from ray._private.utils import read_ray_address

    return os.environ.get("RAY_ADDRESS") or read_ray_address() or None


def _answers(address: str, timeout: float = 5.0) -> bool:
    """Whether anything accepts a connection at a `host:port` address (other forms, e.g. ray://, are left to
    Ray)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def init_ray(extra_cpus: int = 0) -> None:
    """Join the cluster this job was submitted to (or one started with `ray start`), else start a private one.

    A private Ray gets a few more logical CPUs than the machine has, so that data tasks can run next to the
    training workers, which hold one CPU each. It starts with its dashboard, whose state API Train needs:
    Train frees the placement group of a trial that ASHA stopped only through it (without it a sweep
    stalls), and its placement-group cleaner warns every few seconds when it cannot reach it.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    address = cluster_address()
    if address is not None and not _answers(address):  # Ray itself would retry for minutes
        if os.environ.get("RAY_ADDRESS"):
            raise UserError(f"RAY_ADDRESS={address}: no Ray cluster answers there")
        print(f"the Ray cluster that `ray start` recorded ({address}) does not answer: starting a private one",
              flush=True)
        address = None
    if address is not None:
        try:
            ray.init(address=address)
            return
        except ConnectionError:
            if os.environ.get("RAY_ADDRESS"):
                raise UserError(f"RAY_ADDRESS={address}: no Ray cluster answers there") from None
            # a `ray start` cluster that has been stopped since: start a private one
    # Ray's state API (Train's placement-group cleaner uses it) finds "the" cluster by itself and fails where
    # another program runs a Ray too: point it, and every process of this Ray, at this one's dashboard.
    port = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=(os.cpu_count() or 1) + extra_cpus, include_dashboard=True,
             dashboard_port=port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
