"""Bad input fails fast: every command reads and checks its inputs (files, settings, scenarios, model files, stores)
before it generates the virtual region, searches imagery, starts a Dask cluster or loads and trains models.

Each case runs the command in this process (``geoplantnet.cli.main``) on the default configuration with an empty
workdir, so anything heavy done before the check would show: the default virtual region alone takes tens of seconds
to generate. The assertions: exit status 2, one line on stderr naming the culprit, no region generated, no cluster
started (:func:`_no_cluster`), and under 3 s of the command's own time. The interpreter's imports are paid once,
before the clock starts (:func:`_imported`): they are the same for good and bad input. The figures are printed at
the end of the module."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geoplantnet.cli import main
from geoplantnet.testing.refusals import CASES, HEAVY, import_commands

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 3.0
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _imported(request: pytest.FixtureRequest) -> Iterator[None]:
    """The commands' modules imported once (torch, transformers, Dask: seconds the first command of a process pays
    for any input; ``benchmarks/bench_refusals.py`` times them as processes), then, after the module's cases, the
    figures as a table."""
    import_commands()
    yield
    if not TIMINGS:
        return
    lines = [f"  {case:<52} {seconds:5.2f} s" for case, seconds in sorted(TIMINGS.items())]
    report = "\nrefusal times (in-process main(), imports excluded):\n" + "\n".join(lines)
    # shown without -s too (capsys.disabled() does the same for a test)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(report)


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a cluster before the check fails the case, however fast the cluster would start (a local one takes a
    second on an idle machine, half a minute on a busy one: the clock alone would not say): the one place a client
    is made (:func:`geoplantnet.runtime.cluster.get_client`) raises instead."""
    from geoplantnet.runtime import cluster

    def started(cfg: object) -> None:
        raise AssertionError("a Dask cluster was started before the input was checked")

    monkeypatch.setattr(cluster, "get_client", started)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_in_seconds(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = CASES[name].argv(tmp_path)
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    TIMINGS[name] = seconds
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, "\n".join(err[-3:])  # the end of a traceback says what started
    assert len(err) == 1 and err[0].startswith("geoplantnet: error: "), err
    assert CASES[name].culprit in err[0], err[0]
    assert not (tmp_path / "work" / "region").exists(), "the virtual region was generated before the check"
    assert seconds < LIMIT_S, f"{name}: {seconds:.1f} s"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_as_a_process_imports_none_of_the_heavy_work(name: str, tmp_path: Path) -> None:
    """As a process, what a user at a terminal waits for is mostly imports: a refusal imports none of the packages of
    the heavy work (torch, transformers, scikit-learn, matplotlib, stackstac, distributed: a second or more each),
    only what its own check needs. ``benchmarks/bench_refusals.py`` times the processes."""
    case = CASES[name]
    probe = (
        "import json, sys\n"
        "from geoplantnet.cli import main\n"
        f"code = main({case.argv(tmp_path)!r})\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
        "sys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert case.culprit in done.stderr, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == list(case.needs)
