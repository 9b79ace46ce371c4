"""A table of points to predict at (``geoplantnet predict``): read from CSV or (Geo)Parquet into the grid's CRS, with
the columns the output repeats (the id and the coordinates as given)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoplantnet.core.config import InputsConfig
from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import to_grid_crs


class PointsError(InputError):
    """A points file that cannot be read (one line naming the file and what is wrong)."""


@dataclass
class Points:
    """The points to predict at: the columns written back (id and coordinates as given) and grid-CRS x, y."""

    table: pd.DataFrame
    x: np.ndarray
    y: np.ndarray


def read_points(path: Path, spec: InputsConfig, epsg: int, id_column: str = "id") -> Points:
    """Points from a CSV (columns ``inputs.x``/``inputs.y`` in ``inputs.crs``: ``spec``) or a (Geo)Parquet file (its
    geometry, any CRS; or the same columns), in the grid's CRS ``epsg``."""
    where = str(path)
    try:
        parquet = path.suffix.lower() in (".parquet", ".geoparquet")
        table = _read_parquet(path, epsg) if parquet else pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0]}"
        raise PointsError(f"{where}: cannot read points ({reason})") from None
    if "_grid_x" in table:  # GeoParquet: coordinates from the geometry
        xs, ys = table.pop("_grid_x").to_numpy(float), table.pop("_grid_y").to_numpy(float)
        coords = ["x", "y"]
    else:
        missing = [c for c in (spec.x, spec.y) if c not in table.columns]
        if missing:
            raise PointsError(f"{where}: no column {missing[0]!r} (columns: {list(table.columns)}; set --x/--y)")
        coords = [spec.x, spec.y]
        lon = pd.to_numeric(table[spec.x], errors="coerce").to_numpy(float)
        lat = pd.to_numeric(table[spec.y], errors="coerce").to_numpy(float)
        xs, ys = np.full(len(table), np.nan), np.full(len(table), np.nan)
        ok = np.isfinite(lon) & np.isfinite(lat)
        if ok.any():
            xs[ok], ys[ok] = to_grid_crs(lon[ok], lat[ok], spec.crs, epsg=epsg)
    if not len(table):
        raise PointsError(f"{where}: no points")
    ids = table[id_column] if id_column in table.columns else pd.Series(np.arange(len(table)), name="point")
    out = pd.DataFrame({ids.name: ids.to_numpy(), **{c: table[c].to_numpy() for c in coords}})
    return Points(out, xs, ys)


def _read_parquet(path: Path, epsg: int) -> pd.DataFrame:
    import geopandas as gpd

    try:
        frame = gpd.read_parquet(path)
    except ValueError:  # plain Parquet, no geometry metadata: coordinate columns, as in a CSV
        return pd.read_parquet(path)
    if frame.crs is None:
        raise PointsError(f"{path}: GeoParquet without a CRS")
    grid_geom = frame.geometry.to_crs(epsg)
    table = pd.DataFrame(frame.drop(columns=frame.geometry.name))
    table["x"], table["y"] = frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy()
    table["_grid_x"], table["_grid_y"] = grid_geom.x.to_numpy(), grid_geom.y.to_numpy()
    return table
