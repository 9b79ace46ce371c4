"""The one place a Dask client is made: an embedded LocalCluster, an existing scheduler, or dask-kubernetes.

Everything else receives a ``distributed.Client``. Tasks that need a resource (``GPU``) must check the cluster has it
first (:func:`require_resources`): a task asking for a resource no worker has waits forever, silently.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from geoplantnet.core.config import ClusterConfig
from geoplantnet.core.errors import ServiceError

# distributed is imported where a cluster is made: commands import this module before checking their inputs
if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class ClusterError(ServiceError):
    """The cluster cannot be reached, made, or lacks a resource a task needs."""


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Worker processes started in this block ignore SIGINT (an ignored signal stays ignored across exec, and
    Python then installs no KeyboardInterrupt handler). Ctrl-C in a terminal signals the whole process group: the
    driver alone should stop, close the cluster in order, and say so in one line, not six worker tracebacks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _local(cfg: ClusterConfig) -> Client:
    from distributed import Client, LocalCluster

    gpus = _gpu_count()
    # One GPU per worker at most: a worker advertising GPU=1 runs one GPU task at a time, which is what bounds memory.
    resources = {"GPU": 1} if gpus else None
    n_workers = min(cfg.n_workers, gpus) if gpus else cfg.n_workers
    with _children_ignore_sigint():
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=cfg.threads_per_worker,
            memory_limit=cfg.memory_limit,
            host="127.0.0.1",
            dashboard_address=cfg.dashboard_address,
            resources=resources,
            processes=True,
            silence_logs=logging.ERROR,
        )
    return Client(cluster)


def _address(cfg: ClusterConfig) -> Client:
    from distributed import Client

    try:
        return Client(cfg.address, timeout=cfg.connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {cfg.address}: {exc}") from None


def kubernetes_spec(cfg: ClusterConfig) -> dict:
    """The DaskCluster custom resource for ``cfg.kubernetes`` (GPU workers get ``nvidia.com/gpu`` and ``GPU=1``)."""
    try:
        from dask_kubernetes.operator import make_cluster_spec
    except ImportError:
        raise ClusterError(
            "cluster.kind=kubernetes needs dask-kubernetes: pip install 'geoplantnet[kubernetes]'"
        ) from None
    k = cfg.kubernetes
    limits: dict[str, str] = {"cpu": k.worker_cpu, "memory": k.worker_memory}
    if k.worker_gpus:
        limits["nvidia.com/gpu"] = str(k.worker_gpus)
    spec = make_cluster_spec(
        name=k.name,
        image=k.image,
        n_workers=k.n_workers,
        resources={"requests": {"cpu": k.worker_cpu, "memory": k.worker_memory}, "limits": limits},
        worker_command="dask-worker",
    )
    # make_cluster_spec gives the scheduler the workers' resources, GPU included: a scheduler needs neither.
    spec["spec"]["scheduler"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    if k.worker_gpus:
        worker["args"] = [*worker.get("args", []), "--resources", f"GPU={k.worker_gpus}"]
    worker["args"] = [*worker.get("args", []), "--nthreads", str(cfg.threads_per_worker)]
    if k.namespace:
        spec["metadata"]["namespace"] = k.namespace
    return spec


def _kubernetes(cfg: ClusterConfig) -> Client:
    from dask_kubernetes.operator import KubeCluster
    from distributed import Client

    cluster = KubeCluster(custom_cluster_spec=kubernetes_spec(cfg), namespace=cfg.kubernetes.namespace)
    return Client(cluster)


def get_client(cfg: ClusterConfig) -> Client:
    """A client for the cluster ``cfg`` describes (local, existing address, or Kubernetes)."""
    makers = {"local": _local, "address": _address, "kubernetes": _kubernetes}
    client = makers[cfg.kind](cfg)
    log.info("Dask dashboard: %s", client.dashboard_link)
    return client


@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator[Client]:
    """Context manager around :func:`get_client` that closes what it made (never an external scheduler)."""
    client = get_client(cfg)
    try:
        yield client
    finally:
        cluster = client.cluster
        if cluster is not None and cfg.kind != "address":
            # Workers first, then the scheduler: closing the client first makes workers log CommClosedError.
            cluster.close()
        client.close()


def cluster_resources(client: Client) -> dict[str, float]:
    """Total of each abstract resource (e.g. ``GPU``) over the cluster's current workers."""
    totals: dict[str, float] = {}
    for worker in client.scheduler_info(n_workers=-1)["workers"].values():
        for name, amount in (worker.get("resources") or {}).items():
            totals[name] = totals.get(name, 0.0) + float(amount)
    return totals


def require_resources(client: Client, needed: Mapping[str, float]) -> None:
    """Raise :class:`ClusterError` unless some worker offers every resource in ``needed``."""
    for worker in client.scheduler_info(n_workers=-1)["workers"].values():
        have = worker.get("resources") or {}
        if all(float(have.get(k, 0)) >= v for k, v in needed.items()):
            return
    raise ClusterError(
        f"no worker offers resources {dict(needed)} (cluster has {cluster_resources(client) or 'none'}); "
        "a task asking for them would wait forever"
    )


def task_resources(client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when the cluster has GPU workers, else ``None`` (run on CPU anywhere)."""
    return {"GPU": 1} if cluster_resources(client).get("GPU", 0) >= 1 else None
