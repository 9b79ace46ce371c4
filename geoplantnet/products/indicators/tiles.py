"""The indicator tile tasks (worker side): read the tile's species codes (one shard) and habitat classes, or predict
them (the fused mode), compute :func:`~geoplantnet.products.indicators.declared.indicator_blocks`, write."""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Tile
from geoplantnet.inference.dense import decode
from geoplantnet.inference.fused import FusedPredictor
from geoplantnet.products.habitat_map import read_species_tile
from geoplantnet.products.indicators.declared import indicator_blocks
from geoplantnet.products.indicators.model import IndicatorModel
from geoplantnet.storage.store import zarr_store
from geoplantnet.storage.tiles import TileOutput, write_tile_blocks

PRODUCT = "indicators"


class IndicatorError(GeoplantnetError):
    """Indicators that cannot start (stores or tables that do not fit) or a tile that failed."""


@dataclass(frozen=True)
class IndicatorTileJob:
    """Everything an indicator tile task needs besides its tile (two-pass: the stores are read)."""

    species_url: str
    species_options: dict[str, Any]
    habitat_url: str | None
    habitat_options: dict[str, Any]
    model: IndicatorModel
    species_slot: int | None  # the year's slots in series (None: single-year stores)
    habitat_slot: int | None
    output: TileOutput


@dataclass(frozen=True)
class FusedTileJob:
    """Everything a fused indicator tile task needs besides its tile (the species and habitats are predicted)."""

    fused: FusedPredictor
    model: IndicatorModel
    output: TileOutput


def read_habitat_tile(
    url: str, tile: Tile, storage_options: Mapping[str, Any] | None = None, slot: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The habitat classes (K, y, x) int16 and their probabilities (K, y, x) float32 of ``tile`` (of the year in
    ``slot`` of a series)."""
    group = zarr.open_group(zarr_store(url, storage_options), mode="r")
    ys, xs = tile.slices
    lead = (slice(None),) if slot is None else (slot, slice(None))
    top, prob = group["top_k"][(*lead, ys, xs)], group["top_k_probability"][(*lead, ys, xs)]
    return np.asarray(top), decode(np.asarray(prob))


def tile_seed(tile: Tile) -> int:
    """A tile's Monte-Carlo stream: fixed by its place, so a resumed or rerun tile gets the same draws."""
    return zlib.crc32(tile.id.encode())


def _compute_and_write(
    model: IndicatorModel,
    output: TileOutput,
    tile: Tile,
    p: np.ndarray,
    top: np.ndarray | None,
    top_p: np.ndarray | None,
    info: dict[str, Any],
) -> dict[str, Any]:
    """A tile's indicators from its probabilities and habitat classes, written; returns the task's report."""
    t0 = time.perf_counter()
    blocks = indicator_blocks(p, model, habitat_top=top, habitat_top_probability=top_p, seed=tile_seed(tile))
    loads = info.pop("model_loads", 0)
    info = {**info, "indicators_s": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
    write_tile_blocks(output.url, blocks, tile, run=output.run, info=info, storage_options=output.storage_options)
    return {**info, "tile": tile.id, "pixels": tile.height * tile.width, "model_loads": loads}


def indicator_tile(job: IndicatorTileJob, tile: Tile) -> dict[str, Any]:
    """Read, compute and write one tile's indicators; returns its timings (runs on a worker)."""
    t0 = time.perf_counter()
    p = decode(read_species_tile(job.species_url, tile, job.species_options, job.species_slot))
    top = top_p = None
    if job.habitat_url is not None:
        top, top_p = read_habitat_tile(job.habitat_url, tile, job.habitat_options, job.habitat_slot)
    info = {"read_s": round(time.perf_counter() - t0, 3)}
    return _compute_and_write(job.model, job.output, tile, p, top, top_p, info)


def fused_indicator_tile(job: FusedTileJob, tile: Tile) -> dict[str, Any]:
    """Predict the tile's species (and habitats), compute and write its indicators; returns its timings."""
    p, top, top_p, info = job.fused.tile(tile)
    return _compute_and_write(job.model, job.output, tile, p, top, top_p, info)
