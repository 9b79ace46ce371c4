"""Thresholds and the output scale of a model file, carried into species.zarr by the map job.

The fast test lays out a real tiled store (storage.tiles protocol: prepare -> tiles -> finalise) with a model spec that
carries thresholds, and checks they are in the store before any tile is written and after it is marked complete. The
slow test reads the session's ``sdm`` run on the small virtual region (calibration fitted on its survey plots), then
runs ``map`` with the final ``cnn.pt``: the store's thresholds are the model file's, and its values are the calibrated
probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from geoplantnet.core.config import ModelConfig
from geoplantnet.core.grid import Grid
from geoplantnet.models.calibration import Calibration, SpeciesCalibration, Thresholds
from geoplantnet.models.species_net import ModelSpec
from geoplantnet.products.species_map import SCALE_ATTR, output_scale, species_template, with_thresholds
from geoplantnet.samples.training_set import NormStats
from geoplantnet.storage import tiles as tile_store
from geoplantnet.storage.store import inspect_target, open_store, run_id
from geoplantnet.testing.cli import run_cli
from geoplantnet.testing.fixtures import SDM_SETTINGS, SmallSdm, copy_region

ROOT = Path(__file__).resolve().parents[1]


def _spec(**update) -> ModelSpec:
    cfg = ModelConfig(patch_size=8, env_patch_size=1, width=4, series_hidden=4, env_hidden=4, fusion_hidden=8)
    spec = ModelSpec(
        model=cfg,
        modalities={"env": (2, 1, 1)},
        species=["a", "b", "c"],
        norm=NormStats(env_mean=[0.0], env_std=[1.0]),
        variables=["t"],
    )
    return spec.model_copy(update=update)


def test_thresholds_are_in_the_store_from_its_layout_to_its_completion(tmp_path):
    th = Thresholds(basis="presence-absence", calibrated=True, max_tss=[0.2, None, 0.7], prevalence=[0.3, 0.4, None])
    cal = Calibration(method="isotonic", species=[SpeciesCalibration(x=[0.0, 1.0], y=[0.1, 0.9]), None, None])
    spec = _spec(calibration=cal, thresholds=th)
    grid = Grid(50.0, 4_321_000.0, 2_981_000.0, 16, 16)
    url = str(tmp_path / "species.zarr")
    parts = {"model": "test"}
    layout = with_thresholds(*species_template(grid, spec.species, None, 8, 2), spec)
    tile_store.prepare(url, *layout, decision="new", target=inspect_target(url), product="species", parts=parts)
    group = zarr.open_group(url, mode="r")
    assert group.attrs["geoplantnet_complete"] == "false"
    # written with the layout: a store interrupted after prepare already says how to threshold it
    np.testing.assert_allclose(group["threshold_max_tss"][:], [0.2, np.nan, 0.7])
    np.testing.assert_allclose(group["threshold_prevalence"][:], [0.3, 0.4, np.nan])
    assert group["threshold_max_tss"].dtype == np.float32
    run = run_id(parts)
    for tile in grid.tiles(8):
        tile_store.write_tile(url, "probability", tile, np.zeros((3, 8, 8), np.uint8), run=run)
    tile_store.finalise(url, n_tiles=4, run=run)
    ds = open_store(url)
    assert ds.attrs[SCALE_ATTR] == "calibrated probability of presence"
    assert ds["probability"].attrs["calibration"] == "isotonic"
    for name in ("threshold_max_tss", "threshold_prevalence"):
        assert ds[name].dims == ("species",) and "long_name" in ds[name].attrs
        assert "presence-absence" in ds[name].attrs["description"]
        assert "after calibration" in ds[name].attrs["description"]
    assert float(ds["threshold_max_tss"].sel(species="c")) == pytest.approx(0.7)


def test_output_scale_says_what_the_values_are():
    po = Thresholds(basis="presence-background", calibrated=False, max_tss=[0.1] * 3, prevalence=[0.2] * 3)
    assert output_scale(_spec()).startswith("model output, uncalibrated")  # an older or map-trained model
    assert output_scale(_spec(thresholds=po)).startswith("relative suitability")
    ds, enc = with_thresholds(
        *species_template(Grid(50.0, 4e6, 3e6, 8, 8), ["a", "b", "c"], None, 8, 2), _spec(thresholds=po)
    )
    assert "not a probability" in ds["probability"].attrs["long_name"]
    assert "share of presences among presence + background" in ds["threshold_prevalence"].attrs["description"]
    assert set(enc) == {"probability", "threshold_max_tss", "threshold_prevalence"}
    plain, plain_enc = with_thresholds(
        *species_template(Grid(50.0, 4e6, 3e6, 8, 8), ["a"], None, 8, 2), _spec(species=["a"])
    )
    assert "threshold_max_tss" not in plain and set(plain_enc) == {"probability"}


def _cli(*args: str) -> dict:
    proc = run_cli(*args, cwd=ROOT)  # in-process: the map's store is tested, not a process
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


@pytest.mark.slow
def test_sdm_writes_calibration_and_thresholds_into_cnn_pt_and_map_writes_them_into_species_zarr(
    small_sdm: SmallSdm, small_region: Path, tmp_path: Path, shared_cluster_sets: list[str]
):
    from geoplantnet.inference.species import read_model

    summary = small_sdm.summary  # the session's sdm run on the small region (tests/conftest.py: small_sdm)
    # map in a workdir of its own holding the same region
    sets = [*SDM_SETTINGS, "map.tile=16", f"workdir={copy_region(small_region, tmp_path / 'work')}"]
    flags = [a for s in [*sets, *shared_cluster_sets] for a in ("--set", s)]
    cal = summary["calibration"]["cnn"]
    assert cal["method"] == "platt" and cal["basis"] == "presence-absence" and cal["n_rows"] > 50
    assert cal["ece_after"] < cal["ece_before"]  # nested: each fold calibrated by a map fitted on the others
    assert Path(summary["thresholds_file"]).is_file()
    report = Path(summary["report"]).read_text()
    assert "## Calibration and thresholds" in report and "| cnn | platt | presence-absence |" in report
    model_file = summary["model_files"]["cnn"]
    _, spec, _ = read_model(model_file)
    assert spec.calibration is not None and spec.calibration.method == "platt"
    assert spec.thresholds is not None and spec.thresholds.calibrated and len(spec.thresholds.max_tss) == 30

    store = tmp_path / "species.zarr"
    _cli("map", "-q", "--model", model_file, "--out", str(store), *flags)
    ds = open_store(str(store))
    assert ds.attrs[SCALE_ATTR] == "calibrated probability of presence"
    assert ds["probability"].attrs["calibration"] == "platt"
    for key in ("max_tss", "prevalence"):
        expected = np.array([np.nan if v is None else v for v in getattr(spec.thresholds, key)], np.float32)
        np.testing.assert_array_equal(ds[f"threshold_{key}"].values, expected)
    # the stored values are the calibrated ones: a tile equals the dense path with the file's calibration applied,
    # and differs from the raw network's output
    from geoplantnet.core.config import load_config
    from geoplantnet.inference.dense import predict_tile, tile_geometry
    from geoplantnet.inference.reader import MapSources
    from geoplantnet.runs.inputs import virtual_inputs

    cfg = load_config(None, sets)
    inputs = virtual_inputs(cfg)
    sources = MapSources.from_items(cfg.cube, cfg.grid.epsg, inputs.s2_items, inputs.env_items)
    model, _, _ = read_model(model_file)
    grid, cube_grid = cfg.grid.grid(), cfg.grid.grid(cfg.cube.resolution)
    tile = list(grid.tiles(16))[4]
    geom = tile_geometry(spec, tile, grid, cube_grid)
    patch, env = sources.read(spec, geom, grid, cube_grid)
    stored = zarr.open_group(str(store), mode="r")["probability"][:, tile.slices[0], tile.slices[1]].astype(int)
    calibrated = predict_tile(model, spec, geom, patch, env, mixed_precision=False).astype(int)
    raw = predict_tile(model, spec.model_copy(update={"calibration": None}), geom, patch, env, mixed_precision=False)
    assert np.abs(stored - calibrated).max() <= 1
    assert np.abs(stored - raw.astype(int)).max() > 5
    # a second run of the same map resumes (nothing to do) and keeps them
    again = _cli("map", "-q", "--model", model_file, "--out", str(store), *flags)
    assert again["tiles_skipped"] == again["tiles"]
    assert np.isfinite(open_store(str(store))["threshold_max_tss"].values).any()
