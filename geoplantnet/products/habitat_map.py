"""Habitat maps: ``habitat.zarr`` from ``species.zarr``, each pixel's predicted assemblage classified by a habitat
classifier of any kind (Pl@ntBERT, a sentence classifier, or the map's own forest on the predicted assemblage and the
pixels' point predictors: :mod:`geoplantnet.models.map_forest`).

Same tile grid as the species store, one tile task per species tile (:func:`habitat_tile`): it reads its tile of
every species once (:func:`read_species_tile`), and, for a model that takes them, the tile's point predictors through
the map's reader; classifies it (:mod:`geoplantnet.inference.habitat`) with the model each worker process loads once,
and writes its region. The plan (:func:`plan_habitat`, on the driver, before anything
is written) checks that the species store is complete, that the classifier knows some of its species, and that the
store has thresholds unless ``habitats.map_species`` asks for top-K sentences. The variables:

- ``habitat`` (y, x) int16: index of the most probable class in ``habitat_code``; -1 = no data
- ``habitat_probability`` (y, x) uint8: its probability, coded like species probabilities (255 = no data)
- ``top_k`` (rank, y, x) int16: the classes by decreasing probability; -1 = no data
- ``top_k_probability`` (rank, y, x) uint8: their probabilities (what conformal habitat sets are made of)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr
from pyproj import CRS

from geoplantnet.core.config import HabitatsConfig, redact
from geoplantnet.core.encoding import NODATA, SCALE
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.habitat import (
    NO_CLASS,
    THRESHOLD,
    ClassifierFolder,
    HabitatClassifier,
    HabitatMapError,
    plan_classifier,
    ranks,
)
from geoplantnet.products.base import Product, TilePlan, register
from geoplantnet.runtime.cluster import task_resources
from geoplantnet.samples.extraction import grid_of
from geoplantnet.storage.overviews import CLASS_ATTRS
from geoplantnet.storage.store import PRODUCT_ATTR, RUN_ATTR, StoreError, open_store, zarr_store
from geoplantnet.storage.tiles import TileOutput, probability_attrs, tiled_variable, write_tile_blocks
from geoplantnet.storage.years import complete_slot, year_records, year_view

if TYPE_CHECKING:
    from distributed import Client

    from geoplantnet.inference.map_inputs import PixelPredictors

PRODUCT = "habitat"
STORE = "habitat.zarr"
SPECIES_STORE = "species.zarr"
MODEL_FOLDER = "habitats/model"  # where ``geoplantnet habitats`` saves the classifier, under store.root
MAP_MODEL_FOLDER = "habitats/map-model"  # where habitat-map saves the map's own model (habitats.map_model)


def read_species_tile(
    url: str, tile: Tile, storage_options: Mapping[str, Any] | None = None, slot: int | None = None
) -> np.ndarray:
    """The uint8 codes (species, y, x) of every species over ``tile``: one read of the tile's shard (of the year in
    ``slot`` of a series)."""
    arr = zarr.open_group(zarr_store(url, storage_options), mode="r")["probability"]
    ys, xs = tile.slices
    return np.asarray(arr[:, ys, xs] if slot is None else arr[slot, :, ys, xs])


def habitat_template(
    grid: Grid, classes: Sequence[str], tile: int, top_k: int, names: Sequence[str] | None = None
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The lazy, never computed ``habitat.zarr`` layout on ``grid`` (one chunk per tile) and its encoding."""
    k = ranks(len(classes), top_k)
    codes = " ".join(classes)
    flags = list(range(len(classes)))
    shape = (grid.height, grid.width)
    habitat, habitat_enc = tiled_variable(
        ("y", "x"),
        shape,
        dtype="int16",
        fill=NO_CLASS,
        chunks=(tile, tile),
        attrs={
            "long_name": "predicted habitat: index of the most probable class in habitat_code",
            "flag_values": flags,
            "flag_meanings": codes,
            "comment": f"{NO_CLASS} = no data (a species of the assemblage had no data, or not yet computed)",
            **CLASS_ATTRS,
        },
    )
    prob, prob_enc = tiled_variable(
        ("y", "x"),
        shape,
        dtype="uint8",
        fill=NODATA,
        chunks=(tile, tile),
        scale=SCALE,
        attrs=probability_attrs("probability of the predicted habitat (classifier softmax)"),
    )
    top, top_enc = tiled_variable(
        ("rank", "y", "x"),
        (k, *shape),
        dtype="int16",
        fill=NO_CLASS,
        chunks=(k, tile, tile),
        attrs={
            "long_name": "habitat classes by decreasing probability (index in habitat_code)",
            "flag_values": flags,
            "flag_meanings": codes,
            "comment": f"rank 0 = habitat; {NO_CLASS} = no data",
            **CLASS_ATTRS,
        },
    )
    top_p, top_p_enc = tiled_variable(
        ("rank", "y", "x"),
        (k, *shape),
        dtype="uint8",
        fill=NODATA,
        chunks=(k, tile, tile),
        scale=SCALE,
        attrs=probability_attrs("probability of each class of top_k (classifier softmax)"),
    )
    coords: dict[str, Any] = {
        **grid.coords(),
        "rank": ("rank", np.arange(k, dtype="int16"), {"long_name": "rank of the class (0 = most probable)"}),
        # the class dimension is not called "habitat": that name is the data variable's (as truth/habitat.zarr)
        "habitat_code": ("habitat_class", np.asarray(classes, dtype=object), {"long_name": "EUNIS habitat code"}),
    }
    if names is not None:
        coords["habitat_name"] = ("habitat_class", np.asarray(names, dtype=object))
    ds = xr.Dataset(
        {"habitat": habitat, "habitat_probability": prob, "top_k": top, "top_k_probability": top_p}, coords=coords
    )
    encoding = {"habitat": habitat_enc, "habitat_probability": prob_enc, "top_k": top_enc}
    return ds, {**encoding, "top_k_probability": top_p_enc}


