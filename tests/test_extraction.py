"""Sample extraction from lazy arrays: exact patches, NaN padding at edges, and every source chunk read once."""

import threading
from collections import Counter

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from geoplantnet.core.grid import Grid
from geoplantnet.samples.extraction import ExtractionError, cut_patches, extract_samples, patch_tasks
from geoplantnet.samples.observations import Samples, SpeciesVocabulary
from geoplantnet.samples.training_set import open_training_set

MAP = Grid(50.0, 4_321_000.0, 2_981_000.0, 40, 40)
CUBE = MAP.at_resolution(25.0)  # 80 x 80
READS: Counter = Counter()
LOCK = threading.Lock()


def _counted(block, block_info=None):
    with LOCK:
        READS[tuple(block_info[0]["chunk-location"][-2:])] += 1
    return block


def _arrays(counted: bool = False) -> tuple[xr.DataArray, xr.DataArray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    comp = rng.random((2, 3, *CUBE.shape)).astype("float32")
    env = rng.random((4, *MAP.shape)).astype("float32")
    cdata = da.from_array(comp, chunks=(1, 3, 20, 20))
    if counted:
        cdata = cdata.map_blocks(_counted, dtype="float32")
    composite = xr.DataArray(
        cdata, dims=("time", "band", "y", "x"), coords={"band": ["B04", "B08", "ndvi"], **CUBE.coords()}
    )
    env_da = xr.DataArray(
        da.from_array(env, chunks=(4, 16, 16)),
        dims=("var", "y", "x"),
        coords={"var": ["a", "b", "c", "d"], **MAP.coords()},
    )
    return composite, env_da, comp, env


def _samples(n: int = 120, seed: int = 1) -> Samples:
    rng = np.random.default_rng(seed)
    x = rng.uniform(MAP.left, MAP.right, n)
    y = rng.uniform(MAP.bottom, MAP.top, n)
    x[:2], y[:2] = MAP.left + 1, MAP.top - 1  # corner points: patches reach outside the grid
    vocab = SpeciesVocabulary(("s1", "s2"), ("S one", "S two"))
    label = rng.integers(0, 2, (n, 2)).astype("int8")
    return Samples(x, y, label, np.array(["pa"] * n), vocab)


def test_patches_series_env_match_direct_slicing(tmp_path):
    composite, env_da, comp, env = _arrays()
    s = _samples()
    path = extract_samples(
        s, MAP, composite=composite, env=env_da, patch_size=6, env_patch_size=3, out=str(tmp_path / "ts.zarr")
    )
    ds = open_training_set(path)
    rows, cols = CUBE.index(s.x, s.y)
    erows, ecols = MAP.index(s.x, s.y)
    for i in (5, 17, 60, 119):
        r, c = rows[i], cols[i]
        if 3 <= r < CUBE.height - 3 and 3 <= c < CUBE.width - 3:
            np.testing.assert_array_equal(ds.patch[i].values, comp[:, :, r - 3 : r + 3, c - 3 : c + 3])
        np.testing.assert_array_equal(ds.series[i].values, comp[:, :, r, c])
        np.testing.assert_array_equal(ds.env_point[i].values, env[:, erows[i], ecols[i]])
    corner = ds.patch[0].values  # centre at (0, 0): the upper-left 3 x 3 rows/cols are outside the cube
    assert np.isnan(corner[..., :3, :]).all() and np.isnan(corner[..., :, :3]).all()
    np.testing.assert_array_equal(corner[..., 3:, 3:], comp[:, :, 0:3, 0:3])
    assert ds.attrs["bands"] == "B04 B08 ndvi" and ds.attrs["variables"] == "a b c d"
    np.testing.assert_array_equal(ds.label.values, s.label)


def test_each_source_chunk_is_read_once():
    composite, _, _, _ = _arrays(counted=True)
    s = _samples(400)
    READS.clear()
    tasks, members = patch_tasks(composite, CUBE, s.x, s.y, 8)
    dask.compute(tasks, scheduler="threads", optimize_graph=False)  # as extract_samples does
    touched = set(READS)
    assert READS and all(v == 2 for v in READS.values())  # 2 = the two time steps of each (y, x) chunk
    assert sum(len(m) for m in members) == 400 and len(tasks) <= 16
    # the naive way, one compute per point, reads chunks over and over
    READS.clear()
    rows, cols = CUBE.index(s.x[:50], s.y[:50])
    for r, c in zip(rows, cols, strict=True):
        composite.data[..., max(r - 4, 0) : r + 4, max(c - 4, 0) : c + 4].compute(scheduler="threads")
    assert sum(READS.values()) > 5 * 2 * len(touched)


def test_points_outside_or_nothing_to_extract():
    composite, _, _, _ = _arrays()
    s = _samples(3)
    s.x[0] = MAP.right + 500
    with pytest.raises(ExtractionError, match="1 points lie outside"):
        patch_tasks(composite, CUBE, s.x, s.y, 4)
    with pytest.raises(ExtractionError, match="nothing to extract"):
        extract_samples(_samples(3), MAP, composite=None, env=None, patch_size=4, env_patch_size=1, out="x")


@pytest.mark.parametrize("size", [1, 4, 5])
def test_cut_patches_centres_each_pixel_and_pads_with_nan(size):
    """The one patch cutter (training extraction and the dense reference): pixel at size // 2, NaN off the array."""
    rng = np.random.default_rng(size)
    a = rng.random((2, 3, 9, 11)).astype("float32")
    rows, cols = np.array([0, 4, 8, 8, 3]), np.array([0, 5, 10, 0, 9])
    half = size // 2
    padded = np.full((2, 3, 9 + size, 11 + size), np.nan, "float32")
    padded[..., half : half + 9, half : half + 11] = a
    expect = np.stack([padded[..., r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)])
    got = cut_patches(a, rows, cols, size)
    assert got.shape == (5, 2, 3, size, size) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(got[:, :, :, half, half], np.moveaxis(a[..., rows, cols], -1, 0))
    inside = cut_patches(a, np.array([4]), np.array([5]), size)  # no padding needed: the same values
    np.testing.assert_array_equal(inside, expect[1:2])
    assert cut_patches(a, np.array([], int), np.array([], int), size).shape == (0, 2, 3, size, size)
