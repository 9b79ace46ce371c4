"""What an impact assessment changed (:mod:`geoplantnet.products.impact`): every indicator, species, habitat and
value per zone (footprint, buffer, surroundings), the Monte-Carlo intervals of the change, and the assessed cells'
table a report maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import shapely

from geoplantnet.products.impact import ZONES, Assessment, ImpactPlan
from geoplantnet.products.impact_error import errors_summary, estimates, extrapolation


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of Monte-Carlo draws (NaN ignored; NaN when none is finite)."""
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2]) if np.isfinite(values).any() else (np.nan,) * 2
    return float(lo), float(hi)


def zone_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """The mean of ``values`` over ``mask`` (finite values only; NaN when there are none)."""
    v = values[mask]
    v = v[np.isfinite(v)] if np.issubdtype(v.dtype, np.floating) else v
    return float(v.mean()) if v.size else float("nan")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r over the pixels finite in both (NaN with fewer than 3 or a constant side)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def summarise(plan: ImpactPlan, a: Assessment) -> dict[str, Any]:
    """The change in every indicator, species, habitat and value inside and around the footprint, with Monte-Carlo
    intervals (at ``indicators.level``) of the counts' and value's change."""
    level = plan.level
    pixel_ha = plan.map_grid.resolution**2 / 1e4
    masks = {name: a.zones == z for z, name in enumerate(ZONES, start=1)}
    out: dict[str, Any] = {
        "zones": {
            n: {"pixels": int(m.sum()), "area_ha": round(float(m.sum()) * pixel_ha, 2)} for n, m in masks.items()
        },
        "indicators": {},
    }
    for name, before in a.before.items():
        if name == "habitat":
            continue
        after = a.after[name]
        if not np.issubdtype(before.dtype, np.floating):  # flags: the share of pixels
            before, after = (np.where(x >= 0, x.astype("float32"), np.nan) for x in (before, after))
        out["indicators"][name] = {
            zone_name: {
                "before": zone_mean(before, m),
                "after": zone_mean(after, m),
                "change": zone_mean(after - before, m),
            }
            for zone_name, m in masks.items()
        }
    out["change_intervals"] = {
        group: {name: {"lower": lo, "upper": hi} for name, (lo, hi) in zones.items()}
        for group, zones in summarise_intervals(plan, a).items()
    }
    out["change_estimates"] = estimates(plan, a)
    out["extrapolation"] = extrapolation(plan, a)
    out["survey_errors"] = errors_summary(plan.errors)
    out["species_ha"] = _species_ha(a, masks, pixel_ha)
    if "value" in a.before:
        out["value"] = _value_summary(plan, a, masks, pixel_ha, level)
    out["species"] = _species_summary(plan, a, pixel_ha)
    if plan.classes is not None and "habitat" in a.before:
        out["habitats"] = _habitat_summary(plan, a, masks, pixel_ha)
    return out


def _species_ha(a: Assessment, masks: Mapping[str, np.ndarray], pixel_ha: float) -> dict[str, Any]:
    """Per count group and zone, the change of expected species x hectares (the sum of the expected count's change
    x area: what a restored site gains and an impact loses in species, comparable with the truth's value score) and
    its Monte-Carlo draws (paired, as the value's)."""
    out: dict[str, Any] = {}
    for group, drawn in a.draws["before"].items():
        key = f"{group}_expected"
        if group == "richness_pixels" or key not in a.before:
            continue
        change = (a.after[key] - a.before[key]) * pixel_ha
        draws = (a.draws["after"][group] - drawn) * pixel_ha  # (K, zone)
        out[group] = {
            name: {"change": float(np.nansum(change[m])), "draws": [round(float(d), 4) for d in draws[:, i]]}
            for i, (name, m) in enumerate(masks.items())
        }
    return out


def _value_summary(
    plan: ImpactPlan, a: Assessment, masks: Mapping[str, np.ndarray], pixel_ha: float, level: float
) -> dict[str, Any]:
    """Mean value per zone and value-hectares (the sum of value x area, a habitat-hectare-like quantity)."""
    before, after = a.before["value"], a.after["value"]
    out: dict[str, Any] = {}
    for name, m in masks.items():
        change_ha = float(np.nansum((after - before)[m]) * pixel_ha)
        row = {
            "before": zone_mean(before, m),
            "after": zone_mean(after, m),
            "change": zone_mean(after - before, m),
            "value_ha_before": float(np.nansum(before[m]) * pixel_ha),
            "value_ha_change": change_ha,
        }
        if a.value_draws:
            draws = np.nansum((a.value_draws["after"] - a.value_draws["before"])[:, m], axis=1) * pixel_ha
            row["value_ha_change_lower"], row["value_ha_change_upper"] = interval(draws, level)
            row["value_ha_change_draws"] = [round(float(d), 4) for d in draws]
        out[name] = row
    return out


