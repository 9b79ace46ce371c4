"""The NCEAS benchmark (../shared/data/real/nceas_disdat) through the shipped pipelines: the tables read as the
benchmark defines them, and the deep model ranks the independent surveys well above chance on the Wet Tropics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geoplantnet.core.config import load_config
from geoplantnet.samples.tables import read_tables
from geoplantnet.testing.cli import run_cli

pytestmark = pytest.mark.real_data
ROOT = Path(__file__).resolve().parents[1]
NCEAS = ROOT.parent / "shared" / "data" / "real" / "nceas_disdat"


@pytest.fixture(autouse=True)
def _need_data() -> None:
    if not NCEAS.is_dir():
        pytest.skip(f"real data folder {NCEAS} is absent")


@pytest.mark.parametrize(
    ("region", "species", "groups", "sites", "features"),
    [("awt", 40, {"bird": 20, "plant": 20}, 442, 13), ("nsw", 54, None, 8746, None)],
)
def test_the_pipelines_read_the_benchmark_as_it_is_defined(
    region: str,
    species: int,
    groups: dict[str, int] | None,
    sites: int,
    features: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)  # the pipelines name the data relative to the project
    cfg = load_config(ROOT / "pipelines" / f"nceas-{region}.yaml", [])
    samples, test = read_tables(cfg.table)
    assert test is not None
    assert len(samples.species) == species and (samples.source == "bg").sum() == 10_000
    assert test.label.shape == (sites, species)
    # every species is scored only at the sites of its own group, where it was surveyed
    for k, s in enumerate(samples.species):
        surveyed = test.label[:, k] >= 0
        assert set(test.group[surveyed]) == {samples.group_of[s]}
    if groups:
        assert {g: list(samples.group_of.values()).count(g) for g in groups} == groups
    if features:
        assert samples.features.shape[1] == features
    if region == "nsw":  # vegsys is categorical: one-hot, no raw code column
        assert "vegsys" not in samples.feature_names and any(n.startswith("vegsys=") for n in samples.feature_names)
    assert "occ" not in samples.feature_names
    assert np.isfinite(samples.x).all() and np.isfinite(test.x).all()


@pytest.mark.slow
def test_the_deep_model_ranks_the_wet_tropics_surveys(tmp_path: Path) -> None:
    out = tmp_path / "awt"
    cmd = [
        "sdm-table",
        "--config",
        "pipelines/nceas-awt.yaml",
        "--out",
        str(out),
        "--set",
        "train.ensemble=2",
        "--set",
        "validation.models=[cnn]",
    ]
    done = run_cli(*cmd, cwd=ROOT)  # in-process: the report is tested, not a process
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    deep = summary["independent"]["models"]["cnn"]
    assert deep["species"] == 40 and set(deep["groups"]) == {"bird", "plant"}
    # MaxEnt scores 0.671 here (PROVENANCE.md); a working deep model is far above chance
    assert deep["auc"] > 0.62, deep
    assert len(summary["independent"]["deep_training"]["all"]) == 2
