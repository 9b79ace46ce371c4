"""The benchmarks run at a tiny size, so that a change breaking one shows here rather than when someone times it.

``bench_refusals.py`` at one repeat of two cases: a command refusing without torch (``plot``) and one whose check
reads a model file with it (``map``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_refusals_times_each_case_as_a_process_and_in_process() -> None:
    cases = ["map/missing model file", "plot/missing species.zarr"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_refusals.py"), "--repeats", "1"]
    done = subprocess.run(
        command + [arg for case in cases for arg in ("--case", case)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line[:52].strip(): line[52:].split() for line in done.stdout.splitlines() if line.startswith(tuple(cases))}
    assert list(rows) == cases, done.stdout
    for case, (process, inside, ratio) in rows.items():
        # a process pays the interpreter's start and the imports on top of the command's own work
        assert float(process) > float(inside) > 0, (case, process, inside)
        assert float(ratio) >= 1, (case, ratio)
    assert re.search(r"slowest as a process: [\d.]+ s", done.stdout), done.stdout
