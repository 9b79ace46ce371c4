"""Values at points and in boxes, and what the viewer shows of one pixel.

Points and boxes come in any CRS and are reprojected to the store's grid; a point outside the grid is a row of NaN,
never an error. Only the chunks holding the points (the box) are read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS

from geoplantnet.core.grid import to_grid_crs, transform_bounds
from geoplantnet.query.stores import (
    QueryError,
    Root,
    Source,
    class_labels,
    dataset,
    grid_of,
    habitat_names,
    is_missing,
    load,
    map_variables,
    open_product,
    select_species,
    select_years,
    years_of,
)
from geoplantnet.storage.selection import SPECIES, SPECIES_NAME
from geoplantnet.storage.store import YEAR

POINT = "point"


def as_points(points: Any, crs: Any) -> tuple[np.ndarray, np.ndarray, CRS, pd.Index]:
    """(x, y, CRS, labels) of ``points``: a GeoDataFrame/GeoSeries of points (their own CRS), a DataFrame with
    x/y (or lon/lat) columns, or (x, y) pairs (one pair, or an array of shape (n, 2)) in ``crs``."""
    geometry = getattr(points, "geometry", None)
    if geometry is not None and hasattr(geometry, "geom_type"):
        if not (geometry.geom_type == "Point").all():
            raise QueryError("points must be Point geometries (take centroids or use zonal() for polygons)")
        return (
            np.asarray(geometry.x, "float64"),
            np.asarray(geometry.y, "float64"),
            CRS.from_user_input(geometry.crs or crs),
            pd.Index(points.index),
        )
    if isinstance(points, pd.DataFrame):
        for xname, yname in (("x", "y"), ("lon", "lat"), ("longitude", "latitude")):
            if {xname, yname} <= set(points.columns):
                x, y = points[xname].to_numpy("float64"), points[yname].to_numpy("float64")
                return x, y, CRS.from_user_input(crs), pd.Index(points.index)
        raise QueryError("a table of points needs x/y (or lon/lat) columns")
    try:
        xy = np.asarray(points, dtype="float64")
    except (TypeError, ValueError):
        raise QueryError("points must be (x, y) pairs, a table with x/y columns or a GeoDataFrame") from None
    xy = xy.reshape(1, 2) if xy.shape == (2,) else xy
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise QueryError(f"points must be (x, y) pairs: an array of shape (n, 2), not {xy.shape}")
    return xy[:, 0], xy[:, 1], CRS.from_user_input(crs), pd.RangeIndex(len(xy))


def pixels(ds: xr.Dataset, x: np.ndarray, y: np.ndarray, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the store's pixels holding the points; -1 outside the grid (or where they do not project)."""
    grid = grid_of(ds)
    x, y = to_grid_crs(x, y, crs, grid.epsg)
    finite = np.isfinite(x) & np.isfinite(y)
    row, col = grid.index(np.where(finite, x, np.inf), np.where(finite, y, np.inf))
    return row, col


def sample(ds: xr.Dataset, row: np.ndarray, col: np.ndarray) -> xr.Dataset:
    """The computed values of ``ds`` at pixels (row, col) along a ``point`` dimension, NaN where row is -1; only
    the chunks holding the points are read."""
    n = len(row)
    inside = np.flatnonzero(row >= 0)
    ds = ds.drop_vars([c for c in ("x", "y", "spatial_ref") if c in ds.coords])
    taken = ds.isel(
        y=xr.DataArray(np.asarray(row[inside], "int64") if inside.size else [0], dims=POINT),
        x=xr.DataArray(np.asarray(col[inside], "int64") if inside.size else [0], dims=POINT),
    )
    # no point inside: one pixel's layout filled with NaN, no chunk fetched
    taken = load(taken) if inside.size else xr.full_like(taken, np.nan, dtype="float64").compute()
    taken = taken.assign_coords({POINT: inside if inside.size else [-1]})
    return taken.reindex({POINT: np.arange(n)})  # points outside: NaN


