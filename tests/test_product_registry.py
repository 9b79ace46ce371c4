"""How to add a product (docs/ARCHITECTURE.md, "How to add a product"), kept true: a toy product declared and
registered here, as a new product module would, runs through the CLI (``geoplantnet product NAME``, its evaluation
with ``--evaluate``), through the annual refresh (``geoplantnet refresh``: its step in the year's summary, its series
gets the year), and its store opens with its values. The registry's order and lookups are checked without a cluster."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import xarray as xr
import zarr

from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Tile
from geoplantnet.evaluation.registry import register_evaluation, unregister_evaluation
from geoplantnet.products.base import (
    Product,
    TilePlan,
    UnknownProductError,
    get,
    load,
    products,
    read_input,
    register,
    unregister,
)
from geoplantnet.storage.store import open_store, zarr_store
from geoplantnet.storage.tiles import TileOutput, tiled_variable, write_tile_blocks

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"

# -- the product: what a module products/richness_class.py would hold

NAME = "richness_class"
BOUNDS = (2.0, 4.0, 8.0)  # classes 0-3: expected richness below 2, 2-4, 4-8, 8 and more; -1 no data


@dataclass(frozen=True)
class RichnessClassJob:
    """What a tile task receives: the indicator store (its year's slot in a series) and where to write."""

    url: str
    options: dict[str, Any]
    slot: int | None
    output: TileOutput


def richness_class_tile(job: RichnessClassJob, tile: Tile) -> dict[str, Any]:
    """One tile (on a worker): read expected richness, write its class."""
    array = zarr.open_group(zarr_store(job.url, job.options), mode="r")["richness_expected"]
    ys, xs = tile.slices
    richness = np.asarray(array[job.slot, ys, xs] if job.slot is not None else array[ys, xs])
    classes = np.where(np.isfinite(richness), np.digitize(richness, BOUNDS), -1).astype("int8")
    out = job.output
    write_tile_blocks(out.url, {NAME: classes}, tile, run=out.run, storage_options=out.storage_options)
    return {"tile": tile.id, "pixels": tile.height * tile.width}


def plan_richness_class(ctx: Any, client: Any) -> TilePlan:
    """The driver's plan: the indicator store read (the run's year of it), the layout, the run's fingerprint."""
    source = read_input(ctx, "indicators", "richness_expected")
    parts = {"indicators": source.run, "bounds": json.dumps(BOUNDS)}
    output = ctx.tile_output(ctx.url(get(NAME).store), parts)
    grid, tile = source.grid, source.tile
    attrs = {"long_name": "class of expected species richness", "flag_values": [0, 1, 2, 3]}
    data, encoding = tiled_variable(("y", "x"), grid.shape, dtype="int8", fill=-1, chunks=(tile, tile), attrs=attrs)
    layout = (xr.Dataset({NAME: data}, coords=grid.coords()), {NAME: encoding})
    job = RichnessClassJob(source.url, source.options, source.slot, output)
    return TilePlan(richness_class_tile, job, output, grid, tile, layout, parts, {}, GeoplantnetError)


def evaluate_richness_class(ctx: Any, truth: Any, made: Mapping[str, Any]) -> dict[str, Any]:
    """Its evaluation: how often the class is the class of the true expected richness."""
    ds = open_store(made[NAME].url, mask_and_scale=False).sel(year=ctx.year)
    species = [str(s) for s in read_input(ctx, "species", "probability").ds["species"].values]
    true = np.digitize(truth.species(ctx.year).sel(species=species).sum("species").values, BOUNDS)
    return {NAME: {"agreement": round(float((ds[NAME].values == true).mean()), 4)}}


PRODUCT = Product(NAME, "richness_class.zarr", "expected richness class", requires=("indicators",), yearly=True,
                  plan=plan_richness_class)  # fmt: skip


# -- the tests


@pytest.fixture
def registered() -> Iterator[Product]:
    """The toy product and its evaluation registered for the test, and taken back after. Its functions are shipped
    to the workers by value (the workers cannot import a test module)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    load()
    register(PRODUCT)
    register_evaluation(NAME, evaluate_richness_class)
    try:
        yield PRODUCT
    finally:
        unregister(NAME)
        unregister_evaluation(NAME)
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_the_registry_orders_products_after_what_they_require(registered):
    names = [p.name for p in products(yearly=True)]
    assert names.index("indicators") < names.index("changes") and names.index("indicators") < names.index(NAME)
    assert names.index("species") < names.index("habitat") < names.index("indicators")
    assert get(NAME) is registered
    with pytest.raises(UnknownProductError, match="unknown product 'nothing'"):
        get("nothing")


def test_an_unknown_product_is_one_line(capsys):
    from geoplantnet.cli import main

    assert main(["product", "nothing", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geoplantnet: error: unknown product 'nothing'")


@pytest.mark.slow
def test_a_registered_product_runs_through_refresh_the_cli_and_a_store(registered, small_map, tmp_path, capsys):
    from geoplantnet.cli import main

    out = tmp_path / "out"
    sets = [a for s in [*small_map.overrides, f"store.root={out}", "cluster.n_workers=1", "indicators.draws=8"]
            for a in ("--set", s)]  # fmt: skip
    # the refresh maps it after the indicators it requires: its step in the summary, its series has the year
    assert main(["refresh", "--config", str(CONFIG), *sets, "--year", "2024", "--model", small_map.model, "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["steps"])[-1] == NAME and summary["steps"][NAME]["tiles_computed"] == summary["tiles"]
    assert summary["stores"][NAME] == str(out / "richness_class.zarr")
    store = out / "richness_class.zarr"
    ds = open_store(str(store), mask_and_scale=False)
    assert [int(y) for y in ds["year"].values] == [2024]
    richness = open_store(str(out / "indicators.zarr")).sel(year=2024)["richness_expected"].values
    expected = np.where(np.isfinite(richness), np.digitize(richness, BOUNDS), -1)
    np.testing.assert_array_equal(ds.sel(year=2024)[NAME].values, expected)
    assert (expected >= 0).any()
    # the CLI writes it again from the same inputs, and scores it with its registered evaluation
    shutil.rmtree(store)
    argv = ["product", NAME, "--config", str(CONFIG), *sets, "--year", "2024", "--evaluate", "-q"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tiles_computed"] == summary["tiles"] and 0 <= result["evaluation"][NAME]["agreement"] <= 1
    again = open_store(str(store), mask_and_scale=False).sel(year=2024)[NAME].values
    np.testing.assert_array_equal(again, expected)
