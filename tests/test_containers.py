"""The container image and the cluster in containers, checked without podman (scripts/container_cluster.sh runs
them): the Containerfile installs the lock file's pins, and the containers' command lines are the rendered
deployment's, with only what Kubernetes substitutes substituted."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from geoplantnet.testing.containers import HostNetwork, cluster_pods, expand, pod_container

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "deploy" / "containers" / "Containerfile"


def _script():
    spec = importlib.util.spec_from_file_location("container_cluster", ROOT / "scripts" / "container_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("container_cluster", module)
    spec.loader.exec_module(module)
    return module


def _instructions(text: str) -> list[str]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_the_image_installs_the_lock_files_pins():
    steps = _instructions(CONTAINERFILE.read_text())
    copy = steps.index("COPY requirements.lock.txt /tmp/requirements.lock.txt")
    install = next(i for i, s in enumerate(steps) if "-r /tmp/requirements.lock.txt" in s)
    # the pinned stack is installed before any source is copied (a code edit never reinstalls torch)
    first_source = next(i for i, s in enumerate(steps) if s.startswith("COPY") and "geoplantnet" in s.split()[1:2])
    assert copy < install < first_source
    # the package itself adds nothing to that stack, and is not editable
    package = next(s for s in steps if re.search(r"pip install .*/tmp/wheels/\*\.whl", s))
    assert "--no-deps" in package and "--no-index" in package and "-e " not in package
    lock = (ROOT / "requirements.lock.txt").read_text().splitlines()
    assert "torch==2.13.0" in lock
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject  # the package's own pin agrees with the lock's


def test_the_image_runs_dask_and_geoplantnet_as_written():
    steps = _instructions(CONTAINERFILE.read_text())
    runtime = steps[max(i for i, s in enumerate(steps) if s.startswith("FROM ")) :]
    # no entry point: a pod's command and podman's arguments are the program and its arguments
    assert "ENTRYPOINT []" in runtime
    assert any(s.startswith("USER ") and not s.startswith(("USER root", "USER 0")) for s in runtime)
    path = next(s for s in steps if s.startswith("ENV PATH="))
    assert path.startswith("ENV PATH=/opt/geoplantnet/bin:")
    assert any("dask worker --help" in s and "geoplantnet --help" in s for s in runtime)


def test_expand_as_kubernetes_does():
    env = {"DASK_WORKER_NAME": "w-1", "A": "x"}
    assert expand("$(DASK_WORKER_NAME)", env) == "w-1"
    assert expand("--name=$(A)-$(UNSET)", env) == "--name=x-$(UNSET)"
    assert expand("$$(A)", env) == "$(A)"


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.fixture(scope="module")
def tree(script):
    from geoplantnet.testing.s3 import S3Server

    return script.rendered(script.settings(S3Server("http://127.0.0.1:9", "geoplantnet"), "img:test", "cluster"))


def test_the_containers_run_the_rendered_command_lines(script, tree):
    resource = script.find(tree, "DaskCluster")
    secrets = {"geoplantnet-credentials": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}}
    network, scheduler, workers = cluster_pods(resource, "p", secrets)
    rendered = _rendered_lines(script)
    # exactly the manifests' command lines, but for the pod's address and ports and $(DASK_WORKER_NAME)
    comm, dash = network.port("tcp-comm"), network.port("http-dashboard")
    assert scheduler.argv == [
        _sub(a, {"0.0.0.0": "127.0.0.1", "8786": str(comm), ":8787": f"127.0.0.1:{dash}"})
        for a in rendered["scheduler"]
    ]
    assert len(workers) == 2 and workers[0].name != workers[1].name
    for w in workers:
        name = w.env["DASK_WORKER_NAME"]
        assert w.argv == [
            _sub(a, {"$(DASK_WORKER_NAME)": name, "8788": f"127.0.0.1:{w.ports['http-dashboard']}"})
            for a in rendered["worker"]
        ]
        assert w.env["DASK_SCHEDULER_ADDRESS"] == f"tcp://127.0.0.1:{comm}"  # the operator's, resolved
        assert w.env["AWS_ACCESS_KEY_ID"] == "k" and not w.mounts  # the Secret; no disk
    # the driver: the Job's command line, its Service address resolved, the ConfigMap mounted read only
    job = script.find(tree, "Job", "geoplantnet-map")
    driver = pod_container(job["spec"]["template"]["spec"], "d", network, secrets, {"geoplantnet-pipeline": Path("/c")})
    assert driver.argv == [_sub(a, {}, network) for a in rendered["map"]]
    assert f"tcp://127.0.0.1:{comm}" in driver.argv and driver.mounts == ["/c:/etc/geoplantnet:ro"]


def _rendered_lines(script) -> dict[str, list[str]]:
    """The renderer's own listing of the container command lines (runtime.kubernetes.container_commands) for the
    script's settings."""
    from geoplantnet.core.config import load_config
    from geoplantnet.runtime.kubernetes import container_commands
    from geoplantnet.testing.s3 import S3Server

    settings = script.settings(S3Server("http://127.0.0.1:9", "geoplantnet"), "img:test", "cluster")
    return container_commands(load_config(ROOT / "pipelines" / "default.yaml", settings).cluster)


def _sub(arg: str, table: dict[str, str], network: HostNetwork | None = None) -> str:
    for old, new in table.items():
        if arg == old or (old.startswith("$(") and old in arg):
            return arg.replace(old, new)
    return network.resolve(arg) if network is not None else arg


def test_a_changed_manifest_changes_the_containers(script, tree):
    """The command lines are read from the rendered objects, not written in the script: an argument added to the
    manifest is in the container's command line."""
    resource = script.find(tree, "DaskCluster")
    worker = resource["spec"]["worker"]["spec"]["containers"][0]
    worker["args"] = [*worker["args"], "--death-timeout", "77"]
    _, _, workers = cluster_pods(resource, "p", {"geoplantnet-credentials": {}})
    assert workers[0].argv[-2:] == ["--death-timeout", "77"]


def test_a_pod_sharing_a_disk_is_refused(script, tree):
    job = script.find(tree, "Job", "geoplantnet-map")
    pod = job["spec"]["template"]["spec"]
    pod = {**pod, "volumes": [*pod["volumes"], {"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]}
    container = {**pod["containers"][0], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    network = HostNetwork(script.find(tree, "DaskCluster"))
    with pytest.raises(ValueError, match="share no disk"):
        pod_container({**pod, "containers": [container]}, "d", network, {"geoplantnet-credentials": {}})