# -- the tile task (worker side) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HabitatTileJob:
    """Everything a habitat tile task needs besides its tile."""

    species_url: str
    species_options: dict[str, Any]
    species_slot: int | None  # the year's slot of a species series (None: a single-year store)
    classifier: HabitatClassifier
    output: TileOutput


def habitat_tile(job: HabitatTileJob, tile: Tile) -> dict[str, Any]:
    """Read, classify and write one tile; returns its timings (runs on a worker)."""
    t0 = time.perf_counter()
    codes = read_species_tile(job.species_url, tile, job.species_options, job.species_slot)
    t1 = time.perf_counter()
    blocks, loads = job.classifier.classify(codes, tile)
    t2 = time.perf_counter()
    info = {"read_s": round(t1 - t0, 3), "model_s": round(t2 - t1, 3), "pid": os.getpid()}
    out = job.output
    write_tile_blocks(out.url, blocks.as_dict(), tile, run=out.run, info=info, storage_options=out.storage_options)
    return {**info, "tile": tile.id, "pixels": tile.height * tile.width, "model_loads": loads}


# -- the plan (driver side) -----------------------------------------------------------------------------------------


def open_species_store(url: str, options: dict[str, Any]) -> Any:
    """A complete species.zarr (one-line StoreError when missing, incomplete or another product)."""
    ds = open_store(url, storage_options=options)  # StoreError (one line) when missing or incomplete
    if ds.attrs.get(PRODUCT_ATTR) != "species" or "probability" not in ds:
        raise StoreError(f"{redact({'url': url})['url']}: not a species.zarr (no species probability)")
    return ds


def open_species_year(url: str, options: dict[str, Any], year: int | None) -> tuple[Any, int | None, str]:
    """A complete species store, or the complete ``year`` of a species series: the dataset (that year's), its slot
    (None without a year axis) and the run that wrote it."""
    ds = open_species_store(url, options)
    slot = complete_slot(url, ds.attrs, year)
    if year is None:
        return ds, slot, str(ds.attrs.get(RUN_ATTR, "unknown"))
    record = year_records(ds.attrs)[int(year)]
    view = year_view(ds, year)
    # the root's provenance is the last writer's (any year): the year's own record says what made this year
    view.attrs = {**ds.attrs, **record.get("attrs", {})}
    return view, slot, str(record["run"])


