"""A Dask cluster in containers, started with the rendered Kubernetes DaskCluster's own commands, runs a small `map`
and `indicators` job with its models and outputs on an S3-compatible server, and its stores must equal those of the
same job on a local cluster. Run by scripts/container_cluster.sh (which builds the image first); exits 1 on any
difference, 2 when something it needs is missing.

    .venv/bin/python scripts/container_cluster.py [--image localhost/geoplantnet:cpu] [--keep DIR]

The S3 server (SeaweedFS) runs on the host on 127.0.0.1; the scheduler, the two workers and the driver are containers
on the host network, with no volume shared between them and no host folder mounted into the scheduler or the
workers. Credentials reach the containers as environment variables, as a Kubernetes Secret's `envFrom` does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, as the tests import it

import yaml  # noqa: E402

from geoplantnet.testing.containers import HostNetwork, PodRun, cluster_pods, pod_container, secret_names  # noqa: E402
from geoplantnet.testing.regions import SMALL_REGION  # noqa: E402
from geoplantnet.testing.s3 import S3Server, seaweedfs  # noqa: E402

# podman needs runc here (crun refuses this machine's hybrid cgroups) and explicit ulimits (its defaults fail
# setrlimit); --network=host: every container serves on, and reaches, 127.0.0.1.
PODMAN = ["podman", "--runtime", "runc"]
RUN = [*PODMAN, "run", "--network=host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
PREFIX = os.environ.get("GEOPLANTNET_CI_PREFIX", f"gpn-ci-{os.getpid()}")
UID = 10001  # the image's user (deploy/containers/Containerfile)
COMMANDS = ("map", "indicators")
# The small job: the tests' small virtual region, few epochs, 9 tiles; settings both runs share.
JOB = [*SMALL_REGION, "train.epochs=3", "map.tile=16", "cluster.connect_timeout=60s"]
# The deployment: the CPU overlay with two workers of one thread, no shared volume (object storage only), the two
# driver Jobs. What Kubernetes would run is rendered from these settings by `geoplantnet deploy render`'s code.
DEPLOY = [
    "cluster.threads_per_worker=1",
    "cluster.kubernetes.workers.replicas=2",
    "cluster.kubernetes.volume.claim=null",
    "cluster.kubernetes.refresh.enabled=false",
    f"cluster.kubernetes.jobs.commands=[{','.join(COMMANDS)}]",
]


class Failed(Exception):
    """A step failed: the message says which and why."""


def say(message: str) -> None:
    print(f"[container-cluster] {message}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Time one step and print it."""
    start = time.monotonic()
    say(f"{name} ...")
    yield
    say(f"{name}: {time.monotonic() - start:.1f} s")


def settings(s3: S3Server, image: str, prefix: str) -> list[str]:
    """The run's settings: the job, its store and workdir under ``prefix`` of the bucket, the S3 endpoint (not a
    credential: those come from the Secret), the deployment."""
    bucket = f"s3://{s3.bucket}/{prefix}"
    store = [f"store.root={bucket}/out", f"workdir={bucket}/work"]
    endpoint = f"store.storage_options.client_kwargs.endpoint_url={s3.endpoint}"
    return [*JOB, *store, endpoint, *DEPLOY, f"cluster.kubernetes.image={image}"]


def rendered(overrides: Sequence[str]) -> dict[str, list[dict]]:
    """The CPU overlay's manifests (file -> documents) as `geoplantnet deploy render` writes them for
    pipelines/default.yaml with ``overrides``: the renderer's output, read back from its YAML."""
    from geoplantnet.core.config import load_config
    from geoplantnet.runs.deploy import render_files

    cfg = load_config(ROOT / "pipelines" / "default.yaml", list(overrides))
    return {path: list(yaml.safe_load_all(text)) for path, text in render_files(cfg, ("cpu",)).items()}


def find(tree: dict[str, list[dict]], kind: str, name: str | None = None) -> dict:
    """The one object of ``kind`` (named ``name``) in the rendered tree."""
    found = [d for docs in tree.values() for d in docs if d and d["kind"] == kind]
    found = [d for d in found if name is None or d["metadata"]["name"] == name]
    if len(found) != 1:
        raise Failed(f"the rendered tree has {len(found)} {kind} {name or ''}")
    return found[0]


