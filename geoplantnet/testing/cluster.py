"""One Dask cluster of real worker processes shared by the commands a test session runs in-process
(:func:`geoplantnet.testing.cli.run_cli`): each command connects with ``cluster.kind=address`` instead of starting
and stopping a cluster of its own (seconds each). Tests that kill workers or interrupt a run keep their own cluster."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from geoplantnet.testing.regions import SMALL_REGION


def _setting(name: str, default: str) -> str:
    return next((s.split("=", 1)[1] for s in SMALL_REGION if s.startswith(f"{name}=")), default)


@contextlib.contextmanager
def shared_cluster() -> Iterator[str]:
    """A LocalCluster sized as ``SMALL_REGION`` sizes a command's own (2 worker processes of one thread, on
    127.0.0.1); yields its scheduler address, closed after."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=int(_setting("cluster.n_workers", "2")),
        threads_per_worker=1,
        memory_limit=_setting("cluster.memory_limit", "4GiB"),
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # commands log its link
        processes=True,
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def address_sets(address: str) -> list[str]:
    """The ``--set`` overrides that make a command use the cluster at ``address``."""
    return ["cluster.kind=address", f"cluster.address={address}"]
