"""The ``indicators`` command, a driver: the stores (two-pass) or the models (``--from-model``, fused) checked, the
tables (runs.inputs), the plan (:mod:`geoplantnet.products.indicators.plan`), the tiles (:mod:`geoplantnet.runs.tiles`),
the evaluation against the virtual truth (:mod:`geoplantnet.evaluation.indicators`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from geoplantnet.core.config import RunConfig
from geoplantnet.core.grid import Grid
from geoplantnet.evaluation.indicators import evaluate_indicators
from geoplantnet.inference.fused import CellsJob, FusedPredictor, fused_cells
from geoplantnet.inference.habitat import ClassifierFolder, HabitatClassifier, plan_classifier
from geoplantnet.inference.reader import MapSources
from geoplantnet.inference.species import ModelFile
from geoplantnet.models.calibration import Calibration
from geoplantnet.products import species_map
from geoplantnet.products.indicators import plan as planning
from geoplantnet.products.indicators.plan import FusedSetup, IndicatorPlan, IndicatorSummary
from geoplantnet.products.indicators.tables import IndicatorInputs
from geoplantnet.products.indicators.tiles import (
    PRODUCT,
    FusedTileJob,
    IndicatorError,
    IndicatorTileJob,  # noqa: F401 (re-exported, as the names below, until refresh, impact and tests are rewired)
    read_habitat_tile,  # noqa: F401
    tile_seed,  # noqa: F401
)
from geoplantnet.runs.context import RunContext, streaming
from geoplantnet.runs.inputs import indicator_inputs
from geoplantnet.runs.tiles import StreamSettings, stream_tiles
from geoplantnet.samples.plots import Plots
from geoplantnet.storage.store import exists, storage_options_for
from geoplantnet.validation.conformal import Sampled, gather_samples, sample_maps  # noqa: F401

if TYPE_CHECKING:
    from distributed import Client


class IndicatorStores(planning.IndicatorStores):
    """``IndicatorStores.open(cfg, ...)`` as refresh_steps, the benchmark and the tests call it, until they call the
    product's :meth:`~geoplantnet.products.indicators.plan.IndicatorStores.open` (then delete)."""

    @classmethod
    def open(  # type: ignore[override]
        cls, cfg: RunConfig, species_url: str, habitat_url: str | None, out_url: str, year: int | None = None
    ) -> planning.IndicatorStores:
        """The product's ``open`` with the run's ``store`` section and grid EPSG."""
        return planning.IndicatorStores.open(cfg.store, cfg.grid.epsg, species_url, habitat_url, out_url, year)


def plan_indicators(
    cfg: RunConfig,
    stores: planning.IndicatorStores,
    inputs: IndicatorInputs,
    species_calibration: Calibration | None = None,
) -> IndicatorPlan:
    """The two-pass plan (:func:`geoplantnet.products.indicators.plan.plan_from_stores`) of the run's settings."""
    scale = str(stores.species.attrs.get(species_map.SCALE_ATTR, ""))
    return planning.plan_from_stores(cfg.indicators, cfg.store, stores, inputs, species_calibration, scale=scale)


def sample_model(
    client: Client,
    fused: FusedPredictor,
    grid: Grid,
    tile: int,
    plots: Plots,
    settings: StreamSettings | None = None,
) -> Sampled:
    """:func:`~geoplantnet.validation.conformal.sample_maps` without the stores: the tiles holding plots computed on
    the cluster as fused tiles compute them (through the tile streamer), the values at the plots' cells kept. Costs
    one tile per tile holding plots."""
    row, col = grid.index(plots.x, plots.y)
    job, todo, at = CellsJob.at(fused, grid, tile, row, col)
    results, _ = stream_tiles(
        client,
        fused_cells,
        job,
        todo,
        run="surveys",
        n_tiles=len(todo),
        n_done=0,
        resources=fused.resources(client),
        settings=settings or StreamSettings(),
        lease=None,
        progress=False,
        error=IndicatorError,
        label="indicator-surveys",
    )
    ranks = fused.n_ranks if fused.habitats is not None else None
    parts = [(at[r["tile"]], r["p"], r["top"], r["top_p"]) for r in results]
    return gather_samples(len(plots), fused.n_species, ranks, row >= 0, parts)


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
    predictor, spec, model_attrs = species_map.plan_predictor(model, sources, cfg.grid, cfg.map)
    where = f"the model {model_attrs['model_file']}"

    def classify(species: list[str], thresholds: np.ndarray | None) -> tuple[HabitatClassifier, list[str]]:
        settings = {"habitats": cfg.habitats, "device": cfg.map.device}
        classifier, plot_model = plan_classifier(habitat, species, thresholds, where, **settings)
        return classifier, list(plot_model.classes)

    map_parts = species_map.run_parts(predictor.model.sha256, sources, cfg.grid.grid(), cfg.map)
    top_k, scale = cfg.habitats.top_k, species_map.output_scale(spec)
    return FusedSetup.of(
        predictor, spec, model_attrs, map_parts, inputs, classify if habitat is not None else None, top_k, scale
    )


