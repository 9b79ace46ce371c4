"""One Dask cluster of real worker processes shared by the commands a test session runs in-process
(:func:`geoplantnet.testing.cli.run_cli`): each command connects with ``cluster.kind=address`` instead of starting
and stopping a cluster of its own (seconds each). Tests that kill workers or interrupt a run keep their own cluster.

The scheduler and the workers are processes of their own (``dask scheduler``, ``dask worker --nworkers``), not a
LocalCluster: a LocalCluster's scheduler would run on the test process's event loop and log into the output of the
command under test, which a command connecting to a remote scheduler never sees."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[2]


def _setting(name: str, default: str) -> str:
    return next((s.split("=", 1)[1] for s in SMALL_REGION if s.startswith(f"{name}=")), default)


# Runs a dask CLI (argv[1], its arguments after) that ends, as on SIGTERM, once the process that started it is gone
# (the test session killed by a timeout, say), so that no test cluster outlives its session.
_GUARDED = """
import os, signal, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
from importlib import import_module
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
import_module(module).main()
"""


def _spawn(
    module: str, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # this checkout, as the tests
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _GUARDED, module, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "PYTHONPATH": path},
            cwd=cwd,
        )


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _scheduler(folder: Path, timeout: float) -> tuple[subprocess.Popen, str]:
    """A ``dask scheduler`` on 127.0.0.1 (any free port) logging into ``folder``, and its address once it serves."""
    file = folder / "scheduler.json"
    proc = _spawn(
        "distributed.cli.dask_scheduler",
        ["--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(file)],
        folder / "scheduler.log",
    )
    deadline = time.monotonic() + timeout
    while not file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if not file.exists():
        _stop([proc])
        raise RuntimeError(f"the test scheduler did not start: {(folder / 'scheduler.log').read_text()[-2000:]}")
    return proc, json.loads(file.read_text())["address"]


@contextlib.contextmanager
def unshared_cluster(
    root: Path, env: dict[str, str] | None = None, n_workers: int = 2, timeout: float = 120.0
) -> Iterator[tuple[str, list[Path]]]:
    """A scheduler and ``n_workers`` ``dask worker`` processes (one thread each, 127.0.0.1) that share no folder: each
    runs in ``root/worker-<i>`` with its own working directory (``cwd``), ``HOME`` and ``TMPDIR`` below it, and
    ``env`` added (credentials for an object store, say). Yields the scheduler's address and the workers' folders;
    stopped after. What a Kubernetes cluster's worker pods see, on one machine (the files a test gives them by path,
    such as the virtual region's COGs, are still readable: same machine)."""
    root.mkdir(parents=True, exist_ok=True)
    scheduler, address = _scheduler(root, timeout)
    procs, folders = [scheduler], []
    try:
        for i in range(n_workers):
            folder = root / f"worker-{i}"
            for sub in ("cwd", "home", "tmp"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            own = {**(env or {}), "HOME": str(folder / "home"), "TMPDIR": str(folder / "tmp")}
            args = [address, "--nthreads", "1", "--host", "127.0.0.1", "--memory-limit", "3GiB"]
            args += ["--death-timeout", "60", "--name", f"unshared-{i}", "--no-nanny"]
            procs.append(_spawn("distributed.cli.dask_worker", args, root / f"worker-{i}.log", own, folder / "cwd"))
            folders.append(folder)
        from distributed import Client

        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
        yield address, folders
    finally:
        _stop(procs)


@contextlib.contextmanager
def shared_cluster(timeout: float = 120.0) -> Iterator[str]:
    """A scheduler and worker processes sized as ``SMALL_REGION`` sizes a command's own cluster (2 workers of one
    thread, each under a nanny, on 127.0.0.1); yields the scheduler's address; stopped after (logs in a temporary
    folder, shown if it fails to start)."""
    folder = Path(tempfile.mkdtemp(prefix="geoplantnet-cluster-"))
    scheduler, address = _scheduler(folder, timeout)
    procs = [scheduler]
    try:
        n_workers = int(_setting("cluster.n_workers", "2"))
        worker = [address, "--nworkers", str(n_workers), "--nthreads", "1", "--host", "127.0.0.1"]
        worker += ["--memory-limit", _setting("cluster.memory_limit", "4GiB"), "--death-timeout", "60"]
        procs.append(_spawn("distributed.cli.dask_worker", worker, folder / "workers.log"))
        from distributed import Client

        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
        yield address
    finally:
        _stop(procs)


def address_sets(address: str) -> list[str]:
    """The ``--set`` overrides that make a command use the cluster at ``address``."""
    return ["cluster.kind=address", f"cluster.address={address}"]
