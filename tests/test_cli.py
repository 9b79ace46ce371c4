"""The command line: help for every sub-command, one-line errors with exit status 2."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geoplantnet.cli import build_parser, main
from geoplantnet.core.errors import InputError
from geoplantnet.storage.store import open_store
from geoplantnet.storage.tiles import MANIFEST
from geoplantnet.testing.cli import cli_sets, run_cli
from geoplantnet.testing.fixtures import copy_region
from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = [
    ["run"],
    ["sdm"],
    ["map"],
    ["predict"],
    ["simulate"],
    ["stac", "serve"],
    ["config", "show"],
    ["cluster", "spec"],
    ["deploy", "render"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command, "--help"])
    assert info.value.code == 0
    assert "usage: geoplantnet" in capsys.readouterr().out


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", "--set", "cube.resolution=40"]) == 0
    assert "resolution: 40.0" in capsys.readouterr().out


def test_malformed_yaml_is_one_line_and_status_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cube:\n  resolution: [20\n")
    proc = run_cli("run", "-c", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "malformed YAML" in proc.stderr


def test_python_dash_m_geoplantnet_is_the_command():
    proc = subprocess.run(
        [sys.executable, "-m", "geoplantnet", "config", "show", "--set", "cube.resolution=40"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "resolution: 40.0" in proc.stdout


def test_a_bad_environment_override_names_the_variable_not_the_file(tmp_path):
    proc = run_cli("run", "-q", env={"GEOPLANTNET__CUBE__RESOLUTION": "twenty"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "geoplantnet: error: environment variable GEOPLANTNET__CUBE__RESOLUTION: cube.resolution: Input should be a "
        "valid number, unable to parse string as a number"
    ]


def test_a_malformed_override_never_echoes_its_value():
    proc = run_cli("config", "show", "--set", "store.storage_options={secret: [hunter2")
    assert proc.returncode == 2 and "hunter2" not in proc.stderr
    assert "--set store.storage_options: the value of store.storage_options is not valid YAML" in proc.stderr


def test_user_errors_are_one_line_and_bugs_are_tracebacks(monkeypatch, capsys):
    import geoplantnet.cli as cli

    def user_error(args):
        raise InputError("obs.csv: no column 'species'\nsecond line")

    def bug(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "_cmd_config_show", user_error)
    assert cli.main(["config", "show"]) == 2
    assert capsys.readouterr().err == "geoplantnet: error: obs.csv: no column 'species'\n"
    monkeypatch.setattr(cli, "_cmd_config_show", bug)
    assert cli.main(["config", "show"]) == 1  # a KeyError in our code is not the user's fault: not exit 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'missing'" in err
    assert err.strip().splitlines()[-1].startswith("geoplantnet: internal error (a bug")


@pytest.mark.slow
def test_ctrl_c_stops_run_with_one_line_and_leaves_no_temporary_store(tmp_path, small_region):
    out, work = tmp_path / "out", copy_region(small_region, tmp_path / "work")  # the session's region: no generation
    cmd = [
        sys.executable,
        "-m",
        "geoplantnet",
        "run",
        "-q",
        "--set",
        f"workdir={work}",
        "--set",
        f"store.root={out}",
        *[x for item in SMALL_REGION for x in ("--set", item)],
    ]
    # its own process group, as a terminal's foreground job: Ctrl-C signals the driver and its workers alike
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob(".composites.zarr.tmp-*")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 130, err.decode()[-3000:]
    assert lines[-1] == "geoplantnet: interrupted"
    assert "Traceback" not in err.decode() and "KeyboardInterrupt" not in err.decode(), err.decode()[-3000:]
    assert not list(out.glob(".composites.zarr*")), "temporary store or lease left behind"
    assert not (out / "composites.zarr").exists()


def _stop_midway(args: list[str], store: Path, sig: int, *, group: bool) -> tuple[int, str, float]:
    """Start ``geoplantnet <args>`` writing the tiled ``store``, send ``sig`` once its first tile is written (the
    workers busy with the next ones), to its process group (a terminal's Ctrl-C) or to the driver alone (Kubernetes'
    SIGTERM); returns the exit status, stderr and the seconds from the signal to the exit."""
    cmd = [sys.executable, "-m", "geoplantnet", *args, "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list(store.glob(f"{MANIFEST}/*/*.json")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    assert (store.parent / f".{store.name}.lease.json").exists()  # really working: under the store's lease
    sent = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err.decode(), time.monotonic() - sent


def _stopped_in_one_line(status: int, err: str, seconds: float, expected: int, store: Path) -> None:
    assert status == expected, err[-3000:]
    assert seconds < 5, f"{seconds:.1f} s from the signal to the exit"
    assert err.strip().splitlines()[-1] == "geoplantnet: interrupted"
    # no traceback (the driver's, a worker's, distributed's event loop), no warning about workers being killed
    for noise in ("Traceback", "Error", "WARNING", "ERROR"):
        assert noise not in err, err[-3000:]
    assert not (store.parent / f".{store.name}.lease.json").exists(), "the store's lease was left behind"


@pytest.mark.slow
def test_ctrl_c_stops_a_map_within_seconds_and_the_rerun_resumes_it(tmp_path, small_map, shared_cluster_sets):
    store = tmp_path / "species.zarr"
    args = ["map", *[x for s in small_map.overrides for x in ("--set", s)], "--model", small_map.model]
    args += ["--out", str(store)]
    _stopped_in_one_line(*_stop_midway(args, store, signal.SIGINT, group=True), 130, store)
    # at once (no lease to wait out), the tiles written are kept, the others computed: the reference map
    proc = run_cli(*args, *cli_sets(shared_cluster_sets), "--quiet", cwd=ROOT)  # in-process, the session's cluster
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0 < json.loads(proc.stdout)["tiles_computed"] < 9
    reference = open_store(small_map.reference)
    np.testing.assert_array_equal(open_store(str(store))["probability"].values, reference["probability"].values)


@pytest.mark.slow
def test_sigterm_stops_indicators_like_ctrl_c(tmp_path, small_map, small_habitats):
    """Kubernetes stops a pod with SIGTERM to its main process: the driver alone gets it."""
    store = tmp_path / "indicators.zarr"
    args = ["indicators", *[x for s in small_habitats.overrides for x in ("--set", s)], "--out", str(store)]
    args += ["--species", small_map.reference, "--habitats", small_habitats.store, "--set", "indicators.n_surveys=0"]
    _stopped_in_one_line(*_stop_midway(args, store, signal.SIGTERM, group=False), 143, store)
