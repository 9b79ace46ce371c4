"""``habitat.zarr`` from ``species.zarr``: the habitat classifier over every pixel's predicted assemblage.

Same tile grid as the species store, one Dask task per tile (:func:`geoplantnet.runs.tiles.produce_tiles`: lease,
claim, resumable tiles with markers, completion flag last); each task reads its tile of every species once,
classifies it (:func:`geoplantnet.products.habitat_map.classify_codes`) with the model each worker process loads
once, and writes its region. Checks on the driver before anything is written: the species store is complete, the
model folder is a habitat classifier knowing some of the store's species, and the store has thresholds unless
``habitats.map_species`` asks for top-K sentences.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from pyproj import CRS

from geoplantnet.core.config import RunConfig, redact
from geoplantnet.core.errors import GeoplantnetError, InputError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.products.habitat_map import (
    THRESHOLD,
    AssemblageRule,
    HabitatBlocks,
    classify_codes,
    habitat_template,
    read_species_tile,
)
from geoplantnet.runs.context import streaming
from geoplantnet.runs.tiles import TileOutput, produce_tiles
from geoplantnet.runtime.cluster import task_resources
from geoplantnet.samples.extraction import grid_of
from geoplantnet.storage.store import (
    PRODUCT_ATTR,
    RUN_ATTR,
    StoreError,
    join,
    open_store,
    preflight,
    storage_options_for,
    zarr_store,
)
from geoplantnet.storage.tiles import write_tile_blocks
from geoplantnet.storage.years import complete_slot, year_records, year_view

# Pl@ntBERT (torch, transformers), distributed and the worker cache are imported where a classifier is read or a tile
# classified: a command refuses a bad species store without them (tests/test_refusal_times.py)
if TYPE_CHECKING:
    from distributed import Client

    from geoplantnet.models.plantbert import PlotModel

PRODUCT = "habitat"
BATCH = 1024  # sentences per classifier forward pass (inference: far larger than the training batch)


class HabitatMapError(GeoplantnetError):
    """A habitat map that cannot start (model and store do not fit) or a tile that failed (one line naming it)."""


@dataclass(frozen=True)
class HabitatModelRef:
    """A habitat classifier folder and the version (content hash of its weights) the driver read there."""

    folder: str
    version: str


@dataclass(frozen=True)
class HabitatClassifier:
    """How species codes become habitat arrays: the classifier, the token of each species of the map, the
    assemblage rule; what a habitat tile and a fused indicator tile (:mod:`geoplantnet.jobs.indicators`) share (small:
    the per-species arrays are S values)."""

    model: HabitatModelRef
    token_of: np.ndarray  # the model's token of each species of the map
    rule: AssemblageRule
    assemblage: str  # the rule in words, with the model's max_species
    top_k: int
    batch_size: int
    device: str

    @property
    def version(self) -> str:
        return f"plantbert-classifier/{self.model.version}"

    def classify(self, codes: np.ndarray) -> tuple[HabitatBlocks, int]:
        """The habitat arrays of species codes (species, y, x) uint8, and the loads of this worker's classifier."""
        model, loads = cached_classifier(self.model, self.device)
        blocks = classify_codes(model, codes, self.token_of, self.rule, top_k=self.top_k, batch_size=self.batch_size)
        return blocks, loads


@dataclass(frozen=True)
class HabitatTileJob:
    """Everything a habitat tile task needs besides its tile."""

    species_url: str
    species_options: dict[str, Any]
    species_slot: int | None  # the year's slot of a species series (None: a single-year store)
    classifier: HabitatClassifier
    output: TileOutput


def cached_classifier(ref: HabitatModelRef, device: str) -> tuple[PlotModel, int]:
    """The classifier of ``ref`` kept by this worker process, and the loads it has done; a folder whose model changed
    since the driver read it is refused rather than mixed into a map."""
    from geoplantnet.models.plantbert import PlotModel
    from geoplantnet.runtime.worker_cache import pinned
    from geoplantnet.training.train import resolve_device

    dev = resolve_device(device)

    def load() -> tuple[PlotModel, str]:
        model = PlotModel.load(ref.folder, dev)
        return model, model.version

    return pinned("habitat-model", ref.folder, ref.version, str(dev), load, "habitat model")


