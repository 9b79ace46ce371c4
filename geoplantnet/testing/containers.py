"""A rendered Kubernetes deployment as containers on one host (scripts/container_cluster.py runs them).

The pods are the dask-kubernetes operator's own: its controller's builders make the scheduler and worker pod specs
from the ``DaskCluster`` (so the environment it injects, ``DASK_WORKER_NAME`` and ``DASK_SCHEDULER_ADDRESS``, is
there), and a driver is a ``Job``'s pod. Each container's command line is its ``command`` + ``args``, as written.
Only what Kubernetes itself would provide is substituted, since on a host network every pod shares one address:

- ``$(VAR)`` in a command or argument expands from the container's environment, as the kubelet does;
- ``envFrom``/``secretKeyRef`` take the Secrets' data given here; a ConfigMap volume is a read-only folder holding
  the ConfigMap's data; any other volume (a shared claim) is refused: these containers share no disk;
- the scheduler Service's DNS name and port become 127.0.0.1 and the scheduler's port on the host;
- the pod's own address (``0.0.0.0``) becomes 127.0.0.1, and each ``containerPort`` a free port on 127.0.0.1 (an
  argument naming it, ``8786`` or ``:8787``, is rewritten to ``127.0.0.1:PORT``; ``--port`` takes the number).
"""

from __future__ import annotations

