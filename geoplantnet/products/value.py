"""Biodiversity value: ``value.zarr`` (the value grid, 10 m) and its aggregate ``value_50m.zarr`` (the map grid).

- ``value.zarr``: ``biodiversity_value`` (uint8 codes of the U-Net's probability of high value or, trained on a
  polygon score (``value.score_column``), of that score rescaled linearly to [0, 1]: the store's attrs
  ``value_score_at_0`` / ``value_score_at_1`` give the scale; dropout off) and,
  with Monte-Carlo dropout draws, ``biodiversity_value_sd`` (their standard deviation); a tile is read with the
  network's halo (:class:`geoplantnet.inference.value.ValuePredictor`), so tiles have no seams.
- ``value_50m.zarr``: per map cell the mean and standard deviation of its 10 m values (:func:`cell_stats`).

The plans are made on the driver from the value section and the predictor; the tile functions run on the workers.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr

from geoplantnet.core.config import ConfigError, GridConfig, ValueConfig, redact
from geoplantnet.core.encoding import SCALE
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import decode, encode
from geoplantnet.inference.value import ValueJobError, ValuePredictor
from geoplantnet.products.base import Product, TilePlan, register
from geoplantnet.storage.store import shown, zarr_store
from geoplantnet.storage.tiles import TileOutput, probability_attrs, tiled_variable, write_tile_blocks

PRODUCT = "value"
AGGREGATE = "value-50m"  # the aggregate store's geoplantnet_product attribute
STORE = "value.zarr"
AGGREGATE_STORE = "value_50m.zarr"
MODEL_FILE = "value/model.pt"  # under store.root: where ``geoplantnet value`` saves its final model

NAMES = {
    "biodiversity_value": "biodiversity value (probability of high value, or a condition score rescaled to [0, 1])",
    "biodiversity_value_sd": "uncertainty of the biodiversity value (standard deviation)",
}


def value_grid(grid: GridConfig, settings: ValueConfig) -> Grid:
    """The value grid: the map grid at ``value.resolution`` (same bounds), refused unless the map resolution is a
    whole multiple of it and ``value.tile`` covers whole map cells (so the 50 m aggregate tiles align)."""
    map_grid = grid.grid()
    ratio = map_grid.resolution / settings.resolution
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise ConfigError(
            f"value.resolution={settings.resolution:g} must divide the map resolution grid.resolution="
            f"{map_grid.resolution:g}"
        )
    if settings.tile % round(ratio):
        raise ConfigError(f"value.tile={settings.tile} must be a multiple of {round(ratio)} (map cell / value pixel)")
    return map_grid.at_resolution(settings.resolution)


def aggregate_url(url: str) -> str:
    """The 50 m aggregate's store beside ``value.zarr`` at ``url`` (``value_50m.zarr``)."""
    return f"{url.removesuffix('.zarr')}_50m.zarr"


