"""A map pixel's point predictors for habitat models: the species model's inputs at the pixel, read tile by tile
through the map's reader (:class:`geoplantnet.inference.reader.MapSources`) exactly as the species peers read them
(:func:`geoplantnet.inference.points.pixel_features`), with the maps' no-data rule.

What the habitat map's forest (:mod:`geoplantnet.models.map_forest`) is fitted on at the plots and mapped on in a
habitat tile, and what the direct random forest of ``habitat-map --evaluate`` reads: one reader, so the rows agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import tile_geometry
from geoplantnet.inference.points import pixel_features
from geoplantnet.models.peers import PeerSpec, feature_names

if TYPE_CHECKING:
    from geoplantnet.models.species_net import ModelSpec


def peer_spec(spec: ModelSpec | PeerSpec) -> PeerSpec:
    """The species model's point predictors (its ``spec``) as a peer's spec (what :func:`pixel_features` reads for a
    pixel)."""
    seasons = spec.modalities["series"][-1] if "series" in spec.modalities else 0
    bands = list(spec.bands or []) if seasons else None
    return PeerSpec(
        kind="random_forest",
        species=["habitat"],
        variables=list(spec.variables) if spec.variables else None,
        bands=bands,
        seasons=seasons if bands else 0,
        features=feature_names(spec.variables, bands, seasons),
    )


@dataclass(frozen=True)
class PixelPredictors:
    """The point predictors of ``spec`` on ``grid`` read by ``sources`` (small to ship: the reader, two grids)."""

    sources: Any  # geoplantnet.inference.reader.MapSources
    spec: PeerSpec
    grid: Grid
    cube_grid: Grid | None

    @property
    def features(self) -> list[str]:
        return list(self.spec.features)

    def tile(self, tile: Tile) -> np.ndarray:
        """The rows (height * width, features) of ``tile``, row-major; NaN where an input has no data."""
        geom = tile_geometry(self.spec, tile, self.grid, self.cube_grid)  # type: ignore[arg-type]
        patch, env = self.sources.read(self.spec, geom, self.grid, self.cube_grid)
        return pixel_features(self.spec, geom, patch, env)

    def has_data(self, rows: np.ndarray) -> np.ndarray:
        """The maps' no-data rule: every environmental variable finite (Sentinel-2 only: any finite value); a cloudy
        season stays NaN, which a forest splits on as missing, as the species forest does."""
        n_env = len(self.spec.variables or ())
        return np.isfinite(rows[:, :n_env]).all(axis=1) if n_env else np.isfinite(rows).any(axis=1)

    def at(self, x: np.ndarray, y: np.ndarray, tile_size: int) -> np.ndarray:
        """The rows (n, features) at points ``x``, ``y`` (grid CRS; NaN off the grid): each tile holding some read
        once, as a map tile reads it."""
        out = np.full((len(x), len(self.spec.features)), np.nan, np.float32)
        inside = self.grid.contains(x, y)
        r, c = np.full(len(x), -1), np.full(len(x), -1)
        r[inside], c[inside] = self.grid.index(x[inside], y[inside])
        for tile in self.grid.tiles(tile_size):
            here = inside & (r >= tile.y0) & (r < tile.y0 + tile.height) & (c >= tile.x0) & (c < tile.x0 + tile.width)
            if here.any():
                rows = self.tile(tile)
                out[here] = rows[(r[here] - tile.y0) * tile.width + (c[here] - tile.x0)]
        return out

    def grid_rows(self, tile_size: int) -> np.ndarray:
        """Every pixel's rows (height, width, features) (an evaluation region: held in memory)."""
        rows = np.full((self.grid.height, self.grid.width, len(self.spec.features)), np.nan, np.float32)
        for tile in self.grid.tiles(tile_size):
            ys, xs = tile.slices
            rows[ys, xs] = self.tile(tile).reshape(tile.height, tile.width, -1)
        return rows
