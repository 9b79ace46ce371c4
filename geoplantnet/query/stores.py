"""A product's store for a query: where it is under a root (through the catalogue when there is one), its years,
species, variables and grid, and what its class variables mean.

Everything here is lazy: the stores are opened with :func:`geoplantnet.storage.store.open_store` (decoded floats,
NaN for no data, a series' complete years only, species by id or name) and nothing but coordinates is read until a
query computes the window it needs (:func:`load`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr
from pyproj import CRS

from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import EPSG, Grid
from geoplantnet.storage.catalog import CATALOG, COLLECTION, open_catalog, store_url
from geoplantnet.storage.selection import SPECIES, SPECIES_NAME, UnknownSpeciesError
from geoplantnet.storage.store import PRODUCT_ATTR, YEAR, StoreError, exists, join, open_store, shown

# Where each product's store lies under a root without a catalogue: the registry's default store names
# (geoplantnet.products registers them; products/ is above query/, so the names are repeated here, checked against
# the registry by tests/test_query.py).
STORES: dict[str, str] = {
    "composites": "composites.zarr",
    "species": "species.zarr",
    "habitat": "habitat.zarr",
    "indicators": "indicators.zarr",
    "changes": "changes.zarr",
    "value": "value.zarr",
    "value-50m": "value_50m.zarr",
}

Root = str | os.PathLike[str]
Source = Root | xr.Dataset  # a products root, or a product already opened (open_product, open_store)


class QueryError(InputError):
    """A query that cannot be answered: an unknown product, variable or year; points or polygons that cannot be read."""


class MissingProductError(QueryError):
    """No complete store of the product under the root (or for the year asked)."""


def _product_name(product: str, known: Iterable[str]) -> str:
    """``product`` as the registry names it: a product name (``value-50m``) or its store's stem (``value_50m``)."""
    known = list(known)
    stems = {STORES.get(p, f"{p}.zarr").removesuffix(".zarr"): p for p in known}
    name = product.removesuffix(".zarr")
    if name in known:
        return name
    if name in stems:
        return stems[name]
    raise QueryError(f"unknown product {product!r}: choose one of {', '.join(sorted(known))}")


def _catalogue(root: str, storage_options: Mapping[str, Any] | None) -> Any | None:
    """The root's STAC catalogue (only complete stores and years), or None where the root has none."""
    if not exists(join(join(root, CATALOG), COLLECTION), storage_options):
        return None
    return open_catalog(root, dict(storage_options or {}) or None)


def product_url(root: Root, product: str, *, storage_options: Mapping[str, Any] | None = None) -> str:
    """The URL of ``product``'s store under ``root``: the ``zarr`` asset of its item in the root's catalogue when the
    root has one (only complete stores are listed), else ``<root>/<store name>``. :class:`QueryError` for a product
    geoplantnet does not make, :class:`MissingProductError` for one not (or not completely) there."""
    root = os.fspath(root)
    catalogue = _catalogue(root, storage_options)
    if catalogue is not None:
        items: dict[str, Any] = {}
        for item in catalogue.get_items():
            items.setdefault(str(item.properties.get("geoplantnet:product")), item)
        name = _product_name(product, {*STORES, *items})
        if name not in items:
            raise MissingProductError(
                f"{shown(root)}: its catalogue lists no complete {name} store (products: "
                f"{', '.join(sorted(items)) or 'none'}; `geoplantnet catalog ROOT --rebuild` adds stores written "
                "before the catalogue)"
            )
        return store_url(items[name])
    name = _product_name(product, STORES)
    url = join(root, STORES[name])
    if not exists(url, storage_options):
        there = [p for p, store in STORES.items() if exists(join(root, store), storage_options)]
        raise MissingProductError(
            f"{shown(root)}: no {name} store ({STORES[name]}) here; products here: {', '.join(there) or 'none'}"
        )
    return url


