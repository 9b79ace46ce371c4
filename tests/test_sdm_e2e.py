"""The species-model job end to end: virtual region and bring-your-own-data (the Bradypus set), through the CLI."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pyproj import Transformer

from geoplantnet.storage.store import open_store
from geoplantnet.testing.cli import cli_sets, run_cli
from geoplantnet.testing.fixtures import SmallSdm

ROOT = Path(__file__).resolve().parents[1]
BRADYPUS = ROOT.parent / "shared" / "data" / "real" / "predicts_bradypus_bioclim"


def _sdm(tmp_path: Path, *args: str, overrides: list[str]) -> dict:
    sets = cli_sets([*overrides, f"workdir={tmp_path / 'work'}"])
    proc = run_cli("sdm", "--quiet", "--out", str(tmp_path / "sdm"), *args, *sets, cwd=ROOT)  # in-process
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


@pytest.mark.slow
def test_sdm_on_the_virtual_region_scores_every_model_against_the_truth(small_sdm: SmallSdm):
    # the session's sdm run on the small region (tests/conftest.py: small_sdm)
    result = small_sdm.summary
    assert set(result["models"]) == {"cnn", "maxent", "maxent_tuned", "random_forest"}
    for name, metrics in result["models"].items():
        assert 0.5 < metrics["auc"] <= 1.0, name  # better than chance on spatial blocks
        assert metrics["pearson"] > 0.0, name  # correlated with the true probabilities
    report = Path(result["report"])
    text = report.read_text()
    assert "| cnn" in text and "| maxent" in text and "| random_forest" in text
    for png in ("auc_scatter.png", "blocks_map.png"):
        assert (report.parent / png).stat().st_size > 5_000
    assert result["cnn_seconds_per_epoch"] > 0
    assert set(result["cross_validation_seconds"]) == set(result["models"])
    # final models on all kept samples, for maps: files that load, describe their species and inputs
    from geoplantnet.models.peers import load_peer
    from geoplantnet.training.train import load_model

    files = result["model_files"]
    assert {k: Path(v).name for k, v in files.items()} == {
        "cnn": "cnn.pt",
        "maxent": "maxent.peer",
        "maxent_tuned": "maxent_tuned.peer",
        "random_forest": "random_forest.peer",
    }
    assert all(Path(v).parent == small_sdm.out / "models" for v in files.values())
    _, cnn_spec = load_model(files["cnn"])
    assert len(cnn_spec.species) == result["n_species"]
    for kind in ("maxent", "maxent_tuned", "random_forest"):
        peer, spec = load_peer(files[kind], kind=kind)
        assert spec.species == cnn_spec.species and spec.variables == cnn_spec.variables
        assert len(spec.features) == peer.n_vars_
    # the tuned MaxEnt's choice per species (on spatial folds of all the samples) is in its file's header
    tuning = load_peer(files["maxent_tuned"])[1].tuning
    assert tuning is not None and len(tuning) == len(cnn_spec.species)
    assert {t["features"] for t in tuning if t} <= {"L", "LQ", "default"}
    assert "final models on all kept samples" in text and "models/maxent.peer" in text


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.skipif(not BRADYPUS.is_dir(), reason=f"real data folder {BRADYPUS} is absent")
def test_bradypus_through_the_bring_your_own_data_command(tmp_path, shared_cluster_sets):
    result = _sdm(
        tmp_path,
        "-c",
        str(ROOT / "pipelines" / "bradypus.yaml"),
        "--observations",
        str(BRADYPUS / "bradypus.csv"),
        "--rasters",
        str(BRADYPUS / "bio.tif"),
        overrides=["train.epochs=15", "train.ensemble=1", "cluster.n_workers=2", *shared_cluster_sets],
    )
    assert result["n_species"] == 1 and result["n_samples"] > 600  # 116 presences + background on land
    assert result["models"]["maxent"]["auc"] > 0.7  # the literature's ~0.8-0.9 less the spatial-block penalty
    assert result["models"]["maxent_tuned"]["auc"] > 0.7  # the example's default grid, tuned inside each fold
    assert result["models"]["cnn"]["auc"] > 0.6
    # the final models (all records) mapped over South America at 25 km through the same tile job, side by side
    stores = {}
    for name in ("cnn", "maxent"):
        model = result["model_files"][name]
        out = tmp_path / f"{name}.zarr"
        cmd = [
            "map",
            "-q",
            "-c",
            str(ROOT / "pipelines" / "bradypus.yaml"),
            "--model",
            model,
            "--rasters",
            str(BRADYPUS / "bio.tif"),
            "--out",
            str(out),
            "--set",
            f"workdir={tmp_path / 'work'}",
            *cli_sets(shared_cluster_sets),
        ]
        proc = run_cli(*cmd, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stores[name] = open_store(str(out))["probability"].sel(species_name="Bradypus variegatus")
    assert stores["maxent"].shape == stores["cnn"].shape == (433, 360)
    land = np.isfinite(stores["cnn"].values) & np.isfinite(stores["maxent"].values)
    assert 0.2 < land.mean() < 0.5  # the continents (28 % of the rectangle), not the sea
    agree = pd.Series(stores["cnn"].values[land]).corr(pd.Series(stores["maxent"].values[land]), method="spearman")
    assert agree > 0.5, agree  # two models of one species on the same layers: broadly the same range
    records = pd.read_csv(BRADYPUS / "bradypus.csv")
    x, y = Transformer.from_crs(4326, 6933, always_xy=True).transform(records.lon.values, records.lat.values)
    for name, prob in stores.items():
        at_records = prob.sel(x=xr.DataArray(x), y=xr.DataArray(y), method="nearest").values
        assert np.nanmean(at_records) > 2 * np.nanmean(prob.values[land]), name  # high where the sloth was seen
    png = tmp_path / "bradypus.png"
    proc = run_cli(
        "plot",
        str(tmp_path / "cnn.zarr"),
        str(tmp_path / "maxent.zarr"),
        "--species",
        "Bradypus variegatus",
        "--out",
        str(png),
        cwd=ROOT,
    )
    assert proc.returncode == 0 and png.stat().st_size > 10_000, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["maps"] == ["species-net", "maxent"]
