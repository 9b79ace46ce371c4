"""Report folders (a run's summary JSON, Markdown, PNG, GeoPackage): claimed before a run, so a user's folder is
never written into, and filled file by file, each beside its name and renamed into place, the JSON last (its
presence says the report is whole)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from geoplantnet.core.errors import RefusedError


def claim_report_folder(folder: Path, files: Sequence[str], what: str, *, clear: bool = True) -> Path:
    """``folder`` made ready for a report of ``files``: refused when it holds anything else (a user's files, or a
    file where the folder should be). Leftovers of an interrupted writer (partial and temporary files beside ours,
    GeoPackage journals) are removed; with ``clear`` an earlier report is too, so an interrupted run never leaves one
    that looks like this run's (without: a job that reuses its earlier files, such as a saved model)."""
    folder = Path(folder)
    if folder.exists():
        leftovers = {_partial(n).name for n in files}
        leftovers |= {f"{name}{tail}" for name in (*files, *leftovers) for tail in ("-journal", "-wal", "-shm")}
        temporary = tuple(f".{n}.tmp-" for n in files)  # a model file's own writer (``.model.pt.tmp-<pid>``)

        def left(name: str) -> bool:
            return name in leftovers or name.startswith(temporary)

        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        foreign = sorted(n for n in names if n not in files and not left(n))
        if not folder.is_dir() or foreign:
            raise RefusedError(f"{folder} holds {foreign[:3] or 'a file'}: not a {what}; refusing to write")
        for name in names:
            if left(name) or (clear and name in files):
                (folder / name).unlink()
    return folder


def _partial(path: Path | str) -> Path:
    # the partial file keeps the suffix: writers that check it (GeoPackage) see the right one
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{path.suffix}")


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
