"""``geoplantnet impact --random N --evaluate``: N footprints drawn at random over the virtual region, each under one
of the impact scenarios (one ``--scenario``, or several: each footprint's drawn with the seed among those whose class
is not the footprint's majority class) and, with ``--offset-scenario``, N sets of candidate sites drawn from a pool
under the restoration scenario, each set offsetting one footprint's impact; all of it assessed on one plan (one
cluster, one calibration, the edits streamed together: :func:`geoplantnet.runs.assessment.assess_many`) and scored
against the generator's truth (:mod:`geoplantnet.evaluation.random_assessments`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import shapely

from geoplantnet.core.config import RunConfig
from geoplantnet.core.errors import ConfigError
from geoplantnet.evaluation.random_assessments import (
    FOOTPRINT_HA,
    SITE_HA,
    Drawn,
    aggregate,
    assign_scenarios,
    draw_polygons,
    footprint_row,
    set_row,
    site_entry,
    site_sets,
    site_table_row,
)
from geoplantnet.products.impact import draws_of, land_cover_classes, learn_edit, scenario_code, scenario_summary
from geoplantnet.products.offsets import Currency
from geoplantnet.products.scenarios import dominant_class, load_scenario
from geoplantnet.reports.impact import random_markdown
from geoplantnet.runs.assessment import assess_many, planned, resolve_models
from geoplantnet.runs.context import RunContext
from geoplantnet.storage.outputs import claim_folder, finish_folder, place, place_json

REPORT_FILES = ("summary.json", "report.md")
MAX_RANDOM = 200  # footprints (and site sets) one run draws at most


def check_random(cfg: RunConfig, n: int, evaluate: bool, sites_per_set: int, scenarios: int = 1) -> None:
    """Refuse a random evaluation that cannot run, in one line, before anything is read or started."""
    if not cfg.inputs.virtual:
        raise ConfigError("--random draws footprints to compare with the virtual region's truth; inputs.* are set")
    if not evaluate:
        raise ConfigError("--random is an evaluation against the truth: add --evaluate")
    if not 1 <= n <= MAX_RANDOM:
        raise ConfigError(f"--random {n}: draw between 1 and {MAX_RANDOM} footprints")
    if sites_per_set < 3:
        raise ConfigError(f"--sites-per-set {sites_per_set}: a rank correlation needs at least 3 sites")
    if scenarios > n:
        raise ConfigError(f"{scenarios} scenarios for --random {n}: draw at least one footprint per scenario")


def _union(drawn: list[Drawn]) -> Any:
    return shapely.union_all([d.geometry for d in drawn])


def run_random_impact(
    cfg: RunConfig,
    n: int,
    scenario: str | Sequence[str],
    *,
    offset_scenario: str | None = None,
    sites_per_set: int = 5,
    seed: int = 0,
    model: str | None = None,
    habitat_model: str | None = None,
    value_model: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = True,
) -> dict[str, Any]:
    """``n`` random footprints, each under one of the ``scenario`` files (several: drawn for each footprint among
    those that change its majority class), and, with ``offset_scenario``, ``n`` random site sets of
    ``sites_per_set`` sites from a pool of ``max(n, 2 x sites_per_set)`` under it, assessed and scored against the
    truth; ``report.md`` and ``summary.json`` under ``<store.root>/impact/random-<scenario names>``."""
    files = [scenario] if isinstance(scenario, str) else list(scenario)
    check_random(cfg, n, evaluate, sites_per_set, len(files))
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite)
    t0 = time.perf_counter()
    scenarios = [load_scenario(f) for f in files]
    if len({s.name for s in scenarios}) < len(scenarios):
        raise ConfigError("--scenario: two scenarios have one name; name each once")
    sc = scenarios[0]
    restore = load_scenario(offset_scenario) if offset_scenario is not None else None
    models = resolve_models(ctx, model, habitat_model, value_model)
    if restore is not None and models.value is None and cfg.impact.offset_currency == "value":
        raise ConfigError("offsets rank sites by value: run `geoplantnet value` first or pass --value-model")
    name = "-".join(s.name for s in scenarios)
    folder = ctx.report_folder(f"impact/random-{name}", "random impact evaluation", REPORT_FILES, out)
    from geoplantnet.runs.inputs import virtual_scenario_truth

    truth = partial(virtual_scenario_truth, cfg)
    rng = np.random.default_rng(seed)
    with planned(ctx, sc, models, scenarios[1:]) as (client, plan, _):
        env = plan.sources.environment(plan.map_grid, list(plan.env_names))
        land_cover, _ = dominant_class(env, list(plan.env_names), sc.variable)
        names = land_cover_classes(plan.sources, sc.variable)
        codes = [scenario_code(s, names, plan.env_names) for s in scenarios]
        margin = max(s.buffer_m for s in scenarios) + plan.map_grid.resolution
        # one class for all: a footprint already of it would not change, and is drawn again
        only = codes[0] if len(set(codes)) == 1 else None
        footprints = draw_polygons(rng, land_cover, plan.map_grid, n, prefix="footprint", area_ha=FOOTPRINT_HA,
                                   margin_m=margin, not_majority=only)  # fmt: skip
        assigned = assign_scenarios(rng, footprints, codes)
        # one typical composite of each new cover for all its footprints, learned around all of them (as offsets
        # does for its sites: one read rather than one per footprint)
        shared = {
            i: learn_edit(plan.sources, plan.cube_grid, _union([f for f, c in zip(footprints, assigned, strict=True)
                                                                if c == i]), s, plan.env_names)
            for i, s in enumerate(scenarios) if i in assigned
        }  # fmt: skip
        edits = [replace(shared[c], geometry=f.geometry) for f, c in zip(footprints, assigned, strict=True)]
        pool, sets, restore_edit = [], [], None
        if restore is not None:
            code = scenario_code(restore, names, plan.env_names)
            pool = draw_polygons(rng, land_cover, plan.map_grid, max(n, 2 * sites_per_set), prefix="site",
                                 area_ha=SITE_HA, margin_m=restore.buffer_m + plan.map_grid.resolution,
                                 exclude=(code,), apart=True)  # fmt: skip
            restore_edit = learn_edit(plan.sources, plan.cube_grid, _union(pool), restore, plan.env_names)
            sets = site_sets(rng, len(pool), n, sites_per_set)
            edits += [replace(restore_edit, geometry=s.geometry) for s in pool]
        assessments = assess_many(client, ctx, plan, edits)
    impacts = [footprint_row(plan, f, a, truth, names) for f, a in zip(footprints, assessments, strict=False)]
    entries = [site_entry(plan, a, truth) for a in assessments[len(footprints) :]]
    ratio, confidence = cfg.impact.offset_ratio, cfg.impact.confidence
    currency = Currency(cfg.impact.offset_currency, cfg.impact.threatened_weight)
    set_rows = []
    for k, idx in enumerate(sets):
        chosen = [pool[i] for i in idx], [entries[i] for i in idx]
        set_rows.append(set_row(plan, k + 1, *chosen, impacts[k], ratio, confidence, currency))
    rows = [i["row"] for i in impacts]
    summary: dict[str, Any] = {
        "scenarios": [scenario_summary(shared[i], names) | {"footprints": assigned.count(i)} for i in sorted(shared)],
        "offset_scenario": scenario_summary(restore_edit, names) if restore_edit is not None else None,
        "random": {
            "footprints": n,
            "sites": len(pool),
            "sites_per_set": sites_per_set,
            "seed": seed,
            "footprint_ha": FOOTPRINT_HA,
            "site_ha": SITE_HA,
        },
        "draws": plan.draws,
        "draws_of": draws_of(plan),
        "level": plan.level,
        "ratio": ratio,
        "currency": {"kind": currency.kind, "unit": currency.unit, "threatened_weight": currency.threatened_weight},
        "confidence": confidence,
        "versions": plan.versions,
        "reach_m": plan.reach_m,
        "aggregate": aggregate(rows, set_rows),
        "footprints": rows,
        "site_sets": set_rows,
        "sites": [site_table_row(s, e, names) for s, e in zip(pool, entries, strict=True)],
        "geometries": {d.id: shapely.to_wkt(d.geometry, rounding_precision=1) for d in [*footprints, *pool]},
        "tiles": sum(a.tiles for a in assessments),
        "notes": plan.notes,
    }
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    claim_folder(folder, "random impact evaluation", REPORT_FILES, overwrite=overwrite)
    place(folder, "report.md", lambda p: p.write_text(random_markdown(summary)))
    place_json(folder, "summary.json", summary)
    return {**summary, "report": finish_folder(folder)}
