"""The impact assessment's and the offset ranking's reports: Markdown for people (planners, reviewers), the maps
(PNG), and the GeoPackages and CSV a GIS opens. They take the summaries and plain arrays the products computed
(:mod:`geoplantnet.products.impact_summary`, :mod:`geoplantnet.products.offsets`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geoplantnet.reports.figures import bare, figure
from geoplantnet.reports.markdown import document, fmt, table
from geoplantnet.storage.outputs import place, place_json

# the zones' indicators whose change the zones layer of impact.gpkg carries
ZONE_INDICATORS = ("richness_expected", "threatened_expected", "invasive_expected", "shannon", "ecosystem_health")


def impact_markdown(summary: Mapping[str, Any]) -> str:
    """The impact report for people (planners, reviewers)."""
    s = summary["scenario"]
    blocks: list[str | list[str]] = [f"# Impact assessment: {s['name']}"]
    if s.get("description"):
        blocks.append(s["description"])
    blocks.append(
        [
            f"- footprint `{summary['footprint']}`: {summary['zones']['footprint']['area_ha']} ha becomes land cover "
            f"**{s['land_cover_name']}** (class {s['land_cover']}); edge effects over {s['buffer_m']} m "
            f"(strength {s['edge_strength']}, an assumption of the scenario)",
            f"- the new cover's imagery: the median of {s['land_cover_name']} pixels within {s['context_m']} m",
            f"- re-predicted: {summary['tiles']} tiles ({summary['seconds']} s); uncertainty: {summary['draws']} "
            f"paired Monte-Carlo dropout draws and, where there are surveys, the models' error per land-cover class "
            f"measured at them; intervals at {summary['level']:.0%}",
            f"- models: {', '.join(f'{k} `{v}`' for k, v in summary['versions'].items())}",
        ]
    )
    zones = [(z, v["area_ha"], v["pixels"]) for z, v in summary["zones"].items()]
    blocks += ["## Zones", table(("zone", "area (ha)", "pixels"), zones)]
    if summary.get("change_estimates"):
        blocks += _estimate_blocks(summary)
    header = ("indicator", "zone", "before", "after", "change", "Monte-Carlo interval of the change")
    blocks += ["## Indicators (mean per pixel, the models' own values)", table(header, _indicator_rows(summary))]
    if "value" in summary:
        header = ("zone", "before", "after", "change", "value-ha change", "interval")
        blocks += ["## Biodiversity value", table(header, _value_rows(summary["value"]))]
        blocks.append("Value-hectares: the sum of value (0-1) x area, like habitat hectares.")
    sp = summary["species"]
    blocks += [
        "## Species (expected occupied area in the footprint and buffer)",
        f"{sp['species_losing_half']} species lose at least half of their expected area; the summed change is "
        f"{sp['expected_species_area_change_ha']} species-ha.",
        table(
            ("species", "before (ha)", "after (ha)", "change (ha)"),
            [(r["name"], r["area_ha_before"], r["area_ha_after"], r["change_ha"]) for r in sp["losses"]],
        ),
    ]
    if "habitats" in summary:
        h = summary["habitats"]
        transitions = h["transitions"]
        blocks += [
            "## Habitats (top class, footprint and buffer)",
            f"{fmt(100 * h['changed_share'], 1)} % of the area changes class.",
            table(("before", "after", "area (ha)"), [(t["before"], t["after"], t["area_ha"]) for t in transitions]),
        ]
    if "evaluation" in summary:
        blocks += ["## Against the virtual region's truth (same scenario applied to the generator)"]
        blocks += _evaluation_blocks(summary["evaluation"])
    if summary.get("notes"):
        blocks += ["## Notes", [f"- {n}" for n in summary["notes"]]]
    return document(*blocks)


def _estimate_blocks(summary: Mapping[str, Any]) -> list[str | list[str]]:
    """The expected counts' change per pixel with the models' error measured at the surveys: the models' change,
    the correction by land-cover class, the estimate and its interval, and what the extrapolation check says."""
    rows = [
        (group, zone_name, fmt(e["model_change"]), fmt(e["correction"]), fmt(e["change"]),
         f"[{fmt(e['lower'])}, {fmt(e['upper'])}]", ", ".join(map(str, e["extrapolated_classes"])) or "-")
        for group, zones in summary["change_estimates"].items()
        for zone_name, e in zones.items()
        if zone_name != "surroundings"
    ]  # fmt: skip
    level = f"{summary['level']:.0%}"
    out: list[str | list[str]] = [
        "## Change of the expected counts (per pixel), with the models' error",
        f"The models' change, corrected by the error the species model makes in each land-cover class (measured at "
        f"held-out surveys); the {level} interval holds the Monte-Carlo spread and that error's uncertainty.",
        table(("group", "zone", "models", "correction", "estimate", f"{level} interval", "unmeasured classes"), rows),
    ]
    if summary.get("extrapolation"):
        out.append(f"Extrapolation check: {summary['extrapolation']['message']}.")
    return out


def _indicator_rows(summary: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Each indicator's mean per pixel in the footprint and buffer, with the Monte-Carlo interval of the change of
    an expected count."""
    intervals = summary.get("change_intervals", {})
    rows = []
    for name, zones in summary["indicators"].items():
        if name.endswith(("_lower", "_upper")):  # the levels' intervals are in summary.json
            continue
        group = name.removesuffix("_expected")
        for zone_name in ("footprint", "buffer"):
            row = zones[zone_name]
            iv = intervals.get(group, {}).get(zone_name) if name.endswith("_expected") else None
            shown = f"[{fmt(iv['lower'])}, {fmt(iv['upper'])}]" if iv else ""
            rows.append((name, zone_name, fmt(row["before"]), fmt(row["after"]), fmt(row["change"]), shown))
    return rows


