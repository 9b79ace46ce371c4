"""The refresh's run summary for people: ``report.md`` (what was mapped, the changes beyond the noise, the
detection against the virtual truth) and ``changes.png`` (the year's richness, its change, the detected changes)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geoplantnet.reports.figures import figure
from geoplantnet.reports.markdown import document, table
from geoplantnet.storage.store import open_store


def markdown(summary: Mapping[str, Any]) -> str:
    """``report.md`` of a refresh summary."""
    head = [f"# Monitoring refresh {summary['year']}"]
    facts = [
        f"- area: {summary['area_km2']} km2 ({summary['shape'][0]} x {summary['shape'][1]} pixels, "
        f"{summary['tiles']} tiles); {summary['seconds']} s in all",
        f"- species model: `{summary['model']}`; habitat maps: {'yes' if summary['habitat_maps'] else 'no'}",
    ]
    facts += [
        f"- {step}: {info['seconds']} s, {info.get('tiles_computed')} tiles computed"
        for step, info in summary["steps"].items()
    ]
    blocks: list[list[str] | str] = [head, facts]
    change = summary.get("change")
    if change is None:
        blocks.append("No earlier year in the series: no change map this year.")
    else:
        c = summary["changes"]
        blocks += [
            f"## Changes since {change['previous_year']}",
            f"{c['changed_pixels']} pixels ({c['changed_km2']} km2, {c['changed_share']:.1%}) changed "
            f"beyond the noise of {', '.join(change.get('decides', ['richness_expected']))} "
            f"(|change - shift| > {change['z']:.3g} x the pixel's noise: a map-wide false-alarm rate of "
            f"{change.get('false_alarm_rate', 'n/a')}; the noise of its "
            f"{'coverage stratum' if change.get('coverage') else 'map'}"
            f"{', per unit of its paired model spread' if any(change.get('paired_spread', {}).values()) else ''}).",
            table(
                ["indicator", "shift", "noise (pooled)", "decrease", "increase", "mean significant change"],
                (
                    [
                        name,
                        f"{change['shift'][name]:.3g}",
                        f"{change['noise'][name]:.3g}",
                        f["decrease"],
                        f["increase"],
                        f["mean_change_where_significant"],
                    ]
                    for name, f in c["indicators"].items()
                ),
            ),
        ]
        if c.get("habitat_transitions"):
            blocks.append(table(["habitat transition", "pixels"], c["habitat_transitions"].items()))
        if c["tiles_most_changed"]:
            blocks.append(
                "Tiles with most change: "
                + ", ".join(f"{t['tile']} ({t['changed_pixels']} px)" for t in c["tiles_most_changed"])
            )
    ev = summary.get("evaluation")
    if ev and "change_detection" in ev:
        d = ev["change_detection"]
        blocks += [
            "## Against the virtual truth",
            f"Changed pixels: precision {d['precision']}, recall {d['recall']}, F1 {d['f1']} "
            f"({d['true_changed']} truly changed, {d['detected']} detected); recall by kind: "
            f"{d['recall_by_kind']}",
        ]
    return document(*blocks)


def plot_changes(
    stores: Mapping[str, tuple[str, Mapping[str, Any]]], year: int, summary: Mapping[str, Any], path: Path
) -> None:
    """Richness of the year, its change and the detected changes (PNG); ``stores``: product -> (URL, options)."""
    url, options = stores["indicators"]
    ind = open_store(url, storage_options=dict(options))
    panels: list[tuple[str, np.ndarray, str]] = [
        (f"richness_expected {year}", np.asarray(ind.sel(year=year)["richness_expected"].values), "viridis")
    ]
    if summary.get("change") is not None:
        url, options = stores["changes"]
        ch = open_store(url, storage_options=dict(options)).sel(year=year)
        panels.append(
            (
                f"richness change since {summary['change']['previous_year']}",
                np.asarray(ch["richness_expected_change"].values),
                "RdBu",
            )
        )
        changed = np.asarray(ch["changed"].values).astype("float32")
        changed[changed < 0] = np.nan
        panels.append(("significant change", changed, "Greys"))
    # tight layout, as the refresh's figure always had (the writers' default is constrained)
    with figure(path, 1, len(panels), panel=(4.2, 4), layout=None) as (fig, axes):
        for ax, (title, data, cmap) in zip(axes[0], panels, strict=True):
            if cmap == "RdBu":
                lim = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
                im = ax.imshow(data, cmap=cmap, vmin=-lim, vmax=lim)
            else:
                im = ax.imshow(data, cmap=cmap)
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            fig.colorbar(im, ax=ax, shrink=0.7)
        fig.tight_layout()
