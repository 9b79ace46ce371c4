"""Benchmark: how long a user waits for a command to refuse bad input, as a process and inside one.

For every case of ``geoplantnet.testing.refusals`` (one or more bad inputs per command, the cases of
``tests/test_refusal_times.py``):
- as a process: ``python -m geoplantnet ...`` run ``--repeats`` times, each in a fresh folder with this tree first on
  ``PYTHONPATH``; the wall time from start to exit, imports included (what a user at a terminal waits);
- in-process: ``geoplantnet.cli.main`` in this process after every command's modules are imported (the command's own
  work; what the test asserts), the same number of times.
Every run must exit with status 2 and one line naming the case's culprit. Prints, per case, the median seconds of
both and their ratio (the rest of the process time is the interpreter's start and the imports).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_refusals.py [--repeats 5] [--case map/ --case plot/]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from geoplantnet.cli import main as cli_main
from geoplantnet.testing.refusals import CASES, Case, import_commands

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 3.0  # what a user should wait at most, as a process


def _checked(name: str, case: Case, code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    if code != 2 or len(lines) != 1 or case.culprit not in lines[0]:
        raise SystemExit(f"{name}: expected exit 2 and one line naming {case.culprit!r}; got {code}:\n{err}")


def _as_process(name: str, case: Case) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory(prefix="refusal-") as tmp:
        argv = case.argv(Path(tmp))
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "geoplantnet", *argv], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    _checked(name, case, done.returncode, done.stderr)
    return seconds


def _in_process(name: str, case: Case) -> float:
    with tempfile.TemporaryDirectory(prefix="refusal-") as tmp:
        argv = case.argv(Path(tmp))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            code = cli_main(argv)
            seconds = time.perf_counter() - t0
    _checked(name, case, code, err.getvalue())
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per case and way (the median is shown)")
    parser.add_argument(
        "--case", action="append", default=[], help="only the cases whose name contains this (repeatable)"
    )
    args = parser.parse_args()
    names = [n for n in CASES if not args.case or any(part in n for part in args.case)]
    if not names:
        raise SystemExit(f"no case matches {args.case}; the cases: {', '.join(CASES)}")

    # processes first: this process's imports (below) would otherwise compete with them for the cores
    process = {n: statistics.median(_as_process(n, CASES[n]) for _ in range(args.repeats)) for n in names}
    t0 = time.perf_counter()
    import_commands()
    imports_s = time.perf_counter() - t0
    inside = {n: statistics.median(_in_process(n, CASES[n]) for _ in range(args.repeats)) for n in names}

    print(f"{'case':<52}{'process s':>10}{'in-process s':>14}{'ratio':>8}   (medians of {args.repeats})")
    for n in names:
        print(f"{n:<52}{process[n]:10.2f}{inside[n]:14.3f}{process[n] / inside[n]:8.0f}")
    slow = [n for n in names if process[n] >= LIMIT_S]
    print(f"\nevery command's modules imported in-process: {imports_s:.1f} s (excluded from the in-process figures)")
    print(f"slowest as a process: {max(process.values()):.2f} s; over {LIMIT_S:g} s: {', '.join(slow) or 'none'}")


if __name__ == "__main__":
    main()
