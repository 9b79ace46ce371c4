"""One writer per store: a lease object beside the store, created only if absent, renewed by a heartbeat, expiring.

``<parent>/.<name>.lease.json`` is created with an exclusive create (``O_EXCL`` on a local filesystem, a conditional
``If-None-Match: *`` PUT on S3), so of two runs starting at once exactly one gets it. The holder rewrites the expiry
every ``ttl / 4`` seconds from a background thread. A run that dies leaves a lease that is taken over (with a
warning) once it expires, or at once when its holder's process is gone from this host. A holder that finds its
lease taken (its heartbeats stalled past the expiry) marks itself lost, and the job stops before writing more
(:meth:`Lease.check`).

Expiry compares wall clocks: hosts writing one store must keep their clocks within a fraction of ``ttl`` (NTP does).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec

from geoplantnet.core.errors import RefusedError, ServiceError
from geoplantnet.runtime.interrupts import deferred

log = logging.getLogger(__name__)

# How long releasing a lease waits for a heartbeat in progress.
RELEASE_WAIT_S = 2.0


class LeaseError(RefusedError):
    """The store is being written by another run, or this run lost its lease."""


def lease_url(url: str) -> str:
    """Where the lease of the store at ``url`` lives: beside it, never inside (a user's folder is not touched)."""
    url = url.rstrip("/")
    parent, _, name = url.rpartition("/")
    return f"{parent}/.{name}.lease.json" if parent else f".{name}.lease.json"


def _create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` only if nothing is there; False if something is."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if protocol in ("s3", "s3a"):
        try:
            fs.pipe_file(path, data, mode="create")  # If-None-Match: * (AWS S3, MinIO, SeaweedFS honour it)
        except OSError as exc:  # s3fs reports 412 Precondition Failed as EINVAL
            if exc.errno == errno.EINVAL or "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower():
                return False
            raise
        return True
    # Other object stores: check, write, read back; a race is caught by the read-back of the owner id.
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return json.loads(fs.cat_file(path)).get("owner") == json.loads(data)["owner"]


@dataclass
class Lease:
    """A held lease; use :func:`hold` rather than making one."""

    url: str
    owner: str
    run: str
    ttl: float
    fs: fsspec.AbstractFileSystem
    path: str
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "owner": self.owner,
                "run": self.run,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "renewed": now,
                "expires": now + self.ttl,
            }
        ).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                current = self._read()
                if current is None or current.get("owner") != self.owner:
                    log.error("%s: the lease was taken by another run; stopping", self.url)
                    self.lost.set()
                    return
                if self._stop.is_set():  # released while we read: writing now would bring the lease back
                    return
                self.fs.pipe_file(self.path, self._record())
            except Exception as exc:  # a failed heartbeat is retried; the lease expires only after ttl
                log.warning("%s: lease heartbeat failed (%s); retrying", self.url, exc.__class__.__name__)

    def check(self) -> None:
        """Raise :class:`LeaseError` if the lease was lost (another run took the store over)."""
        if self.lost.is_set():
            raise LeaseError(f"{self.url}: this run lost its lease on the store (another run took it over); stopped")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            # bounded: a run stopped by Ctrl-C or SIGTERM must end within seconds, even when a heartbeat hangs on a
            # slow object store (its write then lands after our removal at worst: a lease that expires by itself)
            self._thread.join(timeout=min(self.ttl, RELEASE_WAIT_S))
        with contextlib.suppress(Exception):  # a lease left behind expires by itself
            current = self._read()
            if current is not None and current.get("owner") == self.owner:
                self.fs.rm_file(self.path)


def _dead_here(record: Mapping[str, Any]) -> bool:
    """Whether the lease's holder ran on this host and its process is gone (killed, crashed): then its lease is stale
    now, not only once it expires, so a killed run can be resumed at once."""
    try:
        pid = int(record.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if record.get("host") != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def _busy(url: str, record: Mapping[str, Any]) -> str:
    return f"{url} is being written by another {_describe(record)}; wait for it to finish, or write elsewhere"


def _describe(record: Mapping[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("renewed", 0))))
    return f"run {record.get('run', '?')} (pid {record.get('pid', '?')} on {record.get('host', '?')}, alive at {since})"


def acquire(url: str, run: str, *, ttl: float = 120.0, storage_options: Mapping[str, Any] | None = None) -> Lease:
    """Take the lease of the store at ``url`` for run ``run``, or raise :class:`LeaseError` if another live run holds
    it (whatever its run: two processes never write one store at once). An expired lease is taken over."""
    where = lease_url(url)
    fs, path = fsspec.core.url_to_fs(where, **dict(storage_options or {}))
    lease = Lease(url, uuid.uuid4().hex, run, ttl, fs, path)
    for _attempt in range(3):
        try:
            if _create_exclusive(fs, path, lease._record()):
                lease._thread = threading.Thread(target=lease._beat, name=f"lease {url}", daemon=True)
                lease._thread.start()
                return lease
            current = lease._read()
        except (OSError, json.JSONDecodeError) as exc:
            if isinstance(exc, FileNotFoundError | json.JSONDecodeError):  # released, or its creator still writing
                time.sleep(0.05)
                continue
            raise ServiceError(f"{where}: cannot create the store's lease ({exc.__class__.__name__}: {exc})") from None
        if current is None:  # released between our create and read: try again
            continue
        if float(current.get("expires", 0)) > time.time() and not _dead_here(current):
            raise LeaseError(_busy(url, current))
        log.warning("%s: taking over the stale lease of %s (expired, or its process is gone)", url, _describe(current))
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
    raise LeaseError(f"{url}: could not take the store's lease (other runs keep taking it); try again")


def ensure_free(url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`LeaseError` now if a live run holds the store's lease: a job checks this before minutes of
    preparation, and takes the lease itself (:func:`acquire`) just before writing."""
    fs, path = fsspec.core.url_to_fs(lease_url(url), **dict(storage_options or {}))
    try:
        current = json.loads(fs.cat_file(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if float(current.get("expires", 0)) > time.time() and not _dead_here(current):
        raise LeaseError(_busy(url, current))


@contextlib.contextmanager
def hold(
    url: str, run: str, *, ttl: float = 120.0, storage_options: Mapping[str, Any] | None = None
) -> Iterator[Lease]:
    """The lease of ``url`` for the duration of a ``with`` block, released on exit (success or failure)."""
    lease: Lease | None = None
    try:
        with deferred():  # Ctrl-C or SIGTERM waits until a lease created is ours to release, never left behind
            lease = acquire(url, run, ttl=ttl, storage_options=storage_options)
        yield lease
    finally:
        if lease is not None:
            lease.release()
