"""Random fields and the virtual environment: determinism, exact stitching, ranges, land cover, COGs and items."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from scipy import ndimage

from geoplantnet.core.config import GridConfig, SimConfig
from geoplantnet.sim.environment import (
    ENV_UNITS,
    ENV_VARIABLES,
    LAND_COVER_CLASSES,
    LAYER_KEYS,
    EnvError,
    Environment,
    write_environment,
)
from geoplantnet.sim.fields import FieldError, RandomField, hash_uniform
from geoplantnet.sources.stac_items import read_ndjson

SIM = SimConfig(seed=42)
GRID = GridConfig(width_m=10_000, height_m=10_000).grid(50.0)  # 200 x 200: mountains, valleys, towns


@pytest.fixture(scope="module")
def env():
    return Environment(SIM, GRID)


@pytest.fixture(scope="module")
def layers(env):
    return env.surface(GRID.x, GRID.y)


# --- fields ------------------------------------------------------------------------------------------------------
def test_field_windows_stitch_and_points_agree():
    field = RandomField(7, 800.0)
    x = 4_321_000.0 + (np.arange(300) + 0.5) * 10.0
    y = 2_981_000.0 - (np.arange(260) + 0.5) * 10.0
    whole = field(x, y)
    assert whole.shape == (260, 300) and whole.dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([field(x[:137], y), field(x[137:], y)], axis=1), whole)
    np.testing.assert_array_equal(np.concatenate([field(x, y[:61]), field(x, y[61:])], axis=0), whole)
    rows, cols = np.arange(3, 260, 7)[:27], np.arange(5, 300, 11)[:27]
    np.testing.assert_array_equal(field.at_points(x[cols], y[rows]), whole[rows, cols])


def test_field_determinism_statistics_and_gradient():
    a, b, c = RandomField(1, 500.0), RandomField(1, 500.0), RandomField(2, 500.0)
    x = np.arange(0.0, 100_000.0, 250.0) + 4e6
    y = np.arange(0.0, 100_000.0, 250.0) + 3e6
    va = a(x, y)
    np.testing.assert_array_equal(va, b(x, y))
    assert not np.array_equal(va, c(x, y))
    assert abs(float(va.mean())) < 0.1 and 0.85 < float(va.std()) < 1.15
    # exact gradients agree with central differences (float64 difference of a smooth field)
    px, py = np.array([4_000_123.0, 4_000_987.0]), np.array([3_000_456.0, 3_000_321.0])
    _, gx, gy = a.with_gradient(px, py, points=True)
    h = 5.0
    fd_x = (a.at_points(px + h, py).astype(float) - a.at_points(px - h, py)) / (2 * h)
    fd_y = (a.at_points(px, py + h).astype(float) - a.at_points(px, py - h)) / (2 * h)
    np.testing.assert_allclose(gx, fd_x, atol=2e-4)
    np.testing.assert_allclose(gy, fd_y, atol=2e-4)


def test_field_and_hash_errors():
    with pytest.raises(FieldError, match="length_scale"):
        RandomField(1, 0.0)
    with pytest.raises(FieldError, match="seed"):
        RandomField(-1, 10.0)
    with pytest.raises(FieldError, match="equal length"):
        RandomField(1, 10.0).at_points(np.zeros(3), np.zeros(4))
    u = hash_uniform(3, np.arange(1000), 5)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.05
    np.testing.assert_array_equal(u, hash_uniform(3, np.arange(1000), 5))


# --- layers ------------------------------------------------------------------------------------------------------
def test_layer_keys_dtypes_and_ranges(env, layers):
    public = env.layers(GRID.x[:50], GRID.y[:40])
    assert set(public) == set(LAYER_KEYS) and set(ENV_UNITS) == set(ENV_VARIABLES)
    for key, arr in public.items():
        assert arr.shape == (40, 50)
        assert arr.dtype == (np.uint8 if key == "land_cover" else np.float32), key
    elev, temp, prec = layers["elevation"], layers["temperature"], layers["precipitation"]
    assert elev.min() > 0 and elev.max() < 2500 and elev.max() - elev.min() > 1000  # mountains and valleys
    assert layers["soil_ph"].min() >= 4.0 and layers["soil_ph"].max() <= 8.5 and np.ptp(layers["soil_ph"]) > 2
    assert temp.min() > -15 and temp.max() < 20
    assert prec.min() >= 250 and prec.max() < 3500
    assert layers["seasonality"].min() > 300 and layers["seasonality"].max() < 1000
    assert layers["road_distance"].min() >= 0 and layers["town_distance"].min() >= 0
    # lapse rate ~6.5 degC/km and orographic rain: regressions on elevation
    lapse = np.polyfit(elev.ravel(), temp.ravel(), 1)[0] * 1000
    assert -7.5 < lapse < -5.5
    assert np.polyfit(elev.ravel(), prec.ravel(), 1)[0] > 0.3  # mm per m
    assert layers["slope"].min() >= 0 and layers["slope"].max() < 70


def test_layers_stitch_match_points_and_resolutions(env):
    whole = env.layers(GRID.x[:120], GRID.y[:90])
    left, right = env.layers(GRID.x[:55], GRID.y[:90]), env.layers(GRID.x[55:120], GRID.y[:90])
    rows, cols = np.arange(0, 90, 7), np.arange(0, 120, 9)[: len(np.arange(0, 90, 7))]
    points = env.at_points(GRID.x[cols], GRID.y[rows])
    # the same place at 10 m: 50 m centres are 10 m centres (index 2 + 5 k)
    fine = GridConfig(width_m=10_000, height_m=10_000).grid(10.0)
    at10 = env.layers(fine.x[2:600:5], fine.y[2:450:5])
    for key in LAYER_KEYS:
        np.testing.assert_array_equal(np.concatenate([left[key], right[key]], axis=1), whole[key], err_msg=key)
        np.testing.assert_array_equal(points[key], whole[key][rows, cols], err_msg=key)
        np.testing.assert_array_equal(at10[key], whole[key], err_msg=key)


def test_land_cover_classes_and_rules(env, layers):
    lc, elev, slope = layers["land_cover"], layers["elevation"], layers["slope"]
    assert set(np.unique(lc)) == set(LAND_COVER_CLASSES)
    mean_elev = {c: float(elev[lc == c].mean()) for c in LAND_COVER_CLASSES}
    assert mean_elev[9] > mean_elev[6] > mean_elev[4] > mean_elev[2]  # rock > heath > broadleaf > crops
    assert mean_elev[5] > mean_elev[4]  # conifers higher than broadleaf
    water, forest = np.median(slope[lc == 8]), np.median(slope[(lc == 4) | (lc == 5)])
    assert water < 4 and forest > 2 * water  # flat water, forests on slopes
    # wetland next to water: most wetland pixels within 500 m of water
    to_water = ndimage.distance_transform_edt(lc != 8) * GRID.resolution
    assert np.mean(to_water[lc == 7] <= 500) > 0.8
    # urban around towns
    assert np.all(layers["town_distance"][lc == 1] < 1200)


def test_towns_and_roads(env):
    assert env.towns.ndim == 2 and env.towns.shape[1] == 2 and len(env.towns) >= 1
    assert GRID.contains(env.towns[:, 0], env.towns[:, 1]).all()
    assert env.roads and all(isinstance(r, shapely.LineString) for r in env.roads)
    region = shapely.box(*GRID.bounds)
    assert any(r.intersects(region) and not region.contains(r) for r in env.roads)  # roads leave the region
    again = Environment(SIM, GRID)
    np.testing.assert_array_equal(again.towns, env.towns)
    other = Environment(SimConfig(seed=43), GRID)
    assert not np.array_equal(other.layers(GRID.x, GRID.y)["elevation"], env.layers(GRID.x, GRID.y)["elevation"])


def test_bad_points(env):
    with pytest.raises(EnvError, match="equal length"):
        env.at_points(np.zeros(3), np.zeros(2))
    with pytest.raises(EnvError, match="finite"):
        env.at_points(np.array([np.nan]), np.array([1.0]))


# --- files -------------------------------------------------------------------------------------------------------
SMALL = GridConfig(width_m=3000, height_m=3000).grid(50.0)
SMALL_SIM = SimConfig(seed=5, chunk=128)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("env")
    return out, write_environment(SMALL_SIM, SMALL, out)


def test_write_environment_items_and_cogs(written):
    out, items = written
    assert [it.id for it in items] == [f"virtual-environment-{v}" for v in (*ENV_VARIABLES, "land_cover")]
    assert read_ndjson(out / "items.ndjson")[0].id == items[0].id
    assert json.loads((out / "collection.json").read_text())["id"] == "virtual-environment"
    lon0, lat0, lon1, lat1 = SMALL.lonlat_bounds()
    for item in items:
        (key,) = [k for k, a in item.assets.items() if "data" in a.roles]
        asset = item.assets[key]
        assert key in (*ENV_VARIABLES, "land_cover") and asset.roles == ["data"]
        for field in ("proj:epsg", "proj:transform", "proj:shape"):
            assert field in item.properties and field in asset.extra_fields
        band = asset.extra_fields["raster:bands"][0]
        with rasterio.open(asset.href) as ds:
            assert ds.profile["tiled"] and ds.count == 1
            if key == "land_cover":
                assert ds.crs.to_epsg() == 3035 and ds.res == (10.0, 10.0) and ds.nodata == 0
                assert ds.bounds == SMALL.bounds and ds.overviews(1)
                data = ds.read(1)
                assert data.dtype == np.uint8 and set(np.unique(data)) <= set(LAND_COVER_CLASSES)
            else:
                assert ds.crs.to_epsg() == 4326
                assert ds.res[0] == pytest.approx(SMALL_SIM.env_resolution_deg)
                b = ds.bounds  # WorldClim-like: covers the region with a margin
                assert b.left < lon0 and b.bottom < lat0 and b.right > lon1 and b.top > lat1
                assert band["unit"] == ENV_UNITS[key] and ds.dtypes[0] == "float32"
                data = ds.read(1)
                assert np.isfinite(data).all() and (data != ds.nodata).all()
    towns = gpd.read_parquet(out / "towns.parquet")
    roads = gpd.read_parquet(out / "roads.parquet")
    assert towns.crs.to_epsg() == 3035 and roads.crs.to_epsg() == 3035 and len(roads) > 0


def test_write_environment_is_deterministic(written, tmp_path):
    out, _ = written
    write_environment(SMALL_SIM, SMALL, tmp_path / "same")
    write_environment(SimConfig(seed=6, chunk=128), SMALL, tmp_path / "other")
    for tif in sorted(out.glob("*.tif")):
        assert (tmp_path / "same" / tif.name).read_bytes() == tif.read_bytes(), tif.name
    assert (tmp_path / "other" / "elevation.tif").read_bytes() != (out / "elevation.tif").read_bytes()


def test_environment_stack_reprojects_the_items(written):
    """The consumer's path: lon/lat layers warped back onto the EPSG:3035 grid agree with the model."""
    from geoplantnet.sources.predictors import environment_stack

    _, items = written
    stack = environment_stack(items, SMALL, chunk=64).compute()
    env = Environment(SMALL_SIM, SMALL)
    truth = env.layers(SMALL.x, SMALL.y)
    lc = stack.sel(var="land_cover").values
    assert np.mean(lc == truth["land_cover"]) > 0.9  # nearest neighbour from 10 m
    warped = stack.sel(var="temperature").values
    assert np.nanmean(np.abs(warped - truth["temperature"])) < 0.5  # bilinear from ~70 m lon/lat pixels