def habitat_tile(job: HabitatTileJob, tile: Tile) -> dict[str, Any]:
    """Read, classify and write one tile; returns its timings (runs on a worker)."""
    t0 = time.perf_counter()
    codes = read_species_tile(job.species_url, tile, job.species_options, job.species_slot)
    t1 = time.perf_counter()
    blocks, loads = job.classifier.classify(codes)
    t2 = time.perf_counter()
    info = {"read_s": round(t1 - t0, 3), "model_s": round(t2 - t1, 3), "pid": os.getpid()}
    out = job.output
    write_tile_blocks(out.url, blocks.as_dict(), tile, run=out.run, info=info, storage_options=out.storage_options)
    return {**info, "tile": tile.id, "pixels": tile.height * tile.width, "model_loads": loads}


@dataclass(frozen=True)
class ClassifierFolder:
    """A habitat classifier folder read and checked on the driver (a Pl@ntBERT classifier, not a fill-mask model):
    read before a job's inputs are made or a cluster starts, so a wrong folder fails first."""

    folder: str
    model: PlotModel

    @classmethod
    def read(cls, folder: str) -> ClassifierFolder:
        """Load ``folder``; one-line errors when it is not a habitat classifier."""
        from geoplantnet.models.plantbert import PlotModel

        model = PlotModel.load(folder)  # PlotModelError (one line) when the folder is not a Pl@ntBERT model
        if not model.classes:
            where = redact({"b": folder})["b"]
            raise InputError(f"{where}: a fill-mask model, not a habitat classifier (run geoplantnet habitats)")
        return cls(folder, model)

    @classmethod
    def of(cls, classifier: str | ClassifierFolder) -> ClassifierFolder:
        """``classifier`` itself, or the folder at that URL read."""
        return classifier if isinstance(classifier, ClassifierFolder) else cls.read(classifier)


def plan_classifier(
    cfg: RunConfig,
    folder: str | ClassifierFolder,
    species: list[str],
    thresholds: np.ndarray | None,
    species_source: str,
) -> tuple[HabitatClassifier, PlotModel]:
    """Load the habitat classifier (unless given read) and check it fits the map's ``species`` (named
    ``species_source`` in messages) and the ``habitats.map_species`` rule (``thresholds``: the map's
    ``threshold_max_tss``, None without); one-line refusals."""
    from geoplantnet.models.plantbert import UNK, species_vocabulary_index

    read = ClassifierFolder.of(folder)
    model_folder, model = read.folder, read.model
    where = redact({"b": model_folder})["b"]
    token_of = species_vocabulary_index(model.tokenizer, species)
    if (token_of == UNK).all():
        raise HabitatMapError(
            f"none of the {len(species)} species of {species_source} is in the vocabulary of the habitat model "
            f"{where} (species ids differ: train it on plots naming the same species)"
        )
    rule = AssemblageRule.of(cfg.habitats.map_species, thresholds, species_source)
    classifier = HabitatClassifier(
        model=HabitatModelRef(model_folder, model.version),
        token_of=token_of,
        rule=rule,
        assemblage=rule.describe() + f" max_species={model.cfg.max_species}",
        top_k=cfg.habitats.top_k,
        batch_size=BATCH,
        device=cfg.map.device,
    )
    return classifier, model


@dataclass(frozen=True)
class HabitatPlan:
    """A habitat map decided on the driver before anything is written."""

    grid: Grid
    tile: int
    classes: tuple[str, ...]
    parts: dict[str, str]
    attrs: dict[str, str]
    job: HabitatTileJob
    names: tuple[str, ...] = ()  # class names saved with the classifier, where known


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


