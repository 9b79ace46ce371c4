"""The one place a Dask client is made: an embedded LocalCluster, an existing scheduler, or dask-kubernetes.

Everything else receives a ``distributed.Client``. Tasks that need a resource (``GPU``) must check the cluster has it
first (:func:`require_resources`): a task asking for a resource no worker has waits forever, silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from geoplantnet.core.config import ClusterConfig
from geoplantnet.core.errors import ServiceError
from geoplantnet.runtime.interrupts import SIGNALS

# distributed is imported where a cluster is made: commands import this module before checking their inputs
if TYPE_CHECKING:
    from distributed import Client, SpecCluster

log = logging.getLogger(__name__)

# After Ctrl-C or SIGTERM: how long closing the cluster and the client may take (each), workers already killed.
STOP_TIMEOUT_S = 2.0


class ClusterError(ServiceError):
    """The cluster cannot be reached, made, or lacks a resource a task needs."""


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def _children_ignore_signals() -> Iterator[None]:
    """Worker processes started in this block ignore SIGINT and SIGTERM (an ignored signal stays ignored across exec,
    and Python then installs no KeyboardInterrupt handler). Ctrl-C in a terminal signals the whole process group, and
    so do systemd and ``kill -- -PGID`` with SIGTERM: the driver alone should stop, stop its workers
    (:func:`connect`) and say so in one line, not six worker tracebacks. A worker whose driver is gone exits by itself
    (distributed watches the parent)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _local(cfg: ClusterConfig, gpus: int | None = None) -> Client:
    """An embedded cluster on 127.0.0.1: ``cfg.n_workers`` processes, or with GPUs (``gpus``: default the count torch
    sees) one worker per device, at most ``cfg.n_workers``, each pinned to its own (:func:`_pinned_gpu_cluster`)."""
    from dask.utils import parse_timedelta
    from distributed import Client, LocalCluster

    gpus = _gpu_count() if gpus is None else gpus
    options = {
        "threads_per_worker": cfg.threads_per_worker,
        "memory_limit": cfg.memory_limit,
        "host": "127.0.0.1",
        "dashboard_address": cfg.dashboard_address,
        "processes": True,
        "silence_logs": logging.ERROR,
    }
    with _children_ignore_signals():
        if not gpus:
            return Client(LocalCluster(n_workers=cfg.n_workers, **options))
        n_workers = min(cfg.n_workers, gpus)
        cluster = _pinned_gpu_cluster(gpus)(n_workers=0, resources={"GPU": 1}, **options)
        cluster.scale(n_workers)
    client = Client(cluster)
    try:
        client.wait_for_workers(n_workers, timeout=parse_timedelta(cfg.connect_timeout))
    except (TimeoutError, OSError) as exc:
        client.close()
        cluster.close()
        raise ClusterError(f"{n_workers} local GPU workers did not start: {exc}") from None
    return client


def _pinned_gpu_cluster(gpus: int) -> type:
    """A LocalCluster whose worker ``i`` sees only GPU ``i mod gpus`` (``CUDA_VISIBLE_DEVICES``, set by its nanny
    before the worker process runs anything), so every worker's ``cuda:0`` is a different device; without it every
    worker of a several-GPU machine would compute on device 0. One GPU per worker at most: a worker advertising
    ``GPU=1`` runs one GPU task at a time, which is what bounds device memory. Workers are added by ``scale`` (the
    spec of each new worker is made here), not by the constructor, which gives all of its workers one spec."""
    from distributed import LocalCluster

    class PinnedGpuCluster(LocalCluster):
        def new_worker_spec(self) -> dict:
            spec = super().new_worker_spec()
            ((name, worker),) = spec.items()
            options = dict(worker["options"])
            options["env"] = {**options.get("env", {}), "CUDA_VISIBLE_DEVICES": str(int(name) % gpus)}
            return {name: {**worker, "options": options}}

    return PinnedGpuCluster


