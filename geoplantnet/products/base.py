"""What a product is, declared once, and the registry every command, the annual refresh and the evaluation iterate.

A tiled product is its store's layout, a plan made on the driver (the job every tile task receives, the run's
fingerprint parts and attributes) and a tile function run on the workers; the streaming, leases, resume and
completion are :mod:`geoplantnet.runs.tiles`' and never a product's. A product declares:

- ``name``: the ``geoplantnet_product`` attribute of its store, and its registry key;
- ``store``: its default store name under ``store.root``;
- ``requires``: the products it reads (the refresh runs them first; they may be registered after it);
- ``yearly``: whether the annual refresh maps it every year (into the year's slot of its series);
- ``plan``: ``plan(ctx, client)`` -> :class:`TilePlan`, or None when there is nothing to map this time (the change
  map of a series' first year); ``ctx`` is the run's :class:`geoplantnet.runs.context.RunContext` (its ``year`` set in
  a refresh and by ``geoplantnet product NAME --year``). A plan reads what it needs from its inputs' stores
  (:func:`read_input`) and its settings from the configuration's sections (``ctx.cfg.<section>``); ``plan`` None: a
  product written another way (a report, a table), which the generic runners leave alone.

Registering is one call (:func:`register`): a new product is one module plus that call, and ``geoplantnet product
NAME``, ``geoplantnet refresh`` and the evaluation (:mod:`geoplantnet.evaluation.registry`) find it there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.storage.tiles import TileOutput

# The package's own product modules, imported by :func:`load` (each registers its products when imported); a new
# product module of the package is added here, a user's or a test's product registers itself.
BUILTIN = (
    "geoplantnet.products.species_map",
    "geoplantnet.products.habitat_map",
    "geoplantnet.products.indicators",
    "geoplantnet.products.changes",
    "geoplantnet.products.value",
)


@dataclass(frozen=True)
class TilePlan:
    """A tiled run decided on the driver before anything is written: what :func:`geoplantnet.runs.tiles.produce_tiles`
    needs besides the run's settings."""

    fn: Callable[[Any, Tile], dict[str, Any]]
    job: Any
    output: TileOutput
    grid: Grid
    tile: int
    layout: tuple[Any, Mapping[str, Mapping[str, Any]]]
    parts: Mapping[str, str]
    attrs: Mapping[str, Any]
    error: type[GeoplantnetError]
    resources: dict[str, float] | None = None


@dataclass(frozen=True)
class Product:
    """A product as the registry knows it (see the module docstring)."""

    name: str
    store: str
    title: str
    requires: tuple[str, ...] = ()
    yearly: bool = False
    plan: Callable[[Any, Any], TilePlan | None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Made:
    """What one run of a product made: its store, its plan (a :class:`TilePlan`, or a job's own plan), the tile
    run's record, how long it took and its entry in a run summary (None: nothing mapped, the store still listed)."""

    product: str
    url: str
    plan: Any
    run: Any
    seconds: float
    info: dict[str, Any] | None


_REGISTRY: dict[str, Product] = {}


class UnknownProductError(GeoplantnetError):
    """A product name the registry does not hold."""


def register(product: Product) -> Product:
    """Add ``product`` to the registry (again: replaced in place, so a module reloaded in a notebook registers once)."""
    _REGISTRY[product.name] = product
    return product


def unregister(name: str) -> None:
    """Remove ``name`` (a product registered for a test or a session)."""
    _REGISTRY.pop(name, None)


def load() -> None:
    """Import the package's product modules (:data:`BUILTIN`), which register their products: on demand, since they
    import the array stack (a command refusing its input imports none of it)."""
    for module in BUILTIN:
        importlib.import_module(module)


def get(name: str) -> Product:
    """The registered product ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownProductError(f"unknown product {name!r}: registered are {', '.join(_REGISTRY)}") from None


def products(*, yearly: bool | None = None) -> list[Product]:
    """The registered products in an order where each comes after those it requires (then registration order);
    ``yearly`` selects those the annual refresh maps (True) or not (False)."""
    ordered: list[Product] = []
    seen: set[str] = set()

    def visit(p: Product) -> None:
        if p.name in seen:
            return
        seen.add(p.name)
        for r in p.requires:
            if r in _REGISTRY:
                visit(_REGISTRY[r])
        ordered.append(p)

    for p in list(_REGISTRY.values()):
        visit(p)
    return [p for p in ordered if yearly is None or p.yearly == yearly]


@dataclass(frozen=True)
class Input:
    """A complete input store as a plan reads it: its URL and options, the dataset (the year's view of a series),
    its slot (None without a year axis), the run that wrote it, its grid and tile size."""

    url: str
    options: dict[str, Any]
    ds: Any  # xarray Dataset
    slot: int | None
    run: str
    grid: Grid
    tile: int


def read_input(ctx: Any, name: str, variable: str) -> Input:
    """The store of the registered product ``name`` under the run's ``store.root`` (the run's ``year`` of it in a
    series run), opened on the driver (metadata only; one-line errors when missing, incomplete or without that
    year); its grid and tile size are those of ``variable``."""
    import zarr
    from pyproj import CRS

    from geoplantnet.samples.extraction import grid_of
    from geoplantnet.storage.store import RUN_ATTR, open_store, zarr_store
    from geoplantnet.storage.years import complete_slot, year_records, year_view

    url = ctx.url(get(name).store)
    options = ctx.options(url)
    ds = open_store(url, storage_options=options)
    slot = complete_slot(url, ds.attrs, ctx.year)
    run = str(ds.attrs.get(RUN_ATTR, "unknown"))
    if ctx.year is not None:
        run = str(year_records(ds.attrs)[int(ctx.year)]["run"])
        ds = year_view(ds, ctx.year)
    wkt = ds["spatial_ref"].attrs.get("crs_wkt") if "spatial_ref" in ds.coords else None
    epsg = (CRS.from_wkt(wkt).to_epsg() or ctx.cfg.grid.epsg) if wkt else ctx.cfg.grid.epsg
    raw = zarr.open_group(zarr_store(url, options), mode="r")[variable]
    tile = int((raw.shards or raw.chunks)[-1])
    return Input(url, options, ds, slot, run, grid_of(ds[variable], epsg), tile)
