"""The value run's report: ``report.md`` for people, ``folds.csv`` (one row per fold and model) and ``report.json``
(strict JSON, written last), in a folder the job has claimed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from geoplantnet.reports.markdown import document, table
from geoplantnet.storage.outputs import finish_folder, place, place_json

FOLD_COLUMNS = (
    "fold", "model", "AUC", "accuracy", "test pixels", "high / low test polygons", "U-Net weight", "seconds"
)  # fmt: skip


def _folds(report: dict[str, Any]) -> list[str]:
    rows: list[list[Any]] = [
        [
            r["fold"],
            r["model"],
            r["auc"],
            r["accuracy"],
            r["test_pixels"],
            f"{r['test_polygons_high']} / {r['test_polygons_low']}",
            r.get("unet_weight", ""),  # a blend's, chosen on the inner split of the fold's training polygons
            r["seconds"],
        ]
        for r in report["folds"]
    ]
    rows += [["mean", model, m["auc"], m["accuracy"], "", "", "", ""] for model, m in report["means"].items()]
    return table(FOLD_COLUMNS, rows)


def _evaluation(e: dict[str, Any]) -> list[str]:
    return [
        f"- Spearman r with value_score: {e['spearman_r']} over {e['pixels']} pixels, "
        f"{e['spearman_r_outside_training']} outside the training polygons",
        f"- Pearson r (linearity) outside the training polygons: {e.get('pearson_r_outside_training')}",
        f"- AUC, true top vs bottom {e['top_bottom_quantile']:.0%} outside the polygons: {e['top_bottom_auc']} "
        f"({e['top_pixels']} / {e['bottom_pixels']} pixels)",
    ]


def markdown(report: dict[str, Any]) -> str:
    """The value run's report for people."""
    p, f = report["polygons"], report["final_model"]
    polygons = [
        f"- polygons: `{p['source']}` ({p['high']} high, {p['low']} low on the grid); labelled pixels {p['pixels']}"
    ]
    final = [
        f"- shipped: {report.get('shipped', 'unet')} (U-Net weight {report.get('unet_weight', 1.0)})",
        f"- `{report['model']}` (sha256 {report['model_sha256'][:12]})",
        *(f"- {k}: {v}" for k, v in {**report.get("meaning", {}), **f}.items()),
    ]
    maps = [
        f"- {name}: `{m['store']}`, {m['tiles_computed']} of {m['tiles']} tiles, {m['seconds']} s"
        for name, m in report["maps"].items()
    ]
    evaluation: list[Any] = []
    if report.get("evaluation"):
        evaluation = ["## Against the virtual truth (50 m)", _evaluation(report["evaluation"])]
    return document(
        "# Biodiversity value",
        polygons + [f"- note: {n}" for n in report["notes"]],
        "## Spatial folds (whole polygons held out)",
        _folds(report),
        "## Final model",
        final,
        "## Maps",
        maps,
        *evaluation,
        f"Run time {report['seconds']} s.",
    )


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """``report.md``, ``folds.csv`` and ``report.json``, each written beside its name and renamed (strict JSON last),
    then the folder marked finished."""
    place(folder, "report.md", lambda p: p.write_text(markdown(report)))
    place(folder, "folds.csv", lambda p: pd.DataFrame(report["folds"]).to_csv(p, index=False))
    place_json(folder, "report.json", report)
    finish_folder(folder)