def plan_fused_indicators(client: Client, cfg: RunConfig, setup: FusedSetup, out_url: str) -> IndicatorPlan:
    """The fused plan (:func:`geoplantnet.products.indicators.plan.plan_fused`), calibrated on the model's values at
    the surveys (:func:`sample_model`, on the cluster)."""
    surveys, tile, fused = setup.inputs.surveys, cfg.map.tile, setup.fused
    sampled = None
    if surveys is not None and len(surveys):
        sampled = sample_model(client, fused, fused.species.map_grid, tile, surveys, settings=streaming(cfg))
    return planning.plan_fused(cfg.indicators, cfg.store, setup, sampled, tile, out_url)


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
    job = plan.job
    done = RunContext(cfg, progress, overwrite, year).produce(
        client,
        plan.fn,
        job,
        output=job.output,
        grid=plan.grid,
        tile=plan.tile,
        layout=plan.layout(),
        product=PRODUCT,
        parts=plan.parts,
        attrs=plan.attrs,
        resources=job.fused.resources(client) if isinstance(job, FusedTileJob) else None,
        error=IndicatorError,
    )
    cores, seconds = sum(client.nthreads().values()) or 1, round(time.perf_counter() - t_start, 1)
    return IndicatorSummary.of(plan, cfg.indicators.level, done, cores, seconds)


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
    ctx = RunContext(cfg, progress, overwrite)
    species_url = species_store_url or ctx.url("species.zarr")
    habitat_url = habitat_store_url or (under_root(cfg, "habitat.zarr") if habitats else None)
    out_url = ctx.output("indicators.zarr", PRODUCT, out_url)
    stores = IndicatorStores.open(cfg, species_url, habitat_url, out_url)  # before the tables (virtual: generated)
    plan = plan_indicators(cfg, stores, indicator_inputs(cfg, progress=progress))
    with ctx.client() as client:
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

    ctx = RunContext(cfg, progress, overwrite)
    model_url = model or cfg.map.model
    if model_url is None and not cfg.inputs.virtual and cfg.inputs.observations is None:
        raise IndicatorError(
            "indicators --from-model needs a species model for your inputs: pass --model FILE (or map.model), or "
            "--observations FILE (inputs.observations) to train one"
        )
    habitat_folder = habitat_model or (under_root(cfg, "habitats/model") if habitats else None)
    out_url = ctx.output("indicators.zarr", PRODUCT, out_url)
    # every file given is read and checked before the virtual region is generated or a cluster starts
    model_file = ModelFile.read(model_url) if model_url is not None else None
    classifier = ClassifierFolder.read(habitat_folder) if habitat_folder is not None else None
    planned = plan_inputs(cfg, observations=model_url is None)
    tables = indicator_inputs(cfg, progress=progress)
    run = planned.load(progress=progress)
    sources = ctx.sources(run)
    setup = fused_setup(cfg, model_file, sources, classifier, tables) if model_file is not None else None
    with ctx.client() as client:
        if setup is None:
            model_url, _ = ctx.species_model(client, run)
            setup = fused_setup(cfg, model_url, sources, classifier, tables)
        plan = plan_fused_indicators(client, cfg, setup, out_url)
        summary = produce_indicators(client, cfg, plan, overwrite=overwrite, progress=progress)
    if evaluate:
        summary.evaluation = _evaluate(cfg, out_url, plan)
    return summary


def _evaluate(cfg: RunConfig, out_url: str, plan: IndicatorPlan) -> dict:
    """The store against indicators of the virtual truth."""
    from geoplantnet.runs.inputs import virtual_truth

    return evaluate_indicators(out_url, plan.job.model, list(plan.species), *virtual_truth(cfg))


def under_root(cfg: RunConfig, name: str) -> str | None:
    """``<store.root>/<name>`` when it exists (the default habitat input of both modes)."""
    url = RunContext(cfg).url(name)
    return url if exists(url, storage_options_for(url, cfg.store)) else None
