"""The output grid: EPSG:3035 (ETRS89-LAEA Europe), square pixels, edges on multiples of the resolution.

A grid may carry another projected EPSG code (``epsg=``) for users who bring data from outside Europe (e.g. an
equal-area CRS such as EPSG:6933); everything else in the package asks the grid for its CRS instead of assuming one.

This module is the only place that turns between pixel indices and map coordinates; everything else asks a
:class:`Grid` for its transform, coordinates, tiles or halos. The arithmetic is pure (no I/O, no pixels), so it is
property-tested.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

import numpy as np
from affine import Affine
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from geoplantnet.core.errors import InputError

EPSG = 3035
# Europe's extent in EPSG:3035 (the EEA reference grid's coverage); a bbox outside it is almost always a CRS mix-up.
EUROPE_BOUNDS = (900_000.0, 900_000.0, 7_400_000.0, 5_500_000.0)
DENSIFY = 21  # points per edge when a box changes CRS: its edges may curve
LONLAT = 4326


class GridError(InputError):
    """A bbox, resolution or tile request that does not fit the grid."""


def known_crs(text: str) -> str:
    """``text`` when PROJ knows it as a CRS (``EPSG:4326``, a WKT, a PROJ string); ``ValueError`` saying so otherwise
    (a configuration validator's error)."""
    try:
        CRS.from_user_input(text)
    except CRSError:
        raise ValueError(f"{text!r} is not a CRS PROJ knows (e.g. EPSG:4326, EPSG:3035)") from None
    return text


def projected_epsg(epsg: int) -> int:
    """``epsg`` when it is a projected CRS in metres (a grid's pixels are metres); ``ValueError`` otherwise."""
    try:
        crs = CRS.from_epsg(epsg)
    except CRSError:
        raise ValueError(f"EPSG:{epsg} is not a CRS PROJ knows (e.g. 3035, LAEA Europe; 6933 worldwide)") from None
    units = {axis.unit_name for axis in crs.axis_info}
    if not crs.is_projected or units != {"metre"}:
        raise ValueError(
            f"EPSG:{epsg} ({crs.name}) is not a projected CRS in metres; the grid needs one (e.g. 3035, LAEA Europe; "
            "6933 worldwide)"
        )
    return epsg


def _snap_down(value: float, step: float) -> float:
    return math.floor(round(value / step, 9)) * step


def _snap_up(value: float, step: float) -> float:
    return math.ceil(round(value / step, 9)) * step


@dataclass(frozen=True)
class Tile:
    """A rectangle of grid pixels; ``row``/``col`` index it among the grid's tiles."""

    row: int
    col: int
    y0: int  # first pixel row (inclusive)
    x0: int  # first pixel column (inclusive)
    height: int
    width: int
    id: str

    @property
    def slices(self) -> tuple[slice, slice]:
        """(y, x) slices of this tile in the grid's pixel space."""
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)