def _value_rows(value: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Mean value per zone before, after and its change, and the value-hectare change with its interval."""
    rows = []
    for zone_name, row in value.items():
        iv = (
            f"[{fmt(row.get('value_ha_change_lower'))}, {fmt(row.get('value_ha_change_upper'))}]"
            if "value_ha_change_lower" in row
            else ""
        )
        changes = (fmt(row["before"], 3), fmt(row["after"], 3), fmt(row["change"], 3), fmt(row["value_ha_change"]))
        rows.append((zone_name, *changes, iv))
    return rows


def _evaluation_blocks(ev: Mapping[str, Any]) -> list[str | list[str]]:
    """Predicted against true change per zone, and the per-pixel correlations."""
    header = (
        "zone",
        "richness change predicted",
        "true",
        "true in interval",
        "threatened predicted",
        "true",
        "value change predicted",
        "true value-score change",
    )
    rows = [
        (
            zone_name,
            fmt(row.get("richness_change_predicted")),
            fmt(row.get("richness_change_true")),
            row.get("richness_true_in_interval"),
            fmt(row.get("threatened_change_predicted")),
            fmt(row.get("threatened_change_true")),
            fmt(row.get("value_change_predicted"), 3),
            fmt(row.get("value_score_change_true")),
        )
        for zone_name, row in ev["zones"].items()
    ]
    shown = ", ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in ev["pixel_r"].items())
    return [
        table(header, rows),
        [
            f"Per-pixel correlation of predicted and true change (footprint and buffer): {shown}.",
            f"Note: {ev['note']}.",
        ],
    ]


def plot_impact(
    path: Path,
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    bounds: tuple[float, float, float, float],
    geometry: Any,
    name: str,
) -> None:
    """Before / after / difference maps of richness and value (or threatened species) on the window of ``bounds``,
    the footprint ``geometry`` outlined; ``name``: the scenario's."""
    rows = [("richness_expected", "expected richness")]
    rows.append(("value", "biodiversity value") if "value" in before else ("threatened_expected", "threatened"))
    rows = [r for r in rows if r[0] in before]
    x0, y0, x1, y1 = bounds
    extent = (x0, x1, y0, y1)
    outline = [np.asarray(p.exterior.coords) for p in getattr(geometry, "geoms", [geometry])
               if hasattr(p, "exterior")]  # fmt: skip
    with figure(path, len(rows), 3, panel=(4.0, 3.8), dpi=100) as (fig, axes):
        for r, (layer, label) in enumerate(rows):
            b, a = before[layer], after[layer]
            vmin, vmax = np.nanmin([b, a]), np.nanmax([b, a])
            diff = a - b
            lim = float(np.nanmax(np.abs(diff))) or 1.0
            panels = [
                (b, f"{label}: before", "viridis", vmin, vmax),
                (a, f"{label}: after", "viridis", vmin, vmax),
                (diff, f"{label}: change", "RdBu", -lim, lim),
            ]
            for c, (values, title, cmap, lo, hi) in enumerate(panels):
                ax = axes[r, c]
                im = ax.imshow(values, extent=extent, cmap=cmap, vmin=lo, vmax=hi)
                for ring in outline:
                    ax.plot(ring[:, 0], ring[:, 1], color="black", lw=1)
                ax.set_title(title, fontsize=10)
                bare(ax)
                fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(f"Impact of '{name}'", fontsize=11)


def write_geopackage(
    path: Path,
    summary: Mapping[str, Any],
    *,
    crs: Any,
    footprint: Mapping[str, Any],
    geometry: Any,
    zones: Mapping[str, Any],
    cells: Mapping[str, np.ndarray],
    squares: np.ndarray,
) -> None:
    """``impact.gpkg``: the footprint (``geometry`` with the ``footprint`` attributes), the zones (name -> polygon)
    with their mean changes from ``summary``, and every assessed cell (``squares``) with its ``cells`` columns."""
    import geopandas as gpd
    import pandas as pd

    layer = gpd.GeoDataFrame({k: [v] for k, v in footprint.items()}, geometry=[geometry], crs=crs)
    records = []
    for name, geom in zones.items():
        row: dict[str, Any] = {"zone": name, "area_ha": summary["zones"][name]["area_ha"]}
        for ind in ZONE_INDICATORS:
            if ind in summary["indicators"]:
                row[f"{ind}_change"] = summary["indicators"][ind][name]["change"]
        if "value" in summary:
            row["value_change"] = summary["value"][name]["change"]
            row["value_ha_change"] = summary["value"][name]["value_ha_change"]
        records.append({**row, "geometry": geom})
    zone_layer = gpd.GeoDataFrame(records, geometry="geometry", crs=crs)
    cell_layer = gpd.GeoDataFrame(pd.DataFrame(dict(cells)), geometry=squares, crs=crs)
    layer.to_file(path, layer="footprint", driver="GPKG")
    zone_layer.to_file(path, layer="zones", driver="GPKG", mode="a")
    cell_layer.to_file(path, layer="cells", driver="GPKG", mode="a")


def offsets_markdown(summary: Mapping[str, Any]) -> str:
    """The offset ranking for people."""
    s = summary["scenario"]
    unit = summary["currency"]["unit"]
    meaning = {
        "value-ha": "value-hectares (value 0-1 x area)",
        "species-ha": f"species-hectares (expected species x area, a threatened species counting "
        f"{summary['currency']['threatened_weight']:g} times)",
    }[unit]
    blocks: list[str | list[str]] = [
        f"# Offset sites under '{s['name']}'",
        f"Each candidate becomes **{s['land_cover_name']}** (class {s['land_cover']}), edge effects over "
        f"{s['buffer_m']} m; gains are {meaning} with {summary['level']:.0%} intervals ({summary['draws']} paired "
        "dropout draws, and the models' error where the impact measured it).",
    ]
    header = ["rank", "site", "area (ha)", f"{unit} gain", "interval", "value-ha gain", "richness change",
              "threatened change"]  # fmt: skip
    verdicts = "impact" in summary
    if verdicts:
        header += ["P(no net loss)", "compensates"]
    rows = []
    for r in summary["ranking"]:
        row = [
            r["rank"],
            r["site"],
            r["area_ha"],
            fmt(r["gain"]),
            f"[{fmt(r['gain_lower'])}, {fmt(r['gain_upper'])}]",
            fmt(r.get("value_ha_gain")),
            fmt(r["richness_change_site"]),
            fmt(r["threatened_change_site"]),
        ]
        rows.append(row + ([fmt(r.get("p_no_net_loss")), r.get("compensates")] if verdicts else []))
    blocks.append(table(header, rows))
    if verdicts:
        imp = summary["impact"]
        blocks.append(
            [
                f"The impact `{imp['report']}` loses {fmt(imp['loss'])} {unit}; no net loss needs a gain "
                f"of {imp['ratio']} x that with probability {imp['confidence']}.",
                f"Best sites together: {', '.join(imp['portfolio']['sites'])} -> {imp['portfolio']['compensates']}.",
            ]
        )
    if "evaluation" in summary:
        ev = summary["evaluation"]
        lines = [
            "Against the truth (value score: richness + 4 x threatened): Spearman rank correlation of predicted gain "
            "and true value-score gain "
            f"{fmt(ev['spearman_rank'])}; best site predicted {ev['predicted_best_site']}, "
            f"truly {ev['true_best_site']}.",
        ]
        if "true_compensates" in ev:
            lines.append(
                f"The truth's verdict for those sites: they gain {fmt(ev['true_value_score_gain_of_chosen_sites'])} "
                f"value-score-ha against a true loss of {fmt(ev['true_value_score_loss'])} -> "
                f"{ev['true_compensates']}."
            )
        blocks.append(lines)
    if summary.get("notes"):
        blocks += ["## Notes", [f"- {n}" for n in summary["notes"]]]
    return document(*blocks)


def write_offsets(folder: Path, summary: Mapping[str, Any], frame: Any, ids: list[str]) -> None:
    """``offsets.csv``, ``offsets.gpkg`` (the sites with their ranking), ``report.md`` and, last, ``summary.json``
    into the claimed ``folder``."""
    import geopandas as gpd
    import pandas as pd

    ranking = pd.DataFrame(summary["ranking"]).drop(columns=["gain_draws", "value_ha_gain_draws"], errors="ignore")
    # the ranking's columns and the geometry only: a site's own columns may share names with them
    shapes = gpd.GeoDataFrame({"site": ids}, geometry=frame.geometry.values, crs=frame.crs)
    sites = shapes.merge(ranking, on="site", how="left").sort_values("rank")
    place(folder, "offsets.csv", lambda p: ranking.to_csv(p, index=False))
    place(folder, "offsets.gpkg", lambda p: sites.to_file(p, layer="sites", driver="GPKG"))
    place(folder, "report.md", lambda p: p.write_text(offsets_markdown(summary)))
    place_json(folder, "summary.json", summary)


def random_markdown(summary: Mapping[str, Any]) -> str:
    """The random evaluation's report: the aggregate figures the targets name, then a row per footprint and per
    site set (``geoplantnet impact --random N --evaluate``)."""
    scenarios, r, agg = summary["scenarios"], summary["random"], summary["aggregate"]
    become = ", ".join(f"**{s['land_cover_name']}** ('{s['name']}': {s['footprints']})" for s in scenarios)
    blocks: list[str | list[str]] = [
        f"# {r['footprints']} random footprints under {', '.join(repr(s['name']) for s in scenarios)} against "
        "the truth",
        f"Footprints of {r['footprint_ha'][0]:g}-{r['footprint_ha'][1]:g} ha (log-uniform; rectangles, ellipses, "
        f"irregular polygons; centred on a land-cover class drawn uniformly) become {become}, never their own "
        f"majority class; seed {r['seed']}; {summary['draws']} paired Monte-Carlo draws, intervals at "
        f"{summary['level']:.0%}; {summary['tiles']} tiles in {summary['seconds']} s.",
    ]
    figures = [
        ("footprint richness change: mean relative error", agg["richness_mean_relative_error"],
         f"over {agg['footprints_scored_relative']} footprints with a true change of at least 0.5 species"),
        ("footprint richness change: median relative error", agg["richness_median_relative_error"], ""),
        ("sign of the footprint's richness change right", agg["richness_sign_agrees"], "share of footprints"),
        ("richness interval holds the truth", agg["richness_interval_coverage"], "share of footprints"),
        ("threatened interval holds the truth", agg["threatened_interval_coverage"], "share of footprints"),
        ("largest change beyond the buffer", agg["beyond_buffer_max_abs_change"], "species per pixel; truth: 0"),
    ]  # fmt: skip
    if "site_sets" in agg:
        o = summary["offset_scenario"]
        blocks.append(
            f"{agg['site_sets']} sets of {r['sites_per_set']} candidate sites ({r['site_ha'][0]:g}-{r['site_ha'][1]:g}"
            f" ha, drawn apart from a pool of {r['sites']}) become **{o['land_cover_name']}**; set k offsets "
            f"footprint k's value loss at ratio {summary['ratio']} with probability {summary['confidence']}."
        )
        figures += [
            ("Spearman of predicted and true gains: mean", agg["spearman_mean"], "per site set"),
            ("Spearman: median", agg["spearman_median"], ""),
            ("no-net-loss verdict agrees with the truth's", agg["verdicts_agree_share"], "share of site sets"),
            ("the truth says yes", agg["true_yes_share"], "share of site sets"),
            ("the prediction says yes", agg["predicted_yes_share"], "share of site sets"),
            ("best site right", agg["best_site_agrees_share"], "share of site sets"),
        ]
    blocks += ["## Against the truth", table(("figure", "value", "over"), [(a, fmt(b), c) for a, b, c in figures])]
    if "by_scenario" in agg:
        header = ("scenario", "footprints", "mean (median) rel. error", "sign right", "richness interval holds",
                  "beyond buffer max")  # fmt: skip
        rows = [(k, v["footprints"], f"{fmt(v['richness_mean_relative_error'])} "
                 f"({fmt(v['richness_median_relative_error'])})", fmt(v["richness_sign_agrees"]),
                 fmt(v["richness_interval_coverage"]), fmt(v["beyond_buffer_max_abs_change"], 4))
                for k, v in agg["by_scenario"].items()]  # fmt: skip
        blocks += ["## Per scenario", table(header, rows)]
    header = ("footprint", "shape", "ha", "class", "to", "richness predicted", "true", "rel. error", "in interval",
              "threatened predicted", "true", "buffer predicted", "beyond buffer max")  # fmt: skip
    rows = [
        (f["id"], f["shape"], f["area_ha"], f["majority_land_cover"], f["new_land_cover"],
         fmt(f["richness_change_predicted"]),
         fmt(f["richness_change_true"]), fmt(f["richness_relative_error"]), f["richness_true_in_interval"],
         fmt(f["threatened_change_predicted"]), fmt(f["threatened_change_true"]),
         fmt(f["buffer_richness_change_predicted"]), fmt(f["beyond_buffer_max_abs_change"], 4))
        for f in summary["footprints"]
    ]  # fmt: skip
    blocks += ["## Footprints (mean change per pixel)", table(header, rows)]
    if summary["site_sets"]:
        header = ("set", "footprint", "sites", "Spearman", "best predicted / true", "verdict", "truth's", "agrees")
        rows = [
            (k["set"], k["footprint"], " ".join(k["sites"]), fmt(k["spearman"]),
             f"{k['predicted_best_site']} / {k['true_best_site']}", k["verdict_predicted"], k["verdict_true"],
             k["verdict_agrees"])
            for k in summary["site_sets"]
        ]  # fmt: skip
        blocks += ["## Site sets", table(header, rows)]
        rows = [(x["id"], x["shape"], x["area_ha"], x["land_cover"], fmt(x["value_ha_gain"], 3),
                 fmt(x["true_value_score_gain"])) for x in summary["sites"]]  # fmt: skip
        header = ("site", "shape", "ha", "class", "predicted value-ha gain", "true value-score-ha gain")
        blocks += ["## Candidate sites", table(header, rows)]
    if summary.get("notes"):
        blocks += ["## Notes", [f"- {n}" for n in summary["notes"]]]
    return document(*blocks)
