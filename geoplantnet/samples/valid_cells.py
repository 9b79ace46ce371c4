"""Where the predictors have data: the one rule for which cells samples may stand on.

A cell is valid when every value of the predictor layer there is finite: every environmental variable (sea, outside
the rasters, a layer's gap are not), or with Sentinel-2 alone every band of every season. Background points are drawn
only on valid cells (:func:`geoplantnet.samples.observations.background_points`), and a record whose cell lost its
data to the bilinear warp (a coastal cell partly sea) is moved to the nearest valid cell within a few cells
(:func:`move_records_to_valid`).

Validity is read at points, one task per source chunk holding points (the extraction's own chunk tasks), so nothing
of a continental grid is held in memory; a grid of at most :data:`MASK_CELLS` cells is read once into a boolean mask
instead, which also tells exactly how many valid cells there are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from geoplantnet.core.grid import Grid
from geoplantnet.samples.extraction import grid_of, patch_tasks
from geoplantnet.samples.kinds import Source
from geoplantnet.samples.observations import Samples

log = logging.getLogger(__name__)

# 4 Mi cells: a 4 MiB boolean mask, e.g. 2,000 x 2,000 km at 1 km; larger grids are read at candidate points only.
MASK_CELLS = 1 << 22


def values_at(layer: xr.DataArray, grid: Grid, x: np.ndarray, y: np.ndarray, *, client: Any = None) -> np.ndarray:
    """Float32 values ``(n, ...)`` of a lazy ``(..., y, x)`` array on ``grid`` at the cells holding the points (which
    must lie inside ``grid``); one task per source chunk holding points, as the extraction reads them."""
    x, y = np.asarray(x, "float64"), np.asarray(y, "float64")
    if not len(x):
        return np.empty((0, *layer.shape[:-2]), dtype="float32")
    tasks, members = patch_tasks(layer, grid, x, y, 1)
    # unoptimised, as in extraction: shared chunk reads run once instead of being inlined into every task
    (results,) = dask.compute(tasks, scheduler=client.get if client is not None else None, optimize_graph=False)
    out = np.empty((len(x), *layer.shape[:-2]), dtype="float32")
    for part, idx in zip(results, members, strict=True):
        out[idx] = part[..., 0, 0]
    return out


class ValidCells:
    """The cells of a predictor layer where every value is finite.

    ``layer`` is a lazy ``(..., y, x)`` array with cell-centre coordinates (the environmental stack, or the
    Sentinel-2 composite when there is none); ``client`` computes on the cluster. A grid of at most ``mask_cells``
    cells is read once into :attr:`mask`; larger ones are read at the points asked about, chunk by chunk.
    """

    def __init__(self, layer: xr.DataArray, *, epsg: int, client: Any = None, mask_cells: int = MASK_CELLS) -> None:
        self.layer, self.client = layer, client
        self.grid = grid_of(layer, epsg)
        self.mask: np.ndarray | None = None
        if self.grid.width * self.grid.height <= mask_cells:
            data = layer.data if isinstance(layer.data, da.Array) else da.asarray(layer.data)
            finite = da.isfinite(data).all(axis=tuple(range(data.ndim - 2)))
            (self.mask,) = dask.compute(finite, scheduler=client.get if client is not None else None)

    def cells(self) -> np.ndarray | None:
        """Flat indices (row * width + col, ascending) of the valid cells when the mask is held, else None."""
        return None if self.mask is None else np.flatnonzero(self.mask)

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean: the cell holding each point is valid (False outside the layer's grid)."""
        rows, cols = self.grid.index(x, y)
        inside = rows >= 0
        out = np.zeros(len(rows), dtype=bool)
        if self.mask is not None:
            out[inside] = self.mask[rows[inside], cols[inside]]
        elif inside.any():
            values = values_at(self.layer, self.grid, np.asarray(x)[inside], np.asarray(y)[inside], client=self.client)
            out[inside] = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        return out


@dataclass(frozen=True)
class RecordRescue:
    """Records whose cell had no predictor data: ``moved`` to the nearest valid cell within ``radius`` cells, or
    ``unrescued`` (no valid cell that near; the training set drops those without any predictor value)."""

    moved: int
    unrescued: int
    radius: int


def _offsets(radius: int) -> np.ndarray:
    """(dr, dc) of the cells around a cell within ``radius`` (a square), nearest first; ties in a fixed order."""
    r = np.arange(-radius, radius + 1)
    dr, dc = (a.ravel() for a in np.meshgrid(r, r, indexing="ij"))
    keep = (dr != 0) | (dc != 0)
    dr, dc = dr[keep], dc[keep]
    order = np.lexsort((dc, dr, dr * dr + dc * dc))
    return np.stack([dr[order], dc[order]], axis=1)


def move_records_to_valid(
    samples: Samples, valid: ValidCells, radius: int, *, what: str = "records"
) -> tuple[Samples, RecordRescue]:
    """Records (``pa``/``po`` samples) on invalid cells moved to the centre of the nearest valid cell within
    ``radius`` cells (0: none moved); background points are left alone (they are drawn on valid cells). ``what``
    names the records in the warning (``geoplantnet predict`` moves its points the same way).

    The bilinear warp gives a coastal cell partly covered by sea no data, although the record there is on land: its
    neighbour inland describes it better than dropping it does.
    """
    records = np.flatnonzero(samples.source != str(Source.BG))
    bad = records[~valid.at(samples.x[records], samples.y[records])]
    if radius <= 0 or not len(bad):
        return samples, RecordRescue(0, len(bad), max(radius, 0))
    g = valid.grid
    rows, cols = g.index(samples.x[bad], samples.y[bad])
    offsets = _offsets(radius)
    nr = rows[:, None] + offsets[None, :, 0]
    nc = cols[:, None] + offsets[None, :, 1]
    inside = (rows[:, None] >= 0) & (nr >= 0) & (nr < g.height) & (nc >= 0) & (nc < g.width)
    cx = g.left + (nc + 0.5) * g.resolution
    cy = g.top - (nr + 0.5) * g.resolution
    ok = np.zeros(nr.shape, dtype=bool)
    ok[inside] = valid.at(cx[inside], cy[inside])
    found = ok.any(axis=1)
    first = ok.argmax(axis=1)  # offsets are sorted nearest first
    x, y = samples.x.copy(), samples.y.copy()
    moved = bad[found]
    x[moved] = cx[found, first[found]]
    y[moved] = cy[found, first[found]]
    rescue = RecordRescue(int(found.sum()), int((~found).sum()), radius)
    # records change place or are lost: say so where the user looks
    log.warning(
        "%d of %d %s had no predictor data at their cell: %d moved to the nearest valid cell (<= %d cells, "
        "train.nearest_valid_cells), %d without a valid cell that near",
        len(bad),
        len(records),
        what,
        rescue.moved,
        radius,
        rescue.unrescued,
    )
    return replace(samples, x=x, y=y), rescue
