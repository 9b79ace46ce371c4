"""The grid's arithmetic: alignment, tiles, halos, coordinates (property-tested)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoplantnet.core.grid import Grid, GridError, overlaps, to_grid_crs, transform_bounds, transform_outline

resolutions = st.sampled_from([10.0, 20.0, 50.0, 100.0])
coords = st.floats(min_value=1_000_000, max_value=5_400_000, allow_nan=False)
sizes = st.floats(min_value=1.0, max_value=50_000.0)


@given(res=resolutions, x=coords, y=coords, w=sizes, h=sizes)
@settings(max_examples=200, deadline=None)
def test_from_bounds_is_aligned_and_covers(res, x, y, w, h):
    grid = Grid.from_bounds((x, y, x + w, y + h), res)
    for edge in grid.bounds:
        assert edge / res == pytest.approx(round(edge / res), abs=1e-6)
    # snapping treats a coordinate within 1e-9 pixel of an edge as on it (float noise), hence the tolerances
    assert grid.left <= x + 1e-6 and grid.bottom <= y + 1e-6
    assert grid.right >= x + w - 1e-6 and grid.top >= y + h - 1e-6
    # never more than one extra pixel on each side
    assert grid.width <= np.ceil(w / res) + 1 and grid.height <= np.ceil(h / res) + 1


@given(res=resolutions, w=st.integers(1, 300), h=st.integers(1, 300), size=st.integers(4, 120))
@settings(max_examples=100, deadline=None)
def test_tiles_partition_the_grid(res, w, h, size):
    grid = Grid(res, 4_000_000.0, 3_000_000.0, w, h)
    cover = np.zeros((h, w), dtype=np.int32)
    ids = set()
    for tile in grid.tiles(size):
        cover[tile.slices] += 1
        ids.add(tile.id)
    assert (cover == 1).all()
    rows, cols = grid.n_tiles(size)
    assert len(ids) == rows * cols


@given(w=st.integers(5, 300), h=st.integers(5, 300), size=st.integers(1, 64), halo=st.integers(0, 20))
@settings(max_examples=150, deadline=None)
def test_halo_reads_are_clipped_and_padding_restores_shape(w, h, size, halo):
    grid = Grid(50.0, 4_000_000.0, 3_000_000.0, w, h)
    for tile in grid.tiles(size):
        (ys, xs), ((pt, pb), (pl, pr)) = grid.halo(tile, halo)
        assert 0 <= ys.start <= ys.stop <= h and 0 <= xs.start <= xs.stop <= w
        assert (ys.stop - ys.start) + pt + pb == tile.height + 2 * halo
        assert (xs.stop - xs.start) + pl + pr == tile.width + 2 * halo


@given(
    w=st.integers(1, 60),
    h=st.integers(1, 60),
    r0=st.integers(-80, 80),
    c0=st.integers(-80, 80),
    dh=st.integers(0, 40),
    dw=st.integers(0, 40),
)
@settings(max_examples=200, deadline=None)
def test_clip_keeps_the_part_of_a_window_on_the_grid(w, h, r0, c0, dh, dw):
    grid = Grid(50.0, 4_000_000.0, 3_000_000.0, w, h)
    (ys, xs), ((pt, pb), (pl, pr)) = grid.clip((r0, r0 + dh), (c0, c0 + dw))
    assert 0 <= ys.start <= ys.stop <= h and 0 <= xs.start <= xs.stop <= w
    assert min(pt, pb, pl, pr) >= 0
    assert (ys.stop - ys.start) + pt + pb == dh and (xs.stop - xs.start) + pl + pr == dw
    on_rows = [r for r in range(r0, r0 + dh) if 0 <= r < h]
    on_cols = [c for c in range(c0, c0 + dw) if 0 <= c < w]
    assert list(range(ys.start, ys.stop)) == on_rows and list(range(xs.start, xs.stop)) == on_cols
    if on_rows:  # the padding before the window's first on-grid row is what lies before the grid
        assert pt == on_rows[0] - r0
    if on_cols:
        assert pl == on_cols[0] - c0


def test_coordinates_are_cell_centres_and_index_round_trips():
    grid = Grid(50.0, 4_321_000.0, 2_981_000.0, 100, 80)
    assert grid.x[0] == 4_321_025.0 and grid.y[0] == 2_980_975.0
    rows, cols = grid.index(grid.x[[0, 10, 99]], grid.y[[0, 5, 79]])
    assert rows.tolist() == [0, 5, 79] and cols.tolist() == [0, 10, 99]
    assert grid.index(grid.left - 1, grid.top)[0] == -1
    sub = grid.subgrid(slice(10, 20), slice(30, 50))
    np.testing.assert_array_equal(sub.x, grid.x[30:50])
    np.testing.assert_array_equal(sub.y, grid.y[10:20])
    assert grid.at_resolution(10.0).shape == (400, 500)
    with pytest.raises(GridError, match="does not divide"):
        grid.at_resolution(30.0)


def test_tile_ids_follow_the_eea_reference_grid():
    grid = Grid(100.0, 4_300_000.0, 3_000_000.0, 20, 10)
    first = next(grid.tiles(10))
    assert first.id == "1kmE4300N2999"


def test_lonlat_bbox_and_bad_input():
    grid = Grid.from_lonlat((10.0, 50.0, 10.1, 50.05), 50.0)
    lon0, lat0, lon1, lat1 = grid.lonlat_bounds()
    assert lon0 <= 10.0 and lat0 <= 50.0 and lon1 >= 10.1 and lat1 >= 50.05
    with pytest.raises(GridError, match="outside Europe"):
        Grid.from_bounds((10.0, 50.0, 10.1, 50.05), 50.0)  # lon/lat passed as metres
    with pytest.raises(GridError, match="not a lon/lat"):
        Grid.from_lonlat((4_000_000, 3_000_000, 4_100_000, 3_100_000), 50.0)
    with pytest.raises(GridError, match="multiple"):
        Grid(50.0, 4_000_010.0, 3_000_000.0, 10, 10)
    x, y = to_grid_crs(np.array([10.0]), np.array([52.0]), 4326)
    assert grid.contains(x, y).shape == (1,)


def test_spatial_ref_is_read_by_rioxarray():
    import rioxarray  # noqa: F401
    import xarray as xr

    grid = Grid(20.0, 4_000_000.0, 3_000_000.0, 30, 20)
    da = xr.DataArray(np.zeros(grid.shape, "float32"), dims=("y", "x"), coords=grid.coords())
    assert da.rio.crs.to_epsg() == 3035
    assert tuple(da.rio.transform())[:6] == tuple(grid.transform)[:6]


def test_grid_outside_europe_carries_its_own_crs():
    import rioxarray  # noqa: F401
    import xarray as xr

    # Bradypus country (South America) on an equal-area global CRS: no Europe check, CRS everywhere.
    grid = Grid.from_lonlat((-80.0, -20.0, -40.0, 10.0), 10_000.0, epsg=6933)
    assert grid.epsg == 6933 and grid.crs.to_epsg() == 6933
    lon0, lat0, lon1, lat1 = grid.lonlat_bounds()
    assert lon0 <= -80 and lat0 <= -20 and lon1 >= -40 and lat1 >= 10
    assert grid.at_resolution(5_000.0).epsg == 6933
    da = xr.DataArray(np.zeros(grid.shape, "float32"), dims=("y", "x"), coords=grid.coords())
    assert da.rio.crs.to_epsg() == 6933
    x, y = to_grid_crs(np.array([-60.0]), np.array([-5.0]), 4326, epsg=grid.epsg)
    assert grid.contains(x, y).all()


def test_overlaps_needs_shared_area():
    assert overlaps((0, 0, 10, 10), (5, 5, 15, 15)) and overlaps((0, 0, 10, 10), (2, 2, 3, 3))
    assert not overlaps((0, 0, 10, 10), (10, 0, 20, 10))  # a shared edge is no area
    assert not overlaps((0, 0, 10, 10), (0, 11, 10, 20))


def test_transformed_bounds_cover_the_densified_outline():
    """A 3035 box far from the projection centre: its lon/lat edges curve, the box covers every outline point."""
    box3035 = (5_000_000.0, 4_500_000.0, 5_600_000.0, 5_200_000.0)
    lon, lat = transform_outline(box3035, 3035)
    lon0, lat0, lon1, lat1 = transform_bounds(box3035, 3035)
    assert len(lon) == len(lat) == 4 * 21
    assert lon0 <= lon.min() and lat0 <= lat.min() and lon1 >= lon.max() and lat1 >= lat.max()
    back = transform_bounds((lon0, lat0, lon1, lat1), 4326, 3035)
    assert back[0] <= box3035[0] and back[1] <= box3035[1] and back[2] >= box3035[2] and back[3] >= box3035[3]
    assert Grid.from_bounds(box3035, 100.0).lonlat_bounds() == pytest.approx((lon0, lat0, lon1, lat1))
