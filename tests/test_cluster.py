"""The one cluster entry point: local, an existing scheduler (real processes), and the Kubernetes resource."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from geoplantnet.core.config import ClusterConfig, KubernetesConfig
from geoplantnet.runtime.cluster import (
    ClusterError,
    cluster_resources,
    connect,
    kubernetes_spec,
    require_resources,
    task_resources,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_cluster_runs_tasks_and_has_no_gpu():
    with connect(ClusterConfig(n_workers=1, memory_limit="1GiB")) as client:
        assert client.submit(lambda x: x + 1, 1).result() == 2
        assert task_resources(client) is None
        with pytest.raises(ClusterError, match="would wait forever"):
            require_resources(client, {"GPU": 1})


@pytest.fixture
def scheduler_with_gpu_worker():
    """A real `dask scheduler` and two `dask worker` processes on loopback, one advertising GPU=1."""
    port = _free_port()
    bindir = Path(sys.executable).parent
    dask = shutil.which("dask", path=str(bindir))
    address = f"tcp://127.0.0.1:{port}"
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    common = ["--nthreads", "1", "--memory-limit", "1GiB", "--host", "127.0.0.1", "--dashboard-address", ":0"]
    procs.append(
        subprocess.Popen(
            [dask, "worker", address, *common, "--resources", "GPU=1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    procs.append(
        subprocess.Popen([dask, "worker", address, *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    )
    try:
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_existing_scheduler_with_gpu_resource(scheduler_with_gpu_worker):
    cfg = ClusterConfig(kind="address", address=scheduler_with_gpu_worker)
    with connect(cfg) as client:
        client.wait_for_workers(2, timeout=60)
        assert cluster_resources(client) == {"GPU": 1.0}
        assert task_resources(client) == {"GPU": 1}
        require_resources(client, {"GPU": 1})
        # a GPU-tagged task lands on the worker that advertises the resource
        gpu_workers = {a for a, w in client.scheduler_info()["workers"].items() if w.get("resources")}
        fut = client.submit(lambda: 1, resources={"GPU": 1}, pure=False)
        assert fut.result(timeout=30) == 1
        assert set(client.who_has(fut)[fut.key]) <= gpu_workers
    # connect() never closes a scheduler it did not start
    with connect(cfg) as client:
        assert client.submit(lambda: 2).result(timeout=30) == 2


def test_unreachable_scheduler_is_one_clear_error():
    start = time.monotonic()
    cfg = ClusterConfig(kind="address", address=f"tcp://127.0.0.1:{_free_port()}", connect_timeout="3s")
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"), connect(cfg):
        pass
    assert time.monotonic() - start < 30


def test_kubernetes_spec_validates_against_the_dask_operator_crd():
    import jsonschema

    from geoplantnet.testing.manifests import command_problem, containers, validate_custom

    # the operator's CRD with its PodSpec and ServiceSpec resolved from a current Kubernetes release (not stubbed)
    kube = KubernetesConfig(namespace="maps", workers={"replicas": 3, "cpu": "2", "memory": "8Gi"})
    spec = kubernetes_spec(ClusterConfig(kind="kubernetes", threads_per_worker=2, kubernetes=kube))
    validate_custom(spec)
    with pytest.raises(jsonschema.ValidationError):
        validate_custom({**spec, "spec": {**spec["spec"], "worker": {**spec["spec"]["worker"], "replicas": "four"}}})
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    with pytest.raises(jsonschema.ValidationError):  # a PodSpec field misspelt: caught now the PodSpec is resolved
        bad = {**spec["spec"]["worker"], "spec": {"containers": [{**worker, "imagePullPolcy": "Always"}]}}
        validate_custom({**spec, "spec": {**spec["spec"], "worker": bad}})
    assert worker["command"] == ["dask", "worker"] and "--nthreads" in worker["args"]
    assert worker["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert spec["spec"]["worker"]["replicas"] == 3
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    assert scheduler["command"] == ["dask", "scheduler"] and "nvidia.com/gpu" not in scheduler["resources"]["limits"]
    assert spec["metadata"]["namespace"] == "maps"
    for where, container in containers(spec):  # the commands exist in this environment, with these flags
        assert command_problem(container, {}) is None, where


def test_committed_deploy_resource_matches_the_pipeline():
    from geoplantnet.core.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "pipelines" / "kubernetes.yaml", environ={})
    committed = yaml.safe_load((root / "deploy" / "kubernetes" / "base" / "daskcluster.yaml").read_text())
    assert committed == kubernetes_spec(cfg.cluster), (
        "re-render: geoplantnet deploy render -c pipelines/kubernetes.yaml --out deploy/kubernetes --overwrite"
    )
