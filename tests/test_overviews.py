"""Overviews (storage/overviews.py): levels written by the tiles and by finalise, their values against numpy on the
decoded full resolution, ragged edges, a year of a series, a resumed run, and ``plot`` reading a coarse level."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from geoplantnet.core.grid import Grid, Tile
from geoplantnet.products.species_map import species_template
from geoplantnet.storage import overviews
from geoplantnet.storage import tiles as tile_store
from geoplantnet.storage.store import StoreError, default_encoding, open_store, run_id
from geoplantnet.storage.tiles import TileOutput, tiled_variable

GRID = Grid(50.0, 4_321_000.0, 2_981_000.0, 45, 30)  # ragged: 3 x 2 tiles of 16, the last row and column partial
TILE = 16
TILES = list(GRID.tiles(TILE))
SPECIES = ["sp0", "sp1", "sp2"]
PARTS = {"model": "m1", "grid": GRID.label(), "tiling": f"tile={TILE}"}
CLASS_FILL = -1


def _layout() -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """species.zarr's layout (sharded uint8 codes) plus a class variable (mode) and a float indicator (NaN)."""
    ds, enc = species_template(GRID, SPECIES, None, TILE, 2)
    ds["cls"], enc["cls"] = tiled_variable(
        ("y", "x"), GRID.shape, dtype="int16", fill=CLASS_FILL, chunks=(TILE, TILE), attrs=overviews.CLASS_ATTRS
    )
    ds["index"], enc["index"] = tiled_variable(
        ("y", "x"), GRID.shape, dtype="float32", fill=np.nan, chunks=(TILE, TILE)
    )
    ds["threshold"] = xr.DataArray(np.linspace(0.1, 0.3, len(SPECIES), dtype="float32"), dims=("species",))
    enc["threshold"] = default_encoding(ds[["threshold"]])["threshold"]
    return ds, enc


def _blocks(tile: Tile, seed: int) -> dict[str, np.ndarray]:
    """Random values with no-data holes: codes, classes 0..3, floats."""
    rng = np.random.default_rng([seed, tile.row, tile.col])
    shape = (tile.height, tile.width)
    codes = rng.integers(0, 255, (len(SPECIES), *shape)).astype("uint8")
    codes[:, rng.random(shape) < 0.2] = 255
    cls = rng.integers(0, 4, shape).astype("int16")
    cls[rng.random(shape) < 0.2] = CLASS_FILL
    index = rng.normal(size=shape).astype("float32")
    index[rng.random(shape) < 0.2] = np.nan
    if tile.row == 0 and tile.col == 0:  # a whole coarse cell without data
        codes[:, :4, :4], cls[:4, :4], index[:4, :4] = 255, CLASS_FILL, np.nan
    return {"probability": codes, "cls": cls, "index": index}


def _run(url: str, seed: int = 0, *, year: int | None = None, stop_after: int | None = None) -> None:
    """The tile protocol without a cluster (``stop_after`` tiles: interrupted, never finalised)."""
    run = TileOutput.of(url, PARTS, {}, year=year).run
    with tile_store.writing_tiles(
        url,
        *_layout(),
        product="species",
        parts=PARTS,
        run=run,
        overwrite=False,
        provenance=None,
        attrs=None,
        storage_options=None,
        lease_ttl=30.0,
        year=year,
    ) as (done, _lease):
        todo = [t for t in TILES if t.id not in done]
        for i, tile in enumerate(todo):
            if stop_after is not None and i == stop_after:
                return
            tile_store.write_tile_blocks(url, _blocks(tile, seed), tile, run=run)
        tile_store.finalise(url, n_tiles=len(TILES), run=run)