def _address(cfg: ClusterConfig) -> Client:
    from distributed import Client

    try:
        return Client(cfg.address, timeout=cfg.connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {cfg.address}: {exc}") from None


def kubernetes_spec(cfg: ClusterConfig) -> dict:
    """The DaskCluster custom resource for ``cfg.kubernetes``: the scheduler and the CPU worker group, as ``deploy
    render`` writes it (:func:`geoplantnet.runtime.kubernetes.dask_cluster`: ``dask scheduler`` / ``dask worker``)."""
    from geoplantnet.runtime.kubernetes import dask_cluster

    return dask_cluster(cfg)


def _kubernetes(cfg: ClusterConfig) -> Client:
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        raise ClusterError(
            "cluster.kind=kubernetes needs dask-kubernetes: pip install 'geoplantnet[kubernetes]'"
        ) from None
    from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode
    from distributed import Client

    from geoplantnet.runtime.kubernetes import gpu_worker_group

    # The job's own cluster under a name of its own, created (never connected to): with the deployment's name, the
    # operator's default (create or connect) would attach to the permanent DaskCluster of `deploy render`, and closing
    # it at the end of the job would delete that cluster under every other running job.
    k = cfg.kubernetes.model_copy(update={"name": f"{cfg.kubernetes.name}-{uuid.uuid4().hex[:6]}"})
    own = cfg.model_copy(update={"kubernetes": k})
    cluster = KubeCluster(
        custom_cluster_spec=kubernetes_spec(own), namespace=k.namespace, create_mode=CreateMode.CREATE_ONLY
    )
    if k.use_gpu_workers:
        # the group's name is "<cluster>-gpu", as the gpu overlay's DaskWorkerGroup
        cluster.add_worker_group("gpu", custom_spec=gpu_worker_group(own)["spec"]["worker"])
    return Client(cluster)


def get_client(cfg: ClusterConfig) -> Client:
    """A client for the cluster ``cfg`` describes (local, existing address, or Kubernetes)."""
    makers = {"local": _local, "address": _address, "kubernetes": _kubernetes}
    client = makers[cfg.kind](cfg)
    log.info("Dask dashboard: %s", client.dashboard_link)
    return client


@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator[Client]:
    """Context manager around :func:`get_client` that closes what it made (never an external scheduler). Stopped by
    Ctrl-C or SIGTERM (a :class:`KeyboardInterrupt`), it stops at once instead (:func:`stop_now`)."""
    client = get_client(cfg)
    own = client.cluster is not None and cfg.kind != "address"
    try:
        yield client
    except KeyboardInterrupt:
        stop_now(client, own=own)
        raise
    except BaseException:
        _close(client, own=own)
        raise
    _close(client, own=own)


def _close(client: Client, *, own: bool) -> None:
    try:
        if own:
            # Workers first, then the scheduler: closing the client first makes workers log CommClosedError.
            client.cluster.close()
        client.close()
    except KeyboardInterrupt:  # stopped while closing in order
        stop_now(client, own=own)
        raise


def stop_now(client: Client, *, own: bool) -> None:
    """Stop within seconds whatever the tasks are doing (after Ctrl-C or SIGTERM): a local cluster's worker processes
    are killed, since a worker asked to close first finishes its running task (a tile: many seconds), then the
    cluster and the client are closed with short timeouts. What a killed task was writing has no marker or completion
    flag yet, so a resumed run writes it again. An external scheduler's workers are left running. Never raises."""
    from distributed import SpecCluster

    cluster = client.cluster if own else None
    dask_log = logging.getLogger("distributed")
    level = dask_log.level
    # the workers are killed on purpose: no warnings or errors about the results they held, or were sending, lost
    dask_log.setLevel(max(level, logging.CRITICAL))
    try:
        if isinstance(cluster, SpecCluster):
            with contextlib.suppress(Exception):
                _kill_workers(cluster)
        with contextlib.suppress(Exception):
            if cluster is not None:
                cluster.close(timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):
            client.close(timeout=STOP_TIMEOUT_S)
    finally:
        dask_log.setLevel(level)


def _kill_workers(cluster: SpecCluster) -> None:
    """SIGKILL the worker processes of ``cluster``'s nannies, each nanny first told not to start a new one."""
    from distributed import Nanny
    from distributed.core import Status

    for nanny in list(cluster.workers.values()):
        if not isinstance(nanny, Nanny):
            continue
        pid = nanny.pid
        # closing_gracefully: a nanny whose worker exits closes instead of restarting it (a plain attribute; the
        # event loop reads it when the exit is noticed, after this)
        nanny.status = Status.closing_gracefully
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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
