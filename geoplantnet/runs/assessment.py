"""What an impact assessment and an offset ranking share on the driver: their models resolved, their report folder
checked, the run planned (inputs, sources, cluster, the calibrated fused predictor) and the scenario edits assessed
through the one tile streamer (:func:`geoplantnet.runs.tiles.stream_tiles`: bounded, retried)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geoplantnet.core.errors import ConfigError
from geoplantnet.inference.habitat import ClassifierFolder
from geoplantnet.inference.species import read_model
from geoplantnet.inference.value import ValueModelFile, ValuePredictor
from geoplantnet.products.impact import (
    Assessment,
    ImpactError,
    ImpactPlan,
    ScenarioEdit,
    assemble,
    assessment_tile,
    impact_jobs,
    impact_plan,
    model_variables,
    scenario_code,
)
from geoplantnet.products.impact_error import survey_classes, survey_errors
from geoplantnet.products.indicators.plan import FusedSetup
from geoplantnet.products.indicators.tiles import FusedTileJob
from geoplantnet.products.scenarios import Scenario, resolve_class
from geoplantnet.runs.context import RunContext

# the fused indicators' setup and plan, the species model's file and the value model's live in jobs/ on this
# branch's base (the house moves them below): imported from there until then
from geoplantnet.runs.indicators import fused_setup, plan_fused_indicators, survey_samples, under_root
from geoplantnet.runs.inputs import indicator_inputs
from geoplantnet.runs.tiles import stream_tiles
from geoplantnet.storage.store import exists

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class Models:
    """The models an assessment runs: species (a file), habitat classifier (a folder or None), value (or None)."""

    species: str | None
    habitats: str | None
    value: str | None


def resolve_models(ctx: RunContext, model: str | None, habitat_model: str | None, value_model: str | None) -> Models:
    """The configured or default models: ``map.model`` (else the one ``map`` trains and caches), the classifier under
    ``<store.root>/habitats/model`` and the value model under ``<store.root>/value`` when they exist."""
    cfg = ctx.cfg
    species = model or cfg.map.model
    if species is None and not cfg.inputs.virtual and cfg.inputs.observations is None:
        raise ConfigError("impact needs a species model for your inputs: pass --model FILE (or map.model)")
    value = value_model or cfg.impact.value_model
    if value is None:
        default = ctx.value_model_url
        value = default if exists(default, ctx.options(default)) else None
    return Models(species, habitat_model or under_root(cfg, "habitats/model"), value)


@contextmanager
def planned(
    ctx: RunContext, sc: Scenario, models: Models, others: Sequence[Scenario] = ()
) -> Iterator[tuple[Client, ImpactPlan, Any]]:
    """The models and the user's files read and checked, the scenario's class (and ``others``': the random
    evaluation's further scenarios, on the same land-cover layer) against the land-cover layer's declared classes and
    the species model's inputs, all before the virtual region is generated or a cluster starts; then the run's
    inputs, the cluster and the plan (:func:`plan_impact`)."""
    from geoplantnet.runs.inputs import plan_inputs

    cfg = ctx.cfg
    species = ctx.model_file(models.species) if models.species is not None else None
    classifier = ClassifierFolder.read(models.habitats) if models.habitats is not None else None
    value_file = ValueModelFile.read(models.value, cfg.store) if models.value is not None else None
    inputs = plan_inputs(cfg, observations=species is None)
    for each in (sc, *others):
        if each.variable != sc.variable:
            raise ConfigError(f"scenarios {sc.name} and {each.name} edit different layers: give them one")
        classes = inputs.classes(each.variable)
        if species is not None:
            scenario_code(each, classes, model_variables(species.spec, species.url))
        else:
            resolve_class(each, classes)
    tables = indicator_inputs(cfg, progress=ctx.progress)
    run = inputs.load(progress=ctx.progress)
    if not run.s2_items:
        raise ImpactError("an impact assessment edits the Sentinel-2 composites: the run has no Sentinel-2 items")
    sources = ctx.sources(run)
    value = ctx.value_predictor(value_file, sources) if value_file is not None else None
    setup = fused_setup(cfg, species, sources, classifier, tables) if species is not None else None
    with ctx.client() as client:
        if setup is None:
            setup = fused_setup(cfg, ctx.species_model(client, run)[0], sources, classifier, tables)
        yield client, plan_impact(client, ctx, setup, value, sc.variable), run


def plan_impact(
    client: Client, ctx: RunContext, setup: FusedSetup, value: ValuePredictor | None, variable: str = "land_cover"
) -> ImpactPlan:
    """The species model, classifier and indicator calibration as ``indicators --from-model`` plans them (``setup``:
    :func:`~geoplantnet.runs.indicators.fused_setup`, checked before the cluster started), the value predictor
    (:meth:`~geoplantnet.runs.context.RunContext.value_predictor`) when there is a value model, and the count
    model's error per class of the land-cover layer ``variable``, measured at the same surveys (their values
    computed once for both)."""
    from geoplantnet.models.mc_dropout import has_dropout

    cfg = ctx.cfg
    # The calibrated indicator model comes with a fused indicator plan, whose output store is never written (nor
    # read): the plan only names it (a run id from its fingerprint; no I/O). Named under store.root, where the run's
    # storage options apply (a local name with them set is refused as credentials meant for elsewhere).
    sampled = survey_samples(client, cfg, setup)
    iplan = plan_fused_indicators(client, cfg, setup, ctx.url(".impact-plan.zarr"), sampled=sampled)
    job = iplan.job
    if not isinstance(job, FusedTileJob):  # pragma: no cover - plan_fused_indicators always makes one
        raise TypeError(type(job))
    model_url = setup.fused.species.model.url
    species_model, _, _ = read_model(model_url, storage_options=setup.fused.species.options)
    errors = None
    surveys = setup.inputs.surveys
    if sampled is not None and surveys is not None:
        sources, grid = setup.fused.species.sources, cfg.grid.grid()
        names = model_variables(setup.spec, model_url)
        classes = survey_classes(sources, grid, cfg.map.tile, names, variable, surveys.x, surveys.y)
        errors = survey_errors(job.model, surveys, sampled, iplan.species, classes, cfg.impact.min_class_surveys)
    return impact_plan(
        job.fused,
        job.model,
        iplan.species,
        setup.spec,
        model_url,
        dropout=has_dropout(species_model),
        value=value,
        map_grid=cfg.grid.grid(),
        cube_grid=cfg.grid.grid(cfg.cube.resolution),
        tile=cfg.map.tile,
        settings=cfg.impact,
        level=cfg.indicators.level,
        errors=errors,
    )


def assess_many(client: Client, ctx: RunContext, plan: ImpactPlan, edits: Sequence[ScenarioEdit]) -> list[Assessment]:
    """Every edit's affected tiles predicted before and after, streamed to the cluster together (a bounded number
    in flight, failed tasks retried); nothing is written, so no store lease is held."""
    t0 = time.perf_counter()
    job, tiles = impact_jobs(plan, edits)
    results, _ = stream_tiles(
        client,
        assessment_tile,
        job,
        tiles,
        run="assessment",
        n_tiles=len(tiles),
        n_done=0,
        resources=plan.fused.resources(client),
        settings=ctx.streaming,
        lease=None,
        progress=ctx.progress,
        error=ImpactError,
        label="impact",
    )
    return assemble(plan, edits, results, time.perf_counter() - t0)
