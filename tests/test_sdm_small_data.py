"""Small and empty data through the species-model job: honest reports, strict JSON, no-data predictors named.

The end-to-end cases subsample the Bradypus set (../shared/data/real/predicts_bradypus_bioclim) to 3 records, and
blank its raster; both run the CLI (~40 s and ~25 s, mostly cluster start and extraction), so they are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geoplantnet.core.errors import InputError
from geoplantnet.reports.summary import json_safe as _json_safe
from geoplantnet.testing.cli import Result, run_cli
from geoplantnet.validation.report import model_summary as _model_summary
from geoplantnet.validation.species import NoPredictorDataError, _check_predictor_data

ROOT = Path(__file__).resolve().parents[1]
BRADYPUS = ROOT.parent / "shared" / "data" / "real" / "predicts_bradypus_bioclim"
needs_bradypus = pytest.mark.skipif(not BRADYPUS.is_dir(), reason=f"real data folder {BRADYPUS} is absent")
FAST = ["train.ensemble=1", "train.epochs=2", "train.n_background=200", "cluster.n_workers=1"]


def _strict_loads(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_summary_is_strict_json_with_null_for_unscored_metrics() -> None:
    folds = [
        {"fold": 0.0, "auc": 0.8, "ece": float("nan"), "n_samples": 10.0, "n_species_informative": 1.0},
        {"fold": 1.0, "auc": float("nan"), "ece": float("nan"), "n_samples": 12.0, "n_species_informative": 0.0},
    ]
    summary = _json_safe({"models": {"m": _model_summary({"folds": folds})}, "x": np.float32("inf")})
    text = json.dumps(summary, allow_nan=False)
    parsed = _strict_loads(text)
    assert parsed["models"]["m"] == {  # type: ignore[index]
        "auc": 0.8,
        "ece": None,
        "n_samples": 22,
        "n_species_informative": 1,
        "folds": 2,
        "informative_folds": 1,
    }
    assert parsed["x"] is None  # type: ignore[index]
    with pytest.raises(ValueError, match="NaN"):
        _strict_loads('{"auc": NaN}')  # the parser used above does refuse what json.dumps writes by default


def test_no_predictor_data_is_an_input_error_naming_the_predictors() -> None:
    env = xr.DataArray(np.zeros((2, 1, 1)), dims=("var", "y", "x"), coords={"var": ["bio1", "bio12"]})
    labels = np.array([[1], [1], [0], [0]])
    with pytest.raises(NoPredictorDataError, match=r"no sample has predictor data: the predictors \[bio1, bio12\]"):
        _check_predictor_data(labels, np.array([], dtype=int), env)
    with pytest.raises(InputError, match="none of the 2 samples with a presence has predictor data"):
        _check_predictor_data(labels, np.array([2, 3]), env)  # only background kept: the rasters miss the records
    _check_predictor_data(labels, np.array([0, 2, 3]), env)  # one presence with data is enough here


def _sdm(tmp_path: Path, observations: Path, raster: Path, *overrides: str) -> Result:
    cmd = [
        "sdm",
        "--quiet",
        "-c",
        str(ROOT / "pipelines" / "bradypus.yaml"),
        "--observations",
        str(observations),
        "--rasters",
        str(raster),
        "--out",
        str(tmp_path / "sdm"),
    ]
    for item in [*FAST, *overrides, f"workdir={tmp_path / 'work'}"]:
        cmd += ["--set", item]
    return run_cli(*cmd, cwd=ROOT)  # in-process: the report is tested, not a process


@pytest.mark.slow
@pytest.mark.real_data
@needs_bradypus
def test_three_records_give_a_flagged_report_and_strict_json(tmp_path: Path) -> None:
    three = tmp_path / "three.csv"
    pd.read_csv(BRADYPUS / "bradypus.csv").head(3).to_csv(three, index=False)
    proc = _sdm(tmp_path, three, BRADYPUS / "bio.tif")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _strict_loads((tmp_path / "sdm" / "summary.json").read_text())
    maxent = summary["models"]["maxent"]  # type: ignore[index]
    # 3 presences in 500 km blocks over 5 folds: at most 3 folds can hold a test presence.
    assert maxent["folds"] == 5 and 1 <= maxent["informative_folds"] <= 3
    assert maxent["n_test_presences"] == 3 and maxent["ece"] is None
    assert any("fewer than 10 presence records: Bradypus variegatus (3)" in w for w in summary["warnings"])
    assert any(w.startswith("maxent predicted a constant") for w in summary["warnings"])
    text = (tmp_path / "sdm" / "report" / "report.md").read_text()
    assert text.index("## WARNING") < text.index("| model |")
    k = maxent["informative_folds"]
    assert f"0.500 ± 0.000 ({k} of 5 folds)" in text or f"0.500 ({k} of 5 folds)" in text
    assert "[few cases, constant]" in text
    table = pd.read_csv(tmp_path / "sdm" / "report" / "per_species.csv")
    scored = table[table["informative"]]
    assert scored["few_cases"].all() and scored[scored["model"] == "maxent"]["constant"].all()
    assert table[~table["informative"]]["auc"].isna().all()


@pytest.mark.slow
@pytest.mark.real_data
@needs_bradypus
def test_all_nan_raster_says_no_predictor_data_not_smaller_blocks(tmp_path: Path) -> None:
    import rasterio

    with rasterio.open(BRADYPUS / "bio.tif") as src:
        profile = src.profile | {"count": 1}
    blank = tmp_path / "blank.tif"
    with rasterio.open(blank, "w", **profile) as dst:
        dst.write(np.full((1, profile["height"], profile["width"]), np.nan, dtype="float32"))
    proc = _sdm(tmp_path, BRADYPUS / "bradypus.csv", blank, "validation.models=[maxent]")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("geoplantnet: error: no sample has predictor data: the predictors [blank]"), last
    assert "smaller blocks" not in proc.stderr


def test_the_network_learns_from_record_sites_only_when_asked_and_when_it_can() -> None:
    """``train.po_sites=records``: background rows are left out of the network's training (target-group sites);
    with records of one species the records alone hold no contrast, so the background stays."""
    from geoplantnet.validation.species import _learning_rows

    source = np.array(["po", "po", "po", "bg", "bg", "pa"])
    two = np.array([[1, -1], [-1, 1], [1, 1], [0, 0], [0, 0], [1, 0]])
    assert _learning_rows("records", two, source)[0].tolist() == [True, True, True, False, False, True]
    keep, one_species = _learning_rows("records_and_background", two, source)
    assert keep.all() and not one_species
    keep, one_species = _learning_rows("records", np.array([[1], [1], [1], [0], [0], [0]]), source)
    assert keep.all() and one_species