def _padded(a: np.ndarray, f: int) -> np.ndarray:
    h, w = a.shape[-2:]
    pad = [(0, 0)] * (a.ndim - 2) + [(0, -h % f), (0, -w % f)]
    return np.pad(a.astype("float64"), pad, constant_values=np.nan)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """numpy's mean over f x f blocks ignoring NaN (NaN where a block has no value)."""
    p = _padded(a, f)
    *lead, h, w = p.shape
    with warnings.catch_warnings():  # "mean of empty slice": a block without data, NaN as wanted
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(p.reshape(*lead, h // f, f, w // f, f), axis=(-3, -1))


def _block_mode(a: np.ndarray, f: int, fill: int) -> np.ndarray:
    """The most frequent value of each block, smallest on ties, by counting (not the module's sort)."""
    p = np.pad(a, [(0, -a.shape[0] % f), (0, -a.shape[1] % f)], constant_values=fill)
    out = np.full((p.shape[0] // f, p.shape[1] // f), fill, dtype=a.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            cell = p[i * f : (i + 1) * f, j * f : (j + 1) * f].ravel()
            cell = cell[cell != fill]
            if cell.size:
                values, counts = np.unique(cell, return_counts=True)
                out[i, j] = values[np.argmax(counts)]
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("ovw") / "species.zarr")
    _run(url)
    return url


def test_levels_values_and_layout(synthetic: str) -> None:
    """Tile levels (factor 2..16) are exact numpy block means / modes of the decoded full resolution; the levels
    coarser than a tile are means of the previous level's means; dtype, fill, CF coding kept; plain open_zarr and
    open_store see the root only."""
    assert overviews.levels(synthetic) == [2, 4, 8, 16, 32, 64]
    full = open_store(synthetic)
    assert set(xr.open_zarr(synthetic).data_vars) == {"probability", "cls", "index", "threshold"}
    attrs = zarr.open_group(synthetic, mode="r").attrs
    assert attrs["zarr_conventions"][0]["name"] == "multiscales"
    assert [item["asset"] for item in attrs["multiscales"]["layout"]] == [".", *(f"overviews/{k}" for k in range(1, 7))]
    step = 1 / 254
    previous = full
    for f in overviews.levels(synthetic):
        level = overviews.open_overview(synthetic, factor=f)
        assert level.sizes["y"] == -(-GRID.height // f) and level.sizes["x"] == -(-GRID.width // f)
        assert np.allclose(level.x.values[0], full.x.values[0] - 25 + 25 * f)
        raw = zarr.open_group(synthetic, mode="r")[f"overviews/{int(np.log2(f))}"]
        assert raw["probability"].dtype == np.uint8 and raw["probability"].fill_value == 255
        assert raw["probability"].attrs["scale_factor"] == pytest.approx(step)
        assert np.isnan(raw["index"].fill_value) and raw["cls"].dtype == np.int16
        source, by = (full, f) if f <= TILE else (previous, 2)  # finalise levels: from the previous level
        for name in ("probability", "index"):
            expected = _block_mean(source[name].values, by)
            got = level[name].values
            assert np.array_equal(np.isnan(got), np.isnan(expected)), (name, f)
            assert np.nanmax(np.abs(got - expected)) <= (step if name == "probability" else 1e-5), (name, f)
        cls = np.nan_to_num(source["cls"].values, nan=CLASS_FILL).astype("int16")
        got = level["cls"].values
        expected = _block_mode(cls, by, CLASS_FILL).astype("float64")
        assert np.array_equal(np.where(np.isnan(got), CLASS_FILL, got), expected), f
        previous = level
    assert np.isnan(overviews.open_overview(synthetic, factor=4)["probability"].values[:, 0, 0]).all()


def test_open_overview_chooses(synthetic: str) -> None:
    assert overviews.open_overview(synthetic).sizes["x"] == GRID.width
    assert overviews.open_overview(synthetic, max_pixels=45).sizes["x"] == 45
    assert overviews.open_overview(synthetic, max_pixels=12).attrs["geoplantnet_factor"] == 4
    assert overviews.open_overview(synthetic, max_pixels=0).sizes == {"species": 3, "y": 1, "x": 1}
    one = overviews.open_overview(synthetic, factor=8).sel(species="sp1")
    assert one["probability"].dims == ("y", "x")
    with pytest.raises(Exception, match="no overview of factor 3"):
        overviews.open_overview(synthetic, factor=3)


def test_resumed_run_equals_uninterrupted(tmp_path: Path, synthetic: str) -> None:
    url = str(tmp_path / "resumed.zarr")
    _run(url, stop_after=2)
    _run(url)
    for k in range(1, 7):
        for name in ("probability", "cls", "index"):
            a = zarr.open_group(url, mode="r")[f"overviews/{k}/{name}"][...]
            b = zarr.open_group(synthetic, mode="r")[f"overviews/{k}/{name}"][...]
            assert np.array_equal(a, b, equal_nan=True), (k, name)


def test_series_year(tmp_path: Path, synthetic: str) -> None:
    """Each year's overviews sit in its slot; open_overview(year=) reads it; a replaced year's are rewritten."""
    url = str(tmp_path / "series.zarr")
    _run(url, seed=1, year=2024)
    _run(url, seed=0, year=2025)
    got = overviews.open_overview(url, factor=4, year=2025)
    assert "year" not in got.dims
    ref = overviews.open_overview(synthetic, factor=4)
    assert np.array_equal(got["probability"].values, ref["probability"].values, equal_nan=True)
    both = overviews.open_overview(url, factor=64)
    assert list(both.year.values) == [2024, 2025]
    other = overviews.open_overview(url, factor=2, year=2024)["probability"].values
    assert not np.array_equal(other, ref["probability"].values, equal_nan=True)
    with pytest.raises(StoreError, match="no complete year 2026"):
        overviews.open_overview(url, factor=2, year=2026)
    arr = zarr.open_group(url, mode="r")["overviews/2/probability"]
    assert arr.shape[0] == 2 and arr.metadata.dimension_names[0] == "year"


def test_mode_ties_and_nodata() -> None:
    block = np.array([[1, 2, 5, 5], [2, 1, 5, -1], [-1, -1, 3, 3], [-1, -1, 4, 4]], dtype="int16")
    assert overviews.mode(block, 2, -1).tolist() == [[1, 5], [-1, 3]]


# -- the real tile path: a species map and a habitat map written by the map jobs


def test_small_map_levels(small_map: Any) -> None:
    """The reference species map (written by the map job's tiles on a cluster) has its levels, block means of the
    decoded full resolution within one code step."""
    full = open_store(small_map.reference)
    factors = overviews.levels(small_map.reference)
    assert factors and factors[-1] >= max(full.sizes["y"], full.sizes["x"])
    for f in factors[:2]:
        got = overviews.open_overview(small_map.reference, factor=f)["probability"].values
        expected = _block_mean(full["probability"].values, f)
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        assert np.nanmax(np.abs(got - expected)) <= 1 / 254 + 1e-9


def test_small_habitats_mode(small_habitats: Any) -> None:
    full = open_store(small_habitats.store, mask_and_scale=False)
    fill = int(full["habitat"].attrs.get("_FillValue", full["habitat"].encoding.get("_FillValue", -1)))
    f = overviews.levels(small_habitats.store)[0]
    got = overviews.open_overview(small_habitats.store, factor=f)["habitat"]
    raw = zarr.open_group(small_habitats.store, mode="r")["overviews/1/habitat"][...]
    assert raw.dtype == np.int16 and got.attrs.get("geoplantnet_resampling") == "mode"
    assert np.array_equal(raw, _block_mode(np.asarray(full["habitat"].values), f, fill))


class Reads(zarr.storage.WrapperStore):
    """A store recording the keys read through it."""

    def __init__(self, store: Any, log: list[str]) -> None:
        super().__init__(store)
        self.log = log

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        self.log.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        key_ranges = list(key_ranges)
        self.log.extend(key for key, _ in key_ranges)
        return await self._store.get_partial_values(prototype, key_ranges)


def test_plot_reads_a_coarse_level(synthetic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``geoplantnet plot`` reads the chunks of the level that fits the figure, never the full resolution."""
    from geoplantnet.cli import handlers, main

    log: list[str] = []
    real = xr.open_zarr

    def through_reads(store: Any, *args: Any, storage_options: Any = None, **kwargs: Any) -> xr.Dataset:
        return real(Reads(zarr.storage.LocalStore(str(store), read_only=True), log), *args, **kwargs)

    monkeypatch.setattr(xr, "open_zarr", through_reads)
    monkeypatch.setattr(handlers, "PLOT_PIXELS", 12)  # the 45 x 30 map: factor 4 fits 12 cells a side
    out = tmp_path / "sp1.png"
    assert main(["plot", synthetic, "--species", "sp1", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    maps = [key for key in log if any(f"{name}/c/" in key for name in ("probability", "cls", "index"))]
    assert maps and all(key.startswith("overviews/2/probability/c/") for key in maps), sorted(set(log))


def test_ignores_store_without_overviews(tmp_path: Path) -> None:
    """A store laid out before overviews existed: tiles and finalise write as before, open_overview is the root."""
    url = str(tmp_path / "old.zarr")
    ds, enc = _layout()
    parts = {"x": "1"}
    tile_store.write_layout(url, ds.assign_attrs(geoplantnet_run=run_id(parts)), enc, None)
    for tile in TILES:
        tile_store.write_tile_blocks(url, _blocks(tile, 0), tile, run=run_id(parts))
    tile_store.finalise(url, n_tiles=len(TILES), run=run_id(parts))
    assert overviews.levels(url) == []
    assert overviews.open_overview(url, max_pixels=4).sizes["x"] == GRID.width
    assert json.loads(json.dumps(dict(zarr.open_group(url, mode="r").attrs)))["geoplantnet_complete"] == "true"


def test_store_written_whole(tmp_path: Path) -> None:
    """write_store (composites): every level built from the chunks written, float means ignoring NaN, before the
    completion flag; the root reads as before."""
    from geoplantnet.storage.store import write_store

    rng = np.random.default_rng(3)
    values = rng.random((2, 3, *GRID.shape)).astype("float32")
    values[values < 0.1] = np.nan
    ds = xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), values)},
        coords={**GRID.coords(), "band": ["B02", "B03", "B04"], "time": [0, 1]},
    ).chunk({"time": 1, "band": 3, "y": 16, "x": 16})
    url = str(tmp_path / "composites.zarr")
    write_store(ds, url, product="composites", parts={"p": "1"})
    assert overviews.levels(url) == [2, 4, 8, 16, 32, 64]
    assert set(open_store(url).data_vars) == {"reflectance"}
    got = overviews.open_overview(url, factor=2)["reflectance"].values
    expected = _block_mean(values, 2)
    assert np.array_equal(np.isnan(got), np.isnan(expected)) and np.nanmax(np.abs(got - expected)) < 1e-6
    top = overviews.open_overview(url, max_pixels=1)
    assert top.sizes["x"] == 1 and np.isfinite(top["reflectance"].values).all()


def test_pyramid_of_a_whole_valid_tile_is_the_block_mean() -> None:
    """The interior-tile shortcut (every cell valid: counts of 4**k) gives numpy's block means."""
    block = np.random.default_rng(5).integers(0, 255, (2, 16, 16)).astype("uint8")
    for k, coarse in overviews.pyramid(block, [1, 2, 3, 4], overviews.MEAN, 255):
        assert np.array_equal(coarse, np.round(_block_mean(block, 2**k)).astype("uint8")), k
