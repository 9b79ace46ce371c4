"""A pixel's description for the page's click panel: :func:`geoplantnet.query.describe_point` (h26-query).

Until that branch is merged, a small stand-in reads the same keys from the served items of one year."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from geoplantnet.viewer.items import Catalogue


def describe(catalogue: Catalogue, lon: float, lat: float, year: int | None, top: int = 10) -> dict[str, Any]:
    """What is known at (lon, lat) in ``year`` (JSON-able; the keys of ``query.describe_point``)."""
    try:
        from geoplantnet.query import describe_point
    except ImportError:
        return _stand_in(catalogue, lon, lat, year, top)
    return describe_point(
        catalogue.root, lon, lat, crs="EPSG:4326", year=year, top=top, storage_options=catalogue.storage_options
    )


def _value(v: Any) -> float | None:
    v = float(v)
    return None if not np.isfinite(v) else v


def _stand_in(catalogue: Catalogue, lon: float, lat: float, year: int | None, top: int) -> dict[str, Any]:
    from pyproj import Transformer

    out: dict[str, Any] = {"x": lon, "y": lat, "crs": "EPSG:4326", "year": year}
    for item in catalogue.items.values():
        if item.year != year and item.year is not None:
            continue
        ds = catalogue.dataset(item.id)
        if "y" not in ds.dims or "x" not in ds.dims:
            continue
        x, y = Transformer.from_crs("EPSG:4326", ds.rio.crs, always_xy=True).transform(lon, lat)
        if not (_inside(ds["x"].values, x) and _inside(ds["y"].values, y)):
            continue
        cell = ds.sel(x=x, y=y, method="nearest")
        if item.product == "species" and "probability" in ds:
            p = cell["probability"].values.astype("float64")
            order = [i for i in np.argsort(-np.nan_to_num(p, nan=-1))[:top] if np.isfinite(p[i])]
            names = cell["species_name"].values if "species_name" in cell.coords else cell["species"].values
            out["species"] = [
                {"id": str(cell["species"].values[i]), "name": str(names[i]), "probability": float(p[i])} for i in order
            ]
        elif item.product == "habitat" and "habitat" in ds:
            codes = [str(c) for c in ds["habitat_code"].values]
            k = int(np.nan_to_num(cell["habitat"].values, nan=-1))
            ranks = [int(c) for c in np.nan_to_num(cell["top_k"].values, nan=-1) if c >= 0]
            out["habitat"] = {
                "class": codes[k] if k >= 0 else None,
                "name": codes[k] if k >= 0 else None,
                "probability": _value(cell["habitat_probability"].values),
                "set": [codes[c] for c in ranks],
            }
        else:
            out[item.product] = _indicators(cell)
    return out


def _inside(axis: np.ndarray, v: float) -> bool:
    step = abs(float(axis[1] - axis[0])) / 2 if len(axis) > 1 else 0.0
    return float(min(axis[0], axis[-1])) - step <= v <= float(max(axis[0], axis[-1])) + step


def _indicators(cell: Mapping[str, Any]) -> dict[str, Any]:
    names = [str(n) for n in cell.data_vars if cell[n].ndim == 0]
    out = {}
    for name in names:
        if name.endswith(("_lower", "_upper")):
            continue
        entry = {"value": _value(cell[name].values)}
        for bound in ("lower", "upper"):
            if f"{name.removesuffix('_expected')}_{bound}" in names:
                entry[bound] = _value(cell[f"{name.removesuffix('_expected')}_{bound}"].values)
        out[name] = entry
    return out
