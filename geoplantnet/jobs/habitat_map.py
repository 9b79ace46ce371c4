"""The ``habitat-map`` job: ``habitat.zarr`` from ``species.zarr`` on the configured cluster.

A short driver: the run's context, the product's plan (:func:`geoplantnet.products.habitat_map.plan_habitat`: the
species store and the classifier checked against each other on the driver, before anything is written), the tile
stream (:mod:`geoplantnet.runs.tiles`: lease, claim, resumable tiles with markers, completion flag last), the summary.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from geoplantnet.core.config import ConfigError, RunConfig, redact
from geoplantnet.inference import habitat
from geoplantnet.inference.habitat import ClassifierFolder, HabitatClassifier
from geoplantnet.products.base import TilePlan
from geoplantnet.products.habitat_map import (
    MAP_MODEL_FOLDER,
    MODEL_FOLDER,
    PRODUCT,
    SPECIES_STORE,
    STORE,
    HabitatMapSummary,
    on_cluster,
    open_species_store,
    plan_in,
    summarise,
)
from geoplantnet.runs.context import RunContext

if TYPE_CHECKING:
    from distributed import Client

    from geoplantnet.models.plantbert import PlotModel


def plan_classifier(
    cfg: RunConfig,
    folder: str | ClassifierFolder,
    species: list[str],
    thresholds: np.ndarray | None,
    species_source: str,
) -> tuple[HabitatClassifier, PlotModel]:
    """:func:`geoplantnet.inference.habitat.plan_classifier` with the run's ``habitats`` settings and ``map.device``."""
    return habitat.plan_classifier(
        folder, species, thresholds, species_source, habitats=cfg.habitats, device=cfg.map.device
    )


def plan_habitat_map(
    cfg: RunConfig,
    species_url: str,
    model_folder: str | ClassifierFolder,
    out_url: str,
    year: int | None = None,
) -> TilePlan:
    """Open the species store and the classifier (unless given read), check they fit, and fingerprint the run; with
    ``year``, that year of a species series is classified into that year of a habitat series."""
    return plan_in(RunContext(cfg, year=year), species_url, model_folder, out_url)


def produce_habitat_map(
    client: Client,
    cfg: RunConfig,
    plan: TilePlan,
    *,
    overwrite: bool = False,
    progress: bool = True,
    year: int | None = None,
) -> HabitatMapSummary:
    """Write ``habitat.zarr`` as planned, resuming a store of the same run; another run's only with ``overwrite``."""
    t_start = time.perf_counter()
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite, year=year)
    done = ctx.produce_plan(client, on_cluster(plan, client), PRODUCT)
    cores = sum(client.nthreads().values()) or 1
    return summarise(plan, done, cores=cores, seconds=time.perf_counter() - t_start)


def run_habitat_map(
    cfg: RunConfig,
    species_store_url: str | None = None,
    model_folder: str | None = None,
    out_url: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> HabitatMapSummary:
    """The habitat-map job: ``species_store_url`` (default ``<store.root>/species.zarr``) classified into ``out_url``
    (default ``<store.root>/habitat.zarr``) on the configured cluster, by the model in ``model_folder`` (default
    ``<store.root>/habitats/model``, written by ``geoplantnet habitats``), or, with ``habitats.map_model`` other than
    ``folder``, by the map's own model trained first (:mod:`geoplantnet.runs.habitat_model`)."""
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite)
    species_url = species_store_url or ctx.url(SPECIES_STORE)
    # a user's folder, a store being written, another product's store: refused before the models are read
    out = ctx.output(STORE, PRODUCT, out_url)
    if cfg.habitats.map_model == "folder":
        plan = plan_habitat_map(cfg, species_url, model_folder or ctx.url(MODEL_FOLDER), out)
        with ctx.client() as client:
            return produce_habitat_map(client, cfg, plan, overwrite=overwrite, progress=progress)
    if model_folder is not None:
        raise ConfigError(
            f"--model names a classifier folder to map (habitats.map_model=folder); habitats.map_model="
            f"{cfg.habitats.map_model} trains the map's own model into <store.root>/{MAP_MODEL_FOLDER}"
        )
    species = open_species_store(species_url, ctx.options(species_url))  # refused before anything is trained
    species_model = str(species.attrs.get("model_file", ""))
    from geoplantnet.runs.habitat_model import train_map_model  # scikit-learn: after the refusals

    with ctx.client() as client:
        folder, choice, predictors = train_map_model(ctx, client, species_model, ctx.url(MAP_MODEL_FOLDER))
        plan = plan_in(ctx, species_url, folder, out, predictors)
        summary = produce_habitat_map(client, cfg, plan, overwrite=overwrite, progress=progress)
    summary.map_model = {"folder": redact({"url": folder})["url"], **choice}  # a URL may carry credentials
    return summary
