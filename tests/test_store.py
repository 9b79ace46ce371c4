"""Zarr stores: CF metadata readable by rioxarray, and no half-written store that reads as valid."""

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr

from geoplantnet.config import load_config
from geoplantnet.grid import Grid
from geoplantnet.store import COMPLETE, StoreError, open_store, write_store

GRID = Grid(20.0, 4_321_000.0, 2_981_000.0, 64, 48)


def _dataset(values: da.Array) -> xr.Dataset:
    return xr.Dataset({"reflectance": (("band", "y", "x"), values)}, coords={**GRID.coords(), "band": ["B04", "B08"]})


def test_written_store_opens_with_crs_config_and_values(tmp_path):
    values = da.random.default_rng(0).random((2, *GRID.shape), chunks=(1, 32, 32)).astype("float32")
    cfg = load_config(environ={})
    url = str(tmp_path / "out.zarr")
    write_store(_dataset(values), url, cfg=cfg, attrs={"source_items": 3})
    ds = open_store(url)
    np.testing.assert_allclose(ds.reflectance.values, values.compute())
    assert ds.attrs["source_items"] == 3 and "geoplantnet_config" in ds.attrs
    assert ds.reflectance.rio.crs.to_epsg() == 3035
    assert tuple(ds.reflectance.rio.transform())[:6] == tuple(GRID.transform)[:6]
    np.testing.assert_array_equal(ds.x.values, GRID.x)
    # plain xarray, as an analyst would open it
    assert xr.open_zarr(url).reflectance.dims == ("band", "y", "x")
    assert not list(tmp_path.glob(".out.zarr.*")), "temporary folders left behind"


def _fail_on_third_block(block, block_info=None):
    if block_info[0]["chunk-location"] == (1, 1, 0):
        raise RuntimeError("worker died")
    return block


def test_failed_write_leaves_no_valid_store(tmp_path):
    url = str(tmp_path / "out.zarr")
    good = da.ones((2, *GRID.shape), chunks=(1, 32, 32), dtype="float32")
    write_store(_dataset(good), url)
    bad = good.map_blocks(_fail_on_third_block, dtype="float32")
    with pytest.raises(RuntimeError, match="worker died"):
        write_store(_dataset(bad * 2), url)
    # the previous complete store is still there, untouched
    assert float(open_store(url).reflectance.mean()) == 1.0


def test_incomplete_store_is_refused(tmp_path):
    url = str(tmp_path / "partial.zarr")
    write_store(_dataset(da.zeros((2, *GRID.shape), chunks=(1, 32, 32), dtype="float32")), url)
    zarr.open_group(url, mode="r+").attrs[COMPLETE] = "false"
    zarr.consolidate_metadata(url)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(url)
    with pytest.raises(StoreError, match="no Zarr store"):
        open_store(str(tmp_path / "missing.zarr"))
