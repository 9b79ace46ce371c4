"""Offsets: candidate sites assessed under a restoration scenario as an impact is (:mod:`geoplantnet.products.impact`,
each site its own footprint), ranked by the biodiversity value they would gain (value-hectares, with Monte-Carlo
intervals), and judged against an impact report's value loss (no net loss at a ratio and a confidence)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from geoplantnet.products.impact_summary import interval
from geoplantnet.products.scenarios import ScenarioError


def site_ids(frame: Any, id_column: str | None, where: str) -> list[str]:
    """The candidate sites' ids: ``id_column``, else an ``id`` or ``name`` column, else their row numbers."""
    if id_column is not None and id_column not in frame.columns:
        raise ScenarioError(f"candidate sites {where}: no column '{id_column}' (columns: {list(frame.columns)[:12]})")
    column = id_column or next((c for c in ("id", "site", "name") if c in frame.columns), None)
    ids = [str(v) for v in frame[column]] if column else [f"site {i + 1}" for i in range(len(frame))]
    if len(set(ids)) != len(ids):
        raise ScenarioError(f"candidate sites {where}: the ids in '{column}' are not unique")
    return ids


def total_value_change(value: Mapping[str, Any]) -> tuple[float, np.ndarray | None]:
    """The value-hectare change over all zones and its draws (None without draws)."""
    total = float(sum(row["value_ha_change"] for row in value.values()))
    draws = [np.asarray(row["value_ha_change_draws"]) for row in value.values() if "value_ha_change_draws" in row]
    return total, (np.sum(draws, axis=0) if draws else None)


def read_impact(path: str) -> dict[str, Any]:
    """An impact report's summary (its folder or its ``summary.json``), which must assess biodiversity value."""
    p = Path(path)
    p = p / "summary.json" if p.is_dir() else p
    if not p.is_file():
        raise ScenarioError(f"impact report {path}: no summary.json (run `geoplantnet impact` first)")
    try:
        summary = json.loads(p.read_text())
    except ValueError as exc:
        raise ScenarioError(f"impact report {p}: not JSON ({exc})") from None
    if "value" not in summary:
        raise ScenarioError(f"impact report {p}: it assessed no biodiversity value (no value model was used)")
    return summary


def compensation(
    gain: np.ndarray | None, loss: np.ndarray | None, ratio: float, confidence: float, *, paired: bool = False
) -> tuple[float | None, str | None]:
    """(P(gain >= ratio x loss), verdict): "yes" at ``confidence``, "no" when the opposite holds at that confidence,
    else "uncertain"; None without draws. ``paired``: draw k of both is the same thinned network (same value model,
    seeds and draw count), so draw k is compared with draw k; otherwise every pair of draws."""
    if gain is None or loss is None or not len(gain) or not len(loss):
        return None, None
    if paired and len(gain) == len(loss):
        p = float((gain >= ratio * loss).mean())
    else:
        p = float((gain[:, None] >= ratio * loss[None, :]).mean())
    verdict = "yes" if p >= confidence else ("no" if p <= 1 - confidence else "uncertain")
    return p, verdict


def check_sites(frame: Any, ids: list[str], region: Any, where: str) -> None:
    """Refuse candidate sites outside the region (a polygon) or overlapping each other (their gains would count
    twice)."""
    outside = [i for i, g in zip(ids, frame.geometry, strict=True) if not shapely.intersects(g, region)]
    if outside:
        raise ScenarioError(f"candidate sites {where}: {outside[:5]} lie outside the region")
    geoms = frame.geometry.values
    for i in range(len(geoms)):
        for j in range(i + 1, len(geoms)):
            if shapely.intersection(geoms[i], geoms[j]).area > 0:
                raise ScenarioError(
                    f"candidate sites {where}: {ids[i]} and {ids[j]} overlap (their gains would count twice)"
                )


def impact_loss(impact: Mapping[str, Any], draws_of: Mapping[str, Any]) -> dict[str, Any]:
    """The value-hectares an impact report loses, its draws (None without), and whether they are paired with this
    run's (``draws_of``: :func:`geoplantnet.products.impact.draws_of`: the same value model, seed and draw count)."""
    change, draws = total_value_change(impact["value"])
    same = {k: impact.get("draws_of", {}).get(k) for k in ("value_model", "seed", "draws")}
    paired = same == draws_of
    return {"value_ha": -change, "draws": None if draws is None else -draws, "paired": paired}


def site_row(
    site: str,
    summary: Mapping[str, Any],
    level: float,
    loss: Mapping[str, Any] | None,
    ratio: float,
    confidence: float,
) -> dict[str, Any]:
    """A candidate site's row of the ranking from its assessment's summary: its value-hectare gain with the
    interval at ``level`` and the draws (``_draws``, kept out of the report), the richness and threatened change
    on the site, and, against ``loss`` (:func:`impact_loss`), P(no net loss) and the verdict."""
    s = summary
    gain, draws = total_value_change(s["value"])
    row: dict[str, Any] = {
        "site": site,
        "area_ha": s["zones"]["footprint"]["area_ha"],
        "value_ha_gain": round(gain, 4),
        "value_ha_gain_lower": interval(draws, level)[0] if draws is not None else None,
        "value_ha_gain_upper": interval(draws, level)[1] if draws is not None else None,
        "richness_change_site": s["indicators"].get("richness_expected", {}).get("footprint", {}).get("change"),
        "threatened_change_site": s["indicators"].get("threatened_expected", {}).get("footprint", {}).get("change"),
        "value_ha_gain_draws": None if draws is None else [round(float(d), 4) for d in draws],
        "_draws": draws,
    }
    if loss is not None:
        row["p_no_net_loss"], row["compensates"] = compensation(
            draws, loss["draws"], ratio, confidence, paired=loss["paired"]
        )
        if row["compensates"] is None:
            row["compensates"] = "yes" if gain >= ratio * loss["value_ha"] else "no"
    return row


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` best gain first, numbered from 1 (``rank``)."""
    rows.sort(key=lambda r: -r["value_ha_gain"])
    for number, row in enumerate(rows, start=1):
        row["rank"] = number
    return rows


def portfolio(rows: list[dict[str, Any]], loss: Mapping[str, Any], ratio: float, confidence: float) -> dict:
    """The fewest best-ranked sites with a positive gain whose summed gain compensates the loss (draw by draw), or
    all of them falling short."""
    if loss["value_ha"] <= 0:
        return {"sites": [], "value_ha_gain": 0.0, "compensates": "no loss to offset"}
    chosen: list[str] = []
    total, draws = 0.0, None
    for row in (r for r in rows if r["value_ha_gain"] > 0):
        chosen.append(row["site"])
        total += row["value_ha_gain"]
        if row["_draws"] is not None:
            draws = row["_draws"] if draws is None else draws + row["_draws"]
        p, verdict = compensation(draws, loss["draws"], ratio, confidence, paired=loss["paired"])
        if (verdict or ("yes" if total >= ratio * loss["value_ha"] else "no")) == "yes":
            return {"sites": chosen, "value_ha_gain": round(total, 4), "p_no_net_loss": p, "compensates": "yes"}
    return {"sites": chosen, "value_ha_gain": round(total, 4), "compensates": "no: the candidates fall short"}
