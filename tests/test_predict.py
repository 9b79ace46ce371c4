"""``geoplantnet predict`` end to end on the small virtual region: the model the map job trained, applied at the
presence-absence plots, agrees with species.zarr at their pixels; lon/lat and GeoParquet points give the same values;
points off the grid are NaN and counted. The peer files ``sdm`` writes (MaxEnt, random forest) predict as the peer
does on the features training extracts, and as their own map. On rasters with a coast, a point on a cell the warp
left without data is predicted at the nearest valid cell (``train.nearest_valid_cells``) and counted as moved."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from pyproj import Transformer

from geoplantnet.core.config import load_config
from geoplantnet.core.grid import Grid
from geoplantnet.models.calibration import Calibration, SpeciesCalibration, calibrate
from geoplantnet.models.peers import RandomForestPeer, load_peer, point_features
from geoplantnet.sim.region import RegionManifest
from geoplantnet.storage.store import open_store
from geoplantnet.testing.cli import cli_sets, run_cli
from geoplantnet.testing.fixtures import SmallSdm, write_coast_layers
from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]
SMALL = [*SMALL_REGION, "train.epochs=2"]


def _cli(overrides: list[str], command: str, *args: str) -> dict:
    proc = run_cli(command, "--quiet", *args, *cli_sets(overrides), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout[proc.stdout.index("{") :]), "stderr": proc.stderr}


def _pixel_centres(cfg, extra: dict) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The region's plots moved to the centres of their map pixels (a map pixel is the prediction at its centre; a
    plot elsewhere in its pixel may see other 20 m Sentinel-2 pixels than the centre does), then ``extra``'s point:
    a table (id, x, y) and the plots' pixel rows and columns."""
    grid = cfg.grid.grid()
    plots = gpd.read_parquet(RegionManifest.load(Path(cfg.workdir) / "region").plots)
    rows, cols = grid.index(plots.geometry.x.to_numpy(), plots.geometry.y.to_numpy())
    ids = [*plots.plot_id.to_numpy(), extra["id"]]
    return pd.DataFrame({"id": ids, "x": [*grid.x[cols], extra["x"]], "y": [*grid.y[rows], extra["y"]]}), rows, cols


@pytest.mark.slow
def test_predict_at_the_plots_equals_the_map_and_reads_any_crs(small_map, tmp_path, shared_cluster_sets):
    # the session's small region, the model trained on it as the map command trains it, and its map (conftest.py)
    mapped = {"model": small_map.model, "store": small_map.reference}
    sets = [*small_map.overrides, *shared_cluster_sets]
    grid = small_map.cfg.grid.grid()
    points, rows, cols = _pixel_centres(small_map.cfg, {"id": "far", "x": grid.left - 5_000, "y": grid.top})
    ids, x, y = points.id.to_numpy()[:-1], points.x.to_numpy()[:-1], points.y.to_numpy()[:-1]
    projected = tmp_path / "plots.csv"
    points.to_csv(projected, index=False)
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
    assert list(table.columns) == ["id", "x", "y", "moved_m", *species] and list(table["id"]) == [*ids, "far"]
    assert table.iloc[-1][species].isna().all() and np.isnan(table["moved_m"].iloc[-1])
    assert first["moved"] == 0 and (table["moved_m"].iloc[:-1] == 0).all()  # the region's rasters cover the grid
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["maxent", "random_forest"])
def test_a_peer_file_predicts_as_the_peer_and_as_its_map(small_sdm: SmallSdm, kind, tmp_path, shared_cluster_sets):
    from geoplantnet.runs.inputs import virtual_inputs
    from geoplantnet.sources import predictors
    from geoplantnet.sources.cube import cube_composites

    # the session's sdm run on the small region (tests/conftest.py: small_sdm) and its final peer
    model = small_sdm.summary["model_files"][kind]
    peer, spec = load_peer(model)
    assert spec.calibration is not None  # fitted on the region's surveys: predict applies it as the map does
    sets = [*small_sdm.overrides, f"store.root={tmp_path / 'out'}", *shared_cluster_sets]
    cfg = load_config(None, small_sdm.overrides)
    grid = cfg.grid.grid()
    table, rows, cols = _pixel_centres(cfg, {"id": "far", "x": grid.left - 5_000, "y": grid.top})
    table.to_csv(tmp_path / "points.csv", index=False)
    points = ["--points", str(tmp_path / "points.csv"), "--crs", "EPSG:3035", "--x", "x", "--y", "y"]
    result = _cli(sets, "predict", "--model", model, *points, "--out", str(tmp_path / "p.csv"))
    assert result["points"] == len(table) and result["no_data"] == 1 and result["moved"] == 0
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    assert list(predicted.columns) == ["id", "x", "y", "moved_m", *spec.species]
    assert predicted.iloc[-1][spec.species].isna().all()
    got = predicted.iloc[:-1][spec.species].to_numpy(float)
    assert np.isfinite(got).all()

    # the peer on the features training extracts: the environment at the pixel, the series at the cube pixel
    inputs = virtual_inputs(cfg)
    x, y = table.x.to_numpy()[:-1], table.y.to_numpy()[:-1]
    env = series = None
    if spec.variables:
        env = predictors.model_stack(inputs.env_items, grid, chunk=cfg.cube.chunk).values[:, rows, cols].T
    if spec.seasons:
        cube = cfg.grid.grid(cfg.cube.resolution)
        r, c = cube.index(x, y)
        series = np.moveaxis(cube_composites(inputs.s2_items, cfg.cube, cube).values[:, :, r, c], -1, 0)
    expected = calibrate(peer.predict_proba(point_features(env, series)), spec.calibration)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    # and the peer's own map, at the same pixels
    _cli(sets, "map", "--model", model, "--out", str(tmp_path / "map.zarr"))
    codes = open_store(str(tmp_path / "map.zarr"), mask_and_scale=False)["probability"].values[:, rows, cols].T
    assert np.abs(np.rint(got * 254) - codes.astype(int)).max() <= 1


