"""The command line: help for every sub-command, one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from geoplantnet.cli import build_parser, main

COMMANDS = [["run"], ["sdm"], ["simulate"], ["stac", "serve"], ["config", "show"], ["cluster", "spec"]]


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
    proc = subprocess.run(
        [sys.executable, "-m", "geoplantnet.cli", "run", "-c", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "malformed YAML" in proc.stderr
