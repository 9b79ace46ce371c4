"""Side-by-side validation report: a markdown table (model x metric, mean ± sd over folds) and three figures.

``results`` is ``{model_name: {"folds": [{metric: value}, ...], "per_species": DataFrame(species, fold, auc, ...),
"reliability": DataFrame (optional, from :func:`geoplantnet.validation.metrics.reliability_table`)}}`` — what
:func:`geoplantnet.validation.metrics.cross_validate` returns per model. Nothing here knows model names except the
default pair compared in the scatter plot (``challenger="cnn"`` against ``reference="maxent"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, safe in workers and tests

SUMMARY_ORDER = ("auc", "auc_pa", "tss_max", "tss", "f1_micro_topk", "f1_samples_topk", "ece", "pearson", "spearman")
_NOT_METRICS = {"fold", "n_samples", "n_species_evaluated"}


class ReportError(ValueError):
    """A results structure the report cannot read (the message is one line)."""


def _check_results(results: Mapping[str, Any]) -> None:
    if not results:
        raise ReportError("results is empty: pass {model_name: {'folds': [...], 'per_species': DataFrame}}")
    for name, res in results.items():
        if not isinstance(res, Mapping) or not isinstance(res.get("folds"), Sequence) or not res["folds"]:
            raise ReportError(f"results[{name!r}] needs a non-empty 'folds' list of {{metric: value}} dicts")


def summary_table(results: Mapping[str, Any]) -> pd.DataFrame:
    """Model x metric table of 'mean ± sd' strings over folds (NaN folds left out; '–' where all are NaN)."""
    _check_results(results)
    frames = {name: pd.DataFrame(list(res["folds"])) for name, res in results.items()}
    metrics = [c for f in frames.values() for c in f.columns if c not in _NOT_METRICS]
    metrics = list(dict.fromkeys(m for m in SUMMARY_ORDER if m in metrics)) + sorted(
        set(metrics) - set(SUMMARY_ORDER)
    )
    rows = {}
    for name, frame in frames.items():
        cells = {}
        for m in metrics:
            vals = pd.to_numeric(frame[m], errors="coerce").dropna() if m in frame else pd.Series(dtype=float)
            if vals.empty:
                cells[m] = "–"
            elif len(vals) == 1:
                cells[m] = f"{vals.iloc[0]:.3f}"
            else:
                cells[m] = f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}"
        cells["folds"] = str(len(frame))
        rows[name] = cells
    return pd.DataFrame.from_dict(rows, orient="index")


def _markdown(table: pd.DataFrame) -> str:
    header = "| model | " + " | ".join(table.columns) + " |"
    rule = "|---|" + "---|" * len(table.columns)
    body = ["| " + " | ".join([str(idx), *map(str, row)]) + " |" for idx, row in table.iterrows()]
    return "\n".join([header, rule, *body])


def _species_auc(results: Mapping[str, Any], name: str) -> pd.Series:
    table = results[name].get("per_species")
    if table is None or "auc" not in table:
        return pd.Series(dtype=float)
    return table.groupby("species")["auc"].mean()


def _pick_pair(results: Mapping[str, Any], challenger: str, reference: str) -> tuple[str, str] | None:
    if reference not in results:
        return None
    if challenger not in results:
        others = [n for n in results if n != reference]
        if not others:
            return None
        challenger = others[0]
    return challenger, reference


def plot_auc_scatter(results: Mapping[str, Any], path: Path, challenger: str, reference: str) -> dict[str, int]:
    """Per-species AUC (mean over folds) of ``challenger`` (y) vs ``reference`` (x), with the 1:1 line."""
    both = pd.concat([_species_auc(results, reference), _species_auc(results, challenger)], axis=1).dropna()
    both.columns = ["reference", "challenger"]
    above = int((both["challenger"] > both["reference"]).sum())
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(both["reference"], both["challenger"], s=12, alpha=0.7)
    ax.plot([0, 1], [0, 1], color="k", lw=1)
    lo = math.floor(10 * min(both.min().min(), 0.5)) / 10 if len(both) else 0.0
    ax.set(xlim=(lo, 1), ylim=(lo, 1), xlabel=f"{reference} AUC", ylabel=f"{challenger} AUC")
    ax.set_title(f"{above} of {len(both)} species above the 1:1 line ({challenger} better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return {"above": above, "n": len(both)}


def plot_blocks(blocks_gdf: Any, path: Path, points: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Map of the blocks coloured by fold, with the sample points on top."""
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    blocks_gdf.plot(column="fold", categorical=True, cmap="tab10", alpha=0.6, edgecolor="k", lw=0.3, ax=ax, legend=True)
    if points is not None:
        ax.scatter(np.asarray(points[0]), np.asarray(points[1]), s=2, c="k", alpha=0.5)
    ax.set(title="Spatial blocks by fold", xlabel="x (m)", ylabel="y (m)")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_calibration(results: Mapping[str, Any], path: Path) -> bool:
    """Reliability curves (observed frequency vs mean prediction) of every model that has a reliability table."""
    tables = {n: r["reliability"] for n, r in results.items() if isinstance(r.get("reliability"), pd.DataFrame)}
    if not tables:
        return False
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--")
    for name, table in tables.items():
        used = table[table["n"] > 0]
        ax.plot(used["mean_predicted"], used["observed_frequency"], marker="o", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency")
    ax.set_title("Calibration, out of fold (PA samples where present)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def write_report(
    results: Mapping[str, Any],
    out_dir: Path,
    *,
    blocks_gdf: Any = None,
    points: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "Species distribution models: spatial block validation",
    challenger: str = "cnn",
    reference: str = "maxent",
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.md``, ``per_species.csv`` and the figures into ``out_dir``; return the markdown's path."""
    _check_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary_table(results)
    lines = [f"# {title}", "", "Mean ± sd over spatial-block folds (test part of each fold).", "", _markdown(table), ""]
    lines += [f"- {note}" for note in notes]

    per_species = [r["per_species"].assign(model=n) for n, r in results.items() if r.get("per_species") is not None]
    if per_species:
        pd.concat(per_species, ignore_index=True).to_csv(out_dir / "per_species.csv", index=False)
        lines += ["", "Per-species metrics per fold: [per_species.csv](per_species.csv)"]

    pair = _pick_pair(results, challenger, reference)
    if pair is not None:
        counts = plot_auc_scatter(results, out_dir / "auc_scatter.png", *pair)
        lines += [
            "",
            f"## Per-species AUC: {pair[0]} vs {pair[1]}",
            "",
            f"{counts['above']} of {counts['n']} species have a higher AUC with {pair[0]} than with {pair[1]}.",
            "",
            "![per-species AUC](auc_scatter.png)",
        ]
    if blocks_gdf is not None:
        plot_blocks(blocks_gdf, out_dir / "blocks_map.png", points)
        lines += ["", "## Spatial blocks", "", f"{len(blocks_gdf)} occupied blocks.", "", "![blocks](blocks_map.png)"]
    if plot_calibration(results, out_dir / "calibration.png"):
        lines += ["", "## Calibration", "", "![calibration](calibration.png)"]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
