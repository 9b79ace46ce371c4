"""``geoplantnet impact``: a scenario applied inside a footprint, the affected map tiles predicted before and after
(:mod:`geoplantnet.products.impact`), the change summarised per zone with Monte-Carlo intervals
(:mod:`geoplantnet.products.impact_summary`), and the report folder written (:mod:`geoplantnet.reports.impact`). On
the virtual region the same scenario is applied to the generator's truth (:mod:`geoplantnet.evaluation.impact`)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import shapely

from geoplantnet.core.config import RunConfig, redact, redact_text
from geoplantnet.core.errors import ConfigError
from geoplantnet.evaluation.impact import evaluate_truth
from geoplantnet.products.impact import draws_of, land_cover_classes, learn_edit, scenario_summary
from geoplantnet.products.impact_summary import cell_table, summarise, zone_shapes
from geoplantnet.products.scenarios import ScenarioError, load_scenario
from geoplantnet.reports.impact import impact_markdown, plot_impact, write_geopackage
from geoplantnet.runs.assessment import assess_many, planned, resolve_models
from geoplantnet.runs.context import RunContext
from geoplantnet.samples.vectors import read_polygons
from geoplantnet.storage.outputs import claim_folder, finish_folder, place, place_json

REPORT_FILES = ("summary.json", "report.md", "maps.png", "impact.gpkg")


def run_impact(
    cfg: RunConfig,
    footprint: str,
    scenario: str,
    *,
    model: str | None = None,
    habitat_model: str | None = None,
    value_model: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> dict[str, Any]:
    """``geoplantnet impact``: the scenario in ``scenario`` applied inside ``footprint`` (any vector format and CRS),
    the affected tiles predicted before and after, and the report folder written (``report.md``, ``summary.json``,
    ``maps.png``, ``impact.gpkg``). With ``evaluate`` (virtual region) the generator's truth under the same scenario
    is compared."""
    if evaluate and not cfg.inputs.virtual:
        raise ConfigError("--evaluate compares with the virtual region's truth; inputs.* are set")
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite)
    t0 = time.perf_counter()
    sc = load_scenario(scenario)
    geometry = shapely.union_all(read_polygons(footprint, cfg.grid.epsg, "footprint").geometry.values)
    region = shapely.box(*cfg.grid.grid().bounds)
    if not shapely.intersects(geometry, region):
        raise ScenarioError(f"footprint {footprint}: it does not overlap the region {cfg.grid.grid().bounds}")
    models = resolve_models(ctx, model, habitat_model, value_model)
    folder = ctx.report_folder(f"impact/{sc.name}", "impact report", REPORT_FILES, out)
    with planned(ctx, sc, models) as (client, plan, run):
        edit = learn_edit(plan.sources, plan.cube_grid, geometry, sc, plan.env_names)
        (assessment,) = assess_many(client, ctx, plan, [edit])
    summary = {
        "scenario": scenario_summary(edit, land_cover_classes(plan.sources, sc.variable)),
        "footprint": redact({"u": str(footprint)})["u"],
        "tiles": assessment.tiles,
        "reach_m": plan.reach_m,
        "footprint_area_ha": round(float(shapely.intersection(geometry, region).area) / 1e4, 3),
        "draws": plan.draws,
        "draws_of": draws_of(plan),
        "level": plan.level,
        "versions": plan.versions,
        **summarise(plan, assessment),
        "notes": plan.notes + [redact_text(n) for n in run.notes],
    }
    if not summary["zones"]["footprint"]["pixels"]:
        summary["notes"].append(
            f"the footprint holds no {plan.map_grid.resolution:g} m map cell centre: the species and indicator tables "
            "show its edge and surroundings only (the value map sees it at 10 m)"
        )
    if evaluate:
        from geoplantnet.runs.inputs import virtual_scenario_truth

        summary["evaluation"] = evaluate_truth(plan, assessment, partial(virtual_scenario_truth, cfg))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    a, s = assessment, sc
    cells, squares = cell_table(plan, a)
    footprint_attrs = {"scenario": s.name, "land_cover": a.edit.code, "buffer_m": s.buffer_m}
    claim_folder(folder, "impact report", REPORT_FILES, overwrite=overwrite)
    place(folder, "report.md", lambda p: p.write_text(impact_markdown(summary)))
    place(folder, "maps.png", lambda p: plot_impact(p, a.before, a.after, a.grid.bounds, a.edit.geometry, s.name))
    place(
        folder,
        "impact.gpkg",
        lambda p: write_geopackage(
            p,
            summary,
            crs=plan.map_grid.crs,
            footprint=footprint_attrs,
            geometry=a.edit.geometry,
            zones=zone_shapes(a),
            cells=cells,
            squares=squares,
        ),
    )
    place_json(folder, "summary.json", summary)
    return {**summary, "report": finish_folder(folder)}