def store_epsg(ds: Any, default: int) -> int:
    """The EPSG code of a store's ``spatial_ref`` (``default`` without one)."""
    wkt = ds["spatial_ref"].attrs.get("crs_wkt") if "spatial_ref" in ds.coords else None
    return (CRS.from_wkt(wkt).to_epsg() or default) if wkt else default


def plan_habitat(
    species_url: str,
    classifier: str | ClassifierFolder,
    out_url: str,
    *,
    habitats: HabitatsConfig,
    device: str,
    epsg: int,
    species_options: dict[str, Any],
    out_options: dict[str, Any],
    year: int | None = None,
    predictors: PixelPredictors | None = None,
) -> TilePlan:
    """Open the species store and the classifier (unless given read), check they fit, and fingerprint the run; with
    ``year``, that year of a series is classified into that year of a habitat series. ``device``: where the workers
    classify (``map.device``); ``epsg``: the CRS of a store without one (``grid.epsg``); ``predictors``: the pixels'
    point predictors (a map forest on them needs them)."""
    folder = classifier.folder if isinstance(classifier, ClassifierFolder) else classifier
    where = redact({"a": species_url, "b": folder})
    if out_url.rstrip("/") == species_url.rstrip("/"):
        raise HabitatMapError(f"--out {out_url} is the species store the map is made from; choose another path")
    ds, slot, species_run = open_species_year(species_url, species_options, year)
    species = [str(s) for s in ds["species"].values]
    thresholds = ds[THRESHOLD].values.astype("float32") if THRESHOLD in ds else None
    planned, model = plan_classifier(
        classifier, species, thresholds, where["a"], habitats=habitats, device=device, predictors=predictors
    )
    raw = zarr.open_group(zarr_store(species_url, species_options), mode="r")["probability"]
    tile = int((raw.shards or raw.chunks)[-1])  # the species store's tiles: one shard read per habitat tile
    grid = grid_of(ds["probability"], store_epsg(ds, epsg))
    if planned.predictors is not None and not grid.same_pixels(planned.predictors.grid):
        # a forest on point predictors reads them on the config's grid, its tiles and codes are the store's
        raise HabitatMapError(
            f"{where['a']} is on another grid ({grid.label()}) than the config's grid.* "
            f"({planned.predictors.grid.label()}) the map's point predictors are read on: set grid.* to the store's"
        )
    species_version = str(ds.attrs.get("model_version", "unknown"))
    habitat_version = planned.version
    parts = {
        "species": species_run,
        "model": model.version[:12],
        "assemblage": planned.assemblage,
        "top_k": str(habitats.top_k),
        "tiling": f"tile={tile}",
    }
    output = TileOutput.of(out_url, parts, out_options, year=year)
    job = HabitatTileJob(species_url, species_options, slot, planned, output)
    attrs = {
        "species_store": where["a"],
        "species_run": parts["species"],
        "species_model_version": species_version,
        "habitat_model_version": habitat_version,
        "model_version": habitat_version,
        "habitat_model_folder": where["b"],
        "habitat_model": json.dumps(model.describe()),
        "assemblage": parts["assemblage"],
        "species_unknown_to_model": str(planned.unknown),
    }
    layout = habitat_template(grid, model.classes, tile, habitats.top_k, model.names or None)
    return TilePlan(habitat_tile, job, output, grid, tile, layout, parts, attrs, HabitatMapError)


def on_cluster(plan: TilePlan, client: Client) -> TilePlan:
    """``plan`` made ready for ``client``: each worker gets its model cache (the classifier is loaded once per
    process) and, off the CPU, every tile task asks for a GPU where the cluster has them."""
    from geoplantnet.runtime.worker_cache import WorkerCachePlugin

    resources = task_resources(client) if plan.job.classifier.device != "cpu" else None
    client.register_plugin(WorkerCachePlugin())
    return replace(plan, resources=resources)