def values_at(
    root: Source,
    points: Any,
    *,
    product: str | None = None,
    variables: str | Sequence[str] | None = None,
    species: str | Sequence[str] | None = None,
    year: int | None = None,
    years: Sequence[int] | None = None,
    crs: Any = "EPSG:4326",
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """``product``'s values at ``points``: one row per point (x species x year), decoded floats, NaN for no data and
    for points outside the grid.

    ``root`` is a products root (or a product already opened with :func:`open_product`); ``points`` a GeoDataFrame
    of points (its CRS), a table with x/y columns or (x, y) pairs in ``crs``; ``species`` ids or names (all when
    None); ``year``/``years`` of a series (all its complete years when None). Columns: ``point`` (the points'
    index), ``x``/``y`` as given, ``year``, ``species``/``species_name`` where the product has them, one column per
    variable, and ``<variable>_label`` with the class of a class variable (``habitat`` -> its EUNIS code).
    """
    ds = dataset(root, product, storage_options=storage_options)
    ds = select_species(select_years(ds, year=year, years=years), species)
    names = map_variables(ds, variables)
    x, y, src, labels = as_points(points, crs)
    row, col = pixels(ds, x, y, src)
    taken = sample(ds[names], row, col)
    dims = [d for d in (POINT, YEAR, SPECIES) if d in taken.dims]
    dims += [d for d in taken.dims if d not in dims]
    frame = taken.to_dataframe(dim_order=dims).reset_index()
    frame.insert(1, "x", x[frame[POINT].to_numpy()])
    frame.insert(2, "y", y[frame[POINT].to_numpy()])
    frame[POINT] = labels[frame[POINT].to_numpy()]
    for name in names:
        labels_of = class_labels(ds[name])
        if labels_of is not None:
            frame[f"{name}_label"] = frame[name].map(lambda v, m=labels_of: m.get(int(v)) if v == v else None)
    return frame


def values_in(
    root: Source,
    bbox: Sequence[float],
    *,
    product: str | None = None,
    variables: str | Sequence[str] | None = None,
    species: str | Sequence[str] | None = None,
    year: int | None = None,
    crs: Any = "EPSG:4326",
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """``product``'s maps in the box ``bbox`` = (xmin, ymin, xmax, ymax) in ``crs`` (reprojected, edges densified):
    a lazy, decoded window of the store (pixels whose centres lie in the box's footprint on the grid), one ``year``
    (its view) or every complete year of a series. Empty along y/x where the box misses the grid."""
    ds = dataset(root, product, storage_options=storage_options)
    ds = select_species(select_years(ds, year=year, squeeze=True), species)
    names = map_variables(ds, variables)
    xmin, ymin, xmax, ymax = map(float, bbox)
    if not (xmax > xmin and ymax > ymin):
        raise QueryError(f"bbox must be (xmin, ymin, xmax, ymax) with xmax > xmin and ymax > ymin, not {tuple(bbox)}")
    grid = grid_of(ds)
    src = CRS.from_user_input(crs)
    if src.to_epsg() != grid.epsg:
        xmin, ymin, xmax, ymax = transform_bounds((xmin, ymin, xmax, ymax), src, grid.epsg)
    xs, ys = ds["x"].values, ds["y"].values
    cols = np.flatnonzero((xs >= xmin) & (xs <= xmax))
    rows = np.flatnonzero((ys >= ymin) & (ys <= ymax))
    window = {
        "x": slice(int(cols[0]), int(cols[-1]) + 1) if cols.size else slice(0, 0),
        "y": slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else slice(0, 0),
    }
    return ds[names].isel(window)


# --- describe_point: the viewer's click -----------------------------------------------------------------------

DESCRIBED = ("species", "habitat", "indicators", "value", "changes")


def _number(value: Any) -> float | None:
    """A JSON number: None for NaN/no data."""
    value = float(value)
    return None if math.isnan(value) else value


def _at(ds: xr.Dataset, row: int, col: int) -> xr.Dataset:
    """The computed values of every variable of ``ds`` at one pixel (NaN outside the grid: row -1)."""
    return sample(ds, np.asarray([row]), np.asarray([col])).isel({POINT: 0})


def _open_all(root: Root | Mapping[str, xr.Dataset], storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The products a click describes, each opened (an already opened mapping is used as it is)."""
    if isinstance(root, Mapping):
        return {p: root[p] for p in DESCRIBED if p in root}
    opened = {}
    for product in DESCRIBED:
        try:
            opened[product] = open_product(root, product, storage_options=storage_options)
        except Exception as exc:  # a product not (completely) there has no key in the description
            if not is_missing(exc):
                raise
    return opened


def _species(ds: xr.Dataset, row: int, col: int, top: int) -> list[dict[str, Any]]:
    probability = _at(ds[["probability"]], row, col)["probability"]
    values = np.asarray(probability.values, "float64")
    order = [i for i in np.argsort(-np.nan_to_num(values, nan=-1.0), kind="stable") if not np.isnan(values[i])]
    ids = ds[SPECIES].values
    names = ds[SPECIES_NAME].values if SPECIES_NAME in ds.coords else ids
    return [{"id": str(ids[i]), "name": str(names[i]), "probability": float(values[i])} for i in order[:top]]


def _habitat(ds: xr.Dataset, row: int, col: int, set_size: float | None) -> dict[str, Any]:
    at = _at(ds[[v for v in ("habitat", "habitat_probability", "top_k", "top_k_probability") if v in ds]], row, col)
    codes = class_labels(ds["habitat"]) or {}
    names = habitat_names(ds)

    def entry(code: float, probability: float) -> dict[str, Any]:
        label = codes.get(int(code)) if code == code else None
        return {"class": label, "name": names.get(label or "") or None, "probability": _number(probability)}

    out = entry(float(at["habitat"]), float(at["habitat_probability"]) if "habitat_probability" in at else math.nan)
    if set_size is not None and "top_k" in at and out["class"] is not None:
        n = int(set_size)
        ranked = zip(np.ravel(at["top_k"].values)[:n], np.ravel(at["top_k_probability"].values)[:n], strict=False)
        out["set"] = [entry(float(c), float(p)) for c, p in ranked if c == c]
    return out


def _variables(at: xr.Dataset, ds: xr.Dataset, *, bounds: bool) -> dict[str, Any]:
    """Each variable's value (a class variable's label too); with ``bounds``, an interval's ``X_lower``/``X_upper``
    fold into X, or into ``X_expected`` (``richness_lower`` bounds ``richness_expected``)."""
    names = [str(n) for n in at.data_vars]
    bounded: dict[str, dict[str, str]] = {}
    for name in names if bounds else ():
        base, _, bound = name.rpartition("_")
        if bound in ("lower", "upper"):
            owner = base if base in names else f"{base}_expected" if f"{base}_expected" in names else None
            if owner is not None:
                bounded.setdefault(owner, {})[bound] = name
    folded = {n for parts in bounded.values() for n in parts.values()}
    out: dict[str, Any] = {}
    for name in names:
        if name in folded:
            continue
        value = _number(at[name])
        entry: dict[str, Any] = {"value": value}
        labels = class_labels(ds[name])
        if labels is not None:
            entry["label"] = labels.get(int(value)) if value is not None else None
        entry.update({bound: _number(at[var]) for bound, var in sorted(bounded.get(name, {}).items())})
        out[name] = entry
    return out


def describe_point(
    root: Root | Mapping[str, xr.Dataset],
    x: float,
    y: float,
    *,
    crs: Any = "EPSG:4326",
    year: int | None = None,
    top: int = 10,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the viewer's click shows of the pixel at (x, y) in ``crs``, JSON-able: its ``top`` species with
    probabilities and names, its habitat (class, name, probability, and its conformal set where the indicators
    store has ``habitat_set_size``), the indicators with their 90 % intervals, the value with its spread, and the
    changes since the previous mapped year. Each key only where that product exists (for ``year``; series without
    ``year``: their latest complete year); values None where there is no data (or the point is off the grid).

    ``root``: a products root, or the products already opened (``{"species": ds, ...}``: a server's cache).
    """
    if top < 1:
        raise QueryError(f"top must be at least 1, not {top}")
    opened = _open_all(root, storage_options)
    views: dict[str, xr.Dataset] = {}
    shown_year = year
    for product, ds in opened.items():
        have = years_of(ds)
        if have and year is None:
            views[product] = ds.sel({YEAR: have[-1]})
            shown_year = max(shown_year or have[-1], have[-1])
        elif have and int(year) not in have:  # type: ignore[arg-type]
            continue  # that product has no map of that year
        else:
            views[product] = select_years(ds, year=year, squeeze=True)
    src = CRS.from_user_input(crs)
    out: dict[str, Any] = {"x": float(x), "y": float(y), "crs": src.to_string(), "year": shown_year}
    where = {p: pixels(ds, np.asarray([x], "float64"), np.asarray([y], "float64"), src) for p, ds in views.items()}
    cell = {p: (int(r[0]), int(c[0])) for p, (r, c) in where.items()}
    if "species" in views:
        out["species"] = _species(views["species"], *cell["species"], top)
    indicators = None
    if "indicators" in views:
        ind = views["indicators"]
        at = _at(ind[map_variables(ind, None)], *cell["indicators"])
        indicators = _variables(at, ind, bounds=True)
        out["indicators"] = indicators
    if "habitat" in views:
        size = (indicators or {}).get("habitat_set_size", {}).get("value")
        out["habitat"] = _habitat(views["habitat"], *cell["habitat"], size)
    if "value" in views:
        at = _at(views["value"][map_variables(views["value"], None)], *cell["value"])
        value = _variables(at, views["value"], bounds=False)
        out["value"] = {
            "value": value.get("biodiversity_value", {}).get("value"),
            "sd": value.get("biodiversity_value_sd", {}).get("value"),
            "resolution_m": float(grid_of(views["value"]).resolution),
        }
    if "changes" in views:
        ch = views["changes"]
        out["changes"] = _variables(_at(ch[map_variables(ch, None)], *cell["changes"]), ch, bounds=False)
    return out
