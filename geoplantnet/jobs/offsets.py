"""``geoplantnet offsets``: candidate sites assessed under a restoration scenario as an impact is (each its own
footprint: :mod:`geoplantnet.products.impact`), ranked by the biodiversity value they would gain and judged against
an impact report's loss (:mod:`geoplantnet.products.offsets`); on the virtual region, against the truth
(:mod:`geoplantnet.evaluation.impact`)."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Any

import shapely

from geoplantnet.core.config import RunConfig, redact
from geoplantnet.core.errors import ConfigError
from geoplantnet.evaluation.impact import evaluate_truth, offsets_evaluation, true_site_gain
from geoplantnet.products.impact import draws_of, land_cover_classes, learn_edit, scenario_summary
from geoplantnet.products.impact_summary import summarise
from geoplantnet.products.offsets import (
    Currency,
    check_sites,
    check_units,
    impact_loss,
    portfolio,
    rank,
    read_impact,
    site_ids,
    site_row,
)
from geoplantnet.products.scenarios import load_scenario
from geoplantnet.reports.impact import write_offsets
from geoplantnet.runs.assessment import assess_many, planned, resolve_models
from geoplantnet.runs.context import RunContext
from geoplantnet.samples.vectors import read_polygons
from geoplantnet.storage.outputs import claim_folder, finish_folder

OFFSET_FILES = ("summary.json", "report.md", "offsets.csv", "offsets.gpkg")


def run_offsets(
    cfg: RunConfig,
    sites: str,
    scenario: str,
    *,
    impact: str | None = None,
    id_column: str | None = None,
    model: str | None = None,
    habitat_model: str | None = None,
    value_model: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> dict[str, Any]:
    """``geoplantnet offsets``: every candidate site assessed under the restoration ``scenario`` as an impact is
    (its own footprint), ranked by what it would gain in ``impact.offset_currency`` (species-ha or value-ha, with
    Monte-Carlo intervals); with ``impact`` (a report), whether each site, and the best sites together, compensate
    its loss in the same currency at ``impact.offset_ratio`` (no net loss)."""
    if evaluate and not cfg.inputs.virtual:
        raise ConfigError("--evaluate compares with the virtual region's truth; inputs.* are set")
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite)
    t0 = time.perf_counter()
    sc = load_scenario(scenario)
    frame = read_polygons(sites, cfg.grid.epsg, "candidate sites")
    ids = site_ids(frame, id_column, sites)
    check_sites(frame, ids, shapely.box(*cfg.grid.grid().bounds), sites)
    currency = Currency(cfg.impact.offset_currency, cfg.impact.threatened_weight)
    impact_summary = read_impact(impact, currency) if impact is not None else None
    models = resolve_models(ctx, model, habitat_model, value_model)
    if models.value is None and currency.kind == "value":
        raise ConfigError(
            "offsets rank sites by biodiversity value: run `geoplantnet value` first or pass --value-model"
        )
    folder = ctx.report_folder(f"offsets/{sc.name}", "offset ranking", OFFSET_FILES, out)
    with planned(ctx, sc, models) as (client, plan, _):
        if impact_summary is not None:
            check_units(impact_summary, draws_of(plan), currency, str(impact))
        # one typical composite for all sites, learned around all of them (one read rather than one per site)
        shared = learn_edit(plan.sources, plan.cube_grid, shapely.union_all(frame.geometry.values), sc, plan.env_names)
        edits = [replace(shared, geometry=g) for g in frame.geometry.values]
        assessments = assess_many(client, ctx, plan, edits)
    loss = impact_loss(impact_summary, draws_of(plan), currency) if impact_summary is not None else None
    ratio, confidence = cfg.impact.offset_ratio, cfg.impact.confidence
    if evaluate:
        from geoplantnet.runs.inputs import virtual_scenario_truth

        truth = partial(virtual_scenario_truth, cfg)
    rows = []
    for site, a in zip(ids, assessments, strict=True):
        s = summarise(plan, a)
        row = site_row(site, s, plan.level, loss, ratio, confidence, currency)
        if evaluate:
            row["true_value_score_gain"] = true_site_gain(evaluate_truth(plan, a, truth), s)
        rows.append(row)
    rows = rank(rows)
    summary: dict[str, Any] = {
        "scenario": scenario_summary(shared, land_cover_classes(plan.sources, sc.variable)),
        "sites": redact({"u": str(sites)})["u"],
        "currency": {"kind": currency.kind, "unit": currency.unit, "threatened_weight": currency.threatened_weight},
        "draws": plan.draws,
        "level": plan.level,
        "versions": plan.versions,
        "ranking": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "notes": plan.notes,
    }
    if loss is not None:
        summary["impact"] = {
            "report": redact({"u": str(impact)})["u"],
            "loss": loss["amount"],
            "value_ha_loss": loss.get("value_ha"),
            "ratio": ratio,
            "confidence": confidence,
            "draws_paired": loss["paired"],
            "portfolio": portfolio(rows, loss, ratio, confidence),
        }
    if evaluate:
        chosen = summary["impact"]["portfolio"]["sites"] if loss is not None else []
        summary["evaluation"] = offsets_evaluation(rows, impact_summary, ratio, chosen)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    claim_folder(folder, "offset ranking", OFFSET_FILES, overwrite=overwrite)
    write_offsets(folder, summary, frame, ids)
    return {**summary, "report": finish_folder(folder)}
