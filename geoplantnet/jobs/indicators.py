"""The ``indicators`` command, a driver: the stores (two-pass) or the models (``--from-model``, fused) checked, the
tables (runs.inputs), the plan (:mod:`geoplantnet.products.indicators.plan`), the tiles (:mod:`geoplantnet.runs.tiles`),
the evaluation against the virtual truth (:mod:`geoplantnet.evaluation.indicators`)."""

from __future__ import annotations

from geoplantnet.core.config import RunConfig
from geoplantnet.evaluation.indicators import evaluate_indicators
from geoplantnet.inference.habitat import ClassifierFolder
from geoplantnet.products.indicators.plan import IndicatorPlan, IndicatorSummary
from geoplantnet.products.indicators.tiles import (
    PRODUCT,
    IndicatorError,
)
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.indicators import (
    fused_setup,
    open_stores,
    plan_fused_indicators,
    plan_indicators,
    produce_indicators,
    under_root,
)
from geoplantnet.runs.inputs import indicator_inputs


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
    stores = open_stores(cfg, species_url, habitat_url, out_url)  # before the tables (virtual: generated)
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
    model_file = ctx.model_file(model_url) if model_url is not None else None
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
