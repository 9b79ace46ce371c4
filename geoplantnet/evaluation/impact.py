"""The impact assessment and the offset ranking against the virtual region's truth: the generator's own answer to
the same scenario on the same window (:func:`geoplantnet.runs.inputs.virtual_scenario_truth`, given to these functions
by the driver as a :data:`ScenarioTruth`), scored per zone, per pixel and, for offsets, by rank."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from geoplantnet.core.grid import Grid
from geoplantnet.products.impact import ZONES, Assessment, ImpactPlan
from geoplantnet.products.impact_error import estimates
from geoplantnet.products.impact_summary import correlation, summarise_intervals, zone_mean

# the truth on a window (a sub-grid of the map grid) before and after its pixels ``inside`` become a land-cover
# code: (before, after, habitat codes), each state with richness, threatened, value_score and habitat (y, x)
ScenarioTruth = Callable[[Grid, np.ndarray, int], tuple[Any, Any, list[str]]]


def evaluate_truth(plan: ImpactPlan, a: Assessment, truth: ScenarioTruth) -> dict[str, Any]:
    """The generator's truth under the same scenario on the same window: true versus predicted change of richness,
    threatened species, habitats and value (the truth's value score: richness + 4 x threatened), per zone and per
    pixel. Edge effects are the scenario's assumption only: the generator's species do not see them."""
    before, after, codes = truth(a.grid, a.zones == 1, a.edit.code)
    masks = {name: a.zones == z for z, name in enumerate(ZONES, start=1)}
    near = masks["footprint"] | masks["buffer"]
    out: dict[str, Any] = {"zones": {}}
    pred = {g: a.after.get(f"{g}_expected") - a.before.get(f"{g}_expected") for g in ("richness", "threatened")
            if f"{g}_expected" in a.before}  # fmt: skip
    true = {"richness": after.richness - before.richness, "threatened": after.threatened - before.threatened}
    intervals = summarise_intervals(plan, a)
    corrected = estimates(plan, a)
    for name, m in masks.items():
        row: dict[str, Any] = {}
        for g, d in pred.items():
            row[f"{g}_change_true"] = zone_mean(true[g], m)
            # the models' own change, its Monte-Carlo interval, and the survey-corrected estimate with its interval
            row[f"{g}_change_model"] = zone_mean(d, m)
            lo, hi = intervals.get(g, {}).get(name, (np.nan, np.nan))
            row[f"{g}_true_in_mc_interval"] = bool(lo <= row[f"{g}_change_true"] <= hi) if np.isfinite(lo) else None
            est = corrected.get(g, {}).get(name)
            row[f"{g}_change_predicted"] = est["change"] if est else row[f"{g}_change_model"]
            held = est is not None and np.isfinite(est["lower"])
            inside = held and est["lower"] <= row[f"{g}_change_true"] <= est["upper"]
            row[f"{g}_true_in_interval"] = bool(inside) if held else None
        row["value_score_change_true"] = zone_mean(after.value_score - before.value_score, m)
        if "value" in a.before:
            row["value_change_predicted"] = zone_mean(a.after["value"] - a.before["value"], m)
        out["zones"][name] = row
    out["pixel_r"] = {g: correlation(d[near], true[g][near]) for g, d in pred.items()}
    if "value" in a.before:
        d_value = (a.after["value"] - a.before["value"])[near]
        out["pixel_r"]["value_vs_value_score"] = correlation(d_value, (after.value_score - before.value_score)[near])
    true_changed = (after.habitat != before.habitat)[masks["footprint"]]
    out["true_habitat_changed_share_footprint"] = float(true_changed.mean()) if true_changed.size else float("nan")
    if plan.classes is not None and "habitat" in a.before:
        hab = (a.after["habitat"] != a.before["habitat"])[masks["footprint"]]
        out["predicted_habitat_changed_share_footprint"] = float(hab.mean()) if hab.size else float("nan")
    out["true_habitat_codes"] = len(codes)
    out["note"] = "edge effects are the scenario's assumption; the generator's species respond to land cover only"
    return out


def true_site_gain(evaluation: Mapping[str, Any], summary: Mapping[str, Any]) -> float:
    """A candidate site's true value-score gain (value score x hectares over its zones) from its
    :func:`evaluate_truth` and its summary."""
    true = [evaluation["zones"][z]["value_score_change_true"] * summary["zones"][z]["area_ha"] for z in ZONES]
    return float(np.nansum(true))


def offsets_evaluation(
    rows: list[dict[str, Any]], impact: Mapping[str, Any] | None, ratio: float, portfolio_sites: Sequence[str]
) -> dict[str, Any]:
    """The predicted ranking against the truth's (the generator's value-score gain under the same restoration) and,
    when the impact report was scored against the truth too, the truth's own no-net-loss verdict for the sites the
    prediction chose (value-score x hectares on both sides)."""
    from scipy.stats import spearmanr

    pred = np.array([r["gain"] for r in rows])
    true = np.array([r["true_value_score_gain"] for r in rows])
    rho = float(spearmanr(pred, true).statistic) if len(rows) >= 3 else float("nan")
    out: dict[str, Any] = {
        "spearman_rank": rho,
        "true_best_site": rows[int(np.argmax(true))]["site"],
        "predicted_best_site": rows[0]["site"],
    }
    if impact is not None and "evaluation" in impact:
        zones = impact["evaluation"]["zones"]
        loss = -sum(zones[z]["value_score_change_true"] * impact["zones"][z]["area_ha"] for z in ZONES)
        gain = sum(r["true_value_score_gain"] for r in rows if r["site"] in portfolio_sites)
        out["true_value_score_loss"] = loss
        out["true_value_score_gain_of_chosen_sites"] = gain
        out["true_compensates"] = "no loss to offset" if loss <= 0 else ("yes" if gain >= ratio * loss else "no")
    return out
