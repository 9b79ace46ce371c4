"""``geoplantnet value``: biodiversity value (after Andermann et al.) from polygons labelled high / low value.

::

    polygons (GeoParquet / GeoJSON / GeoPackage, any CRS; or the virtual region's) ─▶ samples.value_labels
        ─▶ label and polygon-id rasters on the value grid (the map grid at value.resolution, 10 m)
    MapSources.composite + MapSources.environment over the polygons' window ─▶ feature stack (C, y, x)
        ─▶ spatial folds of whole polygons (blocks by centroid): per fold a U-Net (training.value: random crops of
           the training polygons) and a class-balanced random forest on the same sampled pixels, both scored on
           the held-out polygons' sampled pixels (AUC, accuracy at 0.5)
        ─▶ the final U-Net on every polygon ─▶ <store.root>/value/model.pt (+ report.md, report.json)
    ValuePredictor per tile (tile + halo read through its MapSources, NaN past the grid) ─▶ value.zarr (10 m,
        biodiversity_value and, with MC-dropout draws, biodiversity_value_sd; uint8 codes) ─▶ value_50m.zarr (the
        map grid: mean and spread of the 10 m values per cell), both through runs.tiles.produce_tiles
    --evaluate (virtual region): the 50 m map against the true value score

Nothing is chosen on a test fold: the folds' numbers are reported, never used to pick a model or a setting. A rerun
with the same settings and inputs reuses the saved model and folds (by a training key) and resumes the stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pystac
import xarray as xr
import zarr

from geoplantnet.core.config import ConfigError, RunConfig, StoreConfig, ValueConfig, redact
from geoplantnet.core.encoding import SCALE
from geoplantnet.core.errors import GeoplantnetError, RefusedError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.core.hashing import fingerprint
from geoplantnet.inference.dense import TileGeometry, decode, encode
from geoplantnet.jobs.mapping import MapSources, ModelRef, run_parts
from geoplantnet.runs.context import streaming
from geoplantnet.runs.tiles import TileOutput, produce_tiles
from geoplantnet.runtime.cluster import task_resources
from geoplantnet.samples.value_labels import LabelRasters, rasterise_labels, read_value_polygons
from geoplantnet.storage.outputs import claim_folder, finish_folder, place, place_json
from geoplantnet.storage.store import (
    exists,
    is_local,
    join,
    open_store,
    preflight,
    read_options_for,
    shown,
    storage_options_for,
    zarr_store,
)
from geoplantnet.storage.tiles import probability_attrs, tiled_variable, write_tile_blocks
from geoplantnet.validation.blocks import BlockError, spatial_folds, validation_split

# the value network (torch), stackstac and distributed are imported where they are used: a command refuses bad
# polygons or a bad value model file without the rest (tests/test_refusal_times.py)
if TYPE_CHECKING:
    import geopandas as gpd
    from distributed import Client

    from geoplantnet.models.value_net import ValueModel

PRODUCT = "value"
AGGREGATE = "value-50m"
REPORT_FILES = ("model.pt", "report.md", "report.json", "folds.csv")


class ValueJobError(GeoplantnetError):
    """A value run that cannot start or a tile that failed (one line)."""


# -- grids and inputs


def value_grid(cfg: RunConfig) -> Grid:
    """The value grid: the map grid at ``value.resolution`` (same bounds), refused unless the map resolution is a
    whole multiple of it and ``value.tile`` covers whole map cells (so the 50 m aggregate tiles align)."""
    map_grid = cfg.grid.grid()
    ratio = map_grid.resolution / cfg.value.resolution
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise ConfigError(
            f"value.resolution={cfg.value.resolution:g} must divide the map resolution grid.resolution="
            f"{map_grid.resolution:g}"
        )
    if cfg.value.tile % round(ratio):
        raise ConfigError(f"value.tile={cfg.value.tile} must be a multiple of {round(ratio)} (map cell / value pixel)")
    return map_grid.at_resolution(cfg.value.resolution)


def default_value_model(cfg: RunConfig) -> str:
    """Where ``geoplantnet value`` saves its final model: ``<store.root>/value/model.pt``."""
    return join(cfg.store.root, "value/model.pt")


def default_stores(cfg: RunConfig, out: str | None) -> tuple[str, str]:
    """``value.zarr`` (``out`` or ``<store.root>/value.zarr``) and its 50 m aggregate beside it (``value_50m.zarr``)."""
    url = (out or join(cfg.store.root, "value.zarr")).rstrip("/")
    return url, f"{url.removesuffix('.zarr')}_50m.zarr"


def feature_layout(sources: MapSources, grid: Grid) -> tuple[list[str], list[str], list[str]]:
    """The run's inputs as the value model takes them: Sentinel-2 channels (bands then indices), environmental
    variables (``model_stack``'s names, from the rasters' metadata only) and those of them that are one-hot classes."""
    from geoplantnet.sources import predictors

    bands = sources.band_names() if sources.s2_items else []
    variables: list[str] = []
    one_hot: list[str] = []
    if sources.env_items:
        items = [pystac.Item.from_dict(dict(i)) for i in sources.env_items]
        probe = Grid(grid.resolution, grid.left, grid.top, 1, 1, grid.epsg)  # metadata only: nothing is read
        variables = [str(v) for v in predictors.model_stack(items, probe)["var"].values]
        plain = {str(v) for v in predictors.environment_stack(items, probe)["var"].values}
        one_hot = [v for v in variables if v not in plain]
    return bands, variables, one_hot


def feature_names(bands: list[str], variables: list[str], n_seasons: int) -> list[str]:
    """Channel names of the feature stack: ``s2:<band>:t<season>`` (season-major, as the composite flattens), then
    the environmental variables."""
    return [f"s2:{b}:t{s}" for s in range(n_seasons) for b in bands] + list(variables)


def read_features(
    sources: MapSources,
    grid: Grid,
    tile: Tile,
    window: tuple[int, int, int, int],
    bands: list[str],
    variables: list[str],
) -> np.ndarray:
    """The feature stack (C, y, x) of the pixel ``window`` (row0, row1, col0, col1; it may leave ``grid``, NaN
    there) through ``sources.composite`` and ``sources.environment`` only."""
    geom = TileGeometry(tile, window, window, np.zeros(0, np.int64), np.zeros(0, np.int64))
    h, w = window[1] - window[0], window[3] - window[2]
    parts = []
    if bands:
        lead = (len(sources.seasons or ()), len(bands))
        parts.append(geom.read_window(grid, "cube", lambda g: sources.composite(g, bands), lead).reshape(-1, h, w))
    if variables:
        parts.append(geom.read_window(grid, "env", lambda g: sources.environment(g, variables), (len(variables),)))
    if not parts:
        raise ValueJobError("the run has neither Sentinel-2 imagery nor environmental rasters to map value from")
    return np.concatenate(parts).astype(np.float32)


# -- the predictor (tile + halo), shared with other jobs


def cached_value_model(
    ref: ModelRef, device: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[ValueModel, int]:
    """The value model of ``ref`` (read with ``storage_options``) kept by this worker process, and its loads; a file
    changed since the driver read it is refused rather than mixed into a map."""
    from geoplantnet.models.value_net import ValueModel
    from geoplantnet.runtime.worker_cache import pinned
    from geoplantnet.training.train import resolve_device

    dev = resolve_device(device)

    def load() -> tuple[ValueModel, str]:
        model, raw = ValueModel.load(ref.url, dev, dict(storage_options or {}))
        return model, hashlib.sha256(raw).hexdigest()

    return pinned("value-model", ref.url, ref.sha256, str(dev), load, "value model file")


@dataclass(frozen=True)
class ValuePredictor:
    """How a tile's biodiversity value is predicted (picklable, sent to workers): the model file, the inputs (every
    read goes through ``sources.composite`` / ``sources.environment``), the value grid, the channels and halo."""

    model: ModelRef
    sources: MapSources
    grid: Grid
    bands: tuple[str, ...]
    variables: tuple[str, ...]
    halo: int
    device: str = "cpu"
    model_options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # fsspec options of the model file

    def window(self, tile: Tile) -> tuple[int, int, int, int]:
        """The read window of ``tile``: the tile grown by the halo (rows, then columns; may leave the grid)."""
        h = self.halo
        return tile.y0 - h, tile.y0 + tile.height + h, tile.x0 - h, tile.x0 + tile.width + h

    def read(self, tile: Tile) -> np.ndarray:
        """The features (C, y, x) of ``tile``'s window (tile + halo, NaN past the grid)."""
        return read_features(self.sources, self.grid, tile, self.window(tile), list(self.bands), list(self.variables))

    def predict_window(self, features: np.ndarray, tile: Tile, *, draws: int = 0, seed: int = 0) -> np.ndarray:
        """:meth:`predict` from features already read by :meth:`read`."""
        model, _ = cached_value_model(self.model, self.device, self.model_options)
        # the same seed in every tile: Dropout2d draws one mask per channel whatever the window's size, so draw k is
        # the same thinned network everywhere and the draws (and their spread) have no tile seams either
        probs = model.predict(features, draws=draws, seed=seed)
        h = self.halo
        inner = (slice(h, h + tile.height), slice(h, h + tile.width))
        nodata = ~np.isfinite(features[(slice(None), *inner)]).any(axis=0)  # no input at all: no value
        out = probs[(slice(None), *inner)].astype(np.float32)
        out[:, nodata] = np.nan
        return out

    def predict(self, tile: Tile, *, draws: int = 0, seed: int = 0) -> np.ndarray:
        """(max(draws,1), tile.height, tile.width) float32 value in [0,1], NaN = no data; reads tile+halo."""
        return self.predict_window(self.read(tile), tile, draws=draws, seed=seed)