@dataclass(frozen=True)
class Grid:
    """A north-up EPSG:3035 raster grid whose edges lie on multiples of ``resolution`` from the CRS origin."""

    resolution: float
    left: float
    top: float
    width: int
    height: int
    epsg: int = EPSG

    def __post_init__(self) -> None:
        if not self.resolution > 0:
            raise GridError(f"resolution must be positive, got {self.resolution}")
        if self.width <= 0 or self.height <= 0:
            raise GridError(f"grid must have at least one pixel, got {self.width} x {self.height}")
        for name, edge in (("left", self.left), ("top", self.top)):
            if abs(edge / self.resolution - round(edge / self.resolution)) > 1e-6:
                raise GridError(f"{name} edge {edge} is not a multiple of the resolution {self.resolution}")

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_bounds(
        cls,
        bounds: tuple[float, float, float, float],
        resolution: float,
        *,
        check_europe: bool = True,
        epsg: int = EPSG,
    ) -> Grid:
        """Smallest aligned grid covering ``bounds`` = (xmin, ymin, xmax, ymax) in the grid CRS's metres."""
        xmin, ymin, xmax, ymax = map(float, bounds)
        if not (xmax > xmin and ymax > ymin):
            raise GridError(f"empty or inverted bounds {bounds}")
        if epsg == EPSG and check_europe and not overlaps(bounds, EUROPE_BOUNDS):
            raise GridError(
                f"bounds {bounds} lie outside Europe in EPSG:3035 {EUROPE_BOUNDS}: "
                "is this a lon/lat bbox? use Grid.from_lonlat()"
            )
        left, right = _snap_down(xmin, resolution), _snap_up(xmax, resolution)
        bottom, top = _snap_down(ymin, resolution), _snap_up(ymax, resolution)
        return cls(
            resolution=float(resolution),
            left=left,
            top=top,
            width=round((right - left) / resolution),
            height=round((top - bottom) / resolution),
            epsg=int(epsg),
        )

    @classmethod
    def from_lonlat(cls, bbox: tuple[float, float, float, float], resolution: float, *, epsg: int = EPSG) -> Grid:
        """Smallest aligned grid covering a WGS84 (lon_min, lat_min, lon_max, lat_max) box."""
        lon0, lat0, lon1, lat1 = bbox
        if not (-180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90):
            raise GridError(f"{bbox} is not a lon/lat bbox (lon_min, lat_min, lon_max, lat_max)")
        bounds = transform_bounds((lon0, lat0, lon1, lat1), LONLAT, epsg)
        return cls.from_bounds(bounds, resolution, epsg=epsg)

    @classmethod
    def from_coords(cls, x: np.ndarray, y: np.ndarray, epsg: int = EPSG) -> Grid:
        """The grid whose pixel centres are ``x`` (west to east) and ``y`` (north to south), as stored."""
        x, y = np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
        res = float(x[1] - x[0]) if len(x) > 1 else float(y[0] - y[1])
        return cls(res, float(x[0] - res / 2), float(y[0] + res / 2), len(x), len(y), int(epsg))

    @classmethod
    def from_origin(cls, x: float, y: float, resolution: float, width: int, height: int, *, epsg: int = EPSG) -> Grid:
        """Grid whose top-left corner is the aligned point at or below/left of (x, y)."""
        return cls(
            float(resolution), _snap_down(x, resolution), _snap_up(y, resolution), int(width), int(height), int(epsg)
        )

    # --- geometry ------------------------------------------------------------------------------------------------
    @property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.epsg)

    @property
    def right(self) -> float:
        return self.left + self.width * self.resolution

    @property
    def bottom(self) -> float:
        return self.top - self.height * self.resolution

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the pixel edges."""
        return (self.left, self.bottom, self.right, self.top)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.left, 0.0, -self.resolution, self.top)

    @cached_property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates (metres)."""
        return self.left + (np.arange(self.width) + 0.5) * self.resolution

    @cached_property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates (metres), north to south."""
        return self.top - (np.arange(self.height) + 0.5) * self.resolution

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """WGS84 bbox that covers the grid (densified edges, so it is not too small)."""
        return transform_bounds(self.bounds, self.epsg, LONLAT)

    def index(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) pixel indices of map points; -1 where the point falls outside the grid."""
        col = np.floor((np.asarray(x, dtype="float64") - self.left) / self.resolution).astype("int64")
        row = np.floor((self.top - np.asarray(y, dtype="float64")) / self.resolution).astype("int64")
        outside = (col < 0) | (col >= self.width) | (row < 0) | (row >= self.height)
        return np.where(outside, -1, row), np.where(outside, -1, col)

    def contains(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Boolean mask of points inside the grid's pixel edges."""
        row, _ = self.index(x, y)
        return np.asarray(row) >= 0

    def subgrid(self, y: slice, x: slice) -> Grid:
        """The grid of a pixel window (slices with non-negative, in-range bounds)."""
        y0, y1, _ = y.indices(self.height)
        x0, x1, _ = x.indices(self.width)
        if y1 <= y0 or x1 <= x0:
            raise GridError(f"empty window y={y}, x={x}")
        return replace(
            self,
            left=self.left + x0 * self.resolution,
            top=self.top - y0 * self.resolution,
            width=x1 - x0,
            height=y1 - y0,
        )

    def at_resolution(self, resolution: float) -> Grid:
        """The same area at another resolution; the extents must divide exactly."""
        grid = Grid.from_bounds(self.bounds, resolution, check_europe=False, epsg=self.epsg)
        if grid.bounds != self.bounds:
            raise GridError(f"resolution {resolution} does not divide the grid extent {self.bounds}")
        return grid

    # --- tiles and halos ---------------------------------------------------------------------------------------
    def tiles(self, size: int) -> Iterator[Tile]:
        """Tiles of ``size`` x ``size`` pixels (smaller at the right/bottom edges), row-major.

        Tile ids follow the EEA reference-grid style: size in metres, then the tile's lower-left corner in units of
        that size (``E``/``N``), so ids are stable across runs and regions that share the grid.
        """
        if size <= 0:
            raise GridError(f"tile size must be positive, got {size}")
        extent = size * self.resolution
        label = f"{int(extent)}m" if extent < 1000 else f"{extent / 1000:g}km"
        for row, y0 in enumerate(range(0, self.height, size)):
            for col, x0 in enumerate(range(0, self.width, size)):
                h, w = min(size, self.height - y0), min(size, self.width - x0)
                # Lower-left corner of the nominal (full-size) tile, so clipped edge tiles keep distinct ids.
                east = (self.left + x0 * self.resolution) / extent
                north = (self.top - (y0 + size) * self.resolution) / extent
                yield Tile(row, col, y0, x0, h, w, f"{label}E{_fmt(east)}N{_fmt(north)}")

    def n_tiles(self, size: int) -> tuple[int, int]:
        """(rows, cols) of tiles of ``size`` pixels."""
        return (-(-self.height // size), -(-self.width // size))

    def halo(self, tile: Tile, halo: int) -> tuple[tuple[slice, slice], tuple[tuple[int, int], tuple[int, int]]]:
        """Slices of ``tile`` grown by ``halo`` pixels and clipped to the grid, and the padding that clipping removed.

        Returns ``((ys, xs), ((pad_top, pad_bottom), (pad_left, pad_right)))`` so a caller can pad the read window
        back to a full ``tile + 2 * halo`` block.
        """
        if halo < 0:
            raise GridError(f"halo must be >= 0, got {halo}")
        rows = (tile.y0 - halo, tile.y0 + tile.height + halo)
        return self.clip(rows, (tile.x0 - halo, tile.x0 + tile.width + halo))

    def clip(
        self, rows: tuple[int, int], cols: tuple[int, int]
    ) -> tuple[tuple[slice, slice], tuple[tuple[int, int], tuple[int, int]]]:
        """The pixel window ``[row0, row1) x [col0, col1)`` (it may leave the grid) clipped to the grid, and the
        padding that clipping removed, as :meth:`halo` returns them. An axis wholly outside the grid gives an empty
        slice and its whole length as padding."""

        def axis(a: int, b: int, n: int) -> tuple[slice, tuple[int, int]]:
            if b < a:
                raise GridError(f"inverted window [{a}, {b})")
            start, stop = min(max(a, 0), n), max(min(b, n), 0)
            if stop <= start:
                return slice(0, 0), (b - a, 0)
            return slice(start, stop), (start - a, b - stop)

        ys, pad_y = axis(*rows, self.height)
        xs, pad_x = axis(*cols, self.width)
        return (ys, xs), (pad_y, pad_x)

    # --- CF metadata ---------------------------------------------------------------------------------------------
    def spatial_ref_attrs(self) -> dict[str, object]:
        """CF ``grid_mapping`` attributes (as rioxarray writes them) for the ``spatial_ref`` coordinate."""
        attrs: dict[str, object] = dict(self.crs.to_cf())
        attrs["spatial_ref"] = self.crs.to_wkt()
        attrs["crs_wkt"] = self.crs.to_wkt()
        t = self.transform
        attrs["GeoTransform"] = " ".join(str(v) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
        return attrs

    def coords(self) -> dict[str, object]:
        """xarray coordinates ``y``, ``x`` (cell centres, metres) and ``spatial_ref`` for this grid."""
        import xarray as xr

        return {
            "y": xr.Variable("y", self.y, {"units": "metre", "standard_name": "projection_y_coordinate", "axis": "Y"}),
            "x": xr.Variable("x", self.x, {"units": "metre", "standard_name": "projection_x_coordinate", "axis": "X"}),
            "spatial_ref": xr.Variable((), np.int32(0), self.spatial_ref_attrs()),
        }

    def same_pixels(self, other: Grid) -> bool:
        """Whether ``other`` is this grid's pixels: same CRS and shape, origin and resolution to a millimetre (a grid
        read back from cell-centre coordinates may differ by rounding)."""
        edges = np.array([self.left, self.top, self.resolution]) - [other.left, other.top, other.resolution]
        shape = (self.epsg, self.width, self.height) == (other.epsg, other.width, other.height)
        return shape and bool(np.abs(edges).max() < 1e-3)

    def label(self) -> str:
        """A short readable description (CRS, size, resolution, corner), e.g. for saying which grids differ."""
        corner = f"({self.left:g}, {self.top:g})"
        return f"EPSG:{self.epsg} {self.width}x{self.height} at {self.resolution:g} m from {corner}"

    def to_dict(self) -> dict[str, float | int]:
        return {
            "resolution": self.resolution,
            "left": self.left,
            "top": self.top,
            "width": self.width,
            "height": self.height,
            "epsg": self.epsg,
        }


def _fmt(value: float) -> str:
    rounded = round(value, 6)
    return str(int(rounded)) if rounded == int(rounded) else f"{rounded:.6f}".rstrip("0")


def overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two (left, bottom, right, top) boxes share some area (touching edges do not)."""
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]


@lru_cache(maxsize=32)
def _transformer(src: int | str | CRS, dst: int | str | CRS) -> Transformer:
    # Building a Transformer costs ~50 ms; a search transforms hundreds of item boxes. Thread-safe (pyproj >= 3.1).
    return Transformer.from_crs(src, dst, always_xy=True)


def transform_bounds(
    bounds: Sequence[float], src: int | str | CRS, dst: int | str | CRS = LONLAT
) -> tuple[float, float, float, float]:
    """The (xmin, ymin, xmax, ymax) box in ``dst`` that covers ``bounds`` in ``src`` (x/lon first): edges densified
    (:data:`DENSIFY` points each), so a box whose edges curve in ``dst`` is not cut short."""
    x0, y0, x1, y1 = bounds
    return _transformer(src, dst).transform_bounds(x0, y0, x1, y1, densify_pts=DENSIFY)


def transform_outline(
    bounds: Sequence[float], src: int | str | CRS, dst: int | str | CRS = LONLAT
) -> tuple[np.ndarray, np.ndarray]:
    """The outline of a box in ``src`` as a closed-ring's (x, y) in ``dst``: :data:`DENSIFY` points an edge,
    counter-clockwise from the lower-left corner, so the exact footprint (not just its envelope) can be tested."""
    x0, y0, x1, y1 = map(float, bounds)
    n = DENSIFY
    xs = [x0 + (x1 - x0) * i / (n - 1) for i in range(n)]
    ys = [y0 + (y1 - y0) * i / (n - 1) for i in range(n)]
    ring = [(x, y0) for x in xs] + [(x1, y) for y in ys] + [(x, y1) for x in xs[::-1]] + [(x0, y) for y in ys[::-1]]
    tx, ty = _transformer(src, dst).transform(*zip(*ring, strict=True))
    return np.asarray(tx, dtype="float64"), np.asarray(ty, dtype="float64")


def to_grid_crs(x: np.ndarray, y: np.ndarray, crs: str | int | CRS, epsg: int = EPSG) -> tuple[np.ndarray, np.ndarray]:
    """Points from any CRS to the grid CRS (EPSG:3035 unless ``epsg`` says otherwise; always x/lon first)."""
    src = CRS.from_user_input(crs)
    if src.to_epsg() == epsg:
        return np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    tx, ty = _transformer(src, epsg).transform(x, y)
    return np.asarray(tx), np.asarray(ty)