def _species_summary(plan: ImpactPlan, a: Assessment, pixel_ha: float, top: int = 10) -> dict[str, Any]:
    """Expected occupied area (sum of calibrated probability x pixel area) in the footprint and buffer, before and
    after, and the species that lose or gain the most."""
    before = a.species_cover["before"][:, :2].sum(axis=1) * pixel_ha
    after = a.species_cover["after"][:, :2].sum(axis=1) * pixel_ha
    change = after - before
    order = np.argsort(change)

    def rows(idx: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "species": plan.species[i],
                "name": plan.species_names[i],
                "area_ha_before": round(float(before[i]), 3),
                "area_ha_after": round(float(after[i]), 3),
                "change_ha": round(float(change[i]), 3),
            }
            for i in idx
        ]

    halved = int(((before > 0) & (after < 0.5 * before)).sum())
    return {
        "losses": rows(order[:top]),
        "gains": rows(order[::-1][:top]),
        "species_losing_half": halved,
        "expected_species_area_change_ha": round(float(change.sum()), 3),
    }


def _habitat_summary(plan: ImpactPlan, a: Assessment, masks: Mapping[str, np.ndarray], pixel_ha: float) -> dict:
    """Habitat area (top class) before and after in the footprint and buffer, and the transitions."""
    classes = plan.classes or ()
    near = masks["footprint"] | masks["buffer"]
    before, after = a.before["habitat"][near], a.after["habitat"][near]
    pairs: dict[tuple[int, int], int] = {}
    for b, c in zip(before.tolist(), after.tolist(), strict=True):
        pairs[(b, c)] = pairs.get((b, c), 0) + 1

    def code(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else "no data"

    transitions = [
        {"before": code(b), "after": code(c), "area_ha": round(n * pixel_ha, 2)}
        for (b, c), n in sorted(pairs.items(), key=lambda kv: -kv[1])
        if b != c
    ]
    changed = float((before != after).mean()) if before.size else float("nan")
    return {"changed_share": changed, "transitions": transitions[:15]}


def summarise_intervals(plan: ImpactPlan, a: Assessment) -> dict[str, dict[str, tuple[float, float]]]:
    """Per group and zone, the Monte-Carlo interval of the mean per-pixel change of the expected count (over the
    pixels with data, as the point change is: the draws have the map's data mask)."""
    level = plan.level
    finite = np.isfinite(a.before["richness_expected"])
    sizes = np.maximum([((a.zones == z) & finite).sum() for z in (1, 2, 3)], 1)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for group, before in a.draws["before"].items():
        if group == "richness_pixels":
            continue
        change = (a.draws["after"][group] - before) / sizes
        out[group] = {name: interval(change[:, i], level) for i, name in enumerate(ZONES)}
    return out


def zone_shapes(a: Assessment) -> dict[str, Any]:
    """The zones as polygons: the footprint, its buffer ring, and the rest of the assessed window."""
    geometry, buffer_m = a.edit.geometry, a.edit.scenario.buffer_m
    ring = shapely.difference(shapely.buffer(geometry, buffer_m), geometry)
    around = shapely.difference(shapely.box(*a.grid.bounds), shapely.buffer(geometry, buffer_m))
    return dict(zip(ZONES, (geometry, ring, around), strict=True))


def cell_table(plan: ImpactPlan, a: Assessment) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every assessed map cell: its zone, the before / after / change of the counts and value, the change's
    Monte-Carlo spread and the top habitat class before and after; and the cells' squares (shapely polygons)."""
    rows, cols = np.nonzero(a.zones > 0)
    res = plan.map_grid.resolution
    xs, ys = a.grid.x[cols], a.grid.y[rows]
    table: dict[str, Any] = {"zone": np.asarray(ZONES)[a.zones[rows, cols] - 1]}
    for name in ("richness_expected", "threatened_expected", "invasive_expected", "value"):
        if name in a.before:
            b, f = a.before[name][rows, cols], a.after[name][rows, cols]
            table[f"{name}_before"], table[f"{name}_after"], table[f"{name}_change"] = b, f, f - b
    if "richness_pixels" in a.draws["before"]:
        d = a.draws["after"]["richness_pixels"] - a.draws["before"]["richness_pixels"]
        table["richness_change_sd"] = np.nanstd(d[:, rows, cols], axis=0)
    if a.value_draws:
        d = a.value_draws["after"] - a.value_draws["before"]
        table["value_change_sd"] = np.nanstd(d[:, rows, cols], axis=0)
    if plan.classes is not None and "habitat" in a.before:
        names = np.asarray([*plan.classes, "no data"])
        table["habitat_before"] = names[a.before["habitat"][rows, cols]]
        table["habitat_after"] = names[a.after["habitat"][rows, cols]]
    return table, shapely.box(xs - res / 2, ys - res / 2, xs + res / 2, ys + res / 2)