def open_product(
    root: Root,
    product: str,
    *,
    year: int | Literal["latest"] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """``product``'s store under ``root``, lazy and decoded (floats with NaN for no data, probabilities 0..1): a
    series' complete years (``year``: that year's maps, without the ``year`` axis; ``"latest"``: the series' latest
    complete year, and a store without a year axis as it is), species selectable by id or name.

    The store is found through the root's STAC catalogue when it has one, else by its registry name
    (``species.zarr``, ``value_50m.zarr``, ...).
    """
    url = product_url(root, product, storage_options=storage_options)
    ds = open_store(url, storage_options=storage_options)
    ds = checked(ds, product)
    if year == "latest":
        # a notebook or a viewer showing "the current map" of a store that may or may not be a series
        year = years_of(ds)[-1] if years_of(ds) else None
    return select_years(ds, year=year, squeeze=True)


def checked(ds: xr.Dataset, product: str | None) -> xr.Dataset:
    """``ds`` if it is ``product``'s store (any store when ``product`` is None); :class:`QueryError` otherwise."""
    made = ds.attrs.get(PRODUCT_ATTR)
    if product is not None and made is not None and _product_name(product, {*STORES, made}) != made:
        raise QueryError(f"this store holds the {made} product, not {product}")
    return ds


def dataset(
    source: Source,
    product: str | None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The product a query reads: ``source`` itself when it is an opened dataset, else ``product`` under the root
    ``source`` (every complete year of a series)."""
    if isinstance(source, xr.Dataset):
        return checked(source, product)
    if product is None:
        raise QueryError("name the product to read (product='species', 'habitat', 'indicators', 'value', ...)")
    return open_product(source, product, storage_options=storage_options)


def years_of(ds: xr.Dataset) -> list[int]:
    """The complete years of a series (empty for a store without a year axis)."""
    return [int(y) for y in ds[YEAR].values] if YEAR in ds.dims else []


def select_years(
    ds: xr.Dataset, *, year: int | None = None, years: Sequence[int] | None = None, squeeze: bool = False
) -> xr.Dataset:
    """The years asked of a series (all when none is); ``squeeze``: one ``year`` as its view without the axis. A
    store without a year axis has one map for every year and is returned as it is. :class:`MissingProductError`
    for a year the series has not (completely) got."""
    if YEAR not in ds.dims or (year is None and years is None):
        return ds
    if year is not None and years is not None:
        raise QueryError("give year= or years=, not both")
    wanted = [int(year)] if year is not None else [int(y) for y in years or ()]
    have = years_of(ds)
    missing = [y for y in wanted if y not in have]
    if missing:
        product = ds.attrs.get(PRODUCT_ATTR, "this")
        raise MissingProductError(
            f"no complete year {', '.join(map(str, missing))} in the {product} series (years: "
            f"{', '.join(map(str, have)) or 'none complete'})"
        )
    if squeeze and year is not None:
        return ds.sel({YEAR: int(year)})
    return ds.sel({YEAR: wanted})


def select_species(ds: xr.Dataset, species: str | Sequence[str] | None) -> xr.Dataset:
    """The species asked, by id (``sp0001``) or scientific name, in the order asked (a name shared by several ids
    selects each); every species when none is. An unknown one is :class:`UnknownSpeciesError` naming close
    matches (the store's species index)."""
    if species is None:
        return ds
    if SPECIES not in ds.dims:
        raise QueryError(f"the {ds.attrs.get(PRODUCT_ATTR, 'store')} product has no species axis; leave species out")
    labels = [species] if isinstance(species, str) else list(species)
    ids = [str(s) for s in ds[SPECIES].values]
    names = [str(s) for s in ds[SPECIES_NAME].values] if SPECIES_NAME in ds.coords else []
    positions: list[int] = []
    missing = []
    for label in map(str, labels):
        if label in ids:
            positions.append(ids.index(label))
        elif label in names:
            positions.extend(i for i, name in enumerate(names) if name == label)
        else:
            missing.append(label)
    if missing:
        ds.sel({SPECIES: missing})  # the species index explains what is unknown and names close matches
        raise UnknownSpeciesError(f"unknown species {', '.join(map(repr, missing))}")
    return ds.isel({SPECIES: positions})


MAP_DIMS = {YEAR, SPECIES, "y", "x"}


def map_variables(ds: xr.Dataset, variables: str | Sequence[str] | None) -> list[str]:
    """The variables asked (a name or names), else every map variable along (year, species, y, x) only;
    :class:`QueryError` naming those there are for an unknown one."""
    maps = [str(v) for v, var in ds.data_vars.items() if {"y", "x"} <= set(var.dims)]
    if variables is None:
        return [v for v in maps if set(ds[v].dims) <= MAP_DIMS]
    asked = [variables] if isinstance(variables, str) else list(variables)
    unknown = [v for v in asked if v not in maps]
    if unknown:
        raise QueryError(
            f"unknown variable {', '.join(map(repr, unknown))} of the {ds.attrs.get(PRODUCT_ATTR, 'store')} product; "
            f"variables: {', '.join(maps)}"
        )
    return asked


def store_epsg(ds: xr.Dataset) -> int:
    """The EPSG code of a store's ``spatial_ref`` (EPSG:3035 without one)."""
    wkt = ds["spatial_ref"].attrs.get("crs_wkt") if "spatial_ref" in ds.coords else None
    if not wkt:
        return EPSG
    epsg = CRS.from_wkt(wkt).to_epsg()
    if epsg is None:
        raise QueryError("the store's CRS has no EPSG code; geoplantnet grids are EPSG-coded")
    return int(epsg)


def grid_of(ds: xr.Dataset) -> Grid:
    """The grid a product's maps lie on."""
    return Grid.from_coords(ds["x"].values, ds["y"].values, store_epsg(ds))


def class_labels(var: xr.DataArray) -> dict[int, str] | None:
    """A class variable's code -> label (its CF ``flag_values``/``flag_meanings``; positions when only the
    meanings are given, as ``habitat_from`` has them); None for a continuous variable."""
    meanings = var.attrs.get("flag_meanings")
    if not meanings:
        return None
    labels = str(meanings).split()
    values = var.attrs.get("flag_values")
    if isinstance(values, str):
        values = json.loads(values)
    codes = [int(v) for v in np.ravel(values)] if values is not None else list(range(len(labels)))
    return dict(zip(codes, labels, strict=False))


def habitat_names(ds: xr.Dataset) -> dict[str, str]:
    """EUNIS code -> habitat name, from the store's ``habitat_code``/``habitat_name`` (names left empty: none)."""
    if "habitat_code" not in ds.coords and "habitat_code" not in ds.variables:
        return {}
    codes = [str(c) for c in ds["habitat_code"].values]
    names = [str(n) for n in ds["habitat_name"].values] if "habitat_name" in ds.variables else [""] * len(codes)
    return {c: n for c, n in zip(codes, names, strict=True) if n}


def load(obj: xr.Dataset | xr.DataArray) -> Any:
    """Compute a query's selection in this process's threads: only the chunks the selection covers are read (never
    shipped to a Dask cluster a notebook may have connected)."""
    return obj.compute(scheduler="threads")


def is_missing(exc: Exception) -> bool:
    """Whether a product could not be opened because it is not (completely) there."""
    return isinstance(exc, MissingProductError | StoreError)
