"""The side-by-side report: files exist, the table holds every model, the scatter counts species."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplantnet.validation.blocks import blocks_geodataframe, spatial_blocks
from geoplantnet.validation.metrics import reliability_table
from geoplantnet.validation.report import ReportError, report_warnings, summary_table, write_report


def _results(models: tuple[str, ...], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(models):
        folds = [{"fold": k, "auc": 0.7 + 0.05 * i + 0.01 * k, "tss": 0.4, "ece": np.nan} for k in range(3)]
        per_species = pd.DataFrame(
            {
                "species": np.tile([f"sp{j}" for j in range(8)], 3),
                "fold": np.repeat(range(3), 8),
                "auc": 0.6 + 0.05 * i + 0.3 * rng.random(24),
                "tss": rng.random(24),
            }
        )
        p = rng.random((400, 1))
        rel = reliability_table((rng.random(p.shape) < p).astype("int8"), p)
        out[name] = {"folds": folds, "per_species": per_species, "reliability": rel}
    return out


def test_report_files_and_table(tmp_path: Path) -> None:
    results = _results(("maxent", "random_forest", "cnn"))
    rng = np.random.default_rng(1)
    x, y = 4_000_000 + rng.uniform(0, 1e5, 300), 2_800_000 + rng.uniform(0, 1e5, 300)
    gdf = blocks_geodataframe(x, y, 20_000.0, spatial_blocks(x, y, 20_000.0, 3, seed=0))
    path = write_report(results, tmp_path / "out", blocks_gdf=gdf, points=(x, y), title="Test report")
    text = path.read_text()
    for name in results:
        assert f"| {name} |" in text
    for png in ("auc_scatter.png", "blocks_map.png", "calibration.png"):
        assert (path.parent / png).stat().st_size > 1000
    assert "| maxent | 0.710 ± 0.010 |" in text  # AUC 0.70, 0.71, 0.72 over the three folds
    assert "| – |" in text  # ece is NaN in every fold: a dash
    per_species = pd.read_csv(path.parent / "per_species.csv")
    assert set(per_species["model"]) == set(results)
    expected = (
        results["cnn"]["per_species"].groupby("species")["auc"].mean()
        > results["maxent"]["per_species"].groupby("species")["auc"].mean()
    ).sum()
    assert f"{expected} of 8 species have a higher AUC with cnn than with maxent" in text


def test_report_without_cnn_compares_the_other_model(tmp_path: Path) -> None:
    path = write_report(_results(("maxent", "random_forest")), tmp_path)
    assert "random_forest vs maxent" in path.read_text()
    assert not (tmp_path / "blocks_map.png").exists()


def test_summary_table_and_errors() -> None:
    table = summary_table(_results(("a", "b")))
    assert list(table.index) == ["a", "b"] and "auc" in table.columns and table.loc["a", "folds"] == "3"
    with pytest.raises(ReportError, match="empty"):
        summary_table({})
    with pytest.raises(ReportError, match="'folds'"):
        summary_table({"maxent": {"per_species": None}})


def _small_results(constant: bool) -> dict:
    """5 folds, 1 species with 3 presences in folds 0 and 1: what 3 records give."""
    n_pres = [1, 2, 0, 0, 0]
    per_species = pd.DataFrame(
        {
            "species": ["Bradypus variegatus"] * 5,
            "fold": range(5),
            "n_presence": n_pres,
            "n_absence": [170] * 5,
            "informative": [p > 0 for p in n_pres],
            "few_cases": [p > 0 for p in n_pres],
            "constant": [constant and p > 0 for p in n_pres],
            "auc": [0.5 if constant else 0.9, 0.5 if constant else 0.7, np.nan, np.nan, np.nan],
        }
    )
    folds = [
        {"fold": k, "auc": per_species.loc[k, "auc"], "n_species_informative": float(n_pres[k] > 0)} for k in range(5)
    ]
    return {"maxent": {"folds": folds, "per_species": per_species}}


def test_small_data_report_counts_folds_and_warns_first(tmp_path: Path) -> None:
    results = _small_results(constant=True)
    table = summary_table(results)
    assert table.loc["maxent", "auc"] == "0.500 ± 0.000 (2 of 5 folds)"
    assert table.loc["maxent", "folds"] == "5" and table.loc["maxent", "informative folds"] == "2"
    assert "constant prediction in 2 of 2" in table.loc["maxent", "flags"]
    warnings = report_warnings(results)
    assert any("fewer than 10 presence records: Bradypus variegatus (3)" in w for w in warnings)
    assert any("fewer than 5 test presences" in w and "Bradypus variegatus" in w for w in warnings)
    assert any(w.startswith("maxent predicted a constant for Bradypus variegatus in 2 of 2") for w in warnings)
    text = write_report(results, tmp_path).read_text()
    assert text.index("## WARNING") < text.index("| model |")
    assert "| Bradypus variegatus | 3 | 2 of 5 | 0.500 (2 of 5 folds) [few cases, constant] |" in text


def test_warns_on_fewer_than_two_informative_folds() -> None:
    results = _small_results(constant=False)
    results["maxent"]["folds"][1]["n_species_informative"] = 0.0
    results["maxent"]["per_species"].loc[1, ["informative", "few_cases"]] = False
    assert any(w.startswith("only 1 of 5 folds are informative") for w in report_warnings(results))
    assert not any("constant" in w for w in report_warnings(results))


def test_no_warning_section_for_well_sampled_results(tmp_path: Path) -> None:
    assert report_warnings(_results(("maxent", "cnn"))) == []
    assert "WARNING" not in write_report(_results(("maxent", "cnn")), tmp_path).read_text()
