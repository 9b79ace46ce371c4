"""The benchmarks run at a tiny size, so that a change breaking one shows here rather than when someone times it.

``bench_refusals.py`` at one repeat of two cases: a command refusing without torch (``plot``) and one whose check
reads a model file with it (``map``). ``bench_cnn_cv.py`` on the session's small region and cluster, one epoch of 2
folds x 2 members."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """This checkout first on ``PYTHONPATH``, as for the tests."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_bench_refusals_times_each_case_as_a_process_and_in_process() -> None:
    cases = ["map/missing model file", "plot/missing species.zarr"]
    env = _env()
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


@pytest.mark.slow  # the small region's training set is extracted first (~1.5 min on 2 shared cores)
def test_bench_cnn_cv_times_the_folds_one_after_another_and_side_by_side_with_the_same_numbers(
    tmp_path: Path, small_region: Path, shared_cluster_sets: list[str]
) -> None:
    from geoplantnet.testing.fixtures import copy_region

    work = copy_region(small_region, tmp_path / "work")
    sets = [arg for s in shared_cluster_sets for arg in ("--set", s)]
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_cnn_cv.py"), "--workdir", str(work), *sets]
    done = subprocess.run(
        [*command, "--epochs", "1", "--ensemble", "2", "--folds", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    wall = re.search(r"^wall seconds\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", done.stdout, re.MULTILINE)
    assert wall and all(float(v) > 0 for v in wall.groups()), done.stdout
    assert len(re.findall(r"^fold \d AUC", done.stdout, re.MULTILINE)) == 2, done.stdout
    assert "per-fold AUCs identical: yes; out-of-fold predictions identical: yes" in done.stdout
