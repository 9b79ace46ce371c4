"""Bad input fails in a second, in one line (issue 20): every case a hostile-user review found on the command line,
run in process with real files, refused before any cluster starts or model trains, with exit status 2 and one line
on stderr naming the file, setting or service to fix (never a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoplantnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"


def refused(capsys: pytest.CaptureFixture, args: list[str], *names: str) -> str:
    """Run the command; assert exit status 2 and one line on stderr naming each of ``names``; return the line."""
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("geoplantnet: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def sets(*settings: str) -> list[str]:
    return ["--config", str(CONFIG), *(a for s in settings for a in ("--set", s))]


# -- settings (core/config.py)


def test_unknown_grid_crs_is_refused_by_config_show_and_sdm(capsys, tmp_path: Path) -> None:
    line = refused(capsys, ["config", "show", *sets("grid.epsg=999999")], "--set grid.epsg", "EPSG:999999")
    assert "not a CRS" in line
    refused(capsys, ["sdm", *sets("grid.epsg=999999"), "--out", str(tmp_path / "out")], "grid.epsg", "EPSG:999999")
    # a geographic CRS is no grid (its pixels would be degrees)
    refused(capsys, ["config", "show", *sets("grid.epsg=4326")], "grid.epsg", "not a projected CRS in metres")
    refused(capsys, ["config", "show", *sets("inputs.crs=EPSG:1234567")], "--set inputs.crs", "EPSG:1234567")
    assert not (tmp_path / "out").exists()


def test_an_unknown_setting_blames_the_set_override(capsys) -> None:
    line = refused(capsys, ["config", "show", *sets("unknown.key=1")], "--set unknown.key", "no such section")
    assert str(CONFIG) not in line  # the file is not to blame
    refused(capsys, ["config", "show", *sets("cube.resolutoin=20")], "--set cube.resolutoin", "cube.resolution?")


@pytest.mark.parametrize(
    ("setting", "bound"),
    [
        ("impact.draws=1000000", "1000"),
        ("indicators.draws=5000", "1000"),
        ("value.draws=100000", "1000"),
        ("map.tile=100000", "4096"),
        ("value.tile=65536", "4096"),
        ("train.epochs=10000000", "10000"),
        ("train.ensemble=1000", "100"),
        ("train.batch_size=10000000", "65536"),
        ("cluster.n_workers=100000", "256"),
        ("habitats.train.pretrain_epochs=1000000", "10000"),
    ],
)
def test_settings_that_can_exhaust_the_machine_are_bounded(capsys, setting: str, bound: str) -> None:
    key = setting.split("=")[0]
    refused(capsys, ["config", "show", *sets(setting)], f"--set {key}", f"less than or equal to {bound}")


# -- observations (samples/observations.py)

REAL = ROOT.parent / "shared" / "data" / "real"
BRADYPUS = REAL / "predicts_bradypus_bioclim"


@pytest.mark.parametrize(("text", "expected"), [("", "the file is empty"), ("species,lon,lat\n", "no records")])
def test_observations_without_records_are_refused(capsys, tmp_path: Path, text: str, expected: str) -> None:
    observations = tmp_path / "observations.csv"
    observations.write_text(text)
    args = ["sdm", "--config", str(ROOT / "pipelines" / "bradypus.yaml"), "--observations", str(observations)]
    args += ["--rasters", str(BRADYPUS / "bio.tif"), "--out", str(tmp_path / "out"), "--quiet"]
    refused(capsys, args, str(observations), expected)
