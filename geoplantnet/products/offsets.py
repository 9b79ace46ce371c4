"""Offsets: candidate sites assessed under a restoration scenario as an impact is (:mod:`geoplantnet.products.impact`,
each site its own footprint), ranked by the biodiversity value they would gain (value-hectares, with Monte-Carlo
intervals), and judged against an impact report's value loss (no net loss at a ratio and a confidence)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
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


CURRENCIES = ("value", "species")


@dataclass(frozen=True)
class Currency:
    """What a site gains and an impact loses, on both sides alike: ``value``: value-hectares (the value map's 0-1
    x area); ``species``: species-hectares, the expected number of species x area with each threatened species
    counting ``threatened_weight`` times (richness + w x threatened, the value score's form), from the species
    model's counts: comparable with the truth's value score. With a model-error correction of the counts
    (``change_estimates`` in the summary: the correction and its standard deviation per zone), the species
    currency takes it: the point moves by the correction and the draws widen by its error."""

    kind: str = "value"
    threatened_weight: float = 4.0

    @property
    def unit(self) -> str:
        return "value-ha" if self.kind == "value" else "species-ha"

    def weights(self) -> dict[str, float]:
        return {"richness": 1.0, "threatened": self.threatened_weight}

    def change(self, summary: Mapping[str, Any]) -> tuple[float, np.ndarray | None]:
        """The summary's change over all zones in this currency, and its draws (None without draws)."""
        if self.kind == "value":
            return total_value_change(summary["value"])
        point, draws, fix, var = 0.0, None, 0.0, 0.0
        for group, w in self.weights().items():
            zones = summary.get("species_ha", {}).get(group)
            if zones is None or w == 0:
                continue
            point += w * sum(z["change"] for z in zones.values())
            d = [np.asarray(z["draws"]) for z in zones.values() if z.get("draws")]
            if d:
                draws = w * np.sum(d, axis=0) + (0 if draws is None else draws)
            f, v = _correction(summary, group)
            fix, var = fix + w * f, var + (w * np.sqrt(v)) ** 2
        if draws is None:
            return point + fix, None
        # the correction's error as normal draws around every Monte-Carlo draw (draw i of every summary is the same
        # thinned network: paired comparisons stay paired), seeded by the summary's own numbers: a site's and an
        # impact's errors are independent, a run's the same every time
        rng = np.random.default_rng(zlib.crc32(repr((point, fix, var)).encode()))
        noise = rng.normal(0.0, np.sqrt(var), ERROR_DRAWS) if var > 0 else np.zeros(ERROR_DRAWS)
        return point + fix, np.repeat(draws, ERROR_DRAWS // len(draws) + 1)[:ERROR_DRAWS] + fix + noise


ERROR_DRAWS = 400  # draws of a change whose model error is added to its Monte-Carlo draws


def _correction(summary: Mapping[str, Any], group: str) -> tuple[float, float]:
    """A count group's model-error correction in species-ha over the zones, and its variance (0, 0 without
    ``change_estimates``)."""
    estimates = (summary.get("change_estimates") or {}).get(group)
    if not estimates:
        return 0.0, 0.0
    fix = sd = 0.0
    for name, est in estimates.items():
        pixels_ha = summary["zones"][name]["area_ha"]
        fix += float(est.get("correction", 0.0)) * pixels_ha
        sd += float(est.get("sd_calibration", 0.0)) * pixels_ha  # the zones' errors taken as correlated
    return fix, sd**2


def read_impact(path: str, currency: Currency | None = None) -> dict[str, Any]:
    """An impact report's summary (its folder or its ``summary.json``), which must hold the ``currency``'s change
    (the value currency: biodiversity value assessed)."""
    p = Path(path)
    p = p / "summary.json" if p.is_dir() else p
    if not p.is_file():
        raise ScenarioError(f"impact report {path}: no summary.json (run `geoplantnet impact` first)")
    try:
        summary = json.loads(p.read_text())
    except ValueError as exc:
        raise ScenarioError(f"impact report {p}: not JSON ({exc})") from None
    kind = (currency or Currency()).kind
    if kind == "value" and "value" not in summary:
        raise ScenarioError(f"impact report {p}: it assessed no biodiversity value (no value model was used)")
    if kind == "species" and "species_ha" not in summary:
        raise ScenarioError(f"impact report {p}: it records no species-ha change (made before offsets counted them)")
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


def impact_loss(
    impact: Mapping[str, Any], draws_of: Mapping[str, Any], currency: Currency | None = None
) -> dict[str, Any]:
    """What an impact report loses in ``currency`` (``amount``; ``value_ha`` too when it assessed value), its draws
    (None without), and whether they are paired with this run's (``draws_of``:
    :func:`geoplantnet.products.impact.draws_of`: the same models, seed and draw count)."""
    currency = currency or Currency()
    change, draws = currency.change(impact)
    same = {k: impact.get("draws_of", {}).get(k) for k in draws_of}
    out = {"amount": -change, "unit": currency.unit, "draws": None if draws is None else -draws,
           "paired": same == dict(draws_of)}  # fmt: skip
    if "value" in impact:
        out["value_ha"] = -total_value_change(impact["value"])[0]
    return out


def check_units(impact: Mapping[str, Any], draws_of: Mapping[str, Any], currency: Currency, where: str) -> None:
    """Refuse comparing value-hectares of two value models: a value map's units are its model's (a probability of
    high value, or a condition score rescaled by its own training polygons), so a site's gain and an impact's loss
    are like with like only from the same model. Species-hectares count species whatever the model."""
    theirs = impact.get("draws_of", {}).get("value_model")
    if currency.kind == "value" and theirs is not None and theirs != draws_of.get("value_model"):
        raise ScenarioError(
            f"impact report {where}: assessed with another value model ({str(theirs)[:12]}), whose value-ha are not "
            "this one's: run the impact again with this value model, or use impact.offset_currency=species"
        )


def site_row(
    site: str,
    summary: Mapping[str, Any],
    level: float,
    loss: Mapping[str, Any] | None,
    ratio: float,
    confidence: float,
    currency: Currency | None = None,
) -> dict[str, Any]:
    """A candidate site's row of the ranking from its assessment's summary: its gain in ``currency`` with the
    interval at ``level`` and the draws (``_draws``, kept out of the report), its value-hectare gain, the richness
    and threatened change on the site, and, against ``loss`` (:func:`impact_loss`), P(no net loss) and the
    verdict."""
    s, currency = summary, currency or Currency()
    gain, draws = currency.change(s)
    lower, upper = interval(draws, level) if draws is not None else (None, None)
    row: dict[str, Any] = {
        "site": site,
        "area_ha": s["zones"]["footprint"]["area_ha"],
        "gain": round(gain, 4),
        "gain_lower": lower,
        "gain_upper": upper,
        "unit": currency.unit,
        "gain_draws": None if draws is None else [round(float(d), 4) for d in draws],
        "richness_change_site": s["indicators"].get("richness_expected", {}).get("footprint", {}).get("change"),
        "threatened_change_site": s["indicators"].get("threatened_expected", {}).get("footprint", {}).get("change"),
        "_draws": draws,
    }
    if "value" in s:
        value, value_draws = total_value_change(s["value"])
        row["value_ha_gain"] = round(value, 4)
        row["value_ha_gain_draws"] = None if value_draws is None else [round(float(d), 4) for d in value_draws]
    if loss is not None:
        row["p_no_net_loss"], row["compensates"] = compensation(
            draws, loss["draws"], ratio, confidence, paired=loss["paired"]
        )
        if row["compensates"] is None:
            row["compensates"] = "yes" if gain >= ratio * loss["amount"] else "no"
    return row


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` best gain first, numbered from 1 (``rank``)."""
    rows.sort(key=lambda r: -r["gain"])
    for number, row in enumerate(rows, start=1):
        row["rank"] = number
    return rows


def portfolio(rows: list[dict[str, Any]], loss: Mapping[str, Any], ratio: float, confidence: float) -> dict:
    """The fewest best-ranked sites with a positive gain whose summed gain compensates the loss (draw by draw), or
    all of them falling short."""
    if loss["amount"] <= 0:
        return {"sites": [], "gain": 0.0, "compensates": "no loss to offset"}
    chosen: list[str] = []
    total, draws = 0.0, None
    for row in (r for r in rows if r["gain"] > 0):
        chosen.append(row["site"])
        total += row["gain"]
        if row["_draws"] is not None:
            draws = row["_draws"] if draws is None else draws + row["_draws"]
        p, verdict = compensation(draws, loss["draws"], ratio, confidence, paired=loss["paired"])
        if (verdict or ("yes" if total >= ratio * loss["amount"] else "no")) == "yes":
            return {"sites": chosen, "gain": round(total, 4), "p_no_net_loss": p, "compensates": "yes"}
    return {"sites": chosen, "gain": round(total, 4), "compensates": "no: the candidates fall short"}