# a 40 x 30 km grid at 1 km whose rasters are sea (NaN) east of 12.5 km: the warp empties the cells of column 12
COAST = Grid(1000.0, 4_321_000.0, 2_981_000.0, 40, 30)
COAST_SETS = [
    "grid.epsg=3035",
    f"grid.left={COAST.left:.0f}",
    f"grid.top={COAST.top:.0f}",
    f"grid.width_m={COAST.width * COAST.resolution:.0f}",
    f"grid.height_m={COAST.height * COAST.resolution:.0f}",
    f"grid.resolution={COAST.resolution:.0f}",
    "cube.chunk=16",
]


def _centre(row: int, col: int) -> tuple[float, float]:
    return float(COAST.x[col]), float(COAST.y[row])


def test_points_on_a_no_data_cell_are_predicted_at_the_nearest_valid_cell(tmp_path, shared_cluster_sets):
    from geoplantnet.sources import predictors

    names = ("temperature", "precipitation")
    layers = write_coast_layers(tmp_path, COAST, COAST.left + 12_500.0, names)
    env = predictors.model_stack(predictors.from_geotiffs(layers), COAST, chunk=16).values  # (var, y, x) as warped
    valid = np.isfinite(env).all(axis=0)
    row, coast = 10, 12
    assert valid[:, :coast].all() and not valid[:, coast:].any()  # column 12 is the first cell without data
    # a random forest on those two variables, its file calibrated (Platt for species a)
    rng = np.random.default_rng(1)
    X = rng.normal(10, 3, (300, 2)).astype("float32")
    labels = np.stack([X[:, 0] > 10, X[:, 1] > 11], axis=1).astype("int8")
    peer = RandomForestPeer(n_estimators=20, n_jobs=1).fit(X, labels, np.array(["pa"] * len(X)))
    cal = Calibration(method="platt", species=[SpeciesCalibration(slope=2.0, intercept=-0.5), None])
    spec = peer.spec(species=["a", "b"], variables=list(names)).model_copy(update={"calibration": cal})
    model = peer.save(tmp_path / "forest.peer", spec=spec)

    land = (_centre(row, 2)[0] + 120.0, _centre(row, 2)[1] - 80.0)  # anywhere in its cell
    shore = (_centre(row, coast)[0] - 300.0, _centre(row, coast)[1])  # the first no-data cell, its neighbour valid
    sea, off = _centre(row, coast + 5), (COAST.left - 3_000.0, COAST.top - 5_000.0)
    frame = pd.DataFrame([land, shore, sea, off], columns=["x", "y"]).assign(id=["land", "shore", "sea", "off"])
    frame.to_csv(tmp_path / "points.csv", index=False)
    args = ["--model", model, "--rasters", *(str(layers[n]) for n in names), "--points", str(tmp_path / "points.csv")]
    args += ["--crs", "EPSG:3035", "--x", "x", "--y", "y"]
    sets = [*COAST_SETS, f"workdir={tmp_path / 'work'}", *shared_cluster_sets]

    result = _cli(sets, "predict", *args, "--out", str(tmp_path / "p.csv"))
    assert (result["moved"], result["nearest_valid_cells"], result["no_data"]) == (1, 1, 2)
    assert "2 of 3 points had no predictor data at their cell: 1 moved to the nearest valid cell" in result["stderr"]
    table = pd.read_csv(tmp_path / "p.csv").set_index("id")
    assert list(table.columns) == ["x", "y", "moved_m", "a", "b"]
    # the shore point is predicted at the centre of its western neighbour, 700 m west; the land point where it is
    np.testing.assert_allclose(table["moved_m"].to_numpy(), [0.0, 700.0, np.nan, np.nan])
    cells = [(row, 2), (row, coast - 1)]
    expected = calibrate(peer.predict_proba(np.stack([env[:, r, c] for r, c in cells])), cal)
    np.testing.assert_allclose(table.loc[["land", "shore"], ["a", "b"]].to_numpy(), expected, atol=1e-6)
    assert table.loc[["sea", "off"], ["a", "b"]].isna().all().all()  # no valid cell that near / outside the grid

    # train.nearest_valid_cells=0: nothing moves, the shore point has no prediction either
    result = _cli([*sets, "train.nearest_valid_cells=0"], "predict", *args, "--out", str(tmp_path / "q.csv"))
    assert (result["moved"], result["nearest_valid_cells"], result["no_data"]) == (0, 0, 3)
    assert pd.read_csv(tmp_path / "q.csv").set_index("id").loc["shore", ["moved_m", "a", "b"]].isna().all()


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
