"""Real Sentinel-2 pixels through the cube: BigEarthNet L2A patches (UTM, 10/20/60 m) and an eo-learn NDVI series.

The STAC JSON and COGs are generated here in tmp_path; the pixels are real (see each folder's PROVENANCE.md).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from geoplantnet.core.grid import Grid
from geoplantnet.sources.cog import write_cog
from geoplantnet.sources.cube import cloud_mask, mask_clouds, s2_cube, scl_cube, seasonal_composite
from geoplantnet.sources.stac_items import AssetSpec, item_from_cogs

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
]

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
BEN = REAL / "bigearthnet_s2_example" / "S2A_MSIL2A_20170613T101031_87_48"
SLO = REAL / "eolearn_slovenia_ndvi_timeseries"
BEN_BANDS = ("B01", "B02", "B04", "B05", "B8A", "B09", "B11")  # 60, 10, 10, 20, 20, 60, 20 m
SLO_DATES = (13, 14, 17, 18, 19, 20, 21, 22)  # Feb-Jun 2016: one DJF, four MAM, three JJA dates, clouds 0-92 %


def need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")


def neighbourhood(arr: np.ndarray, row: int, col: int) -> np.ndarray:
    return arr[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]


# --- BigEarthNet: multi-resolution UTM bands onto an EPSG:3035 grid ------------------------------------------------
@pytest.fixture(scope="module")
def ben(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    need(BEN)
    folder = tmp_path_factory.mktemp("ben")
    meta = json.loads(next(BEN.glob("*_labels_metadata.json")).read_text())
    specs, source = [], {}
    for band in BEN_BANDS:
        with rasterio.open(next(BEN.glob(f"*_{band}.tif"))) as ds:
            arr, transform, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
        source[band] = (arr, transform)
        # L2A DN 0 is "no data"; processing baseline 02.05 (2017): scale 1e-4, no offset.
        path = write_cog(folder / f"{band}.tif", arr, transform, epsg, nodata=0)
        specs.append(AssetSpec(band, str(path), scale=1e-4, offset=0.0))
    when = datetime.fromisoformat(meta["acquisition_date"] + "+00:00")
    item = item_from_cogs(BEN.name, when, specs, collection="bigearthnet-s2")
    return item, source, epsg


def test_bigearthnet_patch_on_3035_grid(ben: tuple) -> None:
    item, source, epsg = ben
    assert epsg == 32633
    grid = Grid.from_lonlat(tuple(item.bbox), 10)
    cube = s2_cube([item], grid, BEN_BANDS, chunk=64, resampling="nearest")
    assert cube.shape == (1, len(BEN_BANDS), *grid.shape)
    values = cube.values[0]

    # Grid pixel centres in UTM: those well inside the 1.2 km patch must be finite in every band (10, 20 and 60 m).
    x, y = np.meshgrid(grid.x, grid.y)
    e, n = Transformer.from_crs(3035, epsg, always_xy=True).transform(x, y)
    col, row = ~source["B02"][1] * (e, n)
    inside = (col > 6) & (col < 114) & (row > 6) & (row < 114)
    assert inside.sum() > 8000
    assert np.isfinite(values[:, inside]).all()
    outside = (col < -3) | (col > 123) | (row < -3) | (row > 123)
    assert outside.any() and np.isnan(values[:, outside]).all()

    # A few points: the grid value is a source pixel of that band next to the centre (nearest, warp tolerance).
    points = np.argwhere(inside)[::997]
    assert len(points) >= 8
    for r, c in points:
        for b, band in enumerate(BEN_BANDS):
            arr, transform = source[band]
            sc, sr = ~transform * (e[r, c], n[r, c])
            near = neighbourhood(arr, int(sr), int(sc)) * 1e-4
            assert np.isclose(near, values[b, r, c], atol=1e-6).any(), (band, r, c)

    # Averaging 10 m data onto the grid stays within the local range of source pixels.
    avg = s2_cube([item], grid, ["B04"], chunk=64).values[0, 0]
    arr, transform = source["B04"]
    for r, c in points:
        sc, sr = ~transform * (e[r, c], n[r, c])
        near = neighbourhood(arr, int(sr), int(sc)) * 1e-4
        assert near.min() - 1e-6 <= avg[r, c] <= near.max() + 1e-6


# --- eo-learn Slovenia: NDVI series with real cloud masks ----------------------------------------------------------
@pytest.fixture(scope="module")
def slovenia(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    need(SLO)
    folder = tmp_path_factory.mktemp("slo")
    ndvi = np.load(SLO / "data" / "NDVI.npy")[..., 0]
    clm = np.load(SLO / "mask" / "CLM.npy")[..., 0].astype(bool)
    is_data = np.load(SLO / "mask" / "IS_DATA.npy")[..., 0].astype(bool)
    stamps = json.loads((SLO / "timestamps.json").read_text())
    ring = json.loads((SLO / "bbox.geojson").read_text())["coordinates"][0]
    (x0, y0), (x1, y1) = np.min(ring, axis=0), np.max(ring, axis=0)
    height, width = ndvi.shape[1:]
    transform = Affine((x1 - x0) / width, 0, x0, 0, -(y1 - y0) / height, y1)  # ~10 m, from the bbox
    # Source pixel number + 1 as a raster: read through the same warp, it tells which source pixel each grid pixel took.
    index = (np.arange(height * width).reshape(height, width) + 1).astype("uint16")
    index_path = write_cog(folder / "INDEX.tif", index, transform, 32633, nodata=0)
    items = []
    for t in SLO_DATES:
        # The dataset's masks as SCL-like codes: 4 clear, 9 cloud (CLM), 0 no data (not IS_DATA).
        codes = np.where(is_data[t], np.where(clm[t], 9, 4), 0).astype("uint8")
        d = folder / f"t{t:02d}"
        specs = [
            AssetSpec("NDVI", str(write_cog(d / "NDVI.tif", ndvi[t], transform, 32633, nodata=np.nan))),
            AssetSpec("SCL", str(write_cog(d / "SCL.tif", codes, transform, 32633, nodata=0))),
            AssetSpec("INDEX", str(index_path)),
        ]
        when = datetime.fromisoformat(stamps[t] + "+00:00")
        items.append(item_from_cogs(f"slo-{t:02d}", when, specs, properties={"eo:cloud_cover": 100 * clm[t].mean()}))
    lonlat = Transformer.from_crs(32633, 4326, always_xy=True).transform_bounds(x0, y0, x1, y1)
    return items, ndvi, clm | ~is_data, Grid.from_lonlat(lonlat, 10)


def test_slovenia_cloud_mask_and_composite(slovenia: tuple) -> None:
    items, ndvi, flagged, grid = slovenia
    cube = s2_cube(items, grid, ["NDVI", "INDEX"], chunk=64, resampling="nearest")
    mask = cloud_mask(scl_cube(items, grid, chunk=64))
    masked = mask_clouds(cube.sel(band=["NDVI"]), mask)
    values, idx = masked.values[:, 0], cube.values[:, 1]
    np.testing.assert_array_equal(idx, np.broadcast_to(idx[0], idx.shape))  # the same source pixel on every date
    idx = idx[0]
    covered = np.isfinite(idx)
    assert covered.sum() > 0.8 * grid.width * grid.height
    src = idx[covered].astype(int) - 1
    rows, cols = np.divmod(src, ndvi.shape[2])
    assert 0.1 < flagged[list(SLO_DATES)][:, rows, cols].mean() < 0.9  # real clouds on some dates, not all
    for i, t in enumerate(SLO_DATES):
        expect_masked = flagged[t][rows, cols]
        np.testing.assert_array_equal(np.isnan(values[i][covered]), expect_masked)
        np.testing.assert_array_equal(values[i][covered][~expect_masked], ndvi[t][rows, cols][~expect_masked])
    assert np.isnan(values[:, ~covered]).all()  # outside the patch: SCL fill 0 = no data, masked

    comp = seasonal_composite(masked)
    assert list(comp.season.values) == ["DJF", "MAM", "JJA"]
    got = comp.values[:, 0]
    seasons = {0: [13], 1: [14, 17, 18, 19], 2: [20, 21, 22]}
    with np.errstate(all="ignore"):
        for s, dates in seasons.items():
            stack = np.where(flagged[dates], np.nan, ndvi[dates])[:, rows, cols]
            clear = (~np.isnan(stack)).any(axis=0)
            expect = np.full(stack.shape[1:], np.nan, dtype="float32")
            expect[clear] = np.nanmedian(stack[:, clear], axis=0)
            np.testing.assert_allclose(got[s][covered], expect, rtol=1e-6, equal_nan=True)
