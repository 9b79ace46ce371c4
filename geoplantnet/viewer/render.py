"""XYZ tiles (Web Mercator) of one 2-D map variable: reprojected by rio-tiler's ``XarrayReader`` (nearest
neighbour, so a tile pixel holds a stored value, never a blend), coloured through a 256-entry colour table and
written as RGBA PNG (no data: transparent).

The colour of a value is :func:`colour_index` into :func:`colour_table`: ``round((v - lo) / (hi - lo) * 255)``
clipped to 0..255, the table being matplotlib's colormap sampled at 256 points. The legend (:func:`legend`) and the
browser test use the same two functions, so a tile's pixel can be checked against the stored value beneath it.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor XarrayReader reads the CRS and transform with)
import xarray as xr
from matplotlib import colormaps
from PIL import Image
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import XarrayReader

# Imported here, not in the functions: tiles are drawn in a server's threads at once, and a first import racing
# in several threads sees a half-initialised module ("cannot import name 'XarrayReader'").

COLORMAPS = ("viridis", "magma", "cividis", "RdBu_r", "tab20")
CLASS_COLORMAP = "tab20"  # class variables (habitat, rank tables): one colour per class code, no interpolation
TILE = 256
EARTH_CIRCUMFERENCE = 40075016.686  # metres at the equator (Web Mercator's world width)


class RenderError(ValueError):
    """A tile that cannot be drawn (unknown colormap, empty value range)."""


@functools.cache
def colour_table(name: str) -> np.ndarray:
    """The ``(256, 4)`` uint8 RGBA table of a colormap (matplotlib's, sampled at 256 points)."""
    if name not in COLORMAPS:
        raise RenderError(f"unknown colormap {name!r}; one of {', '.join(COLORMAPS)}")
    cmap = colormaps[name]
    table = cmap(np.arange(cmap.N) % cmap.N if cmap.N < 256 else np.linspace(0, 1, 256))
    if len(table) < 256:  # a qualitative map (tab20: 20 colours) repeats; class codes index it directly
        table = np.resize(table, (256, 4))
    return np.round(table * 255).astype(np.uint8)


def colour_index(values: np.ndarray, lo: float, hi: float, *, classes: bool = False) -> np.ndarray:
    """Each value's row of the colour table: linear from ``lo`` (0) to ``hi`` (255), or the class code itself."""
    values = np.asarray(values, dtype="float64")
    if classes:
        return np.clip(np.nan_to_num(values), 0, 255).astype(np.int64)
    if not hi > lo:
        raise RenderError(f"empty value range [{lo}, {hi}]")
    return np.clip(np.round(np.nan_to_num((values - lo) / (hi - lo)) * 255), 0, 255).astype(np.int64)


def legend(name: str, lo: float, hi: float, *, stops: int = 16, classes: bool = False) -> dict:
    """What the page draws as a legend: the colour scale as hex stops from ``lo`` to ``hi`` (and, for class
    codes, each code's colour)."""
    table = colour_table(name)
    hexes = ["#{:02x}{:02x}{:02x}".format(*row[:3]) for row in table]
    out = {
        "colormap": name,
        "min": lo,
        "max": hi,
        "colors": [hexes[i] for i in np.linspace(0, 255, stops).round().astype(int)],
    }
    if classes:
        out["classColors"] = hexes[:64]
    return out


def png(rgba: np.ndarray) -> bytes:
    """An RGBA image (h, w, 4 uint8) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def empty_tile() -> bytes:
    """A fully transparent tile: outside the map, or no data at all."""
    return png(np.zeros((TILE, TILE, 4), np.uint8))


def tile_metres(z: int, y: int) -> float:
    """The ground size of one pixel of XYZ tile row ``y`` at zoom ``z`` (Web Mercator shrinks with latitude)."""
    n = 2**z
    lat = math.atan(math.sinh(math.pi * (1 - 2 * (y + 0.5) / n)))
    return EARTH_CIRCUMFERENCE * math.cos(lat) / (n * TILE)


def overview_factor(z: int, y: int, resolution: float, factors: list[int]) -> int | None:
    """The coarsest overview factor whose cells are still no larger than a tile pixel (None: full resolution), so
    a view of a large map reads at most about one stored cell per screen pixel."""
    pixel = tile_metres(z, y)
    fitting = [f for f in factors if f * resolution <= pixel]
    return max(fitting) if fitting else None


def render_tile(
    da: xr.DataArray, z: int, x: int, y: int, *, colormap: str, lo: float, hi: float, classes: bool = False
) -> bytes:
    """Tile ``z/x/y`` of a 2-D (y, x) variable with a CRS (``spatial_ref``), as PNG bytes."""
    table = colour_table(colormap)
    if not classes and not hi > lo:
        raise RenderError(f"empty value range [{lo}, {hi}]")
    try:
        with XarrayReader(da) as reader:
            image = reader.tile(x, y, z, tilesize=TILE, reproject_method="nearest")
    except TileOutsideBounds:
        return empty_tile()
    values = np.ma.getdata(image.array[0]).astype("float64")
    valid = ~np.ma.getmaskarray(image.array[0]) & np.isfinite(values)
    if classes:  # class codes: -1 is no data
        valid &= values >= 0
    if not valid.any():
        return empty_tile()
    rgba = table[colour_index(np.where(valid, values, lo), lo, hi, classes=classes)]
    rgba[..., 3] = np.where(valid, rgba[..., 3], 0)
    return png(rgba)
