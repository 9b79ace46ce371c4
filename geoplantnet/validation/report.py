"""Side-by-side validation report: a markdown table (model x metric, mean ± sd over folds) and three figures.

``results`` is ``{model_name: {"folds": [{metric: value}, ...], "per_species": DataFrame(species, fold, auc, ...),
"reliability": DataFrame (optional, from :func:`geoplantnet.validation.metrics.reliability_table`)}}`` — what
:func:`geoplantnet.validation.metrics.cross_validate` returns per model. Nothing here knows model names except the
default pair compared in the scatter plot (``challenger="cnn"`` against ``reference="maxent"``).

Small data are said, not averaged away: every cell of the summary table says over how many folds it was computed
when some folds could not score it, and the report opens with a WARNING section (:func:`report_warnings`) when a
species has few records, when fewer than two folds are informative, or when a model predicted a constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, safe in workers and tests

from geoplantnet.reports.markdown import frame_table
from geoplantnet.validation.metrics import MIN_CASES

SUMMARY_ORDER = (
    *("auc", "auc_tg", "auc_pa", "tss_max", "tss"),
    *("f1_micro_topk", "f1_samples_topk", "ece", "pearson", "spearman"),
)
# Below this many presence records of a species the report warns: a handful of points split over spatial folds give
# AUCs from one or two presences each.
MIN_RECORDS = 10
# A mean ± sd over fewer informative folds than this is one split's score, not a cross-validated estimate.
MIN_INFORMATIVE_FOLDS = 2
_MAX_NAMES = 10  # species named in one warning line; the rest are counted
_MAX_SPECIES_ROWS = 20  # per-species table in the markdown; beyond it only per_species.csv


def _is_metric(key: str) -> bool:
    return key != "fold" and not key.startswith("n_")  # n_* are counts (samples, species evaluated, ...)


class ReportError(ValueError):
    """A results structure the report cannot read (the message is one line)."""


def _check_results(results: Mapping[str, Any]) -> None:
    if not results:
        raise ReportError("results is empty: pass {model_name: {'folds': [...], 'per_species': DataFrame}}")
    for name, res in results.items():
        if not isinstance(res, Mapping) or not isinstance(res.get("folds"), Sequence) or not res["folds"]:
            raise ReportError(f"results[{name!r}] needs a non-empty 'folds' list of {{metric: value}} dicts")


def informative_folds(result: Mapping[str, Any]) -> int:
    """Folds of one model's results where at least one species had both a test presence and a test absence or
    background point (read from ``n_species_informative``; older results without it: folds with a finite AUC)."""
    folds = list(result["folds"])
    if all("n_species_informative" in f for f in folds):
        return sum(1 for f in folds if f["n_species_informative"] > 0)
    return sum(1 for f in folds if np.isfinite(float(f.get("auc", np.nan))))


def model_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """Per metric, the mean over the folds that could score it (None where none could); counts (``n_*``) summed
    over folds (samples, test presences, (species, fold) pairs); the number of folds and of informative folds, so a
    mean over 2 of 5 folds cannot pass for a 5-fold estimate."""
    folds = result["folds"]
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for f in folds for k in f if k != "fold"):
        vals = np.array([f.get(key, np.nan) for f in folds], dtype="float64")
        vals = vals[np.isfinite(vals)]
        if key.startswith("n_"):
            out[key] = int(vals.sum())
        else:
            out[key] = float(vals.mean()) if len(vals) else None
    out["folds"] = len(folds)
    out["informative_folds"] = informative_folds(result)
    return out


def _flag_table(result: Mapping[str, Any]) -> pd.DataFrame | None:
    """The informative rows of a per-species table that carries the flags of :func:`metrics.per_species`."""
    table = result.get("per_species")
    if not isinstance(table, pd.DataFrame) or "informative" not in table:
        return None
    return table[table["informative"].astype(bool)]


def _flags(result: Mapping[str, Any]) -> str:
    scored = _flag_table(result)
    if scored is None or scored.empty:
        return "–"
    n = len(scored)
    parts = []
    if scored["constant"].any():
        parts.append(f"constant prediction in {int(scored['constant'].sum())} of {n}")
    if scored["few_cases"].any():
        parts.append(f"< {MIN_CASES} test presences or absences in {int(scored['few_cases'].sum())} of {n}")
    if "few_train" in scored and scored["few_train"].any():
        parts.append(f"< {MIN_CASES} training presences in {int(scored['few_train'].sum())} of {n}")
    return "; ".join(parts) + " scored (species, fold)" if parts else "–"


def summary_table(results: Mapping[str, Any]) -> pd.DataFrame:
    """Model x metric table of 'mean ± sd' strings over folds (NaN folds left out and counted: '(k of n folds)';
    '–' where all are NaN), with the number of folds, of informative folds, and the small-data flags."""
    _check_results(results)
    frames = {name: pd.DataFrame(list(res["folds"])) for name, res in results.items()}
    metrics = [c for f in frames.values() for c in f.columns if _is_metric(c)]
    metrics = list(dict.fromkeys(m for m in SUMMARY_ORDER if m in metrics)) + sorted(set(metrics) - set(SUMMARY_ORDER))
    rows = {}
    for name, frame in frames.items():
        cells = {}
        n = len(frame)
        for m in metrics:
            vals = pd.to_numeric(frame[m], errors="coerce") if m in frame else pd.Series(dtype=float)
            vals = vals[np.isfinite(vals)]
            if vals.empty:
                cells[m] = "–"
                continue
            cell = f"{vals.iloc[0]:.3f}" if len(vals) == 1 else f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}"
            cells[m] = cell if len(vals) == n else f"{cell} ({len(vals)} of {n} folds)"
        cells["folds"] = str(n)
        cells["informative folds"] = str(informative_folds(results[name]))
        cells["flags"] = _flags(results[name])
        rows[name] = cells
    return pd.DataFrame.from_dict(rows, orient="index")


def _names(names: Sequence[Any]) -> str:
    names = [str(n) for n in names]
    more = f" and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else ""
    return ", ".join(names[:_MAX_NAMES]) + more


def report_warnings(
    results: Mapping[str, Any], min_records: int = MIN_RECORDS, min_folds: int = MIN_INFORMATIVE_FOLDS
) -> list[str]:
    """One line per small-data problem, naming the species: fewer than ``min_records`` presences, fewer than
    ``min_folds`` informative folds (overall or per species), scores from fewer than ``MIN_CASES`` test cases, and
    models whose predictions were constant. Empty when the results can be read as they stand."""
    _check_results(results)
    out: list[str] = []
    name0 = next(iter(results))
    n_folds = len(results[name0]["folds"])
    k = informative_folds(results[name0])  # a property of the data and folds: the same for every model
    if k < min_folds:
        out.append(
            f"only {k} of {n_folds} folds are informative (hold a test presence and a test absence or background "
            f"point): the scores below are {'not cross-validated estimates' if k else 'missing'}"
        )
    table = results[name0].get("per_species")
    if isinstance(table, pd.DataFrame) and "informative" in table:
        by = table.groupby("species", sort=False)
        records = by["n_presence"].sum()  # every kept sample lies in exactly one test part
        few = records[records < min_records]
        if len(few):
            listed = _names([f"{s} ({int(n)})" for s, n in few.items()])
            out.append(
                f"{len(few)} species with fewer than {min_records} presence records: {listed}; their scores rest on "
                "a handful of points"
            )
        n_inf = by["informative"].sum()
        thin = n_inf[n_inf < min_folds]
        if len(thin) and k >= min_folds:  # else the line above already says it for all species
            listed = _names([f"{s} ({int(n)})" for s, n in thin.items()])
            out.append(f"{len(thin)} species informative in fewer than {min_folds} of {n_folds} folds: {listed}")
        few_cases = table[table["few_cases"].astype(bool)]["species"].unique()
        if len(few_cases):
            out.append(
                f"{len(few_cases)} species scored from fewer than {MIN_CASES} test presences or absences in some "
                f"folds (flag few_cases in per_species.csv): {_names(few_cases)}"
            )
    for name, res in results.items():
        scored = _flag_table(res)
        if scored is None or not scored["constant"].any():
            continue
        const = scored[scored["constant"].astype(bool)]
        out.append(
            f"{name} predicted a constant for {_names(const['species'].unique())} in {len(const)} of {len(scored)} "
            "scored (species, fold): AUC 0.5 and TSS 0 there are by construction, not a result (the model was not "
            "fitted, e.g. too few training presences)"
        )
    return out


def _species_markdown(results: Mapping[str, Any]) -> list[str]:
    """Per-species table (presences, informative folds, AUC per model with its flags) when species are few."""
    tables = {n: r["per_species"] for n, r in results.items() if isinstance(r.get("per_species"), pd.DataFrame)}
    tables = {n: t for n, t in tables.items() if {"informative", "few_cases", "constant", "auc"} <= set(t.columns)}
    if not tables:
        return []
    first = next(iter(tables.values()))
    species = list(dict.fromkeys(first["species"]))
    if len(species) > _MAX_SPECIES_ROWS:
        return []
    n_folds = first["fold"].nunique()
    header = ["species", "presences", "informative folds", *[f"{n} AUC" for n in tables]]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for sp in species:
        rows = first[first["species"] == sp]
        cells = [str(sp), str(int(rows["n_presence"].sum())), f"{int(rows['informative'].sum())} of {n_folds}"]
        for table in tables.values():
            r = table[(table["species"] == sp) & table["informative"].astype(bool)]
            auc = r["auc"][np.isfinite(r["auc"])]
            if auc.empty:
                cells.append("–")
                continue
            marks = [m for m, col in (("few cases", "few_cases"), ("constant", "constant")) if r[col].any()]
            cell = f"{auc.mean():.3f} ({len(auc)} of {n_folds} folds)"
            cells.append(cell + (f" [{', '.join(marks)}]" if marks else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return [
        "",
        "## Per species",
        "",
        f"AUC: mean over informative folds. [few cases]: fewer than {MIN_CASES} test presences or absences in some "
        "fold; [constant]: the model predicted one value (AUC 0.5 by construction).",
        "",
        *lines,
    ]


def _markdown(table: pd.DataFrame) -> str:
    return "\n".join(frame_table(table, index="model"))


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


def calibration_basis(results: Mapping[str, Any]) -> str:
    """``presence-absence`` when the reliability tables were computed on presence-absence samples, else
    ``presence-background`` (presences vs background points: the outputs are relative suitability)."""
    bases = {
        r.get("reliability_basis", "presence-absence") for r in results.values() if r.get("reliability") is not None
    }
    return "presence-absence" if bases <= {"presence-absence"} else "presence-background"


def calibration_figure(results: Mapping[str, Any]) -> Figure | None:
    """Reliability curves (observed frequency vs mean prediction) of every model that has a reliability table; on
    presence-background data titled and labelled as relative suitability, which they are. None without tables."""
    tables = {n: r["reliability"] for n, r in results.items() if isinstance(r.get("reliability"), pd.DataFrame)}
    if not tables:
        return None
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--")
    for name, table in tables.items():
        used = table[table["n"] > 0]
        ax.plot(used["mean_predicted"], used["observed_frequency"], marker="o", label=name)
    if calibration_basis(results) == "presence-absence":
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency")
        ax.set_title("Calibration, out of fold (presence-absence samples)")
    else:
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="mean predicted relative suitability",
            ylabel="share of presences among presence + background points",
        )
        ax.set_title("Relative suitability, out of fold\n(presences vs background: not a probability of presence)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_calibration(results: Mapping[str, Any], path: Path) -> bool:
    """Write :func:`calibration_figure` to ``path``; False (nothing written) when no model has a reliability table."""
    fig = calibration_figure(results)
    if fig is None:
        return False
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
    warnings: Sequence[str] | None = None,
    sections: Sequence[str] = (),
) -> Path:
    """Write ``report.md``, ``per_species.csv`` and the figures into ``out_dir``; return the markdown's path.

    ``warnings`` (default: :func:`report_warnings`) open the report in a WARNING section; ``sections``: further
    markdown lines appended at the end (the calibration table of :mod:`geoplantnet.validation.calibration`)."""
    _check_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary_table(results)
    warnings = report_warnings(results) if warnings is None else list(warnings)
    lines = [f"# {title}", ""]
    if warnings:
        lines += ["## WARNING", "", *[f"- **{w}**" for w in warnings], ""]
    lines += [
        "Mean ± sd over spatial-block folds (test part of each fold); '(k of n folds)': the folds that could score "
        "the metric (a test presence and a test absence or background point).",
        "",
        _markdown(table),
        "",
    ]
    lines += [f"- {note}" for note in notes]
    lines += _species_markdown(results)

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
        if calibration_basis(results) == "presence-absence":
            lines += ["", "## Reliability", "", "Out-of-fold predictions at presence-absence samples (raw).", ""]
        else:
            lines += [
                "",
                "## Relative suitability",
                "",
                "Presence-only data: presences against background points. Outputs are **relative suitability**, not "
                "a probability of presence; the curve shows the share of presences among presence + background "
                "points, a property of the sampling design, and is not a calibration check.",
                "",
            ]
        lines += ["![calibration](calibration.png)"]
    lines += list(sections)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
