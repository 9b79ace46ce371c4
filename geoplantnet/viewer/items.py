"""What the viewer may read: the items of one root's catalogue, by id, and nothing else.

A request names an item id (``species``, ``indicators-2025``), a variable and maybe a species; each is looked up
among what the catalogue lists (ids, the dataset's variables, its species axis) and is never joined to a path, so no
URL reaches the filesystem. :func:`catalogue_items` is the one place the root is listed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor: a dataset's CRS)
import xarray as xr

from geoplantnet.core.errors import InputError
from geoplantnet.storage.catalog import open_catalog, open_item, store_url
from geoplantnet.storage.overviews import levels, open_overview
from geoplantnet.storage.selection import SPECIES, SPECIES_NAME

ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PROBABILITY_RANGE = (0.0, 1.0)
RANGE_PIXELS = 512  # a map's value range is read from its finest level with at most this many cells a side


class NotFound(InputError):
    """An item, variable or species the catalogue does not list (HTTP 404)."""


@dataclass(frozen=True)
class Item:
    """One catalogue item: a complete store, or one complete year of a series."""

    id: str
    product: str
    url: str
    year: int | None
    item: Any = field(default=None, compare=False, repr=False)  # the pystac.Item, where the catalogue gave one


def catalogue_items(root: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Item]:
    """The items of ``root``'s STAC catalogue (:func:`geoplantnet.storage.catalog.open_catalog`: complete stores and
    years only), by id; :class:`~geoplantnet.storage.catalog.CatalogError` when the root has none."""
    items = {}
    for item in open_catalog(root, storage_options).get_items(recursive=True):
        props = item.properties
        year = props.get("geoplantnet:year")
        product = str(props.get("geoplantnet:product") or item.id)
        items[item.id] = Item(item.id, product, store_url(item), None if year is None else int(year), item)
    return dict(sorted(items.items()))


def variable_kind(ds: xr.Dataset, name: str) -> str | None:
    """``"species"`` (a probability per species), ``"class"`` (class codes), ``"map"`` (a continuous 2-D map), or
    None for what the viewer does not draw (per-rank tables, coordinates)."""
    dims = set(ds[name].dims)
    if not {"y", "x"} <= dims:
        return None
    extra = dims - {"y", "x"}
    if extra == {SPECIES}:
        return "species"
    if extra:
        return None
    attrs = ds[name].attrs
    return "class" if attrs.get("geoplantnet_resampling") == "mode" or "flag_values" in attrs else "map"


class Catalogue:
    """The served root: its items (listed when the server starts: restart it to show stores completed since), their
    datasets opened on first use."""

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = root
        self.storage_options = dict(storage_options or {})
        self._lock = threading.Lock()
        self._datasets: dict[tuple[str, int], xr.Dataset] = {}
        self._factors: dict[str, list[int]] = {}
        self._ranges: dict[tuple[str, str], tuple[float, float]] = {}
        self.items = catalogue_items(root, self.storage_options)

    def item(self, item_id: str) -> Item:
        """The item ``item_id`` (:class:`NotFound` for anything the catalogue does not list, a path included)."""
        if not ITEM_ID.match(item_id) or item_id not in self.items:
            raise NotFound(f"no item {item_id!r} in this catalogue")
        return self.items[item_id]

    def dataset(self, item_id: str, factor: int = 1) -> xr.Dataset:
        """The item's dataset (at an overview ``factor``: 2, 4, ...; 1 is full resolution), opened once."""
        item = self.item(item_id)
        with self._lock:
            if (item_id, 1) not in self._datasets:
                self._datasets[item_id, 1] = open_item(item.item, self.storage_options)
            if (item_id, factor) not in self._datasets:
                crs = self._datasets[item_id, 1].rio.crs
                ds = open_overview(item.url, factor=factor, storage_options=self.storage_options, year=item.year)
                # a level keeps the store's grid mapping (the CRS rio-tiler reprojects from)
                self._datasets[item_id, factor] = ds.rio.write_crs(crs) if crs is not None else ds
            return self._datasets[item_id, factor]

    def factors(self, item_id: str) -> list[int]:
        """The overview factors of the item's store (e.g. ``[2, 4]``; empty: full resolution only), read once."""
        item = self.item(item_id)
        if item_id not in self._factors:
            self._factors[item_id] = sorted(levels(item.url, self.storage_options))
        return self._factors[item_id]

    def variable(
        self, item_id: str, name: str, species: str | None = None, factor: int = 1
    ) -> tuple[xr.DataArray, str]:
        """A drawable variable of an item as a 2-D (y, x) array (at an overview ``factor``), one species selected by
        id or name, and its kind."""
        ds = self.dataset(item_id, factor)
        kind = variable_kind(ds, name) if name in ds.data_vars else None
        if kind is None:
            raise NotFound(f"no map variable {name!r} in {item_id}")
        da = ds[name]
        if kind == "species":
            da = da.isel({SPECIES: self.species_index(ds, species)})
        return da, kind

    @staticmethod
    def species_index(ds: xr.Dataset, species: str | None) -> int:
        """The position of a species (its id, else its scientific name) on the dataset's species axis."""
        if not species:
            raise NotFound("this variable needs a species (?species=ID or a scientific name)")
        ids = [str(s) for s in ds[SPECIES].values]
        if species in ids:
            return ids.index(species)
        names = [str(s) for s in ds[SPECIES_NAME].values] if SPECIES_NAME in ds.coords else []
        if species in names:
            return names.index(species)
        raise NotFound(f"no species {species!r}")

    def value_range(self, item_id: str, name: str, kind: str, da: xr.DataArray) -> tuple[float, float]:
        """The colour scale's range of a variable: 0..1 for probabilities, the class codes' span for classes, else
        the map's own minimum and maximum (:meth:`coarse`; computed once)."""
        if kind == "species" or name.endswith("probability"):
            return PROBABILITY_RANGE
        if kind == "class":
            return (0.0, 255.0)
        key = (item_id, name)
        if key not in self._ranges:
            values = np.asarray(self.coarse(item_id, name, da).values, dtype="float64")
            finite = values[np.isfinite(values)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            self._ranges[key] = (lo, hi if hi > lo else lo + 1.0)
        return self._ranges[key]

    def coarse(self, item_id: str, name: str, da: xr.DataArray) -> xr.DataArray:
        """The variable at its finest level with at most :data:`RANGE_PIXELS` cells a side (a few reads for a whole
        continent; overview means shrink the extremes a little, which the colour scale clips)."""
        largest = max(da.sizes["y"], da.sizes["x"])
        fitting = [f for f in self.factors(item_id) if -(-largest // f) <= RANGE_PIXELS]
        if largest <= RANGE_PIXELS or not fitting:
            return da
        return self.dataset(item_id, min(fitting))[name]
