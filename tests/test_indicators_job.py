"""``geoplantnet indicators`` end to end on the small virtual region: the CLI on a real LocalCluster, values against a
direct computation from the stores, group membership against the generator's statuses, interval coverage on
independent surveys, the evaluation against the virtual truth, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from geoplantnet.cli import main
from geoplantnet.core.config import load_config
from geoplantnet.inference.dense import decode
from geoplantnet.models.calibration import Calibration
from geoplantnet.runs.inputs import virtual_status_tables
from geoplantnet.storage.store import COMPLETE, open_store
from geoplantnet.testing.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"
SETTINGS = ["indicators.block_size=500", "indicators.n_surveys=400", "indicators.draws=16"]

pytestmark = pytest.mark.slow


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


@pytest.fixture(scope="module")
def cli_run(small_map, small_habitats, shared_cluster_sets) -> tuple[str, dict]:
    """``geoplantnet indicators --evaluate`` end to end, in-process on the session's cluster."""
    out = small_map.root / "indicators.zarr"
    cmd = [
        "indicators",
        "--config",
        str(CONFIG),
        *_sets([*small_habitats.overrides, *SETTINGS, *shared_cluster_sets]),
        "--species",
        small_map.reference,
        "--habitats",
        small_habitats.store,
        "--out",
        str(out),
        "--evaluate",
        "--quiet",
    ]
    proc = run_cli(*cmd, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out), json.loads(proc.stdout)


def test_store_is_complete_and_described(cli_run, small_map, small_habitats):
    url, summary = cli_run
    ds = open_store(url)
    assert ds.attrs[COMPLETE] == "true" and ds.attrs["geoplantnet_product"] == "indicators"
    species = open_store(small_map.reference)
    assert ds.attrs["species_model_version"] == species.attrs["model_version"]
    assert ds.attrs["habitat_model_version"].startswith("plantbert-classifier/")
    expected = {"richness_expected", "invasive_expected", "threatened_expected", "protected_expected", "shannon"}
    assert expected | {"threatened_habitat", "habitat_set_size", "ecosystem_health"} <= set(ds.data_vars)
    for name, var in ds.data_vars.items():
        assert var.attrs["long_name"] and var.attrs["description"], name
        assert "species_model=" in var.attrs["model_versions"], name
    assert summary["tiles"] == summary["tiles_computed"] == 9


def test_values_equal_a_direct_computation_from_the_stores(cli_run, small_map):
    url, _ = cli_run
    ds = open_store(url)
    p = decode(zarr.open_group(small_map.reference, mode="r")["probability"][:])
    # the small map is uncalibrated: the indicators see it through the Platt maps fitted on half the surveys
    p = Calibration.model_validate_json(ds.attrs["species_calibration"]).apply(p, axis=0)
    np.testing.assert_allclose(ds["richness_expected"].values, p.sum(axis=0), rtol=1e-5)
    q = p / p.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0).sum(axis=0)
    np.testing.assert_allclose(ds["shannon"].values, h, rtol=1e-4)
    assert (ds["richness_lower"].values <= ds["richness_expected"].values).all()
    assert (ds["richness_upper"].values >= ds["richness_expected"].values).all()
    assert (ds["shannon_lower"].values <= ds["shannon_upper"].values).all()


def test_groups_are_the_generators_statuses(cli_run, small_map):
    _, summary = cli_run
    table = pd.read_csv(virtual_status_tables(small_map.cfg)["species"])
    species = [str(s) for s in open_store(small_map.reference)["species"].values]
    table = table[table["species_id"].isin(species)]
    assert summary["groups"]["invasive"] == int(table["invasive"].sum())
    assert summary["groups"]["protected"] == int(table["protected"].sum())
    assert summary["groups"]["threatened"] == int(table["iucn_category"].isin(["VU", "EN", "CR"]).sum())
    assert summary["tables"]["status_table"]["matched"] == len(table) or summary["tables"]["status_table"]["rows"]


def test_intervals_cover_held_out_surveys_near_the_nominal_level(cli_run):
    _, summary = cli_run
    cal = summary["calibration"]
    # 400 surveys: alternate spatial folds recalibrate the (uncalibrated) small map, the others test the intervals
    assert cal["surveys"] >= 120 and cal["level"] == 0.9
    assert any("Platt maps per species" in note for note in cal["notes"])
    richness = cal["coverage"]["richness"]
    assert richness["n"] == cal["surveys"] and 0.80 <= richness["coverage"] <= 0.97, richness
    assert cal["coverage"]["habitat_set"]["coverage"] >= 0.8


def test_evaluation_against_the_virtual_truth(cli_run):
    _, summary = cli_run
    ev = summary["evaluation"]
    rich = ev["richness"]
    assert rich["expected"]["pixels"] == 1600 and np.isfinite(rich["expected"]["mae"])
    assert rich["expected"]["r"] > 0.2  # the small map (8 epochs) follows the true richness, loosely
    assert rich["coverage_of_truth"] >= 0.8  # intervals of a survey's count contain the expected count
    assert 0 <= ev["threatened_habitat"]["accuracy"] <= 1 and ev["ecosystem_health"]["pixels"] > 0


def test_refusals_are_one_line(small_map, small_habitats, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    base = ["indicators", "--config", str(CONFIG), *_sets(small_habitats.overrides), "--species", small_map.reference]
    assert main([*base, "--no-habitats", "--out", str(user), "--quiet"]) == 2
    assert (user / "notes.txt").read_text() == "keep me" and sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    missing = tmp_path / "nope.csv"
    assert main([*base, "--set", f"indicators.status={missing}", "--out", str(tmp_path / "i.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err[-1]) > 0 and "nope.csv" in err[-1]
    assert not (tmp_path / "i.zarr").exists()


def test_config_defaults_are_valid():
    cfg = load_config(CONFIG, [])
    assert 0 < cfg.indicators.level < 1 and cfg.habitats.top_k >= 5
