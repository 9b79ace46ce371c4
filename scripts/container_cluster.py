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
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, as the tests import it

from geoplantnet.testing.containers import PodRun, cluster_pods, secret_names  # noqa: E402
from geoplantnet.testing.regions import SMALL_REGION  # noqa: E402
from geoplantnet.testing.s3 import S3Server, seaweedfs  # noqa: E402

# podman needs runc here (crun refuses this machine's hybrid cgroups) and explicit ulimits (its defaults fail
# setrlimit); --network=host: every container serves on, and reaches, 127.0.0.1.
PODMAN = ["podman", "--runtime", "runc"]
RUN = [*PODMAN, "run", "--network=host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
PREFIX = os.environ.get("GEOPLANTNET_CI_PREFIX", f"gpn-ci-{os.getpid()}")
UID = 10001  # the image's user (deploy/containers/Containerfile)
# The small job: the tests' small virtual region, few epochs, 9 tiles. Settings both runs share.
JOB = [*SMALL_REGION, "train.epochs=3", "map.tile=16", "cluster.connect_timeout=60s"]
# The cluster's settings for the renderer: CPU workers, two of them, one thread each.
CLUSTER = [
    "cluster.kubernetes.worker_gpus=0",
    "cluster.kubernetes.n_workers=2",
    "cluster.threads_per_worker=1",
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


def rendered_cluster(image: str) -> dict:
    """The DaskCluster resource as the project renders it for Kubernetes (the renderer's output, not a copy)."""
    from geoplantnet.core.config import load_config
    from geoplantnet.runtime.cluster import kubernetes_spec

    cfg = load_config(ROOT / "pipelines" / "kubernetes.yaml", [*CLUSTER, f"cluster.kubernetes.image={image}"])
    return kubernetes_spec(cfg.cluster)


def secret_env(s3: S3Server) -> dict[str, str]:
    """What the object store's Secret holds: credentials and endpoint for botocore (s3fs) and GDAL (/vsis3/)."""
    host = s3.endpoint.removeprefix("http://")
    return {
        "AWS_ACCESS_KEY_ID": s3.key,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": host,
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


class Containers:
    """The containers this run started (by name), removed at the end whatever happened."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.names: list[str] = []

    def start(self, pod: PodRun, secrets: dict[str, str]) -> None:
        """Start ``pod`` detached. Environment values go by name (``-e NAME``), so no secret is on a command line."""
        env = {**pod.env, **secrets}
        args = [*RUN, "-d", "--name", pod.name]
        for key in env:
            args += ["-e", key]
        self.names.append(pod.name)
        subprocess.run(
            [*args, self.image, *pod.argv],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **env},
            timeout=120,
        )

    def run(
        self, name: str, argv: Sequence[str], env: dict[str, str], timeout: float, mounts: Sequence[str] = ()
    ) -> str:
        """Run ``argv`` in a container to its end; its output, or :class:`Failed` with its tail."""
        args = [*RUN, "--name", name]
        for key in env:
            args += ["-e", key]
        for mount in mounts:
            args += ["-v", mount]
        self.names.append(name)
        try:
            done = subprocess.run(
                [*args, self.image, *argv], capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise Failed(f"{name}: no end after {timeout:.0f} s") from None
        if done.returncode != 0:
            raise Failed(f"{name} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
        return done.stdout

    def mounts(self, name: str) -> list:
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
        for name in reversed(self.names):
            subprocess.run([*PODMAN, "rm", "-f", "-t", "5", name], capture_output=True, timeout=120)
        self.names.clear()


def wait_http(url: str, timeout: float) -> None:
    """Wait for ``url`` to answer 200 (the scheduler's readiness probe path)."""
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

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(n_workers, timeout=timeout)
        uids = client.run(os.getuid)
        if sorted(uids.values()) != [UID] * n_workers:
            raise Failed(f"the workers are not the image's user {UID}: {uids}")
        x = da.arange(1_000_000, chunks=100_000)
        total = int(client.compute(x.sum()).result(timeout=timeout))
        if total != 999_999 * 1_000_000 // 2:
            raise Failed(f"a sum through the containers is wrong: {total}")
        placed = client.run(lambda dask_worker: len(dask_worker.data) >= 0)
        say(f"{len(placed)} workers in containers answered; sum of 1e6 numbers right")


def job_commands(address: str | None, root: str, work: str) -> list[list[str]]:
    """The driver's commands: `map` then `indicators`, on the cluster at ``address`` (a local cluster if None)."""
    cluster = ["cluster.kind=local"] if address is None else ["cluster.kind=address", f"cluster.address={address}"]
    sets = [f"--set={s}" for s in [*JOB, *cluster, f"store.root={root}", f"workdir={work}"]]
    base = ["geoplantnet"]
    return [
        [*base, "map", "-c", "/config/pipeline.yaml", "--quiet", *sets],
        [*base, "indicators", "-c", "/config/pipeline.yaml", "--quiet", "--no-habitats", *sets],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="localhost/geoplantnet:cpu")
    parser.add_argument("--keep", type=Path, help="copy both runs' outputs here (default: a temporary folder)")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds each command may take")
    args = parser.parse_args(argv)
    containers = Containers(args.image)
    started = time.monotonic()
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
            code = 1
        finally:
            with step("remove containers"):
                containers.remove()
    say(f"total {time.monotonic() - started:.1f} s: {'passed' if code == 0 else 'FAILED'}")
    return code


def run(containers: Containers, s3: S3Server, work: Path, args: argparse.Namespace) -> int:
    """The steps, in order; raises :class:`Failed`."""
    secrets = secret_env(s3)
    with step("render the DaskCluster and its pods"):
        resource = rendered_cluster(args.image)
        named = secret_names(resource)
        scheduler, workers = cluster_pods(resource, PREFIX, dict.fromkeys(named, secrets))
        for pod in (scheduler, *workers):
            say(f"{pod.name}: {' '.join(pod.argv)}")
        pod_secrets: dict[str, str] = {}
        if not named:  # the workers write tiles to the store: without credentials nothing could run
            say("NOTE: the rendered workers take no Secret (envFrom); the credentials are passed as env instead")
            pod_secrets = secrets
    with step("scheduler container"):
        containers.start(scheduler, {})
        wait_http(f"http://127.0.0.1:{scheduler.ports['http-dashboard']}/health", timeout=90)
    address = f"tcp://127.0.0.1:{scheduler.ports['tcp-comm']}"
    with step(f"{len(workers)} worker containers"):
        for pod in workers:
            containers.start(pod, pod_secrets)
        check_cluster(address, len(workers), timeout=120)
        for name in [scheduler.name, *(w.name for w in workers)]:
            if containers.mounts(name):
                raise Failed(f"{name} has mounts: {containers.mounts(name)}")
    bucket = f"s3://{s3.bucket}"
    config = [f"{ROOT / 'pipelines' / 'default.yaml'}:/config/pipeline.yaml:ro"]  # the ConfigMap's mount
    runs = {"cluster": address, "local": None}
    for label, where in runs.items():
        for i, argv in enumerate(job_commands(where, f"{bucket}/{label}/out", f"{bucket}/{label}/work")):
            with step(f"{label}: {argv[1]}"):
                out = containers.run(f"{PREFIX}-driver-{label}-{i}", argv, secrets, args.job_timeout, config)
                say(out.strip().splitlines()[-1] if out.strip() else "(no output)")
    with step("compare the stores (cluster vs local)"):
        return compare(s3, bucket, args.keep or work / "outputs")


def compare(s3: S3Server, bucket: str, into: Path) -> int:
    """Download both runs' outputs and compare them with scripts/compare_outputs.py (stores, summaries, reports)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options)
    for label in ("cluster", "local"):
        fs.get(f"{bucket}/{label}/out/", str(into / label) + "/", recursive=True)
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
