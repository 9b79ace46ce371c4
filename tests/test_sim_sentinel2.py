"""Virtual Sentinel-2 L2A: dates, encoding, phenology, clouds and shadows, SCL, orbit edges, COGs, items."""

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import rasterio

from geoplantnet.core.config import GridConfig, SimConfig
from geoplantnet.sim.environment import Environment
from geoplantnet.sim.sentinel2 import (
    BANDS,
    CLOUD_SCL,
    OFFSET,
    S2_BANDS,
    SCALE,
    SCL_CLASSES,
    SHADOW_OFFSET,
    Sentinel2Error,
    _scene,
    acquisition_dates,
    green_fraction,
    plan_dates,
    write_sentinel2,
)
from geoplantnet.sources.stac_items import read_ndjson

# seed 1 on this region: clear dates, cloudy dates with shadows, two dates with an orbit edge (see plan_dates)
SIM = SimConfig(seed=1, dates_per_season=2, chunk=64)
GRID = GridConfig(width_m=2600, height_m=2600).grid(10.0)  # 260 x 260 at 10 m, 130 x 130 at 20 m


@pytest.fixture(scope="module")
def env():
    return Environment(SIM, GRID)


@pytest.fixture(scope="module")
def series(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("s2")
    items = write_sentinel2(SIM, GRID, env, out)
    return out, items, plan_dates(SIM, GRID)


def _read(item, key):
    with rasterio.open(item.assets[key].href) as ds:
        return ds.read(1)


def _bytes(item, key):
    return Path(urlparse(item.assets[key].href).path).read_bytes()


def _refl(item, key):
    return _read(item, key).astype("float64") * SCALE + OFFSET


def test_acquisition_dates():
    sim = SimConfig(seed=3, years=2, dates_per_season=3, start="2024-01-01")
    dates = acquisition_dates(sim)
    assert len(dates) == 2 * 4 * 3 and dates == sorted(dates) and len(set(dates)) == len(dates)
    assert dates[0] >= datetime(2024, 1, 1, tzinfo=UTC) and dates[-1] < datetime(2026, 1, 1, tzinfo=UTC)
    months = [d.month for d in dates[:12]]
    for season in ((1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11)):
        assert sum(m in season for m in months) == 3
    assert all(9 <= d.hour <= 11 for d in dates)  # morning overpass
    assert acquisition_dates(sim) == dates and acquisition_dates(SimConfig(seed=4, years=2)) != dates


def test_items_metadata(series):
    out, items, plans = series
    assert len(items) == 4 * SIM.dates_per_season
    assert [it.id for it in items] == [f"{p.item_id}_T{items[0].properties['s2:mgrs_tile']}" for p in plans]
    assert [it.id for it in read_ndjson(out / "items.ndjson")] == [it.id for it in items]
    assert (out / "collection.json").exists()
    for item, plan in zip(items, plans, strict=True):
        props = item.properties
        assert item.datetime == plan.when
        assert props["platform"] in ("sentinel-2a", "sentinel-2b") and props["constellation"] == "sentinel-2"
        assert 0 <= props["eo:cloud_cover"] <= 100 and isinstance(props["s2:mgrs_tile"], str)
        assert props["proj:epsg"] == 3035 and props["proj:shape"] == [260, 260]
        assert props["proj:transform"] == list(GRID.transform)[:6]
        assert set(item.assets) == {*BANDS, "SCL"}
        for band, (res, wavelength, common) in S2_BANDS.items():
            asset = item.assets[band]
            rb = asset.extra_fields["raster:bands"][0]
            assert rb["scale"] == SCALE and rb["offset"] == OFFSET and rb["nodata"] == 0
            assert rb["spatial_resolution"] == res and asset.extra_fields["proj:epsg"] == 3035
            eo = asset.extra_fields["eo:bands"][0]
            assert eo["center_wavelength"] == wavelength and eo.get("common_name") == common
        scl = item.assets["SCL"].extra_fields
        assert "scale" not in scl["raster:bands"][0] and scl["proj:shape"] == [130, 130]


def test_cogs_are_valid(series):
    _, items, _ = series
    item = items[0]
    coarse = GRID.at_resolution(20.0)
    for key in ("B04", "B11", "SCL"):
        with rasterio.open(item.assets[key].href) as ds:
            target = GRID if S2_BANDS.get(key, (20.0,))[0] == 10.0 else coarse
            assert ds.crs.to_epsg() == 3035 and ds.transform == target.transform and ds.shape == target.shape
            assert ds.profile["tiled"] and ds.nodata == 0
            assert ds.dtypes[0] == ("uint8" if key == "SCL" else "uint16")
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" or ds.profile["tiled"]
            if key == "B04":
                assert ds.overviews(1)  # 260 px > one 256 block


def test_cloud_cover_matches_scl_and_reflectance_ranges(series):
    _, items, plans = series
    assert any(p.cloud_fraction == 0 for p in plans) and any(it.properties["eo:cloud_cover"] > 5 for it in items)
    for item in items:
        scl = _read(item, "SCL")
        assert set(np.unique(scl)) <= set(SCL_CLASSES)
        valid = scl != 0
        expected = 100 * np.isin(scl, CLOUD_SCL)[valid].mean()
        assert item.properties["eo:cloud_cover"] == pytest.approx(expected, abs=0.01)
        for band in ("B02", "B08", "B11"):
            r = _refl(item, band)
            ok = _read(item, band) > 0
            assert r[ok].min() >= -0.1 and r[ok].max() <= 1.3  # sunlit snow may exceed 1, as in real L2A
        b02 = _refl(item, "B8A")  # 20 m, on the SCL grid
        if (scl == 9).sum() > 20 and (scl == 4).sum() > 20:
            assert b02[scl == 9].mean() > 0.4 > b02[scl == 4].mean() - 0.2  # clouds bright


def test_land_cover_spectra(series, env):
    _, items, plans = series
    coarse = GRID.at_resolution(20.0)
    lc = env.layers(coarse.x, coarse.y)["land_cover"]
    summer = next(it for it, p in zip(items, plans, strict=True) if p.when.month in (6, 7, 8) and p.cloud_fraction == 0)
    scl = _read(summer, "SCL")
    red, nir, swir = _refl(summer, "B04")[::2, ::2], _refl(summer, "B8A"), _refl(summer, "B11")
    clear = np.isin(scl, (4, 5, 6))
    veg = clear & np.isin(lc, (3, 4, 5))
    water = clear & (lc == 8)
    assert veg.sum() > 100
    assert np.median(nir[veg]) > 0.2 and np.median(red[veg]) < 0.08 and np.median(swir[veg]) < np.median(nir[veg])
    if water.sum() > 10:
        assert np.median(nir[water]) < 0.05 and (scl[lc == 8] == 6).mean() > 0.5


def test_ndvi_seasonality(series, env):
    _, items, plans = series
    coarse = GRID.at_resolution(20.0)
    lc = env.layers(coarse.x, coarse.y)["land_cover"]

    def ndvi(item):
        red, nir = _refl(item, "B04")[::2, ::2], _refl(item, "B8A")
        return (nir - red) / (nir + red), np.isin(_read(item, "SCL"), (4, 5))

    winter = [it for it, p in zip(items, plans, strict=True) if p.when.month in (12, 1, 2)]
    summer = [it for it, p in zip(items, plans, strict=True) if p.when.month in (6, 7, 8)]
    grass_forest = np.isin(lc, (3, 4))
    for w in winter:
        for s in summer:
            (nw, cw), (ns, cs) = ndvi(w), ndvi(s)
            both = cw & cs & grass_forest
            if both.sum() > 200:
                assert np.median(ns[both]) > np.median(nw[both]) + 0.15
                return
    pytest.fail("no pair of winter and summer dates with common clear vegetation")


def test_phenology_curves(env):
    sub = GRID.subgrid(slice(0, 130), slice(0, 130))
    scene = _scene(env, sub)
    plans = {p.when.month: p for p in plan_dates(SimConfig(seed=1, dates_per_season=3), GRID)}

    def fc(month, cls):
        return float(np.median(green_fraction(scene, plans[month], env.seed)[scene.lc == cls]))

    for cls in (3, 4):
        if (scene.lc == cls).sum() > 50:
            assert fc(7, cls) > fc(1, cls) + 0.3, cls  # grassland, deciduous forest
    if (scene.lc == 5).sum() > 50:
        assert fc(1, 5) > 0.5 and abs(fc(7, 5) - fc(1, 5)) < 0.3  # evergreen conifers
    crop = scene.lc == 2
    if crop.sum() > 50:  # harvest: cropland is greener in June than in late autumn
        assert fc(6, 2) > fc(11, 2) + 0.2


def test_shadows_next_to_clouds(series):
    _, items, _ = series
    dy, dx = round(-SHADOW_OFFSET[1] / 20.0), round(SHADOW_OFFSET[0] / 20.0)  # shadow -> cloud, in 20 m pixels
    found = False
    for item in items:
        scl = _read(item, "SCL")
        shadow = scl == 3
        if shadow.sum() < 30:
            continue
        cloudy = np.isin(scl, (7, 8, 9, 10))
        rows, cols = np.nonzero(shadow)
        r, c = rows + dy, cols + dx
        inside = (r < scl.shape[0]) & (c < scl.shape[1])
        if inside.sum() < 30:
            continue
        near = np.zeros(inside.sum(), dtype=bool)
        for sr in (-1, 0, 1):
            for sc in (-1, 0, 1):
                rr = np.clip(r[inside] + sr, 0, scl.shape[0] - 1)
                cc = np.clip(c[inside] + sc, 0, scl.shape[1] - 1)
                near |= cloudy[rr, cc]
        assert near.mean() > 0.8
        nir = _refl(item, "B8A")
        lit = np.isin(scl, (4, 5))
        assert nir[shadow].mean() < nir[lit].mean()  # darkened
        found = True
    assert found, "no date with cloud shadows inside the region"


def test_swath_edges_are_nodata_everywhere(series):
    _, items, plans = series
    edged = [(it, p) for it, p in zip(items, plans, strict=True) if p.swath is not None]
    assert edged
    for item, _ in edged:
        scl_missing = _read(item, "SCL") == 0
        assert 0.05 < scl_missing.mean() < 0.95
        for band, (res, _, _) in S2_BANDS.items():
            missing = _read(item, band) == 0
            if res == 20.0:
                np.testing.assert_array_equal(missing, scl_missing, err_msg=band)
            else:
                np.testing.assert_array_equal(missing, np.kron(scl_missing, np.ones((2, 2), bool)), err_msg=band)
    for item, plan in zip(items, plans, strict=True):
        if plan.swath is None:
            assert (_read(item, "SCL") != 0).all()


def test_deterministic_window_independent_and_seeded(series, env, tmp_path):
    _, items, _ = series
    # other window size and two worker processes: the same bytes
    again = write_sentinel2(SIM.model_copy(update={"chunk": 128}), GRID, env, tmp_path / "again", workers=2)
    assert [it.id for it in again] == [it.id for it in items]
    for old, new in zip(items, again, strict=True):
        for key in ("B02", "B8A", "SCL"):
            assert _bytes(old, key) == _bytes(new, key), (old.id, key)
    other_sim = SimConfig(seed=2, dates_per_season=1, chunk=64)
    other = write_sentinel2(other_sim, GRID, Environment(other_sim, GRID), tmp_path / "other")
    assert _bytes(other[0], "B04") != _bytes(items[0], "B04")


def test_bad_grids(env, tmp_path):
    with pytest.raises(Sentinel2Error, match="10 m"):
        write_sentinel2(SIM, GridConfig(width_m=2000, height_m=2000).grid(50.0), env, tmp_path)
    odd = GridConfig(left=4_321_010.0, width_m=1010, height_m=1000).grid(10.0)
    with pytest.raises(Sentinel2Error, match="20 m"):
        write_sentinel2(SIM, odd, env, tmp_path)
