"""``indicators.zarr`` from ``species.zarr`` (and ``habitat.zarr``): richness, Shannon, invasive, threatened and
protected species, threatened habitats and ecosystem health, each with its uncertainty, tile by tile on the cluster.

On the driver, before anything is written: the stores are complete and on one grid; the status tables are matched
to the store's species (a report of what did not match); the typical species of each habitat come from the labelled
plots the classifier learned from; the conformal radii are calibrated on held-out presence-absence surveys (read
from the maps at the surveys' cells) and their coverage measured by cross-conformal spatial folds. Then one task
per tile (:func:`geoplantnet.runs.tiles.produce_tiles`): read the tile's species codes (one shard) and habitat
classes, :func:`geoplantnet.products.indicators.indicator_blocks`, write.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr

from geoplantnet.core.config import ConfigError, RunConfig, redact
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.core.hashing import fingerprint
from geoplantnet.inference.dense import decode
from geoplantnet.jobs.habitat_map import (
    ClassifierFolder,
    HabitatClassifier,
    open_species_year,
    plan_classifier,
    store_epsg,
)
from geoplantnet.jobs.mapping import (
    SCALE_ATTR,
    MapSources,
    ModelFile,
    SpeciesPredictor,
    ensure_model,
    output_scale,
    plan_predictor,
    run_parts,
)
from geoplantnet.models.calibration import Calibration, fit_calibration
from geoplantnet.products.habitat_map import THRESHOLD, ranks, read_species_tile
from geoplantnet.products.indicators import (
    RED_LIST,
    HabitatIndicatorModel,
    IndicatorModel,
    class_index,
    indicator_blocks,
    indicator_template,
    typical_species,
)
from geoplantnet.runs.context import streaming
from geoplantnet.runs.tiles import TileOutput, produce_tiles
from geoplantnet.runtime.cluster import task_resources
from geoplantnet.samples import status as status_tables
from geoplantnet.samples.extraction import grid_of
from geoplantnet.samples.plots import Plots
from geoplantnet.storage.store import (
    PRODUCT_ATTR,
    RUN_ATTR,
    StoreError,
    exists,
    join,
    open_store,
    preflight,
    storage_options_for,
    zarr_store,
)
from geoplantnet.storage.tiles import write_tile_blocks
from geoplantnet.storage.years import complete_slot, year_records, year_view
from geoplantnet.validation.blocks import spatial_folds
from geoplantnet.validation.conformal import (
    class_scores,
    class_sets,
    count_interval,
    count_moments,
    count_scores,
    cross_coverage,
)

if TYPE_CHECKING:
    from distributed import Client

PRODUCT = "indicators"


class IndicatorError(GeoplantnetError):
    """Indicators that cannot start (stores or tables that do not fit) or a tile that failed."""


@dataclass(frozen=True)
class IndicatorTileJob:
    """Everything an indicator tile task needs besides its tile."""

    species_url: str
    species_options: dict[str, Any]
    habitat_url: str | None
    habitat_options: dict[str, Any]
    model: IndicatorModel
    species_slot: int | None  # the year's slots in series (None: single-year stores)
    habitat_slot: int | None
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


# -- the fused mode: species predicted (and habitats classified) inside the indicator tile task


@dataclass(frozen=True)
class FusedPredictor:
    """The species model and, optionally, the habitat classifier a fused tile runs: a tile's probabilities and
    habitat classes exactly as ``species.zarr`` and ``habitat.zarr`` would hold them, never written.

    The species model's output is quantised to the stores' uint8 codes and decoded (the codes are what
    :meth:`SpeciesPredictor.predict` returns, the map's own), and the habitats are classified from those codes by
    the same rule as ``habitat-map``: so the fused mode computes the indicators from the very values the two-pass
    mode reads, and both give identical indicator maps."""

    species: SpeciesPredictor
    habitats: HabitatClassifier | None
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
class FusedTileJob:
    """Everything a fused indicator tile task needs besides its tile."""

    fused: FusedPredictor
    model: IndicatorModel
    output: TileOutput


def fused_indicator_tile(job: FusedTileJob, tile: Tile) -> dict[str, Any]:
    """Predict the tile's species (and habitats), compute and write its indicators; returns its timings."""
    p, top, top_p, info = job.fused.tile(tile)
    return _compute_and_write(job.model, job.output, tile, p, top, top_p, info)


def sample_model(
    client: Client, fused: FusedPredictor, grid: Grid, tile: int, plots: Plots
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """:func:`sample_maps` without the stores: the tiles holding plots computed on the cluster as fused tiles
    compute them (one task per tile), the values at the plots' cells kept. Costs one tile per tile holding plots."""
    row, col = grid.index(plots.x, plots.y)
    ok = np.flatnonzero(row >= 0)
    tiles = {(t.row, t.col): t for t in grid.tiles(tile)}
    keys = np.stack([row[ok] // tile, col[ok] // tile], axis=1) if ok.size else np.zeros((0, 2), "int64")
    resources = fused.resources(client)
    groups = {(int(a), int(b)): ok[(keys == (a, b)).all(axis=1)] for a, b in {tuple(k) for k in keys.tolist()}}
    futures = {
        key: client.submit(fused.cells, tiles[key], row[idx], col[idx], resources=resources, pure=False)
        for key, idx in groups.items()
    }
    p, top, top_p = _empty_samples(len(plots), fused.n_species, fused.n_ranks if fused.habitats is not None else None)
    for key, future in futures.items():
        idx = groups[key]
        p[idx], t, tp = future.result()
        if top is not None and top_p is not None:
            top[idx], top_p[idx] = t, tp
    return p, top, top_p, _sampled(p, top, row >= 0)


# -- the driver: statuses, typical species, calibration


@dataclass
class IntervalCalibration:
    """The conformal radii and their measured coverage (cross-conformal spatial folds of the surveys)."""

    count_radius: dict[str, float] = field(default_factory=dict)
    habitat_radius: float = float("nan")
    coverage: dict[str, dict[str, Any]] = field(default_factory=dict)
    surveys: int = 0
    notes: list[str] = field(default_factory=list)


def presence_matrix(plots: Plots, species: list[str]) -> np.ndarray:
    """(plots, S) bool: which of the map's species each plot lists."""
    where = {s: i for i, s in enumerate(species)}
    out = np.zeros((len(plots), len(species)), dtype=bool)
    for i, sentence in enumerate(plots.sentences):
        idx = [where[s] for s in sentence if s in where]
        out[i, idx] = True
    return out


def sample_maps(
    species_codes: xr.Dataset, habitat_codes: xr.Dataset | None, grid: Grid, plots: Plots
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """The maps at the plots' cells (stores opened with ``mask_and_scale=False``; only the chunks under the plots are
    read): p (n, S), habitat classes and their probabilities (n, K) or None, and which plots fell on a cell with
    data."""
    row, col = grid.index(plots.x, plots.y)
    ok = row >= 0
    at = {"y": xr.DataArray(row[ok], dims="plot"), "x": xr.DataArray(col[ok], dims="plot")}
    k = habitat_codes.sizes["rank"] if habitat_codes is not None else None
    p, top, top_p = _empty_samples(len(plots), species_codes.sizes["species"], k)
    p[ok] = decode(np.asarray(species_codes["probability"].isel(at).transpose("plot", "species").values))
    if habitat_codes is not None and top is not None and top_p is not None:
        top[ok] = habitat_codes["top_k"].isel(at).transpose("plot", "rank").values
        top_p[ok] = decode(np.asarray(habitat_codes["top_k_probability"].isel(at).transpose("plot", "rank").values))
    return p, top, top_p, _sampled(p, top, ok)


def _empty_samples(n: int, n_species: int, ranks: int | None) -> tuple[np.ndarray, Any, Any]:
    """What plots off the map get: NaN probabilities, habitat classes -1 of probability 0 (None without habitats)."""
    p = np.full((n, n_species), np.nan, dtype="float32")
    if ranks is None:
        return p, None, None
    return p, np.full((n, ranks), -1, dtype="int64"), np.zeros((n, ranks), dtype="float32")


def _sampled(p: np.ndarray, top: np.ndarray | None, on_map: np.ndarray) -> np.ndarray:
    """Plots on a cell with data: on the map, every species known and (with habitats) a class."""
    valid = on_map & np.isfinite(p).all(axis=1)
    if top is not None:
        valid &= (top >= 0).all(axis=1)
    return valid


def survey_folds(plots: Plots, cfg: RunConfig, folds: int, notes: list[str]) -> np.ndarray:
    """Spatial-block folds of the surveys (``indicators.block_size``); random folds, said in ``notes``, when the
    surveys fill too few blocks (random folds put neighbours on both sides: coverage reads optimistic)."""
    ind = cfg.indicators
    out, said = spatial_folds(plots.x, plots.y, ind.block_size, folds, seed=ind.seed, fallback="random", what="surveys")
    notes.extend(said)
    return out


def calibrate(
    p: np.ndarray,
    observed: np.ndarray,
    groups: Mapping[str, np.ndarray],
    folds: np.ndarray,
    level: float,
    *,
    top: np.ndarray | None = None,
    top_p: np.ndarray | None = None,
    truth_class: np.ndarray | None = None,
) -> IntervalCalibration:
    """Conformal radii of every count group (and of the habitat sets) from surveys: ``p`` (n, S) the maps at the
    surveys, ``observed`` (n, S) what they found, ``truth_class`` (n,) their habitat's index in the map's classes
    (-1 outside them, -2 unlabelled)."""
    cal = IntervalCalibration(surveys=len(p))
    for g, mask in groups.items():
        mu, var = count_moments(p, mask)
        obs = (observed & mask).sum(axis=1)
        scores = count_scores(obs, mu, var)

        def inside(idx: np.ndarray, q: float, mu=mu, var=var, obs=obs) -> np.ndarray:
            lo, hi = count_interval(mu[idx], var[idx], q)
            return (obs[idx] >= lo) & (obs[idx] <= hi)

        def width(idx: np.ndarray, q: float, mu=mu, var=var) -> np.ndarray:
            lo, hi = count_interval(mu[idx], var[idx], q)
            return hi - lo

        cov = cross_coverage(scores, folds, level, inside, width)
        cal.count_radius[g] = cov.radius
        cal.coverage[g] = cov.to_dict()
    if top is not None and top_p is not None and truth_class is not None:
        labelled = truth_class >= -1
        scores = class_scores(top_p[labelled], top[labelled], truth_class[labelled])
        t, tp, tc = top[labelled], top_p[labelled], truth_class[labelled]

        def in_set(idx: np.ndarray, q: float) -> np.ndarray:
            return ((t[idx] == tc[idx, None]) & class_sets(tp[idx], q)).any(axis=1)

        def size(idx: np.ndarray, q: float) -> np.ndarray:
            return class_sets(tp[idx], q).sum(axis=1)

        cov = cross_coverage(scores, folds[labelled], level, in_set, size)
        cal.habitat_radius = cov.radius
        cal.coverage["habitat_set"] = cov.to_dict()
        outside = int((tc == -1).sum())
        if outside:
            cal.notes.append(f"{outside} labelled surveys have a habitat that is not a class of the habitat map")
    return cal


@dataclass(frozen=True)
class IndicatorPlan:
    """Indicators decided on the driver before anything is written."""

    grid: Grid
    tile: int
    parts: dict[str, str]
    attrs: dict[str, str]
    job: IndicatorTileJob | FusedTileJob  # two-pass: reads the stores; fused: predicts in the task
    calibration: IntervalCalibration
    status_report: dict[str, Any]
    species: tuple[str, ...]


@dataclass(frozen=True)
class IndicatorInputs:
    """The tables an indicator run reads: status sources (the species table is matched to a map's species later;
    the lists are read), surveys to calibrate on, labelled plots for typical species (the habitat classifier's)."""

    status: str | None
    invasive_names: tuple[str, ...] | None  # the EU invasive list's names
    protected_names: tuple[str, ...] | None  # the Habitats Directive checklist's names
    habitat_red_list: status_tables.HabitatRedList | None
    surveys: Plots | None
    reference_plots: Plots | None


def _report(rep: status_tables.MatchReport) -> dict[str, Any]:
    """A match report for the run summary: counts and the first unmatched rows (the species list can be long)."""
    return {
        "summary": rep.summary(),
        "rows": rep.rows,
        "matched": rep.matched,
        "unmatched": rep.unmatched[:50],
        "species_without_row": len(rep.species_without_row),
    }


def species_groups(
    inputs: IndicatorInputs, species: list[str], names: list[str] | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Group masks and the reports of the name matching: richness always; invasive, threatened and protected when a
    status table is given (it speaks for all three: a column it lacks flags nobody), invasive or protected also when
    the EU list or the Habitats Directive checklist is."""
    groups: dict[str, np.ndarray] = {"richness": np.ones(len(species), dtype=bool)}
    report: dict[str, Any] = {}
    given: set[str] = set()
    if inputs.status is not None:
        st = status_tables.read_species_status(inputs.status, species, names)
        given |= {"invasive", "threatened", "protected"}
        report["status_table"] = _report(st.report)
    else:
        st = status_tables.SpeciesStatus.empty(species, names)
    lists: dict[str, tuple[str, ...]] = {}
    if inputs.invasive_names is not None:
        lists["invasive"] = inputs.invasive_names
    if inputs.protected_names is not None:
        lists["protected"] = inputs.protected_names
    if lists:
        before = len(st.reports)
        st = status_tables.add_policy_lists(st, **lists)
        given |= set(lists)
        for rep in st.reports[before:]:
            report[f"list: {rep.source}"] = _report(rep)
    for g in ("invasive", "threatened", "protected"):
        if g in given:
            groups[g] = np.asarray(getattr(st, g), dtype=bool)
            report[f"{g}_species"] = int(groups[g].sum())
    return groups, report


def habitat_model(
    inputs: IndicatorInputs, classes: list[str], species: list[str], cfg: RunConfig, radius: float
) -> tuple[HabitatIndicatorModel, dict[str, Any]]:
    """Red List categories and typical species of the habitat map's classes."""
    report: dict[str, Any] = {}
    red = np.full(len(classes), -1, dtype="int8")
    if inputs.habitat_red_list is not None:
        st = status_tables.habitat_status(classes, inputs.habitat_red_list)
        red = np.asarray([RED_LIST.index(c) if c in RED_LIST else -1 for c in st.category], dtype="int8")
        report["habitat_red_list"] = {
            "classes": len(classes),
            "from_ancestor": st.from_ancestor,
            "missing": st.missing,
            "threatened": [c for c, t in zip(classes, st.threatened, strict=True) if t],
        }
    typical = np.zeros((len(classes), len(species)), dtype=bool)
    reference = np.full(len(classes), np.nan)
    if inputs.reference_plots is not None:
        ref = inputs.reference_plots
        labels = class_index(ref.habitat, classes)
        typical, reference = typical_species(
            presence_matrix(ref, species),
            labels,
            len(classes),
            top=cfg.indicators.typical_species,
            min_phi=cfg.indicators.min_phi,
        )
        report["typical_species"] = {
            "plots": int((labels >= 0).sum()),
            "classes_with_typical_species": int(np.isfinite(reference).sum()),
            "classes": len(classes),
        }
    return HabitatIndicatorModel(tuple(classes), red, typical, reference, radius), report


def _habitat_store(
    url: str, options: dict[str, Any], grid: Grid, year: int | None
) -> tuple[list[str], Any, int | None]:
    """The habitat map's classes, its store and the year's slot of a series (refused unless that year is complete),
    checked against the species map's grid."""
    ds = open_store(url, storage_options=options)
    if ds.attrs.get(PRODUCT_ATTR) != "habitat" or "top_k" not in ds:
        raise StoreError(f"{redact({'url': url})['url']}: not a habitat.zarr")
    if "top_k_probability" not in ds:
        raise IndicatorError(
            f"{redact({'url': url})['url']}: a habitat map without top_k_probability (made by an earlier version): "
            "rerun geoplantnet habitat-map with --out to a new store"
        )
    if ds.sizes["y"] != grid.height or ds.sizes["x"] != grid.width:
        raise IndicatorError(f"{redact({'url': url})['url']}: habitat map and species map are on different grids")
    return [str(c) for c in ds["habitat_code"].values], ds, complete_slot(url, ds.attrs, year)


@dataclass(frozen=True)
class IndicatorStores:
    """The two-pass mode's stores, opened and checked on the driver (complete, of their product, on one grid; the
    output none of them): the species map (the ``year`` of a series), the habitat map or None, the output."""

    species_url: str
    species_options: dict[str, Any]
    species: Any  # xarray Dataset: the species store (the year's view of a series)
    species_slot: int | None
    species_run: str
    grid: Grid
    tile: int
    habitat_url: str | None
    habitat_options: dict[str, Any]
    habitat: Any | None  # xarray Dataset or None
    classes: list[str] | None
    habitat_slot: int | None
    out_url: str
    year: int | None = None

    @classmethod
    def open(
        cls, cfg: RunConfig, species_url: str, habitat_url: str | None, out_url: str, year: int | None = None
    ) -> IndicatorStores:
        """Open the stores (metadata only): cheap, so a missing or wrong store fails before the tables are read,
        the virtual region generated or a cluster started."""
        for url in (species_url, habitat_url):
            if url is not None and out_url.rstrip("/") == url.rstrip("/"):
                raise IndicatorError(f"--out {out_url} is an input store of the indicators; choose another path")
        species_options = storage_options_for(species_url, cfg.store)
        ds, species_slot, species_run = open_species_year(species_url, species_options, year)
        grid = grid_of(ds["probability"], store_epsg(ds, cfg.grid.epsg))
        raw = zarr.open_group(zarr_store(species_url, species_options), mode="r")["probability"]
        habitat_options = storage_options_for(habitat_url, cfg.store) if habitat_url else {}
        classes, hds, habitat_slot = (
            _habitat_store(habitat_url, habitat_options, grid, year) if habitat_url else (None, None, None)
        )
        return cls(
            species_url=species_url,
            species_options=species_options,
            species=ds,
            species_slot=species_slot,
            species_run=species_run,
            grid=grid,
            tile=int((raw.shards or raw.chunks)[-1]),
            habitat_url=habitat_url,
            habitat_options=habitat_options,
            habitat=hds,
            classes=classes,
            habitat_slot=habitat_slot,
            out_url=out_url,
            year=year,
        )


def plan_indicators(
    cfg: RunConfig,
    stores: IndicatorStores,
    inputs: IndicatorInputs,
    species_calibration: Calibration | None = None,
) -> IndicatorPlan:
    """The two-pass mode: with the stores opened (:meth:`IndicatorStores.open`), match the tables, calibrate the
    intervals, and fingerprint the run; with the stores' ``year``, that year of the species and habitat series into
    that year of an indicator series."""
    ds, grid, tile, year = stores.species, stores.grid, stores.tile, stores.year
    species_url, species_options = stores.species_url, stores.species_options
    habitat_url, habitat_options = stores.habitat_url, stores.habitat_options
    classes, hds, out_url = stores.classes, stores.habitat, stores.out_url
    species = [str(s) for s in ds["species"].values]
    names = [str(s) for s in ds["species_name"].values] if "species_name" in ds.coords else None
    thresholds = ds[THRESHOLD].values.astype("float32") if THRESHOLD in ds else None
    groups, status_report = species_groups(inputs, species, names)

    sampled = None
    if inputs.surveys is not None and len(inputs.surveys):
        codes = year_view(open_store(species_url, storage_options=species_options, mask_and_scale=False), year)
        habitat_codes = (
            year_view(open_store(habitat_url, storage_options=habitat_options, mask_and_scale=False), year)
            if habitat_url
            else None
        )
        sampled = sample_maps(codes, habitat_codes, grid, inputs.surveys)
    recalibrate = needs_recalibration(cfg.indicators.recalibrate, ds.attrs)
    cal, species_cal, thresholds = calibrate_on_surveys(
        cfg, inputs.surveys, sampled, species, classes, groups, thresholds, recalibrate, species_calibration
    )
    species_version = str(ds.attrs.get("model_version", "unknown"))
    versions = {"species_model": species_version}
    habitat_run = "none"
    if habitat_url is not None and hds is not None:
        record = year_records(hds.attrs).get(int(year)) if year is not None else None
        provenance = record.get("attrs", {}) if record else hds.attrs
        versions["habitat_model"] = str(provenance.get("habitat_model_version", "unknown"))
        habitat_run = str(record["run"]) if record else str(hds.attrs.get(RUN_ATTR, "unknown"))

    def job(model: IndicatorModel, output: TileOutput) -> IndicatorTileJob:
        return IndicatorTileJob(
            species_url=species_url,
            species_options=species_options,
            habitat_url=habitat_url,
            habitat_options=habitat_options,
            model=model,
            species_slot=stores.species_slot,
            habitat_slot=stores.habitat_slot,
            output=output,
        )

    return _plan(
        cfg,
        inputs,
        IndicatorSource(
            kind=STORE,
            parts={"source": f"{STORE} {stores.species_run}", "habitat": habitat_run},
            attrs={
                "species_store": redact({"u": species_url})["u"],
                "habitat_store": redact({"u": habitat_url})["u"] if habitat_url else "none",
            },
            versions=versions,
        ),
        grid=grid,
        tile=tile,
        species=species,
        classes=classes,
        groups=groups,
        status_report=status_report,
        calibration=(cal, species_cal, thresholds),
        job=job,
        out_url=out_url,
        year=year,
    )


STORE, MODEL = "store", "model"  # where a run's species probabilities come from: species.zarr, or the model itself
SOURCE_ATTR = "indicator_source"
SOURCES = {
    STORE: "store: species.zarr (and habitat.zarr) read tile by tile (two-pass)",
    MODEL: "model: species predicted (and habitats classified) inside each indicator tile task (fused); "
    "no species.zarr or habitat.zarr",
}


@dataclass(frozen=True)
class IndicatorSource:
    """Where a run's probabilities and habitats come from (``kind``: ``store`` or ``model``), the fingerprint parts
    and store attributes that say so, and the versions of the models behind them."""

    kind: str
    parts: dict[str, str]
    attrs: dict[str, str]
    versions: dict[str, str]


def calibrate_on_surveys(
    cfg: RunConfig,
    surveys: Plots | None,
    sampled: tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray] | None,
    species: list[str],
    classes: list[str] | None,
    groups: Mapping[str, np.ndarray],
    thresholds: np.ndarray | None,
    recalibrate: bool,
    given: Calibration | None = None,
) -> tuple[IntervalCalibration, Calibration | None, np.ndarray | None]:
    """The intervals' radii from the surveys and the maps' values there (``sampled``: :func:`sample_maps` or
    :func:`sample_model`, None without surveys); with ``recalibrate``, Platt maps per species fitted on half of
    the surveys first, or the ``given`` maps (a refresh keeps its first year's, so years stay comparable). Returns
    the calibration, the species maps (None when none apply) and the thresholds on the probabilities' final scale."""
    cal = IntervalCalibration()
    if surveys is None or sampled is None:
        return (
            cal,
            given,
            thresholds if given is None or thresholds is None else given.apply(thresholds[None, :], axis=1)[0],
        )
    p, top, top_p, valid = sampled
    species_cal = given
    notes: list[str] = []
    surveys = surveys.subset(valid)
    p, observed = p[valid], presence_matrix(surveys, species)
    truth_class = None
    if classes is not None and top is not None and top_p is not None:
        top, top_p = top[valid], top_p[valid]
        truth_class = np.where(surveys.labelled, class_index(surveys.habitat, classes), -2)
    rows = np.ones(len(p), dtype=bool)
    if given is not None or recalibrate:
        # two spatial halves: one fits the species' Platt maps, the other (never seen by them) calibrates and tests
        # the intervals; deterministic, so a later year given the first year's maps keeps the same held-out half
        fit_rows = survey_folds(surveys, cfg, 2, notes) == 0
        if given is None:
            species_cal = fit_calibration(p[fit_rows], observed[fit_rows].astype("int8"), "platt")
        p, rows = species_cal.apply(p, axis=1), ~fit_rows
    held = surveys.subset(rows)
    cal = calibrate(
        p[rows],
        observed[rows],
        groups,
        survey_folds(held, cfg, cfg.indicators.folds, notes),
        cfg.indicators.level,
        top=top[rows] if top is not None else None,
        top_p=top_p[rows] if top_p is not None else None,
        truth_class=truth_class[rows] if truth_class is not None else None,
    )
    cal.notes += [f"{int((~valid).sum())} surveys off the map or on no-data cells left out", *notes]
    if given is not None:
        cal.notes.append(
            f"species probabilities through given Platt maps (the series' first year's); the intervals are "
            f"calibrated and tested on the {int(rows.sum())} surveys of the half those maps were not fitted on"
        )
    elif species_cal is not None:
        cal.notes.append(
            f"species map not calibrated: Platt maps per species ({species_cal.n_calibrated} own, "
            f"{species_cal.n_shared} pooled) fitted on {int((~rows).sum())} surveys (one spatial half); the "
            f"intervals are calibrated and tested on the other {int(rows.sum())}"
        )
    if species_cal is not None and thresholds is not None:
        thresholds = species_cal.apply(thresholds[None, :], axis=1)[0]  # the same cut on the new scale
    return cal, species_cal, thresholds


def _plan(
    cfg: RunConfig,
    inputs: IndicatorInputs,
    source: IndicatorSource,
    *,
    grid: Grid,
    tile: int,
    species: list[str],
    classes: list[str] | None,
    groups: dict[str, np.ndarray],
    status_report: dict[str, Any],
    calibration: tuple[IntervalCalibration, Calibration | None, np.ndarray | None],
    job: Callable[[IndicatorModel, TileOutput], IndicatorTileJob | FusedTileJob],
    out_url: str,
    year: int | None,
) -> IndicatorPlan:
    """What both modes decide alike once the probabilities at the surveys are calibrated: the habitat model, the
    indicator model, the fingerprint parts (the source's first), the store's attributes, the tile job."""
    cal, species_cal, thresholds = calibration
    hab, hab_report = (None, {})
    if classes is not None:
        hab, hab_report = habitat_model(inputs, classes, species, cfg, cal.habitat_radius)
    ind = cfg.indicators
    model = IndicatorModel(
        thresholds=thresholds,
        groups=groups,
        count_radius=cal.count_radius,
        level=ind.level,
        habitats=hab,
        draws=ind.draws,
        seed=ind.seed,
        versions=source.versions,
        calibration=species_cal,
        source=source.kind,
    )
    parts = {
        **source.parts,
        "tables": _digest(inputs, groups, hab),
        "calibration": json.dumps(
            {k: round(v, 6) for k, v in {**cal.count_radius, "habitat": cal.habitat_radius}.items()}, sort_keys=True
        ),
        "settings": f"level={ind.level} draws={ind.draws} seed={ind.seed}",
        "species_calibration": "none" if species_cal is None else fingerprint(species_cal.model_dump(mode="json")),
        "tiling": f"tile={tile}",
        "variables": fingerprint(model.variables())[:16],  # a new indicator is a new layout, never a resume
    }
    output = TileOutput.of(out_url, parts, storage_options_for(out_url, cfg.store), year=year)
    species_version = source.versions["species_model"]
    attrs = {
        **source.attrs,
        SOURCE_ATTR: SOURCES[source.kind],
        "species_model_version": species_version,
        "habitat_model_version": source.versions.get("habitat_model", "none"),
        "model_version": species_version,
        "calibration": json.dumps({"coverage": cal.coverage, "surveys": cal.surveys, "notes": cal.notes}),
        "nominal_level": str(ind.level),
        "species_calibration": species_cal.model_dump_json() if species_cal is not None else "none",
    }
    report = {**status_report, **hab_report}
    return IndicatorPlan(grid, tile, parts, attrs, job(model, output), cal, report, tuple(species))


@dataclass(frozen=True)
class FusedSetup:
    """The fused mode decided on the driver before any cluster work: the species model checked against the run's
    inputs, the status tables matched to its species, the habitat classifier checked against them, the fingerprint
    parts and attributes naming the models. :func:`plan_fused_indicators` adds the calibration (on the cluster)."""

    fused: FusedPredictor
    inputs: IndicatorInputs
    spec: Any  # the species model's ModelSpec or PeerSpec
    classes: list[str] | None
    thresholds: np.ndarray | None
    groups: dict[str, np.ndarray]
    status_report: dict[str, Any]
    source: IndicatorSource

    @property
    def species(self) -> list[str]:
        return [str(s) for s in self.spec.species]


def fused_setup(
    cfg: RunConfig,
    model: str | ModelFile,
    sources: MapSources,
    habitat: str | ClassifierFolder | None,
    inputs: IndicatorInputs,
) -> FusedSetup:
    """The species model (a file or its URL) and the habitat classifier (a folder read or its URL, or None) checked
    against the run's inputs and against each other, the tables matched to the model's species: all on the driver,
    no cluster needed, so a job runs it before it starts one."""
    predictor, spec, model_attrs = plan_predictor(cfg, model, sources)
    where = model_attrs["model_file"]
    species = [str(s) for s in spec.species]
    names = [str(s) for s in spec.species_name] if spec.species_name else None
    # the thresholds species.zarr would hold (jobs.mapping.with_thresholds)
    thresholds = spec.thresholds.as_arrays()["max_tss"] if spec.thresholds is not None else None
    groups, status_report = species_groups(inputs, species, names)
    classifier = classes = None
    versions = {"species_model": model_attrs["model_version"]}
    habitat_part, habitat_attrs = "none", {"habitat_model_folder": "none"}
    if habitat is not None:
        classifier, plot_model = plan_classifier(cfg, habitat, species, thresholds, f"the model {where}")
        classes = list(plot_model.classes)
        versions["habitat_model"] = classifier.version
        habitat_part = f"{MODEL} {plot_model.version[:12]} {classifier.assemblage} top_k={classifier.top_k}"
        habitat_attrs = {
            "habitat_model_folder": redact({"u": classifier.model.folder})["u"],
            "assemblage": classifier.assemblage,
        }
    n_ranks = ranks(len(classes), cfg.habitats.top_k) if classes is not None else 0
    fused = FusedPredictor(predictor, classifier, len(species), n_ranks)
    map_parts = run_parts(predictor.model.sha256, cfg, sources)
    source = IndicatorSource(
        kind=MODEL,
        parts={
            "source": f"{MODEL} {predictor.model.sha256[:12]}",
            "habitat": habitat_part,
            **{f"map_{k}": v for k, v in map_parts.items() if k != "model"},
        },
        attrs={
            "species_store": "none",
            "habitat_store": "none",
            "species_model_file": model_attrs["model_file"],
            "species_model_sha256": model_attrs["model_sha256"],
            **habitat_attrs,
        },
        versions=versions,
    )
    return FusedSetup(fused, inputs, spec, classes, thresholds, groups, status_report, source)


def plan_fused_indicators(client: Client, cfg: RunConfig, setup: FusedSetup, out_url: str) -> IndicatorPlan:
    """The fused mode: with the models checked (:func:`fused_setup`), the intervals calibrated on the model's values
    at the surveys (:func:`sample_model`, on the cluster), the run fingerprinted by the model files and inputs
    rather than by stores."""
    inputs, fused = setup.inputs, setup.fused
    grid, tile = fused.species.map_grid, cfg.map.tile
    sampled = None
    if inputs.surveys is not None and len(inputs.surveys):
        sampled = sample_model(client, fused, grid, tile, inputs.surveys)
    recalibrate = needs_recalibration(cfg.indicators.recalibrate, {SCALE_ATTR: output_scale(setup.spec)})
    calibration = calibrate_on_surveys(
        cfg, inputs.surveys, sampled, setup.species, setup.classes, setup.groups, setup.thresholds, recalibrate
    )
    return _plan(
        cfg,
        inputs,
        setup.source,
        grid=grid,
        tile=tile,
        species=setup.species,
        classes=setup.classes,
        groups=setup.groups,
        status_report=setup.status_report,
        calibration=calibration,
        job=lambda model, output: FusedTileJob(fused, model, output),
        out_url=out_url,
        year=None,
    )


def needs_recalibration(setting: str, species_attrs: Mapping[str, Any]) -> bool:
    """Whether the species probabilities get Platt maps from surveys first (``indicators.recalibrate``): always,
    never, or (auto) when the species map says its values are not calibrated probabilities."""
    if setting != "auto":
        return setting == "always"
    return not str(species_attrs.get(SCALE_ATTR, "")).startswith("calibrated")


def _digest(inputs: IndicatorInputs, groups: Mapping[str, np.ndarray], hab: HabitatIndicatorModel | None) -> str:
    """What the tables decided (which species in which group, each class's category and typical species)."""
    parts: dict[str, Any] = {g: np.flatnonzero(m).tolist() for g, m in groups.items() if g != "richness"}
    if hab is not None:
        parts["red_list"] = hab.red_list.tolist()
        parts["typical"] = [np.flatnonzero(t).tolist() for t in hab.typical]
        parts["reference"] = [None if not np.isfinite(r) else round(float(r), 6) for r in hab.reference]
    return fingerprint(parts)[:16]


@dataclass
class IndicatorSummary:
    """What an indicators run did."""

    store: str
    run: str
    variables: list[str]
    groups: dict[str, int]
    tiles: int
    tiles_computed: int
    tiles_skipped: int
    shape: list[int]
    cores: int
    pixels_per_second: float | None
    pixels_per_second_per_core: float | None
    seconds: float
    calibration: dict[str, Any]
    tables: dict[str, Any]
    evaluation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values."""
        return asdict(self)


def produce_indicators(
    client: Client,
    cfg: RunConfig,
    plan: IndicatorPlan,
    *,
    overwrite: bool = False,
    progress: bool = True,
    year: int | None = None,
) -> IndicatorSummary:
    """Write ``indicators.zarr`` as planned, resuming a store of the same run; another run's only with ``overwrite``."""
    t_start = time.perf_counter()
    out = plan.job.output
    fused = isinstance(plan.job, FusedTileJob)
    done = produce_tiles(
        client,
        fused_indicator_tile if fused else indicator_tile,
        plan.job,
        output=out,
        grid=plan.grid,
        tile=plan.tile,
        layout=indicator_template(plan.grid, plan.job.model, plan.tile),
        product=PRODUCT,
        parts=plan.parts,
        settings=streaming(cfg),
        provenance=cfg.to_attrs(),
        attrs=plan.attrs,
        overwrite=overwrite,
        resources=plan.job.fused.resources(client) if isinstance(plan.job, FusedTileJob) else None,
        progress=progress,
        error=IndicatorError,
        year=year,
    )
    cores = sum(client.nthreads().values()) or 1
    pps = done.pixels_per_second
    return IndicatorSummary(
        store=redact({"url": out.url})["url"],
        run=out.run,
        variables=plan.job.model.variables(),
        groups={g: int(m.sum()) for g, m in plan.job.model.groups.items()},
        tiles=len(done.tiles),
        tiles_computed=len(done.results),
        tiles_skipped=len(done.tiles) - len(done.todo),
        shape=[plan.grid.height, plan.grid.width],
        cores=cores,
        pixels_per_second=pps,
        pixels_per_second_per_core=round(pps / cores, 1) if pps else None,
        seconds=round(time.perf_counter() - t_start, 1),
        calibration={
            "level": cfg.indicators.level,
            "surveys": plan.calibration.surveys,
            "radius": {**plan.calibration.count_radius, "habitat_set": plan.calibration.habitat_radius},
            "coverage": plan.calibration.coverage,
            "notes": plan.calibration.notes,
        },
        tables=plan.status_report,
    )


def indicator_inputs(cfg: RunConfig, *, progress: bool = False, year: int | None = None) -> IndicatorInputs:
    """The configured tables, or on the virtual region its own tables, independent surveys (of ``year``) and plots.
    A user's tables are read first: a bad one fails before the region is generated."""
    from geoplantnet.samples.plots import read_plots

    ind = cfg.indicators
    surveys = reference = None
    if ind.plots is not None:
        if cfg.habitats.plots is not None and Path(ind.plots).resolve() == Path(cfg.habitats.plots).resolve():
            raise ConfigError(
                f"indicators.plots {ind.plots} is the habitat classifier's training table (habitats.plots): the "
                "intervals need surveys no model saw"
            )
        surveys = read_plots(ind.plots, cfg.habitats)
    if cfg.habitats.plots is not None:
        reference = read_plots(cfg.habitats.plots, cfg.habitats)
    invasive = status_tables.eu_invasive_names(ind.invasive_list) if ind.invasive_list is not None else None
    protected = status_tables.habitats_directive_names(ind.protected_list) if ind.protected_list is not None else None
    red_list = status_tables.read_habitat_red_list(ind.habitat_red_list) if ind.habitat_red_list is not None else None
    status = ind.status
    if cfg.inputs.virtual:
        from geoplantnet.runs.inputs import virtual_plots, virtual_status_tables, virtual_surveys

        if surveys is None and ind.n_surveys > 0:
            surveys = virtual_surveys(cfg, ind.n_surveys, progress=progress, year=year)
        if reference is None:
            reference, _ = virtual_plots(cfg, progress=progress)
        tables = virtual_status_tables(cfg)
        status = status or tables["species"]
        if red_list is None:
            red_list = status_tables.read_habitat_red_list(tables["habitats"])
    return IndicatorInputs(status, invasive, protected, red_list, surveys, reference)


def run_indicators(
    cfg: RunConfig,
    species_store_url: str | None = None,
    habitat_store_url: str | None = None,
    out_url: str | None = None,
    *,
    habitats: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> IndicatorSummary:
    """The indicators job: ``species_store_url`` (default ``<store.root>/species.zarr``) and, unless ``habitats`` is
    False, ``habitat_store_url`` (default ``<store.root>/habitat.zarr`` when it exists) into ``out_url`` (default
    ``<store.root>/indicators.zarr``) on the configured cluster."""
    from geoplantnet.runtime.cluster import connect

    species_url = species_store_url or join(cfg.store.root, "species.zarr")
    habitat_url = habitat_store_url or (under_root(cfg, "habitat.zarr") if habitats else None)
    out_url = _output(cfg, out_url, overwrite)
    stores = IndicatorStores.open(cfg, species_url, habitat_url, out_url)  # before the tables (virtual: generated)
    plan = plan_indicators(cfg, stores, indicator_inputs(cfg, progress=progress))
    with connect(cfg.cluster) as client:
        summary = produce_indicators(client, cfg, plan, overwrite=overwrite, progress=progress)
    if evaluate:
        summary.evaluation = _evaluate(cfg, out_url, plan)
    return summary


def run_fused_indicators(
    cfg: RunConfig,
    model: str | None = None,
    habitat_model: str | None = None,
    out_url: str | None = None,
    *,
    habitats: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> IndicatorSummary:
    """The indicators job in fused mode (``indicators --from-model``): on the configured inputs (nothing configured:
    the virtual region), the species model ``model`` (or ``map.model``, or the one ``map`` would train and cache)
    and, unless ``habitats`` is False, the classifier ``habitat_model`` (default ``<store.root>/habitats/model``
    when it exists) run inside each indicator tile task; only ``out_url`` (default ``<store.root>/indicators.zarr``)
    is written."""
    from geoplantnet.runs.inputs import plan_inputs
    from geoplantnet.runtime.cluster import connect

    model_url = model or cfg.map.model
    if model_url is None and not cfg.inputs.virtual and cfg.inputs.observations is None:
        raise IndicatorError(
            "indicators --from-model needs a species model for your inputs: pass --model FILE (or map.model), or "
            "--observations FILE (inputs.observations) to train one"
        )
    habitat_folder = habitat_model or (under_root(cfg, "habitats/model") if habitats else None)
    out_url = _output(cfg, out_url, overwrite)
    # every file given is read and checked before the virtual region is generated or a cluster starts
    model_file = ModelFile.read(model_url) if model_url is not None else None
    classifier = ClassifierFolder.read(habitat_folder) if habitat_folder is not None else None
    planned = plan_inputs(cfg, observations=model_url is None)
    tables = indicator_inputs(cfg, progress=progress)
    run = planned.load(progress=progress)
    sources = MapSources.from_items(cfg.cube, cfg.grid.epsg, run.s2_items, run.env_items)
    setup = fused_setup(cfg, model_file, sources, classifier, tables) if model_file is not None else None
    with connect(cfg.cluster) as client:
        if setup is None:
            model_url, _ = ensure_model(cfg, run, client)
            setup = fused_setup(cfg, model_url, sources, classifier, tables)
        plan = plan_fused_indicators(client, cfg, setup, out_url)
        summary = produce_indicators(client, cfg, plan, overwrite=overwrite, progress=progress)
    if evaluate:
        summary.evaluation = _evaluate(cfg, out_url, plan)
    return summary


def _output(cfg: RunConfig, out_url: str | None, overwrite: bool) -> str:
    """The output store (default ``<store.root>/indicators.zarr``), refused before anything is read when it is a
    user's folder, a store being written or another product's."""
    out_url = out_url or join(cfg.store.root, "indicators.zarr")
    preflight(out_url, storage_options_for(out_url, cfg.store), product=PRODUCT, overwrite=overwrite)
    return out_url


def _evaluate(cfg: RunConfig, out_url: str, plan: IndicatorPlan) -> dict[str, Any]:
    from geoplantnet.jobs.indicator_eval import evaluate_indicators
    from geoplantnet.runs.inputs import virtual_truth

    truth_species, truth_habitat = virtual_truth(cfg)
    return evaluate_indicators(out_url, plan.job.model, list(plan.species), truth_species, truth_habitat)


def under_root(cfg: RunConfig, name: str) -> str | None:
    """``<store.root>/<name>`` when it exists (the default habitat input of both modes)."""
    url = join(cfg.store.root, name)
    return url if exists(url, storage_options_for(url, cfg.store)) else None
