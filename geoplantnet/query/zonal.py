"""Zonal statistics per polygon: the pixels whose centres lie in it, read window by window (each polygon's bounding
box on the grid, nothing else).

Per polygon (and year of a series) and product:

- ``pixels``: how many pixel centres of the product's grid lie in the polygon (0 off the grid: the statistics NaN);
- a continuous variable: its mean over those pixels with data (``biodiversity_value``: also ``value_ha``, the sum
  of value x pixel area in hectares: the value-hectares of offsets and impact);
- a species variable: its mean per species, ``probability:<id>``;
- a class variable (CF ``flag_meanings``: ``habitat``, the Red List category, change flags): the share of the
  pixels with data in each class, ``<variable>_share:<class>`` (``habitat_share:R1A``);
- ``richness_expected`` and ``richness_source``: the indicators' ``richness_expected`` mean
  (``"indicators"``) where the indicators are read, else the mean of the per-pixel sum of every species'
  probability (``"species"``: when every species is read).

Several products at once (``product=[...]``, or None: every map product of the root) give one column set each,
prefixed ``<product>.`` (``habitat.habitat_share:R1A``, ``value.value_ha``), joined on the polygon (and year).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS
from rasterio.features import geometry_mask

from geoplantnet.core.grid import Grid
from geoplantnet.query.stores import (
    QueryError,
    Source,
    class_labels,
    dataset,
    grid_of,
    is_missing,
    load,
    map_variables,
    select_species,
    select_years,
    years_of,
)
from geoplantnet.storage.selection import SPECIES
from geoplantnet.storage.store import YEAR

SUMMARY = ("species", "habitat", "indicators", "value")  # product=None: those of these the root has
RICHNESS = "richness_expected"
VALUE = "biodiversity_value"


def window(grid: Grid, bounds: Sequence[float]) -> tuple[slice, slice] | None:
    """The (rows, cols) of the pixels whose centres lie in ``bounds`` (the grid's CRS), clipped to the grid; None
    when there are none."""
    xmin, ymin, xmax, ymax = bounds
    res = grid.resolution
    c0 = max(math.ceil((xmin - grid.left) / res - 0.5), 0)
    c1 = min(math.floor((xmax - grid.left) / res - 0.5), grid.width - 1)
    r0 = max(math.ceil((grid.top - ymax) / res - 0.5), 0)
    r1 = min(math.floor((grid.top - ymin) / res - 0.5), grid.height - 1)
    if c1 < c0 or r1 < r0:
        return None
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


def _mean(values: np.ndarray) -> np.ndarray | float:
    with warnings.catch_warnings():  # a polygon without data: NaN, said by the value itself
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=-1) if values.shape[-1] else np.full(values.shape[:-1], np.nan)


def _stats(data: xr.Dataset, mask: np.ndarray, ds: xr.Dataset, area_ha: float) -> dict[str, Any]:
    """One polygon's statistics of the (computed) window ``data`` of ``ds``, for the pixels of ``mask``."""
    row: dict[str, Any] = {"pixels": int(mask.sum())}
    for name in data.data_vars:
        name = str(name)
        var = data[name]
        values = np.asarray(var.transpose(..., "y", "x").values, "float64")[..., mask]
        labels = class_labels(ds[name])
        if SPECIES in var.dims:
            for sid, mean in zip(var[SPECIES].values, np.atleast_1d(_mean(values)), strict=True):
                row[f"{name}:{sid}"] = float(mean)
        elif labels is not None:
            valid = values[~np.isnan(values)]
            for code, label in labels.items():
                row[f"{name}_share:{label}"] = float((valid == code).sum() / valid.size) if valid.size else math.nan
        else:
            row[name] = float(_mean(values))
            if name == VALUE:
                row["value_ha"] = float(np.nansum(values) * area_ha) if row["pixels"] else math.nan
    return row


def _richness(data: xr.Dataset, mask: np.ndarray) -> float:
    """The mean over the polygon's pixels of the sum of every species' probability (NaN: no data)."""
    values = np.asarray(data["probability"].transpose(SPECIES, "y", "x").values, "float64")[:, mask]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_pixel = np.where(np.isnan(values).all(axis=0), np.nan, np.nansum(values, axis=0))
    return float(_mean(per_pixel))


def _zonal_one(
    polygons: Any, ds: xr.Dataset, *, variables: Any, species: Any, year: int | None, all_species: bool
) -> pd.DataFrame:
    """One product's statistics per polygon (and year of a series); see the module."""
    ds = select_species(select_years(ds, year=year), species)
    names = map_variables(ds, variables)
    grid = grid_of(ds)
    shapes = polygons.to_crs(grid.crs).geometry
    area_ha = grid.resolution**2 / 10_000.0
    years: list[int | None] = list(years_of(ds)) or [None]
    richness = all_species and "probability" in names and SPECIES in ds["probability"].dims
    empty = {"pixels": 0}
    rows = []
    for label, shape in zip(polygons.index, shapes, strict=True):
        where = window(grid, shape.bounds) if shape is not None and not shape.is_empty else None
        mask = None
        if where is not None:
            sub = grid.subgrid(*where)
            mask = geometry_mask([shape], out_shape=sub.shape, transform=sub.transform, invert=True)
        data = load(ds[names].isel(y=where[0], x=where[1])) if where is not None and mask.any() else None
        for y in years:
            row: dict[str, Any] = {"polygon": label, YEAR: y}
            if data is None:
                row.update(empty)
            else:
                at = data.sel({YEAR: y}) if y is not None else data
                row.update(_stats(at, mask, ds, area_ha))
                if richness:
                    row[RICHNESS], row["richness_source"] = _richness(at, mask), "species"
            rows.append(row)
    frame = pd.DataFrame(rows)
    if RICHNESS in frame and "richness_source" not in frame:
        frame["richness_source"] = "indicators"
    keys = ["polygon", YEAR] if years != [None] else ["polygon"]
    return frame.drop(columns=[] if years != [None] else [YEAR]).set_index(keys)


def zonal(
    polygons: Any,
    root: Source | Mapping[str, xr.Dataset],
    *,
    product: str | Sequence[str] | None = None,
    variables: str | Sequence[str] | None = None,
    species: str | Sequence[str] | None = None,
    year: int | None = None,
    crs: Any = "EPSG:4326",
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Zonal statistics of ``product``'s maps per polygon of the GeoDataFrame ``polygons`` (any CRS; ``crs`` when it
    has none): pixel count, mean probability per species (``species`` ids or names; all when None), expected
    richness, habitat shares, value-hectares, the mean of each other variable (see :mod:`geoplantnet.query.zonal`).
    Indexed by the polygons' index (and ``year``: every complete year of a series, or ``year``). A polygon off the
    grid is a row with 0 pixels and NaN statistics. Only the windows of the polygons' bounding boxes are read.

    ``root``: a products root, a product already opened (:func:`open_product`), or products opened by name.
    """
    if getattr(polygons, "geometry", None) is None:
        raise QueryError("polygons must be a GeoDataFrame (or GeoSeries) of polygons")
    if polygons.crs is None:
        polygons = polygons.set_crs(CRS.from_user_input(crs))
    opened = _open(root, product, storage_options)
    all_species = species is None
    frames = {
        name: _zonal_one(polygons, ds, variables=variables, species=species, year=year, all_species=all_species)
        for name, ds in opened.items()
    }
    if len(frames) == 1:
        return next(iter(frames.values()))
    if "indicators" in frames and RICHNESS in frames["indicators"]:
        # one expected richness: the indicators' own (calibrated) where they are read
        for name in frames:
            if name != "indicators":
                frames[name] = frames[name].drop(columns=[RICHNESS, "richness_source"], errors="ignore")
    out: pd.DataFrame | None = None
    for name, part in frames.items():
        part = part.rename(columns={c: c if c in (RICHNESS, "richness_source") else f"{name}.{c}" for c in part})
        if out is None:
            out = part
            continue
        keys = [k for k in out.index.names if k in part.index.names]
        out = out.reset_index().merge(part.reset_index(), on=keys, how="outer")
        out = out.set_index([k for k in ("polygon", YEAR) if k in out.columns])
    assert out is not None
    return out


def _open(
    root: Source | Mapping[str, xr.Dataset], product: str | Sequence[str] | None, storage_options: Any
) -> dict[str, xr.Dataset]:
    """The products a zonal query reads, by name."""
    if isinstance(root, Mapping):
        names = list(root) if product is None else [product] if isinstance(product, str) else list(product)
        return {name: dataset(root[name], name) for name in names}
    if isinstance(product, str) or isinstance(root, xr.Dataset):
        name = product if isinstance(product, str) else str(root.attrs.get("geoplantnet_product", "product"))
        return {name: dataset(root, product if isinstance(product, str) else None, storage_options=storage_options)}
    names = list(product) if product is not None else list(SUMMARY)
    opened = {}
    for name in names:
        try:
            opened[name] = dataset(root, name, storage_options=storage_options)
        except Exception as exc:  # product=None: the map products the root has
            if product is not None or not is_missing(exc):
                raise
    if not opened:
        raise QueryError(f"no map product under {root} ({', '.join(SUMMARY)})")
    return opened