def secret_env(s3: S3Server) -> dict[str, str]:
    """What the object store's Secret holds: the credential, and the endpoint for GDAL's own reads (/vsis3/)."""
    return {
        "AWS_ACCESS_KEY_ID": s3.key,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": s3.endpoint.removeprefix("http://"),
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


class Containers:
    """The containers this run started (by name), removed at the end whatever happened."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.names: list[str] = []

    def _args(self, pod: PodRun, *more: str) -> tuple[list[str], dict[str, str]]:
        # values go by name (-e NAME), from podman's own environment: no credential on a command line
        args = [*RUN, *more, "--name", pod.name]
        for key in pod.env:
            args += ["-e", key]
        for mount in pod.mounts:
            args += ["-v", mount]
        self.names.append(pod.name)
        return [*args, self.image, *pod.argv], {**os.environ, **pod.env}

    def start(self, pod: PodRun) -> None:
        """Start ``pod`` detached."""
        args, env = self._args(pod, "-d")
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        if done.returncode != 0:
            raise Failed(f"{pod.name} did not start: {done.stderr.strip()[-2000:]}")

    def run(self, pod: PodRun, timeout: float) -> str:
        """Run ``pod`` to its end: its output, or :class:`Failed` with its tail."""
        args, env = self._args(pod)
        try:
            done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failed(f"{pod.name}: no end after {timeout:.0f} s") from None
        if done.returncode != 0:
            raise Failed(f"{pod.name} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
        return done.stdout + done.stderr

    def mounts(self, name: str) -> list:
        """The mounts podman gave the container ``name``."""
        out = subprocess.run(
            [*PODMAN, "inspect", "--format", "{{json .Mounts}}", name],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return json.loads(out) or []

    def logs(self, name: str) -> str:
        done = subprocess.run([*PODMAN, "logs", "--tail", "30", name], capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    def remove(self) -> None:
        """Remove every container this run started (one call: they stop in parallel)."""
        if self.names:
            subprocess.run([*PODMAN, "rm", "-f", "-t", "5", *self.names], capture_output=True, timeout=120)
        self.names.clear()


def wait_http(url: str, timeout: float) -> None:
    """Wait for ``url`` to answer 200 (the scheduler's readiness probe)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Failed(f"{url} did not answer in {timeout:.0f} s")
        time.sleep(0.5)


def check_cluster(address: str, n_workers: int, timeout: float) -> None:
    """The workers joined, run as the image's user, and a small Dask computation through them is right."""
    import dask.array as da
    from distributed import Client
    from distributed.versions import VersionMismatchWarning

    # this probe's Python is the host's (3.11.7), the image's is Debian's (3.11.2): the same packages, a patch apart
    warnings.simplefilter("ignore", VersionMismatchWarning)
    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(n_workers, timeout=timeout)
        uids = client.run(os.getuid)
        if sorted(uids.values()) != [UID] * n_workers:
            raise Failed(f"the workers are not the image's user {UID}: {uids}")
        total = int(client.compute(da.arange(1_000_000, chunks=100_000).sum()).result(timeout=timeout))
        if total != 999_999 * 1_000_000 // 2:
            raise Failed(f"a sum through the containers is wrong: {total}")
        say(f"{n_workers} workers (uid {UID}) answered; a sum over 10 chunks through them is right")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="localhost/geoplantnet:cpu")
    parser.add_argument("--keep", type=Path, help="download both runs' outputs here (default: a temporary folder)")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds each command may take")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout) unwinds like an error: the S3 server stops and the containers are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    containers = Containers(args.image)
    started = time.monotonic()
    code = 1
    with tempfile.TemporaryDirectory(prefix="gpn-containers-") as tmp:
        work = Path(tmp)
        try:
            say("S3 server (SeaweedFS) on the host, 127.0.0.1")
            with seaweedfs(work / "s3") as s3:
                code = run(containers, s3, work, args)
        except Failed as exc:
            say(f"FAILED: {exc}")
            for name in containers.names:
                with contextlib.suppress(Exception):
                    say(f"--- {name} (last lines)\n{containers.logs(name)}")
        finally:
            with step("remove containers"):
                containers.remove()
    say(f"total {time.monotonic() - started:.1f} s: {'passed' if code == 0 else 'FAILED'}")
    return code


def run(containers: Containers, s3: S3Server, work: Path, args: argparse.Namespace) -> int:
    """The steps, in order; raises :class:`Failed`."""
    with step("render the deployment (deploy render's code) and its pods"):
        tree = rendered(settings(s3, args.image, "cluster"))
        resource = find(tree, "DaskCluster")
        jobs = {c: find(tree, "Job", f"{resource['metadata']['name']}-{c}") for c in COMMANDS}
        pods = [resource["spec"]["scheduler"]["spec"], resource["spec"]["worker"]["spec"]]
        pods += [j["spec"]["template"]["spec"] for j in jobs.values()]
        secrets = dict.fromkeys(secret_names(*pods), secret_env(s3))
        network, scheduler, workers = cluster_pods(resource, PREFIX, secrets)
        config_maps = write_config_maps(tree, work / "configmaps")
        drivers = {
            c: pod_container(j["spec"]["template"]["spec"], f"{PREFIX}-driver-{c}", network, secrets, config_maps)
            for c, j in jobs.items()
        }
        for pod in (scheduler, *workers, *drivers.values()):
            say(f"{pod.name}: {' '.join(pod.argv)}")
    with step("the rendered tree's command lines against the image"):
        checked = check_tree_in_image(containers, tree, work / "tree")
        say(checked.strip().splitlines()[-1])
    with step("scheduler container"):
        containers.start(scheduler)
        wait_http(f"http://127.0.0.1:{network.port('http-dashboard')}/health", timeout=90)
    address = f"tcp://127.0.0.1:{network.port('tcp-comm')}"
    with step(f"{len(workers)} worker containers"):
        for pod in workers:
            containers.start(pod)
        check_cluster(address, len(workers), timeout=120)
        for name in [scheduler.name, *(w.name for w in workers)]:
            if found := containers.mounts(name):
                raise Failed(f"{name} has mounts, it should share no disk: {found}")
    for command, pod in drivers.items():
        with step(f"cluster: geoplantnet {command} (driver container, the Job's command line)"):
            tail(containers.run(pod, args.job_timeout))
    local = local_drivers(s3, args.image, work / "local-configmaps", secrets)
    for command, pod in local.items():
        with step(f"local cluster: geoplantnet {command} (one container, cluster.kind=local)"):
            tail(containers.run(pod, args.job_timeout))
    say(f"on S3: {stored(s3)}")
    with step("compare the outputs (cluster vs local)"):
        return compare(s3, args.keep or work / "outputs")


def tail(output: str, lines: int = 4) -> None:
    """The last lines of a command's output, indented."""
    for line in output.strip().splitlines()[-lines:]:
        print(f"    {line[:200]}", flush=True)


def stored(s3: S3Server) -> str:
    """How many objects each run left under its store and its workdir (the region, the training stage, models)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options)
    counts = {}
    for label in ("cluster", "local"):
        for part in ("out", "work"):
            counts[f"{label}/{part}"] = len(fs.find(f"{s3.bucket}/{label}/{part}/"))
    return ", ".join(f"{k}: {n} objects" for k, n in counts.items())


def write_config_maps(tree: dict[str, list[dict]], folder: Path) -> dict[str, Path]:
    """Each ConfigMap's data as files of a folder (what its volume shows a pod): name -> folder."""
    found = {}
    for docs in tree.values():
        for doc in docs:
            if doc and doc["kind"] == "ConfigMap":
                where = folder / doc["metadata"]["name"]
                where.mkdir(parents=True)
                for key, text in (doc.get("data") or {}).items():
                    (where / key).write_text(text)
                found[doc["metadata"]["name"]] = where
    return found


def check_tree_in_image(containers: Containers, tree: dict[str, list[dict]], folder: Path) -> str:
    """Every container command line of the rendered tree parses in the image (geoplantnet.testing.manifests)."""
    for path, docs in tree.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(yaml.safe_dump_all(docs))
    pod = PodRun(
        f"{PREFIX}-check-tree",
        ["python", "-m", "geoplantnet.testing.manifests", "/tree"],
        mounts=[f"{folder}:/tree:ro"],
    )
    return containers.run(pod, timeout=300)


def local_drivers(s3: S3Server, image: str, folder: Path, secrets: dict[str, dict[str, str]]) -> dict[str, PodRun]:
    """The same job on a local cluster (``cluster.kind=local``, in one container), its store and workdir under the
    bucket's ``local/``: the driver Jobs rendered for those settings, without the ``--scheduler`` of the cluster."""
    tree = rendered(settings(s3, image, "local"))
    resource = find(tree, "DaskCluster")
    network = HostNetwork(resource)
    config_maps = write_config_maps(tree, folder)
    out = {}
    for command in COMMANDS:
        job = find(tree, "Job", f"{resource['metadata']['name']}-{command}")
        pod = pod_container(job["spec"]["template"]["spec"], f"{PREFIX}-local-{command}", network, secrets, config_maps)
        i = pod.argv.index("--scheduler")
        out[command] = dataclasses.replace(pod, argv=[*pod.argv[:i], *pod.argv[i + 2 :]])
    return out


def compare(s3: S3Server, into: Path) -> int:
    """Download both runs' outputs and compare them with scripts/compare_outputs.py (stores, summaries, reports)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options)
    for label in ("cluster", "local"):
        fs.get(f"{s3.bucket}/{label}/out/", f"{into / label}/", recursive=True)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_outputs.py"), str(into / "local"), str(into / "cluster")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout + done.stderr, end="")
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
