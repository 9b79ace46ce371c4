"""A rendered Kubernetes ``DaskCluster`` as containers on one host (scripts/container_cluster.py runs them).

The pods are the dask-kubernetes operator's own: its controller's builders make the scheduler and worker pod specs
from the custom resource (so the environment it injects, ``DASK_WORKER_NAME`` and ``DASK_SCHEDULER_ADDRESS``, is
there), and each container's command line is its ``command`` + ``args`` (the image has no entrypoint). Only what
Kubernetes itself would provide is substituted, because on a host network every pod shares one address:

- ``$(VAR)`` in a command or argument expands from the container's environment, as the kubelet does;
- the scheduler Service's DNS name becomes 127.0.0.1 and its port the scheduler's port on the host;
- the pod's own address (``0.0.0.0``) becomes 127.0.0.1, and each ``containerPort`` a free port on 127.0.0.1: an
  argument naming it is rewritten, and the scheduler's two default ports (comm, dashboard), which its arguments
  leave implicit, are given as ``--port`` and ``--dashboard-address``.
"""

from __future__ import annotations

import random
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"
# dask's defaults for the ports the operator's scheduler pod declares without naming them in its arguments
SCHEDULER_DEFAULT_FLAGS = {"tcp-comm": "--port", "http-dashboard": "--dashboard-address"}


@dataclass(frozen=True)
class PodRun:
    """One container to start: its name, its command line (already expanded) and its environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # containerPort name -> port on 127.0.0.1


def free_port(low: int = 22_000, high: int = 32_000) -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range (32768+): no client socket takes it before
    the container binds it (SeaweedFS's ports are below 22000 + 10000: geoplantnet.testing.s3)."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port on {LOOPBACK} in [{low}, {high})")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in a command or argument: a defined variable is replaced, ``$$`` escapes
    a ``$``, anything else is left as written."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def container_env(container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """A container's environment: ``envFrom`` Secrets first, then ``env`` (literal values and ``secretKeyRef``),
    as the kubelet orders them. ``secrets`` maps a Secret's name to its data; a missing one is an error, as an
    unresolvable reference keeps a pod from starting."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef") or {}
        if ref:
            if ref["name"] not in secrets:
                raise KeyError(f"envFrom names the Secret {ref['name']!r}, which is not given")
            env.update({f"{source.get('prefix', '')}{k}": v for k, v in secrets[ref["name"]].items()})
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif ref := (item.get("valueFrom") or {}).get("secretKeyRef"):
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def secret_names(resource: Mapping[str, Any]) -> set[str]:
    """The Secrets the scheduler's and the workers' containers take whole (``envFrom``)."""
    pods = (resource["spec"]["scheduler"]["spec"], resource["spec"]["worker"]["spec"])
    return {
        source["secretRef"]["name"]
        for pod in pods
        for container in pod["containers"]
        for source in container.get("envFrom") or []
        if source.get("secretRef")
    }


def _argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    return [expand(str(a), env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]


def _on_loopback(argv: list[str], ports: Mapping[int, int]) -> list[str]:
    """The pod's address and ports in ``argv`` as this host's: ``0.0.0.0`` -> 127.0.0.1, a containerPort (``8788``,
    ``:8788``, ``HOST:8788``) -> ``127.0.0.1:PORT``."""
    out = []
    for arg in argv:
        m = re.fullmatch(r"(?:(?:[\w.-]*):)?(\d+)", arg)
        if m and int(m.group(1)) in ports:
            arg = f"{LOOPBACK}:{ports[int(m.group(1))]}"
        out.append(LOOPBACK if arg == "0.0.0.0" else arg)
    return out


def _service_host(cluster: str, namespace: str) -> re.Pattern[str]:
    svc = re.escape(f"{cluster}-scheduler")
    return re.compile(rf"\b{svc}(?:\.{re.escape(namespace)}(?:\.svc(?:\.cluster\.local)?)?)?:(\d+)")


def cluster_pods(
    resource: Mapping[str, Any],
    prefix: str,
    secrets: Mapping[str, Mapping[str, str]] = {},
    n_workers: int | None = None,
    port: Callable[[], int] = free_port,
) -> tuple[PodRun, list[PodRun]]:
    """The scheduler and the workers of the ``DaskCluster`` ``resource`` as containers named ``prefix-scheduler``,
    ``prefix-worker-N`` (``n_workers``, default: the resource's replicas). Ports come from ``port``."""
    from dask_kubernetes.operator.controller.controller import (
        build_scheduler_deployment_spec,
        build_worker_deployment_spec,
    )

    name = resource["metadata"]["name"]
    namespace = resource["metadata"].get("namespace", "default")
    spec = resource["spec"]
    scheduler_pod = build_scheduler_deployment_spec(name, spec["scheduler"]["spec"], {}, {})["spec"]["template"]
    (scheduler,) = scheduler_pod["spec"]["containers"]
    declared = {p["name"]: p["containerPort"] for p in scheduler.get("ports") or []}
    host_ports = {number: port() for number in declared.values()}
    argv = _on_loopback(_argv(scheduler, env := container_env(scheduler, secrets)), host_ports)
    for port_name, flag in SCHEDULER_DEFAULT_FLAGS.items():
        if port_name in declared and flag not in argv:
            value = host_ports[declared[port_name]]
            argv += [flag, str(value) if flag == "--port" else f"{LOOPBACK}:{value}"]
    named = {n: host_ports[p] for n, p in declared.items()}
    scheduler_run = PodRun(f"{prefix}-scheduler", argv, env, named)

    # the Service's ports lead to the scheduler container's: its DNS name and port are 127.0.0.1 and the host port
    service = {p["port"]: p.get("targetPort", p["port"]) for p in spec["scheduler"]["service"]["ports"]}
    to_host = {svc: named[t] if isinstance(t, str) else host_ports[t] for svc, t in service.items()}
    dns = _service_host(name, namespace)
    workers = []
    replicas = spec["worker"].get("replicas", 1) if n_workers is None else n_workers
    for i in range(replicas):
        pod = build_worker_deployment_spec(
            f"{name}-default", namespace, name, f"ci{i}", spec["worker"]["spec"], {}, {}
        )["spec"]["template"]
        (worker,) = pod["spec"]["containers"]
        env = {
            k: dns.sub(lambda m: f"{LOOPBACK}:{to_host[int(m.group(1))]}", v)
            for k, v in container_env(worker, secrets).items()
        }
        worker_ports = {p["containerPort"]: port() for p in worker.get("ports") or []}
        argv = _on_loopback(_argv(worker, env), worker_ports)
        named = {p["name"]: worker_ports[p["containerPort"]] for p in worker.get("ports") or []}
        workers.append(PodRun(f"{prefix}-worker-{i}", argv, env, named))
    return scheduler_run, workers
