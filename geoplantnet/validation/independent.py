"""Scoring on independent presence-absence sites (e.g. the NCEAS test surveys) and its report.

Every model is fitted on the training data only (choices such as early stopping made on spatial blocks of the training
data) and predicts at the test sites; each species is scored where it was surveyed (labels 1/0; -1, a site of another
group, is left out), as in the NCEAS benchmark (Elith et al. 2006, 2020). Tables: mean AUC per model over species,
per biological group, and per species with wins and losses against a reference model (the tuned MaxEnt when it
was run, else MaxEnt; every model keeps its column).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from geoplantnet.validation.metrics import auc_per_species, tss_max_per_species
from geoplantnet.validation.report import _markdown, plot_auc_scatter


def score_sites(
    predictions: Mapping[str, np.ndarray], label: np.ndarray, species: Sequence[str], group_of: Mapping[str, str]
) -> pd.DataFrame:
    """One row per (model, species): AUC, max TSS and the numbers of test presences and absences it rests on."""
    known = label >= 0
    rows = []
    for name, probs in predictions.items():
        auc = auc_per_species(label, probs)
        tss = tss_max_per_species(label, probs)
        for k, s in enumerate(species):
            rows.append(
                {
                    "model": name,
                    "species": s,
                    "group": group_of.get(s, ""),
                    "auc": auc[k],
                    "tss_max": tss[k],
                    "n_presence": int((label[known[:, k], k] == 1).sum()),
                    "n_absence": int((label[known[:, k], k] == 0).sum()),
                }
            )
    return pd.DataFrame(rows)


def _mean_sd(values: pd.Series) -> str:
    v = values.dropna()
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else (f"{v.mean():.3f}" if len(v) else "-")


def region_table(scores: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Per model: mean ± sd over species of AUC and max TSS, and the species scored."""
    out = {}
    for m in models:
        s = scores[scores.model == m]
        out[m] = {"AUC": _mean_sd(s.auc), "max TSS": _mean_sd(s.tss_max), "species": int(s.auc.notna().sum())}
    return pd.DataFrame(out).T


def group_table(scores: pd.DataFrame, models: Sequence[str], reference: str) -> pd.DataFrame:
    """Per biological group: species, mean AUC per model, and each model's wins over ``reference`` (species)."""
    wide = scores.pivot_table(index=["group", "species"], columns="model", values="auc")
    rows = {}
    for g, part in wide.groupby(level="group"):
        row: dict[str, object] = {"species": len(part)}
        for m in models:
            row[m] = f"{part[m].mean():.3f}" if m in part else "-"
        for m in models:
            if m != reference and m in part and reference in part:
                both = part[[m, reference]].dropna()
                row[f"{m} wins"] = f"{int((both[m] > both[reference]).sum())}/{len(both)}"
        rows[g or "(all)"] = row
    return pd.DataFrame(rows).T


def wins(scores: pd.DataFrame, challenger: str, reference: str) -> dict[str, int]:
    """Species where ``challenger`` has a higher, equal or lower AUC than ``reference``."""
    wide = scores.pivot_table(index="species", columns="model", values="auc")[[challenger, reference]].dropna()
    diff = wide[challenger] - wide[reference]
    return {"wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum())}


def write_independent_report(
    scores: pd.DataFrame,
    out_dir: Path,
    *,
    title: str,
    models: Sequence[str],
    reference: str,
    challenger: str,
    seconds: Mapping[str, float],
    notes: Sequence[str] = (),
) -> Path:
    """``report.md`` (region, group and species tables, wins/losses, time per model), ``per_species.csv`` and the
    per-species AUC scatter of ``challenger`` vs ``reference``; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out_dir / "per_species.csv", index=False)
    lines = [
        f"# {title}",
        "",
        "Fitted on the training tables only; scored at the independent presence-absence sites",
        "where each species was surveyed (AUC per species, then averaged).",
        "",
    ]
    region = region_table(scores, models)
    region["seconds"] = [seconds.get(m, float("nan")) for m in region.index]
    lines += ["## All species", "", _markdown(region), ""]
    if scores.group.nunique() > 1 or scores.group.iloc[0]:
        groups = _markdown(group_table(scores, models, reference)).replace("| model |", "| group |", 1)
        lines += ["## Per biological group", "", groups, ""]
    if reference in models:
        lines += ["## Wins and losses per species (AUC)", ""]
        for m in models:
            if m != reference:
                w = wins(scores, m, reference)
                lines.append(f"- {m} vs {reference}: {w['wins']} wins, {w['ties']} ties, {w['losses']} losses")
        lines.append("")
    wide = scores.pivot_table(index=["group", "species"], columns="model", values="auc")[list(models)].round(3)
    wide.index = [f"{g}/{s}" if g else s for g, s in wide.index]
    species_table = _markdown(wide).replace("| model |", "| species |", 1)
    lines += ["## Per species (AUC)", "", species_table, ""]
    if challenger in models and reference in models:
        results = {m: {"per_species": scores[scores.model == m][["species", "auc"]]} for m in models}
        counts = plot_auc_scatter(results, out_dir / "auc_scatter.png", challenger, reference)
        lines += [
            f"![per-species AUC](auc_scatter.png) ({counts['above']} of {counts['n']} species above the 1:1 line)",
            "",
        ]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def summary(scores: pd.DataFrame, models: Sequence[str], reference: str) -> dict[str, object]:
    """Numbers for ``summary.json``: mean AUC per model overall and per group, wins vs the reference."""
    out: dict[str, object] = {}
    for m in models:
        s = scores[scores.model == m]
        entry: dict[str, object] = {
            "auc": float(s.auc.mean()),
            "tss_max": float(s.tss_max.mean()),
            "species": int(s.auc.notna().sum()),
            "groups": {str(g): float(v) for g, v in s.groupby("group").auc.mean().items()},
        }
        if m != reference and reference in models:
            entry[f"vs_{reference}"] = wins(scores, m, reference)
        out[m] = entry
    return json.loads(json.dumps(out))
