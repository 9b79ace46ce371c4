"""Compare two output roots of the same commands (e.g. the demo before and after a refactor): every Zarr store's
variables (equal within a float tolerance), attributes (timestamps, run times and paths set aside), every JSON summary
(numbers within the tolerance, timings set aside), every Markdown report (numbers within the tolerance) and every PNG
(pixels). Prints one line per file and exits 1 when anything differs.

    .venv/bin/python scripts/compare_outputs.py BEFORE_ROOT AFTER_ROOT [--rtol 1e-5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

# what differs between two runs of the same inputs by design: clocks (a catalogue item's datetime is its store's
# creation time), durations, paths, ports, process ids
VOLATILE = re.compile(
    r"(^|_)(created|datetime|interval|time|times|seconds|second|s|date_created|pid|pids|dashboard|elapsed|wall|"
    r"per_second|per_second_per_core|model_loads|worker|workers|port|url|store|root|path|file|folder|"
    r"workdir|config|geoplantnet_config|devices|model_s|read_s)($|_)"
)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _volatile(key: str) -> bool:
    return bool(VOLATILE.search(key.lower())) or key.endswith(("_s", "_seconds"))


def _same(a: Any, b: Any, rtol: float, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if _volatile(str(key)):
                continue
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'after' if key in b else 'before'}")
                continue
            _same(a[key], b[key], rtol, f"{where}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} vs {len(b)} entries")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, rtol, f"{where}[{i}]", out)
    elif isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        if not (math.isclose(a, b, rel_tol=rtol, abs_tol=rtol) or (math.isnan(a) and math.isnan(b))):
            out.append(f"{where}: {a} vs {b}")
    elif isinstance(a, str) and isinstance(b, str) and _rooted(a, 0) == _rooted(b, 1):
        return
    elif a != b:
        out.append(f"{where}: {str(a)[:80]!r} vs {str(b)[:80]!r}")


def _rooted(text: str, side: int) -> str:
    for pair in ROOTS:
        text = text.replace(pair[side], "ROOT")
    return text


def compare_store(a: Path, b: Path, rtol: float) -> list[str]:
    import xarray as xr

    out: list[str] = []
    da, db = xr.open_zarr(a, decode_cf=False), xr.open_zarr(b, decode_cf=False)
    if set(da.variables) != set(db.variables):
        return [f"variables differ: {sorted(set(da.variables) ^ set(db.variables))}"]
    for name in da.variables:
        x, y = da[name].values, db[name].values
        if x.shape != y.shape or x.dtype != y.dtype:
            out.append(f"{name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
        elif x.dtype.kind in "fc":
            if not np.allclose(x, y, rtol=rtol, atol=rtol, equal_nan=True):
                out.append(f"{name}: max difference {np.nanmax(np.abs(x - y)):.3g}")
        elif not np.array_equal(x, y):
            out.append(f"{name}: {int(np.sum(x != y))} values differ")
        _same(_attrs(da[name].attrs), _attrs(db[name].attrs), rtol, f"{name}.attrs", out)
    _same(_attrs(da.attrs), _attrs(db.attrs), rtol, "attrs", out)
    return out


def _attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    # JSON-in-a-string attributes (model specs, parts) are compared as JSON
    decoded = {}
    for k, v in attrs.items():
        if isinstance(v, str) and v[:1] in "[{":
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        decoded[k] = v
    return decoded


TIMING = re.compile(r"seconds|\bs\)|/s\b|created|took|\btime\b|\d s$|\d s,", re.IGNORECASE)
ROOTS: list[tuple[str, str]] = []  # (before, after) run folders: read as ROOT in strings


def _cells(line: str, skip: set[int]) -> str:
    """A table row without its timing columns (``skip``); other lines as they are."""
    if not line.startswith("|"):
        return line
    return "|".join(c for i, c in enumerate(line.split("|")) if i not in skip)


def compare_text(a: Path, b: Path, rtol: float, roots: tuple[Path, Path]) -> list[str]:
    # each run's folder (its outputs' parent holds its work folder too) reads as ROOT
    la = a.read_text().replace(str(roots[0].parent), "ROOT").splitlines()
    lb = b.read_text().replace(str(roots[1].parent), "ROOT").splitlines()
    if len(la) != len(lb):
        return [f"{len(la)} vs {len(lb)} lines"]
    out = []
    skip: set[int] = set()  # the timing columns of the current table
    for i, (x, y) in enumerate(zip(la, lb, strict=True)):
        if x.startswith("|") and i + 1 < len(la) and la[i + 1].startswith("|---"):
            skip = {j for j, cell in enumerate(x.split("|")) if TIMING.search(cell)}
        elif not x.startswith("|"):
            skip = set()
            if TIMING.search(x):  # a timing line
                continue
        x, y = _cells(x, skip), _cells(y, skip)
        nx, ny = NUMBER.findall(x), NUMBER.findall(y)
        if NUMBER.sub("#", x) != NUMBER.sub("#", y) or len(nx) != len(ny):
            out.append(f"line {i + 1}: {x[:70]!r} vs {y[:70]!r}")
        elif any(not math.isclose(float(p), float(q), rel_tol=rtol, abs_tol=rtol) for p, q in zip(nx, ny, strict=True)):
            out.append(f"line {i + 1}: numbers differ: {x[:70]!r} vs {y[:70]!r}")
    return out


def compare_png(a: Path, b: Path) -> list[str]:
    from PIL import Image

    x, y = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    if x.shape != y.shape:
        return [f"size {x.shape} vs {y.shape}"]
    changed = float(np.mean(np.any(x != y, axis=-1))) if x.ndim == 3 else float(np.mean(x != y))
    return [f"{changed:.2%} of pixels differ"] if changed > 0.001 else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-5)
    args = parser.parse_args()
    ROOTS.append((str(args.before.resolve().parent), str(args.after.resolve().parent)))
    stores = sorted(p.relative_to(args.before) for p in args.before.rglob("*.zarr") if (p / "zarr.json").exists())
    files = sorted(
        p.relative_to(args.before)
        for p in args.before.rglob("*")
        if p.suffix in (".json", ".md", ".png") and ".zarr" not in str(p) and not p.name.startswith(".")
    )
    bad = 0
    for rel in [*stores, *files]:
        a, b = args.before / rel, args.after / rel
        if not b.exists():
            problems = ["missing after"]
        elif rel.suffix == ".zarr":
            problems = compare_store(a, b, args.rtol)
        elif rel.suffix == ".json":
            problems = []
            _same(json.loads(a.read_text()), json.loads(b.read_text()), args.rtol, rel.name, problems)
        elif rel.suffix == ".md":
            problems = compare_text(a, b, args.rtol, (args.before.resolve(), args.after.resolve()))
        else:
            problems = compare_png(a, b)
        bad += bool(problems)
        print(f"{'DIFF' if problems else 'same'}  {rel}" + "".join(f"\n      {p}" for p in problems[:8]))
    print(f"{len(stores) + len(files) - bad} of {len(stores) + len(files)} outputs the same")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