@dataclass(frozen=True)
class ValueModelFile:
    """A value model file read and checked on the driver, with the sha256 of its bytes: read before a job's inputs
    are made or a cluster starts, so a missing or corrupt file fails first."""

    url: str
    model: ValueModel
    sha256: str
    options: dict[str, Any]  # the storage options it is read with (the store's, for a model under store.root)

    @classmethod
    def read(cls, url: str, store: StoreConfig) -> ValueModelFile:
        from geoplantnet.models.value_net import ValueModel

        options = read_options_for(url, store)
        model, raw = ValueModel.load(url, storage_options=options)  # ValueModelError (one line) when unusable
        return cls(url, model, hashlib.sha256(raw).hexdigest(), options)


def plan_value_predictor(cfg: RunConfig, model: str | ValueModelFile, sources: MapSources) -> ValuePredictor:
    """Read the value model (unless given read) and check the run's inputs give its features in its order; the
    predictor tile tasks carry, pinned by the file's sha256."""
    from geoplantnet.models.value_net import ValueModelError

    read = model if isinstance(model, ValueModelFile) else ValueModelFile.read(model, cfg.store)
    model_url, spec = read.url, read.model.spec
    grid = value_grid(cfg)
    bands, variables, _ = feature_layout(sources, grid)
    names = feature_names(bands, variables, len(sources.seasons or ()) if bands else 0)
    if names != spec.features:
        missing = [n for n in spec.features if n not in names]
        extra = [n for n in names if n not in spec.features]
        raise ValueModelError(
            f"{shown(model_url)}: the value model was trained on {len(spec.features)} features, the run's "
            f"inputs give {len(names)} (missing {missing[:6]}, not in the model {extra[:6]})"
        )
    ref = ModelRef(model_url, read.sha256)
    return ValuePredictor(ref, sources, grid, tuple(bands), tuple(variables), spec.halo, cfg.map.device, read.options)