# -- what a run did --------------------------------------------------------------------------------------------------


@dataclass
class HabitatMapSummary:
    """What a habitat map run did: the store, tiles computed and skipped, speed (per core too), both models."""

    store: str
    run: str
    species_store: str
    species_model_version: str
    habitat_model_version: str
    assemblage: str
    tiles: int
    tiles_computed: int
    tiles_skipped: int
    classes: int
    shape: list[int]
    cores: int
    pixels_per_second: float | None
    pixels_per_second_per_core: float | None
    classifier_pixels_per_core_second: float | None  # pixels / summed model time of the tiles (no read, no write)
    model_seconds: float
    read_seconds: float
    model_loads: dict[str, int]
    seconds: float
    map_model: dict[str, Any] | None = None  # the map's own model: which candidate won on the folds, by how much

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values (what the command prints)."""
        return asdict(self)


def summarise(plan: TilePlan, done: Any, *, cores: int, seconds: float) -> HabitatMapSummary:
    """The summary of ``plan`` run as ``done`` (a :class:`geoplantnet.runs.tiles.TiledRun`) on ``cores`` worker
    threads in ``seconds`` (wall clock)."""
    results = done.results
    pixels = sum(r["pixels"] for r in results)
    model_s = sum(r["model_s"] for r in results)
    pps = done.pixels_per_second
    return HabitatMapSummary(
        store=redact({"url": plan.output.url})["url"],
        run=plan.output.run,
        species_store=plan.attrs["species_store"],
        species_model_version=plan.attrs["species_model_version"],
        habitat_model_version=plan.attrs["habitat_model_version"],
        assemblage=plan.attrs["assemblage"],
        tiles=len(done.tiles),
        tiles_computed=len(results),
        tiles_skipped=len(done.tiles) - len(done.todo),
        classes=int(plan.layout[0].sizes["habitat_class"]),
        shape=[plan.grid.height, plan.grid.width],
        cores=cores,
        pixels_per_second=pps,
        pixels_per_second_per_core=round(pps / cores, 1) if pps else None,
        classifier_pixels_per_core_second=round(pixels / model_s, 1) if results and model_s > 0 else None,
        model_seconds=round(model_s, 2),
        read_seconds=round(sum(r["read_s"] for r in results), 2),
        model_loads=done.model_loads(),
        seconds=round(seconds, 1),
    )


# -- the run context's plan and the registry entry -------------------------------------------------------------------


def plan_in(
    ctx: Any,
    species_url: str,
    classifier: str | ClassifierFolder,
    out_url: str,
    predictors: PixelPredictors | None = None,
) -> TilePlan:
    """:func:`plan_habitat` with the settings of a run context (:class:`geoplantnet.runs.context.RunContext`): its
    ``habitats`` section, ``map.device``, ``grid.epsg``, the stores' options and its year."""
    cfg = ctx.cfg
    return plan_habitat(
        species_url,
        classifier,
        out_url,
        habitats=cfg.habitats,
        device=cfg.map.device,
        epsg=cfg.grid.epsg,
        species_options=ctx.options(species_url),
        out_options=ctx.options(out_url),
        year=ctx.year,
        predictors=predictors,
    )


def plan(ctx: Any, client: Client) -> TilePlan:
    """The registry's plan: ``species.zarr`` under ``store.root`` classified by the classifier of
    ``refresh.habitat_model`` (default: the one ``geoplantnet habitats`` saved under ``store.root``) into
    ``habitat.zarr`` (the context's year of a series)."""
    folder = ctx.cfg.refresh.habitat_model or ctx.url(MODEL_FOLDER)
    return on_cluster(plan_in(ctx, ctx.url(SPECIES_STORE), folder, ctx.url(STORE)), client)


register(
    Product(
        name=PRODUCT,
        store=STORE,
        title="habitat map: each pixel's predicted assemblage classified (Pl@ntBERT or the map's own model)",
        requires=("species",),
        yearly=True,
        plan=plan,
    )
)
