"""Lazy Sentinel-2 cubes on the grid: laziness, graph size, values, masking, composites, indices, errors."""

from __future__ import annotations

import os
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pyproj import Transformer

from geoplantnet.core.grid import Grid
from geoplantnet.sources.cube import (
    CubeError,
    add_indices,
    cloud_mask,
    mask_clouds,
    s2_cube,
    scl_cube,
    seasonal_composite,
)
from geoplantnet.sources.stac_items import local_path
from geoplantnet.testing.fixtures import (
    OFFSET,
    SCALE,
    dates,
    dn,
    scl,
    small_grid,
    utm_ramp,
    write_ramp_item,
    write_s2_item,
    write_s2_series,
)

GRID = small_grid()  # 64 x 64 px at 10 m
# Two dates in winter (DJF), one in spring (MAM), none in summer (JJA), two in autumn (SON).
DATES = [datetime(2023, m, d, tzinfo=UTC) for m, d in ((1, 10), (2, 14), (4, 2), (9, 20), (11, 5))]
ZERO = [("B04", 3, 4), ("B05", 1, 1)]
# stackstac 0.5.1 multiplies Affines with `*`; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")


def reflectance(raw: np.ndarray) -> np.ndarray:
    return (raw.astype("float64") * SCALE + OFFSET).astype("float32")


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list:
    return write_s2_series(tmp_path_factory.mktemp("s2"), GRID, DATES, zero=ZERO)


def fresh(tmp_path: Path, n: int = 2, **kwargs: object) -> list:
    return write_s2_series(tmp_path, GRID, dates(n), **kwargs)


# --- laziness and graph size -----------------------------------------------------------------------------------------
def test_build_reads_no_pixels_and_compute_does(tmp_path: Path) -> None:
    items = fresh(tmp_path, bands=["B04"], with_scl=False)
    cube = s2_cube(items, GRID, ["B04"], chunk=32)
    # Swap the file for one with other pixels after building: the cube must show the new pixels, so building read none.
    href = local_path(items[0].assets["B04"].href)
    os.remove(href)
    from geoplantnet.sources.cog import write_cog

    write_cog(href, np.full(GRID.shape, 4321, "uint16"), GRID.transform, 3035, nodata=0)
    assert np.allclose(cube.isel(time=0, band=0).values, 4321 * SCALE + OFFSET, atol=1e-6)
    # Files that vanish between build and compute: building still works, the first compute is what reads.
    shutil.rmtree(tmp_path)
    cube = s2_cube(items, GRID, ["B04"], chunk=32)
    assert cube.chunks is not None
    with pytest.raises(CubeError, match=r"cannot read asset .*B04\.tif"):
        cube.compute()


def test_graph_size_follows_chunks_not_pixels(series: list) -> None:
    def graph_len(grid: Grid, chunk: int) -> int:
        return len(s2_cube(series, grid, ["B04", "B08"], chunk=chunk).__dask_graph__())

    # Same chunk count (2 x 2 per band and date) at 10 m and at 20 m: identical graphs although pixels differ 4x.
    assert graph_len(GRID, 32) == graph_len(GRID.at_resolution(20), 16)
    # Same pixels in 1, 4 and 16 chunks per asset: the graph is linear in the chunk count (a + k * chunks).
    g16, g32, g64 = graph_len(GRID, 16), graph_len(GRID, 32), graph_len(GRID, 64)
    assert g16 - g32 == 4 * (g32 - g64)
    per_chunk = (g32 - g64) / (3 * len(series) * 2)
    assert per_chunk == 3  # read, scale, offset: a few tasks per chunk, never per pixel


