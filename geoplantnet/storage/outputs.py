"""Claiming an output folder or file before a run writes it, and placing files into it: the one rule every command
follows (stores have theirs in :mod:`geoplantnet.storage.store`, recognised by their Zarr attributes).

What geoplantnet wrote is recognised by a marker it writes, never by file names:

- a **folder** (a report, a model folder, the virtual region) holds ``.geoplantnet.json``: the kind of output, the
  top-level names the run may write, and whether the run finished;
- a **file** given by a user's path (a PNG, a table of predictions) has a hidden sidecar ``.<name>.geoplantnet.json``
  beside it with the kind and the SHA-256 of the content written: a file edited since is the user's.

A folder or file without the marker (or with another kind's) is never written into, replaced or deleted, with or
without ``--overwrite``. The project's own earlier output of the same kind is replaced only with ``overwrite``; an
unfinished one (an interrupted run) is always cleared, since it never reads as valid. Report files are written beside
their name and renamed into place, the JSON summary last.

A report whose root is an object store (``store.root: s3://...``, where pods share no disk) is written the same way in
a folder of the process's scratch and published there when finished (:func:`claim_published_folder`,
:func:`finish_folder`): its files first, its completion marker last, the same refusals checked on the store first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geoplantnet.core.errors import InputError, RefusedError
from geoplantnet.storage.store import shown
from geoplantnet.storage.workdir import COMPLETE, Workdir, scratch

MARKER = ".geoplantnet.json"
_JOURNALS = ("-journal", "-wal", "-shm")  # SQLite (GeoPackage) side files of an interrupted writer


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return _valid_marker(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _valid_marker(marker: Any) -> dict[str, Any] | None:
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def _refuse(
    where: str,
    kind: str,
    entries: Sequence[str],
    names: Sequence[str],
    marker: Mapping[str, Any] | None,
    *,
    finished: bool,
) -> None:
    """The refusals of a claim, local or on an object store: files without geoplantnet's marker (a user's, with or
    without --overwrite), another kind's output, names a ``kind`` run never writes, or (``finished``) an earlier
    output that only --overwrite replaces."""
    if names and marker is None:
        raise RefusedError(
            f"{where} holds {list(names)[:3]} that geoplantnet did not write (no {MARKER}); refusing to write there, "
            "with or without --overwrite (choose another path)"
        )
    if marker is not None and marker["kind"] != kind:
        raise RefusedError(f"{where} holds a geoplantnet {marker['kind']}, not a {kind}; choose another path")
    foreign = [n for n in names if n not in entries and not _leftover(n, entries)]
    if foreign:
        raise RefusedError(f"{where} holds {foreign[:3]}, not written by a {kind} run; refusing to write there")
    if finished and names:
        raise RefusedError(f"{where} holds an earlier {kind}; pass --overwrite to replace it")


def _write_marker(path: Path, marker: Mapping[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(marker), indent=2))
    tmp.replace(path)


def _partial(path: Path | str) -> Path:
    # the partial file keeps the suffix: writers that check it (GeoPackage) see the right one
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _leftover(name: str, entries: Sequence[str]) -> bool:
    """A file an interrupted writer of one of ``entries`` leaves beside it (partial, temporary, journal)."""
    partials = {_partial(n).name for n in entries}
    if name in partials or any(name == f"{n}{tail}" for n in (*entries, *partials) for tail in _JOURNALS):
        return True
    # temporary files of the writers that rename into place (``.model.pt.tmp-<pid>``, ``.region.json.tmp``)
    return name.startswith(tuple(f".{n}.tmp" for n in entries)) or name.startswith(f"{MARKER}.tmp-")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def claim_folder(
    folder: Path | str,
    kind: str,
    entries: Sequence[str],
    *,
    overwrite: bool,
    keep: bool = False,
    written_by_us: str | None = None,
    check_only: bool = False,
) -> Path:
    """``folder`` made ready for an output of ``kind`` whose run writes the top-level names ``entries``.

    New or empty: marked as this kind's. Marked by an unfinished run of this kind: its entries are cleared. Marked by
    a finished run: replaced only with ``overwrite`` (or, with ``keep``, handed over as it is: a job that reuses its
    earlier files, such as a saved model, decides itself). Refused always: a file where the folder should be, a folder
    without the marker (a user's), another kind's, or one holding names this kind never writes.
    ``written_by_us``: a file of this kind's own format that proves an earlier geoplantnet run (from before these
    markers) wrote the folder, such as the virtual region's manifest. ``check_only``: the refusals alone, with no side
    effect (what a job checks before any work, claiming only when it writes)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RefusedError(f"{folder} is a file, not a {kind} folder; refusing to replace it (choose another path)")
    names = sorted(p.name for p in folder.iterdir() if p.name != MARKER) if folder.is_dir() else []
    marker = _read_marker(folder / MARKER)
    if marker is None and written_by_us is not None and (folder / written_by_us).is_file():
        marker = {"kind": kind, "complete": True}
    finished = marker is not None and bool(marker.get("complete"))
    _refuse(str(folder), kind, entries, names, marker, finished=finished and not (overwrite or keep))
    if check_only:
        return folder
    for name in names:
        if _leftover(name, entries) or not keep:
            _remove(folder / name)
    folder.mkdir(parents=True, exist_ok=True)
    _write_marker(
        folder / MARKER,
        {"kind": kind, "entries": list(entries), "complete": False, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ")},
    )
    return folder


def finish_folder(folder: Path | str) -> str:
    """Mark ``folder`` (claimed by :func:`claim_folder`) as the whole output of a finished run; one claimed by
    :func:`claim_published_folder` is then published to its object store. Returns where the output is."""
    path = Path(folder) / MARKER
    marker = _read_marker(path)
    if marker is None:
        raise RuntimeError(f"{folder} was not claimed before it was written")  # a bug in the job, not user input
    _write_marker(path, {**marker, "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
    target = _to_publish.get(Path(folder))
    if target is None:
        return str(folder)
    root, name = target
    # the files (an earlier output's others removed), then the store's completion marker
    return root.put(folder, *name.split("/"))


# scratch folder -> (object-store root, name): where finish_folder publishes a claimed report (this process only:
# the driver writes its reports itself; the store's options stay in memory, never in a marker)
_to_publish: dict[Path, tuple[Workdir, str]] = {}


def claim_published_folder(root: Workdir, name: str, kind: str, entries: Sequence[str], *, overwrite: bool) -> Path:
    """The folder ``<root>/<name>`` of an object store checked as :func:`claim_folder` checks a local one, before any
    work: refused when it holds files without geoplantnet's marker (a user's), another kind's output, names a
    ``kind`` run never writes, or a finished earlier output without ``overwrite``. Returns the local scratch folder
    the run writes in (claimed there with :func:`claim_folder`), which :func:`finish_folder` publishes to
    ``<root>/<name>``."""
    parts = name.split("/")
    where = shown(root.url(name))
    present = [n for n in root.names(*parts) if n not in (MARKER, COMPLETE)]
    marker = None
    if present:  # the marker a published folder carries (the local claim's, uploaded with it) says whose it is
        try:
            marker = _valid_marker(json.loads(root.read_bytes(*parts, MARKER)))
        except (FileNotFoundError, ValueError):
            marker = None
    _refuse(where, kind, entries, present, marker, finished=bool(present) and root.complete(*parts) and not overwrite)
    folder = scratch("published", *name.split("/"))
    _to_publish[folder] = (root, name)
    return folder


def owned_folder(folder: Path | str, kind: str) -> bool:
    """Whether ``folder`` is a finished output of ``kind`` written by geoplantnet."""
    marker = _read_marker(Path(folder) / MARKER)
    return marker is not None and marker["kind"] == kind and bool(marker.get("complete"))


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}{MARKER}")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def claim_file(path: Path | str, kind: str, *, overwrite: bool, suffixes: Sequence[str] = ()) -> Path:
    """``path`` checked before a run writes a ``kind`` file there: new, or this project's own earlier ``kind`` file
    (its sidecar marker holds the digest of what is there) replaced only with ``overwrite``. A folder, a user's
    file, or a file changed since geoplantnet wrote it is refused always. ``suffixes``: the accepted file types."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the {kind} file's name (ending {' or '.join(suffixes)})")
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: a {kind} is written as {' or '.join(suffixes)}; give a file name ending so")
    if not path.exists():
        return path
    marker = _read_marker(_sidecar(path))
    if marker is None or marker["kind"] != kind or marker.get("sha256") != _digest(path):
        raise RefusedError(
            f"{path} exists and is not a {kind} that geoplantnet wrote (or was changed since); refusing to replace "
            "it, with or without --overwrite (choose another path)"
        )
    if not overwrite:
        raise RefusedError(f"{path} holds an earlier {kind}; pass --overwrite to replace it")
    return path


def write_file(path: Path | str, kind: str, write: Callable[[Path], Any]) -> Path:
    """``write(partial)`` beside ``path`` (claimed by :func:`claim_file`), renamed into place, then its sidecar marker
    (kind and digest) written: an interrupted run leaves no half-written file under the user's name."""
    path = Path(path)
    place(path.parent, path.name, write)
    _write_marker(_sidecar(path), {"kind": kind, "sha256": _digest(path)})
    return path


def place(folder: Path, name: str, write: Callable[[Path], Any]) -> Path:
    """``write(path)`` to a partial file beside ``folder / name``, then renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _partial(folder / name)
    try:
        write(tmp)
        tmp.replace(folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    return folder / name


def place_json(folder: Path, name: str, payload: Mapping[str, Any]) -> Path:
    """A JSON report file (strict: NaN and infinities written as null), placed as :func:`place` does."""
    text = json.dumps(_strict(payload), indent=2, default=str, allow_nan=False)
    return place(folder, name, lambda path: path.write_text(text))


def _strict(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


@contextmanager
def claimed_folder(folder: Path | str, kind: str, entries: Sequence[str], *, overwrite: bool) -> Iterator[Path]:
    """:func:`claim_folder`, then :func:`finish_folder` when the block ends without an exception. A run that fails
    before writing anything leaves nothing behind (the folders it made are removed); one that fails later leaves a
    folder marked unfinished, cleared by the next run."""
    folder = Path(folder)
    new = next((p for p in (folder, *folder.parents) if p.parent.exists()), folder)  # the first folder made here
    new = None if new.exists() else new
    path = claim_folder(folder, kind, entries, overwrite=overwrite)
    try:
        yield path
    except BaseException:
        if new is not None and [p.name for p in path.iterdir()] == [MARKER]:
            (path / MARKER).unlink()
            for empty in (path, *path.parents):
                try:
                    empty.rmdir()
                except OSError:  # something else was put there meanwhile: leave it
                    break
                if empty == new:
                    break
        raise
    finish_folder(path)
