"""generate_region end to end on a tiny region: layout, truth stores, idempotence, regeneration."""

import json
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geoplantnet.core.config import GridConfig, RunConfig, SimConfig
from geoplantnet.core.errors import RefusedError
from geoplantnet.sim.region import MANIFEST, RegionError, RegionManifest, config_hash, generate_region, truth_window
from geoplantnet.sources.stac_items import read_ndjson
from geoplantnet.storage.store import open_store

CONFIG = RunConfig(
    grid=GridConfig(width_m=1000, height_m=1000, resolution=50),
    sim=SimConfig(seed=3, n_species=30, n_habitats=6, n_plots=12, n_presence_only=80, dates_per_season=1, chunk=64),
)


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    out = tmp_path_factory.mktemp("region")
    return out, generate_region(CONFIG, out, progress=False)


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_manifest_lists_everything(region):
    out, manifest = region
    assert (out / MANIFEST).exists()
    assert manifest.config_hash == config_hash(CONFIG) and manifest.seed == 3
    for key in manifest.paths:
        assert manifest.path(key).exists(), key
    loaded = RegionManifest.load(out / MANIFEST)
    assert loaded == RegionManifest.load(out) == manifest
    assert manifest.counts["species"] == 30 and manifest.counts["habitats"] == 6
    assert manifest.counts["plots"] == 12 and manifest.counts["presence_only"] == 80
    assert manifest.map_grid == CONFIG.grid.grid()
    s2 = read_ndjson(manifest.s2_items_path)
    assert len(s2) == manifest.counts["s2_items"] > 0
    assert len(read_ndjson(manifest.env_items_path)) == manifest.counts["env_items"] > 0
    assert all(c.exists() and i.exists() for c, i in manifest.collections())
    doc = json.loads((out / MANIFEST).read_text())
    assert doc["root"] == "." and not os.path.isabs(doc["paths"]["truth_species"])


def test_truth_stores_open_with_the_right_coords(region):
    _, manifest = region
    grid = CONFIG.grid.grid()
    species = xr.open_zarr(manifest.truth_species)
    prob = species["probability"]
    assert prob.dims == ("species", "y", "x") and prob.shape == (30, *grid.shape)
    np.testing.assert_array_equal(species["x"], grid.x)
    np.testing.assert_array_equal(species["y"], grid.y)
    assert species["species"].values[0] == "sp0001" and "species_name" in species.coords
    assert "spatial_ref" in species.coords and prob.attrs["grid_mapping"] == "spatial_ref"
    values = prob.values
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    table = pd.read_parquet(manifest.species_table)
    assert list(table["species_id"]) == list(species["species"].values)
    habitat = open_store(str(manifest.truth_habitat))  # complete flag set, consolidated
    codes = habitat["habitat_code"].values
    assert "habitat" in habitat.data_vars and habitat["habitat"].dims == ("y", "x")
    assert habitat["habitat"].dtype == np.int16 and habitat["habitat_code"].dims == ("habitat_class",)
    assert list(codes) == list(pd.read_parquet(manifest.habitat_table)["code"])
    assert set(np.unique(habitat["habitat"].values)) <= set(range(len(codes)))
    indicators = open_store(str(manifest.truth_indicators))
    np.testing.assert_allclose(indicators["richness_expected"].values, values.sum(axis=0), rtol=1e-4)


def test_observations_and_value(region):
    _, manifest = region
    plots = gpd.read_parquet(manifest.plots)
    habitat_codes = set(pd.read_parquet(manifest.habitat_table)["code"])
    assert plots.crs.to_epsg() == 3035 and set(plots["habitat"]) <= habitat_codes
    plot_species = pd.read_parquet(manifest.plot_species)
    assert plot_species.groupby("plot_id").size().sum() == plots["n_species"].sum()
    records = gpd.read_parquet(manifest.presence_only)
    assert len(records) == 80 and "observer_effort" not in records
    value = gpd.read_parquet(manifest.value_polygons)
    assert set(value["value"]) <= {"high", "low"} and value.is_valid.all()


def test_second_call_is_a_no_op_and_partial_folder_regenerates(region):
    out, manifest = region
    before = _mtimes(out)
    again = generate_region(CONFIG, out, progress=False)
    assert again == manifest and _mtimes(out) == before
    # an interrupted run (no manifest) is regenerated, identically
    truth = xr.open_zarr(manifest.truth_species)["probability"].values
    (out / MANIFEST).unlink()
    (out / "observations" / "plots.parquet").unlink()
    fresh = generate_region(CONFIG, out, progress=False)
    assert fresh.config_hash == manifest.config_hash and fresh.plots.exists()
    np.testing.assert_array_equal(xr.open_zarr(fresh.truth_species)["probability"].values, truth)


def test_window_bounds_memory_and_bad_manifest(tmp_path):
    assert truth_window(1024, 10_000) * truth_window(1024, 10_000) * 4 * 10_000 <= 256 * 2**20
    assert truth_window(128, 10) == 128
    with pytest.raises(RegionError, match="no region manifest"):
        RegionManifest.load(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(RegionError, match="not a region manifest"):
        RegionManifest.load(tmp_path)


def test_a_folder_that_is_not_a_region_is_never_cleared(tmp_path):
    (tmp_path / "environment").mkdir()
    (tmp_path / "environment" / "field-notes.txt").write_text("mine")
    (tmp_path / "thesis.docx").write_text("mine too")
    with pytest.raises(RefusedError, match=r"holds \['environment', 'thesis.docx'\] that geoplantnet did not write"):
        generate_region(CONFIG, tmp_path, progress=False)
    assert (tmp_path / "environment" / "field-notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["environment", "field-notes.txt", "thesis.docx"]
    (tmp_path / "thesis.docx").unlink()  # a folder holding only a name the region uses is still the user's
    with pytest.raises(RefusedError, match=r"holds \['environment'\] that geoplantnet did not write"):
        generate_region(CONFIG, tmp_path, progress=False)
    assert (tmp_path / "environment" / "field-notes.txt").read_text() == "mine"
