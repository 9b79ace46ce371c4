"""The run's working folder (``workdir``): a local folder or an object-store URL (``s3://bucket/prefix``).

What runs cache between them (the map's species model, the habitat map's cross-fit) and what the driver and the
workers hand each other (a training set, fold models) live under the workdir. With an object-store workdir a cluster
whose workers share no disk with the driver (Kubernetes pods) trains and maps; a local workdir behaves as it always
did (the same paths, written in place, nothing copied).

Nothing half-written reads as valid:

- a **file** is written whole: locally beside its name and renamed into place, on an object store as one PUT (an
  object appears whole or not at all);
- a **folder** is complete only once its marker :data:`COMPLETE` is written, after every file
  (:meth:`Workdir.put`); a replaced folder loses its marker first. :meth:`Workdir.complete` is the check.

What must be on a local disk (a training set the trainer memory-maps, a model trained before its upload) goes to
:func:`scratch`: a folder of this process under its temporary directory (``TMPDIR``), removed when the process exits.
:meth:`Workdir.fetch` copies a file or folder of an object-store workdir there once per process (the workdir's own
path when it is local).

Credentials come from the environment (or fsspec's configuration); the options (:meth:`Workdir.of`: the store's
endpoint, timeouts, retries) are passed in memory and never written anywhere.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from geoplantnet.core.config import StoreConfig
from geoplantnet.storage.store import is_local, join, read_options_for, service_errors

COMPLETE = ".geoplantnet-complete"  # a folder's marker: written last, holds a token that changes on each upload

_scratch_lock = threading.Lock()
_scratch_root: Path | None = None


def scratch(*names: str) -> Path:
    """A local folder of this process (created): ``<TMPDIR>/geoplantnet-<random>/<names...>``, removed at exit.

    For what must be on a local disk whatever the workdir is (a training set read at random by the trainer, a model
    written every epoch before its upload). Per process, so two worker processes never write into each other's."""
    global _scratch_root
    with _scratch_lock:
        if _scratch_root is None or not _scratch_root.is_dir():
            _scratch_root = Path(tempfile.mkdtemp(prefix="geoplantnet-"))
            atexit.register(shutil.rmtree, _scratch_root, True)
        folder = _scratch_root.joinpath(*names)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """The store's failures as one line (:func:`~geoplantnet.storage.store.service_errors`), but a missing file
    stays a FileNotFoundError: callers tell "not cached yet" from a failure."""
    missing: FileNotFoundError | None = None
    with service_errors(url):
        try:
            yield
        except FileNotFoundError as exc:
            missing = exc
    if missing is not None:
        raise missing


def _local_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


