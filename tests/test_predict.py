"""``geoplantnet predict`` end to end on the small virtual region: the model the map job trained, applied at the
presence-absence plots, agrees with species.zarr at their pixels; lon/lat and GeoParquet points give the same values;
points off the grid are NaN and counted."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from pyproj import Transformer

from geoplantnet.core.config import load_config
from geoplantnet.sim.region import RegionManifest
from geoplantnet.storage.store import open_store
from geoplantnet.testing.cli import cli_sets, run_cli
from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]
SMALL = [*SMALL_REGION, "train.epochs=2"]


def _cli(overrides: list[str], command: str, *args: str) -> dict:
    proc = run_cli(command, "--quiet", *args, *cli_sets(overrides), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout[proc.stdout.index("{") :]), "stderr": proc.stderr}


@pytest.mark.slow
def test_predict_at_the_plots_equals_the_map_and_reads_any_crs(small_map, tmp_path, shared_cluster_sets):
    # the session's small region, the model trained on it as the map command trains it, and its map (conftest.py)
    mapped = {"model": small_map.model, "store": small_map.reference}
    sets = [*small_map.overrides, *shared_cluster_sets]
    grid = small_map.cfg.grid.grid()
    plots = gpd.read_parquet(RegionManifest.load(Path(small_map.cfg.workdir) / "region").plots)
    # a map pixel is the prediction at its centre: ask there (a plot elsewhere in its pixel may see other 20 m
    # Sentinel-2 pixels than the centre does)
    rows, cols = grid.index(plots.geometry.x.to_numpy(), plots.geometry.y.to_numpy())
    x, y = grid.x[cols], grid.y[rows]
    ids = plots.plot_id.to_numpy()
    projected = tmp_path / "plots.csv"
    far = {"id": "far", "x": grid.left - 5_000, "y": grid.top}
    pd.DataFrame({"id": [*ids, far["id"]], "x": [*x, far["x"]], "y": [*y, far["y"]]}).to_csv(projected, index=False)
    first = _cli(
        sets,
        "predict",
        "--model",
        mapped["model"],
        "--points",
        str(projected),
        "--crs",
        "EPSG:3035",
        "--x",
        "x",
        "--y",
        "y",
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert first["points"] == len(ids) + 1 and first["no_data"] == 1
    assert f"1 of {len(ids) + 1} points are outside the grid" in first["stderr"]
    table = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    species = [str(s) for s in open_store(mapped["store"])["species"].values]
    assert list(table.columns) == ["id", "x", "y", *species] and list(table["id"]) == [*ids, "far"]
    assert table.iloc[-1][species].isna().all()
    predicted = table.iloc[:-1][species].to_numpy(float)
    codes = open_store(mapped["store"], mask_and_scale=False)["probability"].values[:, rows, cols].T
    assert np.isfinite(predicted).all()
    assert np.abs(np.rint(predicted * 254) - codes.astype(int)).max() <= 1  # the map and predict agree
    # the same points in lon/lat, as GeoParquet (EPSG:4326), to Parquet
    lon, lat = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(x, y)
    geo = tmp_path / "plots.parquet"
    gpd.GeoDataFrame({"id": ids}, geometry=gpd.points_from_xy(lon, lat), crs=4326).to_parquet(geo)
    _cli(sets, "predict", "--model", mapped["model"], "--points", str(geo), "--out", str(tmp_path / "q.parquet"))
    other = pd.read_parquet(tmp_path / "q.parquet")
    np.testing.assert_allclose(other[species].to_numpy(float), predicted, atol=1e-6)
    np.testing.assert_allclose(other["x"], lon)  # coordinates as given


def test_points_files_are_read_in_any_crs_and_bad_ones_are_one_line(tmp_path):
    from geoplantnet.core.grid import to_grid_crs
    from geoplantnet.samples.points import PointsError, read_points

    cfg = load_config(None, SMALL)
    csv = tmp_path / "p.csv"
    pd.DataFrame({"site": ["a", "b"], "lon": [9.5, 9.6], "lat": [50.1, 50.2]}).to_csv(csv, index=False)
    points = read_points(csv, cfg.inputs, cfg.grid.epsg, "site")
    ex, ey = to_grid_crs(np.array([9.5, 9.6]), np.array([50.1, 50.2]), "EPSG:4326")
    np.testing.assert_allclose(np.c_[points.x, points.y], np.c_[ex, ey])
    assert list(points.table.columns) == ["site", "lon", "lat"]
    # no id column: the row number
    assert list(read_points(csv, cfg.inputs, cfg.grid.epsg).table.columns) == ["point", "lon", "lat"]
    with pytest.raises(PointsError, match=r"p\.csv: no column 'easting'"):
        read_points(csv, cfg.inputs.model_copy(update={"x": "easting"}), cfg.grid.epsg)
    with pytest.raises(PointsError, match=r"missing\.csv: cannot read points"):
        read_points(tmp_path / "missing.csv", cfg.inputs, cfg.grid.epsg)


def test_input_flags_override_the_inputs_section(tmp_path):
    from geoplantnet.cli import _config, build_parser

    yaml = tmp_path / "run.yaml"
    yaml.write_text("inputs:\n  observations: obs.csv\n  rasters: [a.tif, b.tif]\n  x: easting\n")
    args = build_parser().parse_args(["map", "-c", str(yaml), "--rasters", "c.tif", "--with-s2", "--crs", "EPSG:3035"])
    inputs = _config(args).inputs
    assert inputs.rasters == ["c.tif"] and inputs.sentinel2 and inputs.crs == "EPSG:3035"
    assert inputs.observations == "obs.csv" and inputs.x == "easting" and not inputs.virtual  # kept from the file
    assert load_config(None).inputs.virtual  # nothing configured: the virtual region