def plan_habitat_map(
    cfg: RunConfig,
    species_url: str,
    model_folder: str | ClassifierFolder,
    out_url: str,
    year: int | None = None,
) -> HabitatPlan:
    """Open the species store and the classifier (unless given read), check they fit, and fingerprint the run; with
    ``year``, that year of a species series is classified into that year of a habitat series."""
    folder = model_folder.folder if isinstance(model_folder, ClassifierFolder) else model_folder
    where = redact({"a": species_url, "b": folder})
    if out_url.rstrip("/") == species_url.rstrip("/"):
        raise HabitatMapError(f"--out {out_url} is the species store the map is made from; choose another path")
    species_options = storage_options_for(species_url, cfg.store)
    ds, slot, species_run = open_species_year(species_url, species_options, year)
    species = [str(s) for s in ds["species"].values]
    thresholds = ds[THRESHOLD].values.astype("float32") if THRESHOLD in ds else None
    classifier, model = plan_classifier(cfg, model_folder, species, thresholds, where["a"])
    raw = zarr.open_group(zarr_store(species_url, species_options), mode="r")["probability"]
    tile = int((raw.shards or raw.chunks)[-1])  # the species store's tiles: one shard read per habitat tile
    grid = grid_of(ds["probability"], store_epsg(ds, cfg.grid.epsg))
    species_version = str(ds.attrs.get("model_version", "unknown"))
    habitat_version = classifier.version
    parts = {
        "species": species_run,
        "model": model.version[:12],
        "assemblage": classifier.assemblage,
        "top_k": str(cfg.habitats.top_k),
        "tiling": f"tile={tile}",
    }
    job = HabitatTileJob(
        species_url=species_url,
        species_options=species_options,
        species_slot=slot,
        classifier=classifier,
        output=TileOutput.of(out_url, parts, storage_options_for(out_url, cfg.store), year=year),
    )
    from geoplantnet.models.plantbert import UNK  # imported with the classifier, once the species store is read

    attrs = {
        "species_store": where["a"],
        "species_run": parts["species"],
        "species_model_version": species_version,
        "habitat_model_version": habitat_version,
        "model_version": habitat_version,
        "habitat_model_folder": where["b"],
        "habitat_model": json.dumps(model.describe()),
        "assemblage": parts["assemblage"],
        "species_unknown_to_model": str(int((classifier.token_of == UNK).sum())),
    }
    return HabitatPlan(grid, tile, model.classes, parts, attrs, job, model.names)


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

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values (what the command prints)."""
        return asdict(self)


def produce_habitat_map(
    client: Client,
    cfg: RunConfig,
    plan: HabitatPlan,
    *,
    overwrite: bool = False,
    progress: bool = True,
    year: int | None = None,
) -> HabitatMapSummary:
    """Write ``habitat.zarr`` as planned, resuming a store of the same run; another run's only with ``overwrite``."""
    from geoplantnet.runtime.worker_cache import WorkerCachePlugin

    t_start = time.perf_counter()
    resources = task_resources(client) if cfg.map.device != "cpu" else None
    client.register_plugin(WorkerCachePlugin())
    out = plan.job.output
    done = produce_tiles(
        client,
        habitat_tile,
        plan.job,
        output=out,
        grid=plan.grid,
        tile=plan.tile,
        layout=habitat_template(plan.grid, plan.classes, plan.tile, cfg.habitats.top_k, plan.names or None),
        product=PRODUCT,
        parts=plan.parts,
        settings=streaming(cfg),
        provenance=cfg.to_attrs(),
        attrs=plan.attrs,
        overwrite=overwrite,
        resources=resources,
        progress=progress,
        error=HabitatMapError,
        year=year,
    )
    results = done.results
    cores = sum(client.nthreads().values()) or 1
    pixels = sum(r["pixels"] for r in results)
    model_s = sum(r["model_s"] for r in results)
    pps = done.pixels_per_second
    return HabitatMapSummary(
        store=redact({"url": out.url})["url"],
        run=out.run,
        species_store=plan.attrs["species_store"],
        species_model_version=plan.attrs["species_model_version"],
        habitat_model_version=plan.attrs["habitat_model_version"],
        assemblage=plan.attrs["assemblage"],
        tiles=len(done.tiles),
        tiles_computed=len(results),
        tiles_skipped=len(done.tiles) - len(done.todo),
        classes=len(plan.classes),
        shape=[plan.grid.height, plan.grid.width],
        cores=cores,
        pixels_per_second=pps,
        pixels_per_second_per_core=round(pps / cores, 1) if pps else None,
        classifier_pixels_per_core_second=round(pixels / model_s, 1) if results and model_s > 0 else None,
        model_seconds=round(model_s, 2),
        read_seconds=round(sum(r["read_s"] for r in results), 2),
        model_loads=done.model_loads(),
        seconds=round(time.perf_counter() - t_start, 1),
    )


def run_habitat_map(
    cfg: RunConfig,
    species_store_url: str | None = None,
    model_folder: str | None = None,
    out_url: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> HabitatMapSummary:
    """The habitat-map job: ``species_store_url`` (default ``<store.root>/species.zarr``) classified by the model in
    ``model_folder`` (default ``<store.root>/habitats/model``, written by ``geoplantnet habitats``) into ``out_url``
    (default ``<store.root>/habitat.zarr``) on the configured cluster."""
    from geoplantnet.runtime.cluster import connect

    species_url = species_store_url or join(cfg.store.root, "species.zarr")
    model_folder = model_folder or join(cfg.store.root, "habitats/model")
    out_url = out_url or join(cfg.store.root, "habitat.zarr")
    # a user's folder, a store being written, another product's store: refused before the models are read
    preflight(out_url, storage_options_for(out_url, cfg.store), product=PRODUCT, overwrite=overwrite)
    plan = plan_habitat_map(cfg, species_url, model_folder, out_url)
    with connect(cfg.cluster) as client:
        return produce_habitat_map(client, cfg, plan, overwrite=overwrite, progress=progress)