def value_layout(
    grid: Grid, tile: int, descriptions: dict[str, str], versions: str
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """A tiled layout of uint8 value codes on ``grid``: one variable per entry of ``descriptions`` (name ->
    description), one chunk per tile."""
    data, encoding = {}, {}
    for name, description in descriptions.items():
        attrs = probability_attrs(NAMES[name]) | {"description": description, "model_versions": versions}
        data[name], encoding[name] = tiled_variable(
            ("y", "x"), grid.shape, dtype="uint8", fill=255, chunks=(tile, tile), scale=SCALE, attrs=attrs
        )
    return xr.Dataset(data, coords=grid.coords()), encoding


# -- tile tasks (run on the workers)


@dataclass(frozen=True)
class ValueTileJob:
    """What a value tile task needs besides its tile."""

    predictor: ValuePredictor
    output: TileOutput
    draws: int
    seed: int


def value_tile(job: ValueTileJob, tile: Tile) -> dict[str, Any]:
    """Read, predict and write one 10 m tile (runs on a worker): the deterministic value, and the spread of the
    MC-dropout draws when there are any."""
    t0 = time.perf_counter()
    p = job.predictor
    features = p.read(tile)
    t1 = time.perf_counter()
    value = p.predict_window(features, tile)[0]
    valid = np.isfinite(value)
    blocks = {"biodiversity_value": encode(value[None], valid)[0]}
    if job.draws:
        draws = p.predict_window(features, tile, draws=job.draws, seed=job.seed)
        blocks["biodiversity_value_sd"] = encode(draws.std(axis=0)[None], valid)[0]
    t2 = time.perf_counter()
    _, loads = p.loaded()
    info = {"read_s": round(t1 - t0, 3), "model_s": round(t2 - t1, 3), "pid": os.getpid()}
    out = job.output
    write_tile_blocks(out.url, blocks, tile, run=out.run, info=info, storage_options=out.storage_options)
    return {**info, "tile": tile.id, "pixels": tile.height * tile.width, "model_loads": loads}


@dataclass(frozen=True)
class AggregateTileJob:
    """What a 50 m aggregate tile task needs: the 10 m store, the ratio of the grids, the output."""

    value_url: str
    value_options: dict[str, Any]
    ratio: int
    output: TileOutput


def cell_stats(values: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each ``factor x factor`` block of fine pixels (the last two axes), NaN-aware:
    a cell without any value is NaN."""
    *lead, h, w = values.shape
    cells = values.reshape(*lead, h // factor, factor, w // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN cell: NaN, as it should be
        return np.nanmean(cells, axis=(-3, -1)), np.nanstd(cells, axis=(-3, -1))


def aggregate_tile(job: AggregateTileJob, tile: Tile) -> dict[str, Any]:
    """One map-grid tile of the aggregate: the mean and standard deviation of the 10 m values in each cell (NaN,
    stored as no data, where a cell has no value)."""
    t0 = time.perf_counter()
    r = job.ratio
    group = zarr.open_group(zarr_store(job.value_url, job.value_options), mode="r")
    ys = slice(tile.y0 * r, (tile.y0 + tile.height) * r)
    xs = slice(tile.x0 * r, (tile.x0 + tile.width) * r)
    mean, sd = cell_stats(decode(np.asarray(group["biodiversity_value"][ys, xs])), r)
    finite = np.isfinite(mean)
    blocks = {"biodiversity_value": encode(mean[None], finite)[0], "biodiversity_value_sd": encode(sd[None], finite)[0]}
    info = {"read_s": 0.0, "model_s": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
    out = job.output
    write_tile_blocks(out.url, blocks, tile, run=out.run, info=info, storage_options=out.storage_options)
    return {**info, "tile": tile.id, "pixels": tile.height * tile.width, "model_loads": 0}


# -- plans (driver side)


def value_parts(predictor: ValuePredictor, settings: ValueConfig, base: Mapping[str, str]) -> dict[str, str]:
    """What makes a ``value.zarr`` run: ``base`` (the model and inputs, as a species map's run names them), the
    value grid, tiling with the halo, and the draws."""
    return {
        **base,
        "grid": predictor.grid.label(),
        "tiling": f"tile={settings.tile} halo={predictor.halo}",
        "draws": f"{settings.draws} seed={settings.seed}",
        "shipped": _version(predictor),  # the forest and the weight of a blend: another forest, another run
    }


def _version(predictor: ValuePredictor) -> str:
    if predictor.forest is None:
        return f"value-unet/{predictor.model.sha256[:12]}"
    return (
        f"value-{predictor.shipped}/unet {predictor.model.sha256[:12]} x {predictor.unet_weight:g} + forest "
        f"{predictor.forest.sha256[:12]} x {1 - predictor.unet_weight:g}"
    )


def plan_value(
    predictor: ValuePredictor,
    settings: ValueConfig,
    parts: Mapping[str, str],
    output: TileOutput,
    resources: dict[str, float] | None,
) -> TilePlan:
    """The ``value.zarr`` run of ``parts`` (:func:`value_parts`) into ``output``."""
    meaning = dict(predictor.meaning)
    learnt = (
        f"the polygons' {meaning.get('value_score_column')} score, linear: score = {meaning.get('value_score_at_0')} "
        f"+ value x ({meaning.get('value_score_at_1')} - {meaning.get('value_score_at_0')})"
        if meaning.get("value_target") == "score"
        else "polygons of high vs low value (the probability of high)"
    )
    w = predictor.unet_weight
    how = {
        "unet": "U-Net",
        "forest": "class-balanced random forest",
        "blend": f"{w:g} x U-Net + {1 - w:g} x class-balanced random forest",
    }[predictor.shipped]
    described = {"biodiversity_value": f"{how} trained on {learnt}; dropout off"}
    if settings.draws:
        described["biodiversity_value_sd"] = f"standard deviation of {settings.draws} Monte-Carlo dropout draws" + (
            "" if predictor.shipped == "unet" else f" of the U-Net x {w:g} (the forest is deterministic)"
        )
    attrs = {
        "model_versions": _version(predictor),
        "model_file": redact({"u": predictor.model.url})["u"],
        "model_sha256": predictor.model.sha256,
        "value_model": predictor.shipped,
        "value_unet_weight": w,
        **meaning,
    }
    return TilePlan(
        fn=value_tile,
        job=ValueTileJob(predictor, output, settings.draws, settings.seed),
        output=output,
        grid=predictor.grid,
        tile=settings.tile,
        layout=value_layout(predictor.grid, settings.tile, described, _version(predictor)),
        parts=parts,
        attrs=attrs,
        error=ValueJobError,
        resources=resources,
    )


def aggregate_parts(value: TilePlan, map_grid: Grid) -> dict[str, str]:
    """What makes a ``value_50m.zarr`` run: the ``value.zarr`` run it aggregates, the map grid and its tiling."""
    ratio = round(map_grid.resolution / value.grid.resolution)
    return {"value": value.output.run, "grid": map_grid.label(), "tiling": f"tile={value.tile // ratio}"}


def plan_aggregate(value: TilePlan, map_grid: Grid, parts: Mapping[str, str], output: TileOutput) -> TilePlan:
    """The ``value_50m.zarr`` run of ``parts`` (:func:`aggregate_parts`) into ``output``, from the store ``value``
    writes."""
    grid = value.grid
    ratio = round(map_grid.resolution / grid.resolution)
    described = {
        "biodiversity_value": f"mean of the {ratio} x {ratio} biodiversity values at {grid.resolution:g} m in the cell",
        "biodiversity_value_sd": f"standard deviation of the {grid.resolution:g} m biodiversity values in the cell",
    }
    source = value.output
    return TilePlan(
        fn=aggregate_tile,
        job=AggregateTileJob(source.url, source.storage_options, ratio, output),
        output=output,
        grid=map_grid,
        tile=value.tile // ratio,
        layout=value_layout(map_grid, value.tile // ratio, described, value.attrs["model_versions"]),
        parts=parts,
        attrs={**value.attrs, "value_store": shown(source.url), "value_run": source.run},
        error=ValueJobError,
        resources=None,
    )


def map_summary(done: Any, url: str, seconds: float) -> dict[str, Any]:
    """The report's line of a store written by :func:`geoplantnet.runs.tiles.produce_tiles` (``done``: its
    ``TiledRun``) in ``seconds``."""
    return {
        "store": shown(url),
        "tiles": len(done.tiles),
        "tiles_computed": len(done.results),
        "tiles_skipped": len(done.tiles) - len(done.todo),
        "pixels_per_second": done.pixels_per_second,
        "model_seconds": round(sum(r["model_s"] for r in done.results), 2),
        "read_seconds": round(sum(r["read_s"] for r in done.results), 2),
        "seconds": round(seconds, 1),
    }


# the plans need the trained model and the run's inputs, which ``geoplantnet value`` provides (no registry plan)
register(Product(PRODUCT, STORE, "biodiversity value (10 m)"))
register(Product(AGGREGATE, AGGREGATE_STORE, "biodiversity value per map cell (mean, spread)", requires=(PRODUCT,)))