# --- values ----------------------------------------------------------------------------------------------------------
def test_reflectance_values_grid_and_metadata(series: list) -> None:
    cube = s2_cube(series, GRID, ["B02", "B04", "B08"], chunk=32)
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.dtype == np.float32
    assert cube.chunks == ((1,) * 5, (1, 1, 1), (32, 32), (32, 32))
    assert np.array_equal(cube.x.values, GRID.x) and np.array_equal(cube.y.values, GRID.y)
    assert cube.spatial_ref.attrs["crs_wkt"] == GRID.spatial_ref_attrs()["crs_wkt"]
    assert list(cube.band.values) == ["B02", "B04", "B08"]
    assert list(cube.time.values) == [np.datetime64(d.replace(tzinfo=None), "ns") for d in DATES]
    assert list(cube["eo:cloud_cover"].values) == [0, 10, 20, 30, 40]
    values = cube.values
    for t in (0, 3):
        for b, band in enumerate(("B02", "B04", "B08")):
            expect = reflectance(dn(band, t, GRID.shape))
            if band == "B04":
                expect[3, 4] = np.nan  # DN 0 is nodata
            np.testing.assert_allclose(values[t, b], expect, rtol=0, atol=2e-7)


def test_nodata_is_nan(series: list) -> None:
    b04 = s2_cube(series, GRID, ["B04"], chunk=32).isel(band=0).values
    assert np.isnan(b04[:, 3, 4]).all()
    assert np.isnan(b04).sum() == len(DATES)


