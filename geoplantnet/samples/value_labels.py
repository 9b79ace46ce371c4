"""Polygons labelled high / low biodiversity value, from any vector file and CRS, rasterised onto a grid.

:func:`read_value_polygons` reads GeoParquet, GeoJSON or GeoPackage (a path or an fsspec URL), refuses a file without
a CRS, a missing label column or labels other than the configured high / low, and returns the polygons in the grid
CRS with ``label`` (0 low, 1 high) and ``polygon_id``. :func:`rasterise_labels` burns them at pixel centres into a
label raster (-1 unlabelled, 0 low, 1 high; where a high and a low polygon overlap: unlabelled) and a polygon-id
raster (-1 outside every polygon), so pixels can be traced to their polygon (folds are of whole polygons). With a
score column (``value.score_column``: a numeric condition score per polygon, e.g. a field survey's) each polygon's
``score`` is read too and burnt into a ``score`` raster (NaN where unlabelled).
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features

from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import Grid
from geoplantnet.samples.vectors import check_valid, read_vector


class ValueLabelsError(InputError):
    """A polygon file that cannot be used as value labels (one line naming the file, column or values)."""


@dataclass(frozen=True)
class LabelRasters:
    """Labels on a grid: ``label`` int8 (-1 unlabelled, 0 low, 1 high), ``polygon`` int32 (-1 none) and, with a
    score column, ``score`` float32 (each labelled pixel's polygon score, NaN elsewhere)."""

    label: np.ndarray
    polygon: np.ndarray
    score: np.ndarray | None = None


@dataclass(frozen=True)
class Labels:
    """The polygons (grid CRS; ``polygon_id``, ``label``, ``fold``), their rasters on the training window, the
    window (row0, row1, col0, col1 on the value grid) and where they came from."""

    polygons: gpd.GeoDataFrame
    rasters: LabelRasters
    window: tuple[int, int, int, int]
    source: str
    notes: tuple[str, ...]


def read_value_polygons(
    source: str, *, label_column: str, high: str, low: str, epsg: int, score_column: str | None = None
) -> gpd.GeoDataFrame:
    """The polygons of ``source`` in EPSG:``epsg`` with ``label`` (1 for ``high``, 0 for ``low``; other labels are
    dropped), ``polygon_id`` (row order) and, with ``score_column``, ``score`` (float; every kept polygon must have a
    finite number); one-line refusals naming what to fix."""
    table = read_vector(source, "value polygons")
    if table.crs is None:
        raise ValueLabelsError(f"{source}: the polygons have no CRS; write the file with one (e.g. EPSG:3035)")
    if label_column not in table.columns:
        columns = [c for c in table.columns if c != table.geometry.name]
        raise ValueLabelsError(f"{source}: no label column {label_column!r} (columns: {columns})")
    values = table[label_column].astype("string").str.strip()
    found = sorted(set(values.dropna()))
    missing = [v for v in (high, low) if v not in found]
    if missing:
        raise ValueLabelsError(
            f"{source}: column {label_column!r} holds no {' and no '.join(map(repr, missing))} (value.high / "
            f"value.low; values found: {found[:12]})"
        )
    keep = values.isin([high, low]).fillna(False).to_numpy() & table.geometry.notna().to_numpy()
    table = table[keep]
    check_valid(table, source, "value polygons")
    columns = {
        "polygon_id": np.flatnonzero(keep).astype("int32"),
        "label": (values[keep] == high).astype("int8").to_numpy(),
    }
    if score_column is not None:
        columns["score"] = _scores(table, source, score_column)
    polygons = gpd.GeoDataFrame(
        columns,
        geometry=table.geometry.to_crs(epsg).to_numpy(),
        crs=epsg,
    )
    return polygons[polygons.geometry.area > 0].reset_index(drop=True)


def _scores(table: gpd.GeoDataFrame, source: str, column: str) -> np.ndarray:
    """The numeric scores of ``column`` (float64), refused when missing, not numbers or not finite."""
    if column not in table.columns:
        columns = [c for c in table.columns if c != table.geometry.name]
        raise ValueLabelsError(
            f"{source}: no score column {column!r} (value.score_column; columns: {columns}); value.score_column=null "
            "learns high / low only"
        )
    scores = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueLabelsError(
            f"{source}: score column {column!r} has {int(bad.sum())} polygon(s) without a number (e.g. "
            f"{table[column].iloc[int(np.flatnonzero(bad)[0])]!r}); every high / low polygon needs its score"
        )
    return scores


def rasterise_labels(polygons: gpd.GeoDataFrame, grid: Grid) -> LabelRasters:
    """Burn ``polygons`` (``label``, ``polygon_id``; in the grid CRS) onto ``grid`` at pixel centres."""
    shape = grid.shape
    burnt = {}
    for cls in (0, 1):
        part = polygons[polygons["label"] == cls]
        shapes = list(zip(part.geometry, np.ones(len(part), "uint8"), strict=True))
        burnt[cls] = (
            rasterio.features.rasterize(shapes, out_shape=shape, transform=grid.transform, fill=0, dtype="uint8") > 0
            if shapes
            else np.zeros(shape, bool)
        )
    label = np.full(shape, -1, "int8")
    label[burnt[0] & ~burnt[1]] = 0
    label[burnt[1] & ~burnt[0]] = 1  # high and low overlapping: neither (unlabelled)
    shapes = list(zip(polygons.geometry, polygons["polygon_id"].astype("int32"), strict=True))
    ids = (
        rasterio.features.rasterize(shapes, out_shape=shape, transform=grid.transform, fill=-1, dtype="int32")
        if shapes
        else np.full(shape, -1, "int32")
    )
    polygon = np.where(label >= 0, ids, -1).astype("int32")
    score = None
    if "score" in polygons.columns:
        lookup = np.full(int(polygons["polygon_id"].max()) + 2, np.nan, "float32")
        lookup[polygons["polygon_id"].to_numpy()] = polygons["score"].to_numpy()
        score = np.where(polygon >= 0, lookup[polygon], np.nan).astype("float32")
    return LabelRasters(label, polygon, score)