import random
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class PodRun:
    """One container to start: its name, command line (expanded), environment, ports and read-only mounts."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # containerPort name -> port on 127.0.0.1
    mounts: list[str] = field(default_factory=list)  # podman -v values: HOST:CONTAINER:ro


def free_port(low: int = 22_000, high: int = 32_000) -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range (32768+): no client socket takes it before
    the container binds it (SeaweedFS's ports stay below 22000 + 10000: geoplantnet.testing.s3)."""
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
        return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def container_env(container: Manifest, secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """A container's environment: ``envFrom`` Secrets first, then ``env`` (literal values and ``secretKeyRef``), as
    the kubelet orders them. ``secrets`` maps a Secret's name to its data; a missing one is a KeyError, as an
    unresolvable reference keeps a pod from starting."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if ref := source.get("secretRef"):
            if ref["name"] not in secrets:
                raise KeyError(f"envFrom names the Secret {ref['name']!r}, which is not given")
            env.update({f"{source.get('prefix', '')}{k}": v for k, v in secrets[ref["name"]].items()})
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif ref := (item.get("valueFrom") or {}).get("secretKeyRef"):
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def secret_names(*pods: Manifest) -> set[str]:
    """The Secrets the containers of ``pods`` (pod specs) take whole (``envFrom``)."""
    return {
        source["secretRef"]["name"]
        for pod in pods
        for container in pod["containers"]
        for source in container.get("envFrom") or []
        if source.get("secretRef")
    }


class HostNetwork:
    """The DaskCluster's scheduler Service on this host: its DNS name and ports as 127.0.0.1 and host ports."""

    def __init__(self, resource: Manifest, port: Callable[[], int] = free_port) -> None:
        meta = resource["metadata"]
        self.name, self.namespace = meta["name"], meta.get("namespace", "default")
        spec = resource["spec"]["scheduler"]
        (container,) = spec["spec"]["containers"]
        self.declared = {p["name"]: int(p["containerPort"]) for p in container.get("ports") or []}
        self.scheduler_ports = {number: port() for number in self.declared.values()}
        # a Service port leads to the scheduler's containerPort (by name or number): on the host, its host port
        self.service = {
            int(p["port"]): self._target(p.get("targetPort", p["port"])) for p in spec["service"].get("ports") or []
        }
        svc = re.escape(f"{self.name}-scheduler")
        ns = re.escape(self.namespace)
        self._dns = re.compile(rf"(?<![\w.-]){svc}(?:\.{ns}(?:\.svc(?:\.cluster\.local)?)?)?:(\d+)")

    def _target(self, target: int | str) -> int:
        number = self.declared[target] if isinstance(target, str) else int(target)
        return self.scheduler_ports[number]

    def port(self, name: str) -> int:
        """The host port of the scheduler's containerPort ``name`` (``tcp-comm``, ``http-dashboard``)."""
        return self.scheduler_ports[self.declared[name]]

    def resolve(self, text: str) -> str:
        """``text`` with the Service's DNS name and port (``tcp://NAME-scheduler.NS.svc.cluster.local:8786``) as
        127.0.0.1 and the host port."""
        return self._dns.sub(lambda m: f"{LOOPBACK}:{self.service[int(m.group(1))]}", text)


def _on_loopback(argv: list[str], ports: Mapping[int, int]) -> list[str]:
    """The pod's address and ports in ``argv`` as this host's: ``0.0.0.0`` -> 127.0.0.1; a containerPort after
    ``--port`` -> the host port; elsewhere (``8788``, ``:8787``, ``HOST:8787``) -> ``127.0.0.1:PORT``."""
    out: list[str] = []
    for arg in argv:
        m = re.fullmatch(r"(?:[\w.-]*:)?(\d+)", arg)
        if m and int(m.group(1)) in ports:
            host = ports[int(m.group(1))]
            arg = str(host) if out and out[-1] == "--port" else f"{LOOPBACK}:{host}"
        out.append(LOOPBACK if arg == "0.0.0.0" else arg)
    return out


def pod_container(
    pod: Manifest,
    name: str,
    network: HostNetwork,
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Path] | None = None,
    ports: Mapping[int, int] | None = None,
) -> PodRun:
    """The one container of the pod spec ``pod`` as a container named ``name``: environment, command line, ports
    (``ports``: containerPort -> host port; default: a free port each) and ConfigMap mounts (``config_maps``: a
    ConfigMap's name -> a folder holding its data)."""
    (container,) = pod["containers"]
    env = {k: network.resolve(v) for k, v in container_env(container, secrets).items()}
    declared = {int(p["containerPort"]): p["name"] for p in container.get("ports") or []}
    host_ports = dict(ports) if ports is not None else {number: free_port() for number in declared}
    argv = [expand(str(a), env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    argv = _on_loopback([network.resolve(a) for a in argv], host_ports)
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            raise ValueError(f"{name}: the volume {mount['name']!r} is not a ConfigMap; these pods share no disk")
        mounts.append(f"{(config_maps or {})[volume['configMap']['name']]}:{mount['mountPath']}:ro")
    named = {declared[n]: host_ports[n] for n in declared}
    return PodRun(name, argv, env, named, mounts)


def cluster_pods(
    resource: Manifest,
    prefix: str,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    n_workers: int | None = None,
) -> tuple[HostNetwork, PodRun, list[PodRun]]:
    """The scheduler and the workers of the ``DaskCluster`` ``resource`` as containers named ``prefix-scheduler``,
    ``prefix-worker-N`` (``n_workers``; default: the resource's replicas), the pod specs being those the operator
    makes; and the host network their Service is on."""
    from dask_kubernetes.operator.controller.controller import (
        build_scheduler_deployment_spec,
        build_worker_deployment_spec,
    )

    network = HostNetwork(resource)
    secrets = secrets or {}
    spec = resource["spec"]
    scheduler_pod = build_scheduler_deployment_spec(network.name, spec["scheduler"]["spec"], {}, {})
    scheduler = pod_container(
        scheduler_pod["spec"]["template"]["spec"],
        f"{prefix}-scheduler",
        network,
        secrets,
        ports=network.scheduler_ports,
    )
    workers = []
    replicas = spec["worker"].get("replicas", 1) if n_workers is None else n_workers
    for i in range(replicas):
        pod = build_worker_deployment_spec(
            f"{network.name}-default", network.namespace, network.name, f"ci{i}", spec["worker"]["spec"], {}, {}
        )
        workers.append(pod_container(pod["spec"]["template"]["spec"], f"{prefix}-worker-{i}", network, secrets))
    return network, scheduler, workers
