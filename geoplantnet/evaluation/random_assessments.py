"""A harder test than one demo scenario: footprints and offset site sets drawn at random over the virtual region
(land-cover classes, sizes, shapes, places; seeded), each assessed with the run's models and scored against the
generator's truth under the same scenario (:func:`geoplantnet.evaluation.impact.evaluate_truth`,
:func:`geoplantnet.evaluation.impact.offsets_evaluation`), then aggregated.

Drawing needs only the run's own land-cover layer (what a user has); scoring needs the truth."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import shapely.affinity

from geoplantnet.core.grid import Grid
from geoplantnet.evaluation.impact import ScenarioTruth, evaluate_truth, offsets_evaluation, true_site_gain
from geoplantnet.products.impact import Assessment, ImpactPlan, draws_of
from geoplantnet.products.impact_summary import summarise
from geoplantnet.products.offsets import Currency, impact_loss, portfolio, rank, site_row

SHAPES = ("rectangle", "ellipse", "irregular")
FOOTPRINT_HA = (2.0, 20.0)  # a footprint's area, drawn log-uniform between these
SITE_HA = (2.0, 8.0)  # a candidate site's area
MIN_CLASS_PIXELS = 20  # a land-cover class is a stratum to draw from when the map grid holds this many of its cells
RELATIVE_FLOOR = 0.5  # a footprint's relative error is scored when its true mean richness change is at least this


@dataclass(frozen=True)
class Drawn:
    """One drawn polygon: its id, geometry (the grid's CRS), shape kind, area, the class at its centre and the class
    of most of its cells."""

    id: str
    geometry: Any
    shape: str
    area_ha: float
    land_cover: int
    majority: int


def random_shape(rng: np.random.Generator, x: float, y: float, area_m2: float) -> tuple[Any, str]:
    """A polygon of ``area_m2`` centred on (x, y): a rotated rectangle or ellipse (aspect 1-3) or an irregular
    star-shaped polygon (7-11 vertices)."""
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    aspect = float(rng.uniform(1.0, 3.0))
    if kind == "rectangle":
        w = math.sqrt(area_m2 * aspect)
        shape = shapely.box(-w / 2, -area_m2 / w / 2, w / 2, area_m2 / w / 2)
    elif kind == "ellipse":
        shape = shapely.affinity.scale(shapely.Point(0, 0).buffer(1.0, 32), math.sqrt(aspect), 1 / math.sqrt(aspect))
    else:
        n = int(rng.integers(7, 12))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.6, 1.4, n)
        shape = shapely.Polygon(np.c_[radii * np.cos(angles), radii * np.sin(angles)])
    shape = shapely.affinity.scale(shape, *(math.sqrt(area_m2 / shape.area),) * 2, origin=(0, 0))
    shape = shapely.affinity.rotate(shape, float(rng.uniform(0, 180)), origin=(0, 0))
    return shapely.affinity.translate(shape, x, y), kind


def majority_class(land_cover: np.ndarray, grid: Grid, geometry: Any, default: int) -> int:
    """The land-cover class of most grid cells whose centre lies in ``geometry`` (``default`` when none does)."""
    x0, y0, x1, y1 = geometry.bounds
    rows = np.flatnonzero((grid.y >= y0) & (grid.y <= y1))
    cols = np.flatnonzero((grid.x >= x0) & (grid.x <= x1))
    xx, yy = np.meshgrid(grid.x[cols], grid.y[rows])
    values = land_cover[np.ix_(rows, cols)][shapely.contains_xy(geometry, xx, yy)]
    values = values[values >= 0]
    if not values.size:
        return default
    codes, counts = np.unique(values, return_counts=True)
    return int(codes[np.argmax(counts)])


def draw_polygons(
    rng: np.random.Generator,
    land_cover: np.ndarray,
    grid: Grid,
    n: int,
    *,
    prefix: str,
    area_ha: tuple[float, float],
    margin_m: float,
    exclude: Sequence[int] = (),
    apart: bool = False,
    not_majority: int | None = None,
) -> list[Drawn]:
    """``n`` polygons stratified by land cover: a class drawn uniformly among those with at least
    :data:`MIN_CLASS_PIXELS` cells (but ``exclude``), a centre at one of its cells, a log-uniform area in
    ``area_ha`` and a random shape, all of it at least ``margin_m`` inside the region (the scenario's buffer lies
    inside it). ``apart``: no two polygons touch (candidate sites, whose gains add up). ``not_majority``: a polygon
    mostly of this class is drawn again (a footprint the scenario would not change)."""
    codes, counts = np.unique(land_cover[land_cover >= 0], return_counts=True)
    strata = [int(c) for c, k in zip(codes, counts, strict=True) if k >= MIN_CLASS_PIXELS and int(c) not in exclude]
    if not strata:
        raise ValueError(f"no land-cover class with {MIN_CLASS_PIXELS} cells to draw {prefix} from")
    region = shapely.box(*grid.bounds).buffer(-margin_m)
    out: list[Drawn] = []
    for _ in range(200 * n):
        if len(out) == n:
            break
        cls = strata[int(rng.integers(len(strata)))]
        rows, cols = np.nonzero(land_cover == cls)
        k = int(rng.integers(rows.size))
        area = math.exp(rng.uniform(*np.log(area_ha))) * 1e4
        geometry, kind = random_shape(rng, float(grid.x[cols[k]]), float(grid.y[rows[k]]), area)
        if not region.contains(geometry) or (apart and any(geometry.distance(d.geometry) < 20 for d in out)):
            continue
        majority = majority_class(land_cover, grid, geometry, cls)
        if majority == not_majority:
            continue
        out.append(Drawn(f"{prefix}-{len(out) + 1}", geometry, kind, round(area / 1e4, 2), cls, majority))
    if len(out) < n:
        raise ValueError(f"only {len(out)} of {n} {prefix} polygons fit the region")
    return out


def assign_scenarios(rng: np.random.Generator, drawn: Sequence[Drawn], codes: Sequence[int]) -> list[int]:
    """For each footprint, the index of its scenario in ``codes`` (their land-cover classes): drawn uniformly among
    the scenarios whose class is not the footprint's majority class (one scenario: always it, no draw, so a single
    scenario's draws stay those of the seed)."""
    out = []
    for d in drawn:
        allowed = [i for i, c in enumerate(codes) if c != d.majority] or list(range(len(codes)))
        out.append(allowed[0] if len(allowed) == 1 else int(allowed[int(rng.integers(len(allowed)))]))
    return out


def site_sets(rng: np.random.Generator, n_sites: int, n_sets: int, size: int) -> list[list[int]]:
    """``n_sets`` sets of ``size`` distinct site indices out of ``n_sites`` (a set's sites never overlap: the pool's
    sites are drawn apart)."""
    return [sorted(int(i) for i in rng.choice(n_sites, size=size, replace=False)) for _ in range(n_sets)]


def _relative(pred: float, true: float) -> float | None:
    return abs(pred - true) / abs(true) if np.isfinite(true) and abs(true) >= RELATIVE_FLOOR else None


def footprint_row(
    plan: ImpactPlan, drawn: Drawn, a: Assessment, truth: ScenarioTruth, names: Mapping[int, str]
) -> dict[str, Any]:
    """One footprint scored against the truth: the change per zone (predicted, true, relative error of the
    footprint's mean richness change), whether the intervals hold the truth, and the largest change a model
    predicts beyond the buffer (the truth has none there)."""
    summary = summarise(plan, a)
    ev = evaluate_truth(plan, a, truth)
    z = ev["zones"]
    fp = z["footprint"]
    beyond = a.zones == 3
    change = a.after["richness_expected"] - a.before["richness_expected"]
    row: dict[str, Any] = {
        "id": drawn.id,
        "shape": drawn.shape,
        "area_ha": drawn.area_ha,
        "land_cover": names.get(drawn.land_cover, str(drawn.land_cover)),
        "majority_land_cover": names.get(drawn.majority, str(drawn.majority)),
        "scenario": a.edit.scenario.name,
        "new_land_cover": names.get(a.edit.code, str(a.edit.code)),
        "pixels": summary["zones"]["footprint"]["pixels"],
        "richness_change_predicted": fp.get("richness_change_predicted"),
        "richness_change_true": fp.get("richness_change_true"),
        "richness_relative_error": _relative(fp["richness_change_predicted"], fp["richness_change_true"]),
        "richness_true_in_interval": fp.get("richness_true_in_interval"),
        "threatened_change_predicted": fp.get("threatened_change_predicted"),
        "threatened_change_true": fp.get("threatened_change_true"),
        "threatened_true_in_interval": fp.get("threatened_true_in_interval"),
        "buffer_richness_change_predicted": z["buffer"].get("richness_change_predicted"),
        "beyond_buffer_max_abs_change": float(np.nanmax(np.abs(change[beyond]), initial=0.0)),
        "value_ha_change": sum(v["value_ha_change"] for v in summary["value"].values()) if "value" in summary else None,
        "value_score_change_true": fp["value_score_change_true"],
        "pixel_r_richness": ev["pixel_r"].get("richness"),
        "true_value_score_ha_change": sum(z[k]["value_score_change_true"] * summary["zones"][k]["area_ha"] for k in z),
        **zone_totals(summary),
    }
    return {"row": row, "summary": summary, "evaluation": ev}


def site_entry(plan: ImpactPlan, a: Assessment, truth: ScenarioTruth) -> dict[str, Any]:
    """A candidate site's summary and its true value-score gain (value score x hectares)."""
    summary = summarise(plan, a)
    return {"summary": summary, "true_gain": true_site_gain(evaluate_truth(plan, a, truth), summary)}


def zone_totals(summary: Mapping[str, Any]) -> dict[str, float]:
    """Per zone, the predicted change in value-hectares and in expected species x hectares (richness and
    threatened): the quantities a site's gain and an impact's loss can be told in."""
    out: dict[str, float] = {}
    for z, size in summary["zones"].items():
        for g in ("richness", "threatened"):
            change = summary["indicators"].get(f"{g}_expected", {}).get(z, {}).get("change")
            out[f"{g}_ha_{z}"] = float(change) * size["area_ha"] if change is not None and np.isfinite(change) else 0.0
        if "value" in summary:
            out[f"value_ha_{z}"] = float(summary["value"][z]["value_ha_change"])
    return out


def site_table_row(site: Drawn, entry: Mapping[str, Any], names: Mapping[int, str]) -> dict[str, Any]:
    """A pool site as the report lists it: its shape, class, predicted value-ha gain and true value-score gain."""
    value = entry["summary"]["value"]
    return {
        "id": site.id,
        "shape": site.shape,
        "area_ha": site.area_ha,
        "land_cover": names.get(site.land_cover, str(site.land_cover)),
        "value_ha_gain": round(sum(v["value_ha_change"] for v in value.values()), 4),
        "true_value_score_gain": entry["true_gain"],
        **zone_totals(entry["summary"]),
    }


def set_row(
    plan: ImpactPlan,
    number: int,
    sites: Sequence[Drawn],
    entries: Sequence[Mapping[str, Any]],
    impact: Mapping[str, Any],
    ratio: float,
    confidence: float,
    currency: Currency,
) -> dict[str, Any]:
    """One site set ranked as ``geoplantnet offsets`` ranks it against one drawn footprint's impact (``impact``:
    :func:`footprint_row`'s entry), and scored against the truth: the Spearman of predicted and true gains and
    whether the no-net-loss verdict of the sites it chooses agrees with the truth's for those sites."""
    loss = impact_loss({**impact["summary"], "draws_of": draws_of(plan)}, draws_of(plan), currency)
    rows = []
    for site, entry in zip(sites, entries, strict=True):
        row = site_row(site.id, entry["summary"], plan.level, loss, ratio, confidence, currency)
        row["true_value_score_gain"] = entry["true_gain"]
        rows.append(row)
    rows = rank(rows)
    chosen = portfolio(rows, loss, ratio, confidence)
    truth_impact = {"zones": impact["summary"]["zones"], "evaluation": impact["evaluation"]}
    ev = offsets_evaluation(rows, truth_impact, ratio, chosen["sites"])
    predicted = "yes" if chosen["compensates"] == "yes" else chosen["compensates"].split(":")[0]
    return {
        "set": number,
        "footprint": impact["row"]["id"],
        "sites": [s.id for s in sites],
        "spearman": ev["spearman_rank"],
        "predicted_best_site": ev["predicted_best_site"],
        "true_best_site": ev["true_best_site"],
        "loss": loss["amount"],
        "gains": {r["site"]: r["gain"] for r in rows},
        "chosen": chosen["sites"],
        "verdict_predicted": predicted,
        "p_no_net_loss": chosen.get("p_no_net_loss"),
        "true_value_score_loss": ev["true_value_score_loss"],
        "true_value_score_gain_of_chosen_sites": ev["true_value_score_gain_of_chosen_sites"],
        "verdict_true": ev["true_compensates"],
        "verdict_agrees": predicted == ev["true_compensates"],
    }


def _mean(values: Sequence[Any]) -> float | None:
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def aggregate(footprints: Sequence[Mapping[str, Any]], sets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures the targets name: mean relative error of the footprint's richness change, the share of
    footprints whose interval holds the true change, the largest change beyond the buffer; the mean and median
    Spearman of the site sets and the share of verdicts that agree with the truth's. With footprints under several
    scenarios, the footprints' figures per scenario too (``by_scenario``)."""
    rel = [r["richness_relative_error"] for r in footprints]
    held = [r["richness_true_in_interval"] for r in footprints if r["richness_true_in_interval"] is not None]
    held_t = [r["threatened_true_in_interval"] for r in footprints if r["threatened_true_in_interval"] is not None]
    scored = [r for r in rel if r is not None]
    out: dict[str, Any] = {
        "footprints": len(footprints),
        "footprints_scored_relative": len(scored),
        "richness_mean_relative_error": _mean(scored),
        "richness_median_relative_error": float(np.median(scored)) if scored else None,
        "richness_interval_coverage": float(np.mean(held)) if held else None,
        "threatened_interval_coverage": float(np.mean(held_t)) if held_t else None,
        "beyond_buffer_max_abs_change": max((r["beyond_buffer_max_abs_change"] for r in footprints), default=None),
        "richness_sign_agrees": _mean(
            [float(np.sign(r["richness_change_predicted"]) == np.sign(r["richness_change_true"])) for r in footprints]
        ),
    }
    names = list(dict.fromkeys(r.get("scenario") for r in footprints))
    if len(names) > 1:
        out["by_scenario"] = {n: aggregate([r for r in footprints if r.get("scenario") == n], []) for n in names}
    if sets:
        rho = [s["spearman"] for s in sets if s["spearman"] is not None and np.isfinite(s["spearman"])]
        out |= {
            "site_sets": len(sets),
            "spearman_mean": _mean(rho),
            "spearman_median": float(np.median(rho)) if rho else None,
            "verdicts_agree_share": float(np.mean([s["verdict_agrees"] for s in sets])),
            "true_yes_share": float(np.mean([s["verdict_true"] == "yes" for s in sets])),
            "predicted_yes_share": float(np.mean([s["verdict_predicted"] == "yes" for s in sets])),
            "best_site_agrees_share": float(np.mean([s["predicted_best_site"] == s["true_best_site"] for s in sets])),
        }
    return out