@dataclass(frozen=True)
class Workdir:
    """A workdir (``root``: a local path or a URL) and the fsspec options it is opened with (none for a local one).

    Picklable: a task carries it to the worker that reads or writes under it."""

    root: str
    # never in a repr: a failed task's arguments end up in logs, and options may hold credentials
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, root: str, store: StoreConfig) -> Workdir:
        """The workdir ``root`` with the options of ``store`` (endpoint, timeouts, retries) when it is a URL."""
        return cls(str(root), read_options_for(str(root), store))

    @property
    def local(self) -> bool:
        """Whether the workdir is on this machine's filesystem (a path or ``file://``)."""
        return is_local(self.root)

    def url(self, *names: str) -> str:
        """``<root>/<names...>``: a path for a local workdir (as :meth:`path` writes it), a URL for an object-store
        one."""
        if self.local:
            return str(self.path(*names))
        out = self.root
        for name in names:
            out = join(out, name)
        return out

    def path(self, *names: str) -> Path:
        """The local path of ``names`` (a local workdir only: ValueError for a URL)."""
        if not self.local:
            raise ValueError(f"{self.root} is not a local workdir")
        return _local_path(self.root).joinpath(*names)

    def child(self, *names: str) -> Workdir:
        """The folder ``names`` as a workdir of its own (same options)."""
        return Workdir(self.url(*names), self.options)

    def _fs(self, url: str) -> tuple[Any, str]:
        return fsspec.core.url_to_fs(url, **dict(self.options))

    def exists(self, *names: str) -> bool:
        """Whether anything (a file, a folder) is at ``names``."""
        url = self.url(*names)
        if self.local:
            return _local_path(url).exists()
        with _errors(url):
            fs, path = self._fs(url)
            fs.invalidate_cache(path)  # another process (a worker, another run) may have written it since a listing
            return bool(fs.exists(path))

    def complete(self, *names: str) -> bool:
        """Whether the folder ``names`` was written whole (its :data:`COMPLETE` marker is there)."""
        return self.exists(*names, COMPLETE)

    def names(self, *names: str) -> list[str]:
        """The names directly in the folder ``names`` (its marker included), sorted; empty when nothing is there."""
        url = self.url(*names)
        if self.local:
            folder = _local_path(url)
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        with _errors(url):
            fs, path = self._fs(url)
            fs.invalidate_cache(path)
            if not fs.isdir(path):
                return []
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))

    def read_bytes(self, *names: str) -> bytes:
        """The bytes of the file ``names`` (FileNotFoundError when missing)."""
        url = self.url(*names)
        if self.local:
            return _local_path(url).read_bytes()
        with _errors(url):
            fs, path = self._fs(url)
            if not fs.exists(path):
                raise FileNotFoundError(url)
            return bytes(fs.cat_file(path))

    def write_bytes(self, data: bytes, *names: str) -> str:
        """Write the file ``names`` whole (renamed into place locally, one PUT on a store); returns its URL."""
        url = self.url(*names)
        if self.local:
            target = _local_path(url)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            return url
        with _errors(url):
            fs, path = self._fs(url)
            fs.pipe_file(path, data)
        return url

    def put(self, source: str | os.PathLike[str], *names: str) -> str:
        """Upload the local file or folder ``source`` to ``names``; returns its URL. A folder gets its files first
        (when it replaces an earlier complete upload, that one's files ``source`` lacks are removed: the folder
        becomes ``source``; files without the marker are nobody's to delete), then its
        :data:`COMPLETE` marker (an earlier marker is removed before anything is replaced, so a failed upload leaves
        a folder that does not read as complete). On a local workdir, ``source`` already at ``names`` is left as it
        is (and marked complete, for a folder)."""
        source = Path(source)
        url = self.url(*names)
        if not source.is_dir():
            if self.local:
                return url if _same(source, _local_path(url)) else self.write_bytes(source.read_bytes(), *names)
            with _errors(url):  # one PUT, or a multipart upload: the object appears whole either way
                fs, path = self._fs(url)
                fs.put_file(str(source), path)
            return url
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.name != COMPLETE)
        keep = {f.relative_to(source).as_posix() for f in files}
        if self.local:
            target = _local_path(url)
            if not _same(source, target):
                ours = (target / COMPLETE).is_file()
                (target / COMPLETE).unlink(missing_ok=True)
                for f in files:
                    dest = target / f.relative_to(source)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, dest)
                stale = [p for p in target.rglob("*") if p.is_file() and p.relative_to(target).as_posix() not in keep]
                for old in stale if ours else ():
                    old.unlink()
        else:
            with _errors(url):
                fs, path = self._fs(url)
                path = path.rstrip("/")
                marker = f"{path}/{COMPLETE}"
                fs.invalidate_cache(path)
                ours = fs.exists(marker)
                if ours:
                    fs.rm_file(marker)
                if files:  # one call: an async store (s3fs) uploads the files side by side
                    remote = [f"{path}/{f.relative_to(source).as_posix()}" for f in files]
                    fs.put([str(f) for f in files], remote)
                fs.invalidate_cache(path)
                stale = [p for p in fs.find(path) if os.path.relpath(p, path) not in keep] if ours else []
                if stale:
                    fs.rm(stale)
        token = json.dumps({"token": uuid.uuid4().hex, "time": time.time(), "files": len(files)})
        self.write_bytes(token.encode(), *names, COMPLETE)
        return url

    def remove(self, *names: str) -> None:
        """Delete the file or folder ``names`` if there (a folder's marker first, so it never reads as complete
        while it is being deleted)."""
        url = self.url(*names)
        if self.local:
            target = _local_path(url)
            if target.is_dir() and not target.is_symlink():
                (target / COMPLETE).unlink(missing_ok=True)
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            return
        with _errors(url):
            fs, path = self._fs(url)
            path = path.rstrip("/")
            if fs.exists(f"{path}/{COMPLETE}"):
                fs.rm_file(f"{path}/{COMPLETE}")
            if fs.exists(path):
                fs.rm(path, recursive=True)

    def get(self, *names: str, into: str | os.PathLike[str], skip: tuple[str, ...] = ()) -> Path:
        """Download the file or complete folder ``names`` to the local path ``into`` (a folder's files written into
        it, replacing those of the same names; its marker is not copied, nor its files whose names end with one of
        ``skip``); returns ``into``. FileNotFoundError for nothing there, or a folder without its marker."""
        into = Path(into)
        url = self.url(*names)
        if self.local:
            source = _local_path(url)
            if source.is_dir():
                if not (source / COMPLETE).exists():
                    raise FileNotFoundError(f"{url}: not a complete folder")
                ignore = shutil.ignore_patterns(COMPLETE, *(f"*{end}" for end in skip))
                shutil.copytree(source, into, dirs_exist_ok=True, ignore=ignore)
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, into)
            return into
        with _errors(url):
            fs, path = self._fs(url)
            path = path.rstrip("/")
            if fs.isfile(path):
                into.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(into))
                return into
            if not fs.exists(f"{path}/{COMPLETE}"):
                raise FileNotFoundError(f"{url}: not a complete folder")
            remote = [p for p in fs.find(path) if not p.endswith((f"/{COMPLETE}", *skip))]
            into.mkdir(parents=True, exist_ok=True)
            local = [str(into / os.path.relpath(p, path)) for p in remote]
            for p in local:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
            if remote:
                fs.get(remote, local)
        return into

    def fetch(self, *names: str, skip: tuple[str, ...] = ()) -> Path:
        """A local path holding the file or complete folder ``names``: itself on a local workdir, else a copy in
        this process's :func:`scratch`, downloaded once per upload (a folder re-uploaded since is fetched again);
        ``skip``: the endings of a folder's file names left on the store (what only the workers read)."""
        if self.local:
            return self.path(*names)
        url = self.url(*names)
        with _errors(url):
            fs, path = self._fs(url)
            if fs.isfile(path):
                info = fs.info(path)
                version = f"{info.get('ETag') or info.get('mtime')}-{info.get('size')}"
            else:
                version = self.read_bytes(*names, COMPLETE).decode()
        key = hashlib.sha256(f"{url}\n{version}\n{skip}".encode()).hexdigest()[:24]
        name = url.rstrip("/").rsplit("/", 1)[-1]
        cached = scratch("fetched") / key
        if cached.exists():
            return cached / name
        partial = scratch("fetched") / f"{key}.partial-{threading.get_ident()}"
        self.get(*names, into=partial / name, skip=skip)
        try:
            os.replace(partial, cached)
        except OSError:  # another thread of this process fetched it first: keep theirs
            shutil.rmtree(partial, ignore_errors=True)
        with _scratch_lock:
            _fetched.setdefault(url, set()).add(cached)
        return cached / name


# URL -> this process's fetched copies of it (one per upload version), so what a run fetched can be let go
_fetched: dict[str, set[Path]] = {}


def forget_fetched(prefix: str) -> int:
    """Delete this process's fetched copies of everything under the URL ``prefix`` (a finished training's stage):
    a long-lived worker (a Kubernetes cluster's) would otherwise keep every run's training sets until it exits.
    Returns how many copies were deleted."""
    root = prefix.rstrip("/")
    with _scratch_lock:
        gone = [u for u in _fetched if u == root or u.startswith(f"{root}/")]
        folders = [f for u in gone for f in _fetched.pop(u)]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return len(folders)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