def test_20m_bands_align_on_10m_grid(series: list) -> None:
    cube = s2_cube(series, GRID, ["B04", "B05", "B11"], chunk=32).isel(time=1).values
    rows, cols = np.indices(GRID.shape)
    for b, band in ((1, "B05"), (2, "B11")):
        coarse = reflectance(dn(band, 1, (32, 32)))
        coarse[1, 1] = np.nan if band == "B05" else coarse[1, 1]
        np.testing.assert_allclose(cube[b], coarse[rows // 2, cols // 2], rtol=0, atol=2e-7)


def test_common_name_maps_to_asset(tmp_path: Path) -> None:
    item = fresh(tmp_path, n=1, bands=["B04"], with_scl=False)[0]
    asset = item.assets.pop("B04")
    asset.extra_fields["eo:bands"] = [{"name": "B04", "common_name": "red"}]
    item.add_asset("red", asset)
    by_name = s2_cube([item], GRID, ["B04"], chunk=32).values
    by_common = s2_cube([item], GRID, ["red"], chunk=32).values
    np.testing.assert_array_equal(by_name, by_common)


def test_scl_nearest_and_cloud_masking(series: list) -> None:
    s = scl_cube(series, GRID, chunk=32)
    assert s.dims == ("time", "y", "x") and s.dtype == np.uint8 and s.chunks[1:] == ((32, 32), (32, 32))
    rows, cols = np.indices(GRID.shape)
    codes = s.values
    for t in range(len(DATES)):
        np.testing.assert_array_equal(codes[t], scl(t, (32, 32))[rows // 2, cols // 2])
    assert set(np.unique(codes)) <= {0, 3, 4, 9, 11}  # classes only: nothing averaged

    mask = cloud_mask(s)
    assert mask.dtype == bool and mask.chunks is not None
    cube = s2_cube(series, GRID, ["B04", "B08"], chunk=32)
    masked = mask_clouds(cube, mask).values
    flagged = np.isin(codes, [0, 1, 3, 8, 9, 10])
    assert flagged.any() and (codes == 11).any()
    original_nan = np.isnan(cube.values)
    for b in range(2):
        np.testing.assert_array_equal(np.isnan(masked[:, b]), flagged | original_nan[:, b])
        keep = ~flagged & ~original_nan[:, b]
        np.testing.assert_array_equal(masked[:, b][keep], cube.values[:, b][keep])


def test_mask_from_other_items_is_rejected(series: list) -> None:
    cube = s2_cube(series, GRID, ["B04"], chunk=32)
    with pytest.raises(CubeError, match="time"):
        mask_clouds(cube, cloud_mask(scl_cube(series[:3], GRID, chunk=32)))


def test_seasonal_median_matches_numpy(series: list) -> None:
    cube = s2_cube(series, GRID, ["B04", "B08"], chunk=32)
    masked = mask_clouds(cube, cloud_mask(scl_cube(series, GRID, chunk=32)))
    comp = seasonal_composite(masked)
    assert comp.chunks is not None  # still lazy
    starts = [np.datetime64("2022-12-01", "ns")] + [np.datetime64(f"2023-{m:02d}-01", "ns") for m in (3, 6, 9)]
    assert list(comp.time.values) == starts
    assert list(comp.season.values) == ["DJF", "MAM", "JJA", "SON"]
    assert comp.dims == cube.dims and comp.dtype == np.float32
    values, m = comp.values, masked.values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(values[0], np.nanmedian(m[[0, 1]], axis=0), equal_nan=True)
        np.testing.assert_allclose(values[1], m[2], equal_nan=True)
        np.testing.assert_allclose(values[3], np.nanmedian(m[[3, 4]], axis=0), equal_nan=True)
    assert np.isnan(values[2]).all()  # no observation in summer
    # A pixel cloudy on both winter dates has no clear observation: NaN, not a cloud value.
    both = np.isnan(m[0, 0]) & np.isnan(m[1, 0])
    assert both.any() and np.isnan(values[0, 0][both]).all()


def test_ndvi(series: list) -> None:
    cube = add_indices(s2_cube(series, GRID, ["B04", "B08"], chunk=32), ["ndvi"])
    assert list(cube.band.values) == ["B04", "B08", "ndvi"] and cube.dtype == np.float32
    v = cube.isel(time=2).values
    np.testing.assert_allclose(v[2], (v[1] - v[0]) / (v[1] + v[0]), rtol=1e-6)
    with pytest.raises(CubeError, match="needs band 'B11'"):
        add_indices(cube, ["ndmi"])
    with pytest.raises(CubeError, match="unknown index"):
        add_indices(cube, ["evi9"])


def test_mixed_crs_items_reprojected_onto_grid(tmp_path: Path) -> None:
    d = dates(2)
    utm, (e0, n0) = write_ramp_item(tmp_path, GRID, d[0], 32632, "utm32n")
    laea, _ = write_ramp_item(tmp_path, GRID, d[1], 3035, "laea")
    assert (utm.properties["proj:epsg"], laea.properties["proj:epsg"]) == (32632, 3035)
    cube = s2_cube([utm, laea], GRID, ["B04"], chunk=32)
    assert np.array_equal(cube.x.values, GRID.x) and cube.shape == (2, 1, *GRID.shape)
    x, y = np.meshgrid(GRID.x, GRID.y)
    e, n = Transformer.from_crs(3035, 32632, always_xy=True).transform(x, y)
    expect = utm_ramp(e, n, e0, n0) * SCALE + OFFSET
    values = cube.values[:, 0]
    assert np.isfinite(values).all()
    assert np.abs(values - expect).max() < 1.5 * SCALE  # DN rounding + resampling


# --- errors ----------------------------------------------------------------------------------------------------------
def test_no_items() -> None:
    with pytest.raises(CubeError, match=r"search returned no items for s2_cube bands \['B04'\]"):
        s2_cube([], GRID, ["B04"])


def test_grid_outside_every_footprint(series: list) -> None:
    far = Grid.from_origin(3_000_000, 2_000_000, 10, 32, 32)
    with pytest.raises(CubeError, match=r"overlap none of the 5 item footprints"):
        s2_cube(series, far, ["B04"])


def test_band_missing_in_an_item(tmp_path: Path) -> None:
    items = fresh(tmp_path, bands=["B04"], with_scl=False)
    with pytest.raises(CubeError, match=r"item S2_T00_\d+: no asset for band 'B8A'"):
        s2_cube(items, GRID, ["B04", "B8A"])
    with pytest.raises(CubeError, match=r"no asset for band 'SCL'"):
        scl_cube(items, GRID)


def test_missing_cog(tmp_path: Path) -> None:
    items = fresh(tmp_path, bands=["B04"], with_scl=False)
    gone = items[0].assets["B04"].href
    os.remove(local_path(gone))
    with pytest.raises(CubeError, match=rf"item S2_T00_\d+ band B04: asset {gone} cannot be opened"):
        s2_cube(items, GRID, ["B04"], check_assets=True)
    cube = s2_cube(items, GRID, ["B04"], chunk=32)  # no check: builds, fails in the task naming the href
    with pytest.raises(CubeError, match=rf"cannot read asset {gone}"):
        cube.compute()
    with pytest.warns(UserWarning, match="Error opening"):
        filled = s2_cube(items, GRID, ["B04"], chunk=32, errors_as_nodata=True).values
    assert np.isnan(filled[0]).all() and np.isfinite(filled[1]).all()


def test_truncated_cog(tmp_path: Path) -> None:
    grid = small_grid(size=600)  # several 256 px tiles, so half the file cuts tile data, not the header
    item = write_s2_item(tmp_path, grid, dates(1)[0], 0, bands=["B04"], with_scl=False)
    href = item.assets["B04"].href
    data = local_path(href).read_bytes()
    local_path(href).write_bytes(data[: len(data) // 2])
    with pytest.raises(CubeError, match=rf"band B04: asset {href} is truncated"):
        s2_cube([item], grid, ["B04"], check_assets=True)
    with pytest.raises(CubeError, match=rf"cannot read asset {href}: RasterioIOError"):
        s2_cube([item], grid, ["B04"], chunk=256).compute()


def test_errors_are_one_line_value_errors(series: list) -> None:
    with pytest.raises(ValueError) as info:
        s2_cube(series, GRID, ["B04"], resampling="cubicc")
    assert "\n" not in str(info.value) and "cubicc" in str(info.value)


def test_composite_of_unmasked_cube_is_lazy_and_typed(series: list) -> None:
    comp = seasonal_composite(s2_cube(series, GRID, ["B04"], chunk=32), how="mean")
    assert isinstance(comp, xr.DataArray) and comp.attrs["composite"] == "mean"
    with pytest.raises(CubeError, match="how="):
        seasonal_composite(comp, how="mode")


def test_distributed_workers_read_and_report_href(tmp_path: Path) -> None:
    # Readers are pickled to worker processes; a failed read must reach the client as a CubeError, not a bare Exception.
    from geoplantnet.core.config import ClusterConfig
    from geoplantnet.runtime.cluster import connect

    items = fresh(tmp_path, bands=["B04"], with_scl=False)
    cube = s2_cube(items, GRID, ["B04"], chunk=32)
    with connect(ClusterConfig(n_workers=1, threads_per_worker=2, memory_limit="1GiB")) as client:
        values = client.compute(cube).result().values
        np.testing.assert_allclose(values[1, 0], reflectance(dn("B04", 1, GRID.shape)), atol=2e-7)
        os.remove(local_path(items[0].assets["B04"].href))
        with pytest.raises(CubeError, match=r"cannot read asset .*S2_T00_\d+/B04\.tif"):
            client.compute(cube).result()


def test_auto_resampling_averages_only_bands_finer_than_the_grid(tmp_path: Path) -> None:
    items = fresh(tmp_path, n=1, bands=["B04", "B05"], with_scl=False)
    grid20 = GRID.at_resolution(20)
    cube = s2_cube(items, grid20, ["B05", "B04"], chunk=16)
    assert list(cube.band.values) == ["B05", "B04"]
    assert cube.attrs["resampling"] == "B05:nearest B04:average"
    b05 = dn("B05", 0, grid20.shape) * SCALE + OFFSET  # native 20 m: copied, not resampled
    np.testing.assert_allclose(cube.sel(band="B05").isel(time=0).values, b05, atol=1e-6)
    b04 = dn("B04", 0, GRID.shape).astype("float64").reshape(grid20.height, 2, grid20.width, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(cube.sel(band="B04").isel(time=0).values, b04 * SCALE + OFFSET, atol=1e-4)
    # forcing one method for all bands still works
    assert s2_cube(items, grid20, ["B05", "B04"], resampling="nearest").attrs["resampling"] == "nearest"
