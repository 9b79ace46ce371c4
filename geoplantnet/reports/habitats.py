"""The ``habitats`` report: every model's scores over the spatial folds side by side (mean ± sd), the fill-mask
scores next to the co-occurrence baseline, and what reading the plots noticed."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from geoplantnet.core.config import HabitatsConfig
from geoplantnet.reports.markdown import document, table

METRICS = ("top1", "top3", "macro_f1")


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over folds of each model's scores (``<metric>_mean``, ``<metric>_std``), best top-1 first: the
    accuracies of every level above the classifier's (``top1_level<u>``, highest level first) after the others."""
    ups = sorted((c for c in rows.columns if str(c).startswith("top1_level")), reverse=True)
    metrics = [*(c for c in METRICS if c in rows.columns), *ups]
    agg = rows.groupby("model")[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    return agg.sort_values(f"{metrics[0]}_mean", ascending=False)


def _spread(mean: float, sd: float) -> str:
    return "—" if pd.isna(mean) else f"{mean:.3f} ± {sd:.3f}"  # NaN: a score the model has not (ESy's top-3)


def _share(rows: pd.DataFrame, column: str) -> str:
    """A share over folds, weighted by each fold's test plots."""
    return f"{(rows[column] * rows['n']).sum() / max(rows['n'].sum(), 1):.1%}"


def habitats_markdown(
    summary: pd.DataFrame,
    rows: pd.DataFrame,
    fills: pd.DataFrame,
    h: HabitatsConfig,
    *,
    labelled: int,
    corpus: int,
    notes: Sequence[str],
) -> str:
    """The report: ``summary`` (:func:`summary_table` of the per-fold ``rows``), the per-fold fill-mask scores
    ``fills``, the numbers of ``labelled`` plots and ``corpus`` sentences, and the data's ``notes``."""
    ups = [f"top1_level{u}" for u in range(h.level - 1, 0, -1)]
    header = ["model", "top-1", "top-3", "macro-F1", *(f"top-1 L{u}" for u in range(h.level - 1, 0, -1))]
    models = [
        [name, *(_spread(r[f"{m}_mean"], r[f"{m}_std"]) for m in ("top1", "top3", "macro_f1", *ups))]
        for name, r in summary.iterrows()
    ]
    blocks: list[str | list[str]] = [
        f"# Habitat classification, EUNIS level {h.level}, {h.folds} spatial folds (blocks of {h.block_size:g})",
        f"{labelled} labelled plots, {corpus} sentences in the pre-training corpus.",
        table(header, models),
    ]
    if len(fills):
        spread = [
            [who, *(_spread(fills[f"{who}_{k}"].mean(), fills[f"{who}_{k}"].std()) for k in ("top1", "top5"))]
            for who in ("plantbert", "cooccurrence")
        ]
        blocks += [
            "Fill-mask (one hidden species per test plot), mean ± sd over folds:",
            table(["model", "top-1", "top-5"], spread),
        ]
    notes = list(notes)
    if "esy_undecided" in rows.columns:
        esy = rows.dropna(subset=["esy_undecided"])
        notes.append(
            f"eunis_esy: the EUNIS-ESy expert system on the same test plots (no training; one code per plot, so no "
            f"top-3); over the folds' {int(esy['n'].sum())} test plots {_share(esy, 'esy_undecided')} undecided "
            f"('?'), {_share(esy, 'esy_tie')} ties ('+'), all wrong, and {_share(esy, 'esy_above_level')} a code "
            f"above level {h.level} (R for R22), right only where the label is that same code"
        )
    if "test_species_unknown" in rows.columns:
        notes.append(
            f"species of the test plots unknown to their fold's tokenizer ([UNK]): "
            f"{rows['test_species_unknown'].mean():.1%} (mean over folds)"
        )
    if notes:
        blocks += ["Notes:", [f"- {n}" for n in notes]]
    return document(*blocks)