# -- tile tasks


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
    _, loads = cached_value_model(p.model, p.device, p.model_options)
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


# -- layouts


def value_layout(
    grid: Grid, tile: int, descriptions: dict[str, str], versions: str
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """A tiled layout of uint8 value codes on ``grid``: one variable per entry of ``descriptions`` (name ->
    description), one chunk per tile."""
    data, encoding = {}, {}
    names = {
        "biodiversity_value": "biodiversity value (probability of high rather than low value)",
        "biodiversity_value_sd": "uncertainty of the biodiversity value (standard deviation)",
    }
    for name, description in descriptions.items():
        attrs = probability_attrs(names[name]) | {"description": description, "model_versions": versions}
        data[name], encoding[name] = tiled_variable(
            ("y", "x"), grid.shape, dtype="uint8", fill=255, chunks=(tile, tile), scale=SCALE, attrs=attrs
        )
    return xr.Dataset(data, coords=grid.coords()), encoding


# -- labels, folds, pixels


@dataclass(frozen=True)
class Labels:
    """The polygons (grid CRS; ``polygon_id``, ``label``, ``fold``), their rasters on the training window, the
    window (row0, row1, col0, col1 on the value grid) and where they came from."""

    polygons: gpd.GeoDataFrame
    rasters: LabelRasters
    window: tuple[int, int, int, int]
    source: str
    notes: tuple[str, ...]


def polygon_folds(polygons: gpd.GeoDataFrame, settings: ValueConfig) -> tuple[np.ndarray, list[str]]:
    """A fold per polygon: spatial blocks of ``block_size_m`` by centroid dealt to folds with both classes spread
    (``spatial_folds`` stratified by label), so a polygon is never in two folds; blocks are halved while fewer than
    the folds hold polygons (said so). Notes name folds without one of the classes."""
    n = len(polygons)
    if n < settings.folds:
        raise ValueJobError(f"{n} labelled polygons on the grid, fewer than value.folds={settings.folds}")
    centre = polygons.geometry.centroid
    x, y, labels = centre.x.to_numpy(), centre.y.to_numpy(), polygons["label"].to_numpy()
    folds, notes = spatial_folds(
        x, y, settings.block_size_m, settings.folds, seed=settings.seed, stratify=labels, fallback="smaller_blocks",
        what="polygons",
    )  # fmt: skip
    for k in range(settings.folds):
        labels = set(polygons["label"][folds == k].tolist())
        for cls, name in ((1, settings.high), (0, settings.low)):
            if cls not in labels:
                notes.append(f"fold {k} holds no {name!r} polygon: its AUC is undefined")
    return folds, notes


def load_labels(cfg: RunConfig, source: str, grid: Grid) -> Labels:
    """Read and rasterise the polygons of ``source`` onto the value grid, assign folds, and the training window:
    the labelled pixels' bounding box grown by a crop and the model's halo (may leave the grid: NaN there)."""
    s = cfg.value
    polygons = read_value_polygons(source, label_column=s.label_column, high=s.high, low=s.low, epsg=grid.epsg)
    full = rasterise_labels(polygons, grid)
    for cls, name in ((1, s.high), (0, s.low)):
        if not (full.label == cls).any():
            raise ValueJobError(f"{source}: no {name!r} polygon covers a pixel centre of the grid {grid.label()}")
    on_grid = np.unique(full.polygon[full.polygon >= 0])
    polygons = polygons[polygons["polygon_id"].isin(on_grid)].reset_index(drop=True)
    folds, notes = polygon_folds(polygons, s)
    polygons["fold"] = folds
    rows, cols = np.nonzero(full.label >= 0)
    from geoplantnet.models.value_net import halo  # torch: imported once the polygons are read and checked

    margin = max(s.crop, halo(s.depth))
    window = (rows.min() - margin, rows.max() + 1 + margin, cols.min() - margin, cols.max() + 1 + margin)
    (ys, xs), ((top, bottom), (left, right)) = grid.clip(window[:2], window[2:])
    pad = ((top, bottom), (left, right))
    rasters = LabelRasters(
        np.pad(full.label[ys, xs], pad, constant_values=-1), np.pad(full.polygon[ys, xs], pad, constant_values=-1)
    )
    return Labels(polygons, rasters, tuple(int(v) for v in window), source, tuple(notes))


def sample_pixels(rasters: LabelRasters, per_polygon: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_polygon`` labelled pixels (rows, cols) of each polygon, drawn once (seeded): the forest's
    training rows and both models' test pixels."""
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero((rasters.label >= 0) & (rasters.polygon >= 0))
    owner = rasters.polygon[rows, cols]
    order = np.argsort(owner, kind="stable")
    rows, cols, owner = rows[order], cols[order], owner[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    keep = []
    for start, stop in zip(starts, [*starts[1:], len(owner)], strict=True):
        idx = np.arange(start, stop)
        keep.append(idx if len(idx) <= per_polygon else rng.choice(idx, per_polygon, replace=False))
    chosen = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return rows[chosen], cols[chosen]


def _scores(label: np.ndarray, prob: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    both = len(np.unique(label)) == 2
    return {
        "auc": round(float(roc_auc_score(label, prob)), 4) if both else None,
        "accuracy": round(float(((prob >= 0.5) == (label == 1)).mean()), 4) if len(label) else None,
    }


def _forest(settings: ValueConfig, rows: np.ndarray, label: np.ndarray) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(
        n_estimators=settings.forest_trees, class_weight="balanced", random_state=settings.seed, n_jobs=1
    )
    return forest.fit(rows, label)  # NaN in rows: scikit-learn's trees route missing values themselves


# -- training and cross-validation


@dataclass
class Trained:
    """The cross-validation's rows and the final model's path, sha256 and training info."""

    folds: list[dict[str, Any]]
    model: str
    sha256: str
    training: dict[str, Any]
    reused: bool


def inner_split(labels: Labels, label: np.ndarray, settings: ValueConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """``label`` split into the labels a network fits and those of its validation polygons (early stopping): about a
    fifth of the polygons ``label`` holds, by whole spatial blocks of their centroids (halved while too few), never
    a test fold's. No validation (None) when the polygons are too few to split."""
    polygon = labels.rasters.polygon
    ids = np.unique(polygon[(label >= 0) & (polygon >= 0)])
    part = labels.polygons[labels.polygons["polygon_id"].isin(ids)]
    centre = part.geometry.centroid
    size = settings.block_size_m
    while True:
        try:
            _, val = validation_split(
                centre.x.to_numpy(), centre.y.to_numpy(), np.ones(len(part), bool), size, 0.2, settings.seed
            )
            break
        except BlockError:
            if size < 1.0:
                return label, None
            size /= 2
    held = np.isin(polygon, part["polygon_id"].to_numpy()[val]) & (label >= 0)
    return np.where(held, -1, label).astype(np.int8), np.where(held, label, -1).astype(np.int8)


def _train(
    cfg: RunConfig,
    features: np.ndarray,
    label: np.ndarray,
    labels: Labels,
    names: list[str],
    one_hot: list[str],
    key: str,
) -> tuple[ValueModel, float]:
    from geoplantnet.training.value import train_value_net

    s = cfg.value
    extra = {
        "labels": {"column": s.label_column, "high": s.high, "low": s.low},
        "config": s.model_dump(mode="json"),
        "training_key": key,
    }
    fit, val = inner_split(labels, label, s) if s.patience is not None else (label, None)
    model, info = train_value_net(
        features,
        fit,
        labels.rasters.polygon,
        names,
        s,
        val_label=val,
        device=cfg.train.device,
        unscaled=one_hot,
        spec_extra=extra,
    )
    # not the seconds: a model retrained on the same data is the same file (so its maps resume rather than clash)
    trained = {k: v for k, v in info.as_dict().items() if k != "seconds"}
    model.spec = model.spec.model_copy(update={"trained": trained})
    return model, info.seconds


def cross_validate(
    cfg: RunConfig, features: np.ndarray, labels: Labels, names: list[str], one_hot: list[str], key: str
) -> list[dict[str, Any]]:
    """Per fold: the U-Net and the forest trained on the other folds' polygons, scored on this fold's sampled
    pixels (AUC, accuracy at 0.5); one row per fold and model."""
    s = cfg.value
    r = labels.rasters
    rows, cols = sample_pixels(r, s.pixels_per_polygon, s.seed)
    fold_of = dict(zip(labels.polygons["polygon_id"], labels.polygons["fold"], strict=True))
    pixel_fold = np.array([fold_of[p] for p in r.polygon[rows, cols]], dtype=np.int64)
    y = r.label[rows, cols].astype(np.int64)
    x = features[:, rows, cols].T
    out = []
    for k in range(s.folds):
        test = pixel_fold == k
        held = labels.polygons["polygon_id"][labels.polygons["fold"] == k].to_numpy()
        train_label = np.where(np.isin(r.polygon, held), -1, r.label).astype(np.int8)
        if not (test.any() and (train_label >= 0).any()):
            continue
        polys = labels.polygons[labels.polygons["fold"] == k]
        common = {
            "fold": k,
            "test_pixels": int(test.sum()),
            "test_polygons_high": int((polys["label"] == 1).sum()),
            "test_polygons_low": int((polys["label"] == 0).sum()),
            "train_polygons": int((labels.polygons["fold"] != k).sum()),
        }
        t0 = time.perf_counter()
        net, _ = _train(cfg, features, train_label, labels, names, one_hot, key)
        prob = net.predict(features)[0][rows[test], cols[test]]
        out.append({"model": "unet", **common, **_scores(y[test], prob), "seconds": round(time.perf_counter() - t0, 1)})
        t0 = time.perf_counter()
        train_rows = ~test
        if len(np.unique(y[train_rows])) == 2:
            forest = _forest(s, x[train_rows], y[train_rows])
            prob = forest.predict_proba(x[test])[:, 1]
            row = {**common, **_scores(y[test], prob)}
        else:
            row = {**common, "auc": None, "accuracy": None}
        out.append({"model": "random_forest", **row, "seconds": round(time.perf_counter() - t0, 1)})
    return out


def _report_folder(cfg: RunConfig, *, check: bool = False) -> Path:
    """``<store.root>/value`` (with a remote store root, where the model goes: ``<workdir>/value-report``, since
    reports are local files), claimed (storage/outputs; with ``check`` only checked, before any work): a folder
    geoplantnet did not write is refused; its model and report stay for reuse (``train_or_reuse`` decides, replacing
    another training's model only with --overwrite)."""
    folder = Path(cfg.store.root) / "value" if is_local(cfg.store.root) else Path(cfg.workdir) / "value-report"
    return claim_folder(folder, "value report", REPORT_FILES, overwrite=False, keep=True, check_only=check)


def _previous(folder: Path, model_url: str, key: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The report and model sha256 of an earlier run with the same training key, when both are there."""
    from geoplantnet.models.value_net import ValueModel, ValueModelError

    try:
        report = json.loads((folder / "report.json").read_text())
        model, raw = ValueModel.load(model_url, storage_options=dict(options))
    except (OSError, ValueError, ValueModelError):
        return None
    if report.get("training_key") != key or model.spec.training_key != key:
        return None
    return report, hashlib.sha256(raw).hexdigest()


def training_key(cfg: RunConfig, labels: Labels, sources: MapSources, names: list[str]) -> str:
    """What a trained model depends on: the value settings that train it, the grids, the cube settings, the
    polygons (by content), the input items and feature names."""
    trains = cfg.value.model_dump(mode="json", exclude={"tile", "draws", "polygons"})
    polys = labels.polygons
    shapes = [polys["polygon_id"].tolist(), polys["label"].tolist(), [g.wkb_hex for g in polys.geometry]]
    items = [i["id"] for i in (sources.s2_items or ())] + [i["id"] for i in (sources.env_items or ())]
    return fingerprint(trains, cfg.grid.model_dump(mode="json"), cfg.cube.model_dump(mode="json"), shapes, items, names)


def train_or_reuse(
    cfg: RunConfig, sources: MapSources, labels: Labels, folder: Path, model_url: str, overwrite: bool = False
) -> tuple[Trained, str]:
    """Cross-validate and train the final model, or reuse those of an earlier run with the same training key."""
    grid = value_grid(cfg)
    bands, variables, one_hot = feature_layout(sources, grid)
    names = feature_names(bands, variables, len(sources.seasons or ()) if bands else 0)
    key = training_key(cfg, labels, sources, names)
    options = storage_options_for(model_url, cfg.store)  # the store's: the model is written under store.root
    previous = _previous(folder, model_url, key, options)
    if previous is not None:
        report, sha = previous
        return Trained(report["folds"], model_url, sha, report["final_model"], True), key
    if exists(model_url, options) and not overwrite:
        raise RefusedError(
            f"{shown(model_url)} is a value model of other polygons, inputs or settings; pass --overwrite to replace it"
        )
    for name in ("report.json", "report.md", "folds.csv"):  # they describe the model about to be replaced
        (folder / name).unlink(missing_ok=True)
    region = Tile(0, 0, labels.window[0], labels.window[2], 0, 0, "training-window")
    features = read_features(sources, grid, region, labels.window, bands, variables)
    folds = cross_validate(cfg, features, labels, names, one_hot, key)
    final, seconds = _train(cfg, features, labels.rasters.label, labels, names, one_hot, key)
    sha = final.save(model_url, options)
    training = {**final.spec.trained, "seconds": round(seconds, 1), "version": final.version[:12]}
    return Trained(folds, model_url, sha, training, False), key


# -- evaluation against the virtual truth


def evaluate_value(cfg: RunConfig, aggregate_url: str, labels: Labels, quantile: float = 0.15) -> dict[str, Any]:
    """The 50 m map against the virtual region's true value score: Spearman r over every pixel with both and over
    those outside the training polygons, and the AUC of separating the true top from the bottom ``quantile`` of pixels
    outside the training polygons."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from geoplantnet.runs.inputs import virtual_value_score

    truth = virtual_value_score(cfg).values.astype(np.float64)
    mapped = open_store(aggregate_url)["biodiversity_value"].values.astype(np.float64)
    map_grid = cfg.grid.grid()
    both = np.isfinite(truth) & np.isfinite(mapped)
    rho = spearmanr(truth[both], mapped[both]).statistic if both.sum() > 2 else float("nan")
    # a cell any of whose 10 m pixels lies in a polygon is a training cell
    ratio = round(map_grid.resolution / cfg.value.resolution)
    inside = np.zeros(map_grid.shape, bool)
    ids = labels.rasters.polygon >= 0
    r0, _, c0, _ = labels.window
    rows, cols = np.nonzero(ids)
    rows, cols = (rows + r0) // ratio, (cols + c0) // ratio
    ok = (rows >= 0) & (rows < map_grid.height) & (cols >= 0) & (cols < map_grid.width)
    inside[rows[ok], cols[ok]] = True
    lo, hi = np.quantile(truth[np.isfinite(truth)], [quantile, 1 - quantile])
    outside = both & ~inside
    top, bottom = outside & (truth >= hi), outside & (truth <= lo)
    y = np.r_[np.ones(top.sum()), np.zeros(bottom.sum())]
    auc = roc_auc_score(y, np.r_[mapped[top], mapped[bottom]]) if top.any() and bottom.any() else float("nan")
    rho_out = spearmanr(truth[outside], mapped[outside]).statistic if outside.sum() > 2 else float("nan")
    return {
        "spearman_r": round(float(rho), 4),
        "spearman_r_outside_training": round(float(rho_out), 4),  # the training cells are easy: both are reported
        "pixels": int(both.sum()),
        "top_bottom_auc": round(float(auc), 4),
        "top_bottom_quantile": quantile,
        "top_pixels": int(top.sum()),
        "bottom_pixels": int(bottom.sum()),
        "excluded_training_pixels": int((both & inside).sum()),
    }


# -- the report


def _mean_row(rows: list[dict[str, Any]], model: str) -> dict[str, float | None]:
    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r["model"] == model and r[key] is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    return {"auc": mean("auc"), "accuracy": mean("accuracy")}


def markdown(report: dict[str, Any]) -> str:
    """The value run's report for people."""
    lines = ["# Biodiversity value", ""]
    lines += [f"- polygons: `{report['polygons']['source']}` ({report['polygons']['high']} high, "]
    lines[-1] += f"{report['polygons']['low']} low on the grid); labelled pixels {report['polygons']['pixels']}"
    lines += [f"- note: {n}" for n in report["notes"]]
    lines += ["", "## Spatial folds (whole polygons held out)", ""]
    lines += ["| fold | model | AUC | accuracy | test pixels | high / low test polygons | seconds |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in report["folds"]:
        lines.append(
            f"| {r['fold']} | {r['model']} | {r['auc']} | {r['accuracy']} | {r['test_pixels']} | "
            f"{r['test_polygons_high']} / {r['test_polygons_low']} | {r['seconds']} |"
        )
    for model, m in report["means"].items():
        lines.append(f"| mean | {model} | {m['auc']} | {m['accuracy']} | | | |")
    f = report["final_model"]
    lines += ["", "## Final model", "", f"- `{report['model']}` (sha256 {report['model_sha256'][:12]})"]
    lines += [f"- {k}: {v}" for k, v in f.items()]
    lines += ["", "## Maps", ""]
    lines += [
        f"- {name}: `{m['store']}`, {m['tiles_computed']} of {m['tiles']} tiles, {m['seconds']} s"
        for name, m in report["maps"].items()
    ]
    if report.get("evaluation"):
        e = report["evaluation"]
        lines += ["", "## Against the virtual truth (50 m)", ""]
        lines += [
            f"- Spearman r with value_score: {e['spearman_r']} over {e['pixels']} pixels, "
            f"{e['spearman_r_outside_training']} outside the training polygons"
        ]
        lines += [
            f"- AUC, true top vs bottom {e['top_bottom_quantile']:.0%} outside the polygons: {e['top_bottom_auc']} "
            f"({e['top_pixels']} / {e['bottom_pixels']} pixels)"
        ]
    lines += ["", f"Run time {report['seconds']} s."]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """``report.md``, ``folds.csv`` and ``report.json``, each written beside its name and renamed (strict JSON last)."""
    place(folder, "report.md", lambda p: p.write_text(markdown(report)))
    place(folder, "folds.csv", lambda p: pd.DataFrame(report["folds"]).to_csv(p, index=False))
    place_json(folder, "report.json", report)
    finish_folder(folder)


# -- the job


def _map_summary(done: Any, url: str, seconds: float) -> dict[str, Any]:
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


def produce_value_maps(
    client: Client,
    cfg: RunConfig,
    predictor: ValuePredictor,
    urls: tuple[str, str],
    *,
    overwrite: bool,
    progress: bool,
    year: int | None = None,
) -> dict[str, dict[str, Any]]:
    """``value.zarr`` (10 m) then ``value_50m.zarr`` (the map grid), each resumable through ``produce_tiles``."""
    from geoplantnet.runtime.worker_cache import WorkerCachePlugin

    s = cfg.value
    value_url, agg_url = urls
    grid, map_grid = predictor.grid, cfg.grid.grid()
    ratio = round(map_grid.resolution / grid.resolution)
    version = f"value-unet/{predictor.model.sha256[:12]}"
    parts = {
        **run_parts(predictor.model.sha256, cfg, predictor.sources),
        "grid": grid.label(),
        "tiling": f"tile={s.tile} halo={predictor.halo}",
        "draws": f"{s.draws} seed={s.seed}",
    }
    attrs = {
        "model_versions": version,
        "model_file": redact({"u": predictor.model.url})["u"],
        "model_sha256": predictor.model.sha256,
    }
    described = {"biodiversity_value": "U-Net trained on polygons of high vs low value; dropout off"}
    if s.draws:
        described["biodiversity_value_sd"] = f"standard deviation of {s.draws} Monte-Carlo dropout draws"
    client.register_plugin(WorkerCachePlugin())
    resources = task_resources(client) if cfg.map.device != "cpu" else None
    options = storage_options_for(value_url, cfg.store)
    output = TileOutput.of(value_url, parts, options, year=year)
    common = {
        "settings": streaming(cfg),
        "provenance": cfg.to_attrs(),
        "overwrite": overwrite,
        "progress": progress,
        "error": ValueJobError,
        "year": year,
    }
    t0 = time.perf_counter()
    done = produce_tiles(
        client,
        value_tile,
        ValueTileJob(predictor, output, s.draws, s.seed),
        output=output,
        grid=grid,
        tile=s.tile,
        layout=value_layout(grid, s.tile, described, version),
        product=PRODUCT,
        parts=parts,
        attrs=attrs,
        resources=resources,
        **common,
    )
    maps = {"value": _map_summary(done, value_url, time.perf_counter() - t0)}
    agg_parts = {"value": output.run, "grid": map_grid.label(), "tiling": f"tile={s.tile // ratio}"}
    agg_output = TileOutput.of(agg_url, agg_parts, storage_options_for(agg_url, cfg.store), year=year)
    agg_described = {
        "biodiversity_value": f"mean of the {ratio} x {ratio} biodiversity values at {grid.resolution:g} m in the cell",
        "biodiversity_value_sd": f"standard deviation of the {grid.resolution:g} m biodiversity values in the cell",
    }
    t0 = time.perf_counter()
    done = produce_tiles(
        client,
        aggregate_tile,
        AggregateTileJob(value_url, options, ratio, agg_output),
        output=agg_output,
        grid=map_grid,
        tile=s.tile // ratio,
        layout=value_layout(map_grid, s.tile // ratio, agg_described, version),
        product=AGGREGATE,
        parts=agg_parts,
        attrs={**attrs, "value_store": shown(value_url), "value_run": output.run},
        resources=None,
        **common,
    )
    maps["value_50m"] = _map_summary(done, agg_url, time.perf_counter() - t0)
    return maps


def run_value(
    cfg: RunConfig,
    *,
    out: str | None = None,
    overwrite: bool = False,
    evaluate: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The value job: labels, folds (U-Net vs forest), the final model, ``value.zarr`` and ``value_50m.zarr``, the
    report (``<store.root>/value``); with ``evaluate`` (virtual region only) the agreement with the true value."""
    from geoplantnet.runs.inputs import run_inputs, virtual_value_polygons
    from geoplantnet.runtime.cluster import connect

    t_start = time.perf_counter()
    if evaluate and not cfg.inputs.virtual:
        raise ConfigError("--evaluate scores the value map against the virtual region's truth; inputs.* are set")
    if cfg.value.polygons is None and not cfg.inputs.virtual:
        raise ConfigError("value needs labelled polygons for your inputs: --polygons FILE (value.polygons)")
    grid = value_grid(cfg)
    urls = default_stores(cfg, out)
    # a user's folder, a store being written, another product's store: refused before minutes of work
    for url, product in zip(urls, (PRODUCT, AGGREGATE), strict=True):
        preflight(url, storage_options_for(url, cfg.store), product=product, overwrite=overwrite)
    _report_folder(cfg, check=True)
    source = cfg.value.polygons
    labels = load_labels(cfg, source, grid) if source else None  # a user's file: checked before the inputs
    inputs = run_inputs(cfg, observations=False, progress=progress)
    if labels is None:
        labels = load_labels(cfg, virtual_value_polygons(cfg, progress=progress), grid)
    sources = MapSources.from_items(cfg, inputs.s2_items, inputs.env_items)
    model_url = default_value_model(cfg)
    folder = _report_folder(cfg)
    trained, key = train_or_reuse(cfg, sources, labels, folder, model_url, overwrite)
    predictor = plan_value_predictor(cfg, model_url, sources)
    with connect(cfg.cluster) as client:
        maps = produce_value_maps(client, cfg, predictor, urls, overwrite=overwrite, progress=progress)
    polys = labels.polygons
    report: dict[str, Any] = {
        "training_key": key,
        "polygons": {
            "source": shown(labels.source),
            "high": int((polys["label"] == 1).sum()),
            "low": int((polys["label"] == 0).sum()),
            "pixels": int((labels.rasters.label >= 0).sum()),
        },
        "notes": list(labels.notes),
        "folds": trained.folds,
        "means": {m: _mean_row(trained.folds, m) for m in ("unet", "random_forest")},
        "model": shown(trained.model),
        "model_sha256": trained.sha256,
        "model_reused": trained.reused,
        "final_model": trained.training,
        "maps": maps,
        "grid": {"value": grid.label(), "aggregate": cfg.grid.grid().label()},
        "inputs": inputs.notes,
    }
    if evaluate:
        report["evaluation"] = evaluate_value(cfg, urls[1], labels)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["report"] = str(folder)
    write_report(folder, report)
    return report


def with_cli_options(cfg: RunConfig, polygons: str | None, label_column: str | None) -> RunConfig:
    """``cfg`` with ``--polygons`` / ``--label-column`` applied to its value section (validated)."""
    given = {k: v for k, v in (("polygons", polygons), ("label_column", label_column)) if v is not None}
    if not given:
        return cfg
    return cfg.model_copy(update={"value": ValueConfig.model_validate({**cfg.value.model_dump(), **given})})
