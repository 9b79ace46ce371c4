"""The fused predictor: the species model and, optionally, the habitat classifier run inside one tile task (the fused
indicators mode and the impact assessment), giving a tile's probabilities and habitat classes exactly as
``species.zarr`` and ``habitat.zarr`` would hold them, never written (worker side).

The species model's output is quantised to the stores' uint8 codes and decoded (the codes are what the species
predictor returns, the map's own), and the habitats are classified from those codes by the same rule as
``habitat-map``: so a fused tile computes from the very values a two-pass run reads, and both give identical maps.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import decode
from geoplantnet.runtime.cluster import task_resources

if TYPE_CHECKING:
    from distributed import Client


class SpeciesTiles(Protocol):
    """What a fused tile needs of the species predictor (the map's): its grid, a tile's uint8 codes and the task's
    resources."""

    map_grid: Grid

    def predict(self, tile: Tile) -> tuple[np.ndarray, dict[str, Any]]: ...

    def resources(self, client: Client) -> dict[str, float] | None: ...


class HabitatCodes(Protocol):
    """What a fused tile needs of the habitat classifier (the habitat map's): habitat arrays from species codes."""

    device: str

    def classify(self, codes: np.ndarray) -> tuple[Any, int]: ...


@dataclass(frozen=True)
class FusedPredictor:
    """The species model and, optionally, the habitat classifier a fused tile runs (see the module docstring)."""

    species: SpeciesTiles  # the map's species predictor
    habitats: HabitatCodes | None  # the habitat map's classifier, or None
    n_species: int
    n_ranks: int  # the habitat classes kept per pixel (top_k; 0 without a classifier)

    def tile(self, tile: Tile) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
        """p (S, y, x) float32 (NaN: no data), habitat classes (K, y, x) and their probabilities (K, y, x) or None,
        and the timings (runs on a worker)."""
        return self.classify(*self.species.predict(tile))

    def classify(
        self, codes: np.ndarray, info: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
        """:meth:`tile` from the species codes of a tile: decoded, and their habitats classified."""
        top = top_p = None
        if self.habitats is not None:
            t0 = time.perf_counter()
            blocks, loads = self.habitats.classify(codes)
            top, top_p = blocks.top_k, decode(blocks.top_k_probability)
            info = {**info, "habitat_s": round(time.perf_counter() - t0, 3)}
            info["model_loads"] = max(info["model_loads"], loads)
        return decode(codes), top, top_p, info

    def cells(
        self, tile: Tile, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """p (n, S), habitat classes (n, K) and their probabilities (n, K) at grid cells inside ``tile``: the whole
        tile computed as a fused tile computes it, so the values are the map's, bit for bit (a one-pixel window gives
        different float rounding in the network, and a uint8 code one step off now and then)."""
        p, top, top_p, _ = self.tile(tile)
        r, c = np.asarray(rows) - tile.y0, np.asarray(cols) - tile.x0
        return p[:, r, c].T, None if top is None else top[:, r, c].T, None if top_p is None else top_p[:, r, c].T

    def resources(self, client: Client) -> dict[str, float] | None:
        """What a fused task asks for: the species model's (a GPU when there are some), or the classifier's."""
        resources = self.species.resources(client)
        if resources is None and self.habitats is not None and self.habitats.device != "cpu":
            resources = task_resources(client)
        return resources


@dataclass(frozen=True)
class CellsJob:
    """Grid cells to read from fused tiles (the surveys of a calibration): tile id -> the cells' rows and columns."""

    fused: FusedPredictor
    cells: dict[str, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def at(
        cls, fused: FusedPredictor, grid: Grid, tile: int, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[CellsJob, list[Tile], dict[str, np.ndarray]]:
        """The job reading the cells (``rows``, ``cols``; -1 off the grid), the tiles holding them, and which cells
        each tile holds (tile id -> their indices)."""
        ok = np.flatnonzero(rows >= 0)
        tiles = {(t.row, t.col): t for t in grid.tiles(tile)}
        keys = np.stack([rows[ok] // tile, cols[ok] // tile], axis=1) if ok.size else np.zeros((0, 2), "int64")
        at = {tiles[a, b].id: ok[(keys == (a, b)).all(axis=1)] for a, b in {tuple(k) for k in keys.tolist()}}
        todo = [t for t in tiles.values() if t.id in at]
        return cls(fused, {t: (rows[idx], cols[idx]) for t, idx in at.items()}), todo, at


def fused_cells(job: CellsJob, tile: Tile) -> dict[str, Any]:
    """A tile's values at its cells of ``job`` (:meth:`FusedPredictor.cells`), as a tile report (runs on a worker)."""
    rows, cols = job.cells[tile.id]
    p, top, top_p = job.fused.cells(tile, rows, cols)
    return {"tile": tile.id, "pixels": tile.height * tile.width, "pid": os.getpid(), "p": p, "top": top, "top_p": top_p}
