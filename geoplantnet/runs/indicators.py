"""The indicators' driver steps that several commands share (``indicators``, ``refresh``, ``impact``/``offsets``):
the stores opened with the run's settings, the two-pass and fused plans, the surveys sampled from a model through
the tile streamer, the store written. Numerics are the product's (:mod:`geoplantnet.products.indicators`); these
functions read the run's configuration and the cluster."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from geoplantnet.core.config import RunConfig
from geoplantnet.core.grid import Grid
from geoplantnet.inference.fused import CellsJob, FusedPredictor, fused_cells
from geoplantnet.inference.habitat import ClassifierFolder, HabitatClassifier, plan_classifier
from geoplantnet.inference.reader import MapSources
from geoplantnet.inference.species import ModelFile
from geoplantnet.models.calibration import Calibration
from geoplantnet.products import species_map
from geoplantnet.products.indicators import plan as planning
from geoplantnet.products.indicators.plan import FusedSetup, IndicatorPlan, IndicatorSummary
from geoplantnet.products.indicators.tables import IndicatorInputs
from geoplantnet.products.indicators.tiles import PRODUCT, FusedTileJob, IndicatorError
from geoplantnet.runs.context import RunContext, streaming
from geoplantnet.runs.tiles import StreamSettings, stream_tiles
from geoplantnet.samples.plots import Plots
from geoplantnet.storage.store import exists, storage_options_for
from geoplantnet.validation.conformal import Sampled, gather_samples

if TYPE_CHECKING:
    from distributed import Client


def open_stores(
    cfg: RunConfig, species_url: str, habitat_url: str | None, out_url: str, year: int | None = None
) -> planning.IndicatorStores:
    """The indicators' input stores checked (:meth:`~geoplantnet.products.indicators.plan.IndicatorStores.open`) with
    the run's ``store`` section and grid CRS."""
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
    model = RunContext(cfg).model_file(model)  # with the store's options for a URL
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


def survey_samples(client: Client, cfg: RunConfig, setup: FusedSetup) -> Sampled | None:
    """The fused predictor's values at the surveys (:func:`sample_model`, on the cluster; None without surveys)."""
    surveys, fused = setup.inputs.surveys, setup.fused
    if surveys is None or not len(surveys):
        return None
    return sample_model(client, fused, fused.species.map_grid, cfg.map.tile, surveys, settings=streaming(cfg))


def plan_fused_indicators(
    client: Client, cfg: RunConfig, setup: FusedSetup, out_url: str, *, sampled: Sampled | None = None
) -> IndicatorPlan:
    """The fused plan (:func:`geoplantnet.products.indicators.plan.plan_fused`), calibrated on the model's values at
    the surveys (``sampled``, else :func:`survey_samples` on the cluster)."""
    if sampled is None:
        sampled = survey_samples(client, cfg, setup)
    return planning.plan_fused(cfg.indicators, cfg.store, setup, sampled, cfg.map.tile, out_url)


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


def under_root(cfg: RunConfig, name: str) -> str | None:
    """``<store.root>/<name>`` when it exists (the default habitat input of both modes)."""
    url = RunContext(cfg).url(name)
    return url if exists(url, storage_options_for(url, cfg.store)) else None
