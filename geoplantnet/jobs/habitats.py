"""The ``habitats`` job: Pl@ntBERT (fill-mask pre-training + habitat fine-tuning) against its peers on spatial folds,
then the final models trained on every labelled plot.

The plot tables are read and checked first (:func:`load_habitat_data`); each fold is then one Dask task
(:func:`geoplantnet.validation.habitat_folds.run_fold`, ``GPU=1`` when the cluster offers it) and the final models one
more (:func:`~geoplantnet.validation.habitat_folds.final_models`). The report (JSON, Markdown by
:mod:`geoplantnet.reports.habitats`, per-fold CSV) shows every model side by side with the spread over folds.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geoplantnet.core.config import ConfigError, RunConfig
from geoplantnet.reports.habitats import habitats_markdown, summary_table
from geoplantnet.runs.progress import EpochBars, bar
from geoplantnet.samples.plots import Plots, PlotTableError, read_habitat_names, read_plots
from geoplantnet.training.habitats import TOPIC, HabitatData, habitat_classes, pretrain_shared
from geoplantnet.validation.habitat_esy import esy_fold_rows, expert_system, load_esy
from geoplantnet.validation.habitat_folds import assign_folds, final_models, run_fold

# the models, their training and scoring (torch, transformers, scikit-learn) are imported where they run: a bad plot
# table is refused without them (tests/test_refusal_times.py)
if TYPE_CHECKING:
    from distributed import Client

__all__ = ["HabitatData", "assign_folds", "load_habitat_data", "run_habitats"]


def load_habitat_data(cfg: RunConfig, plots: Plots | None = None, *, progress: bool = False) -> HabitatData:
    """Read ``habitats.plots`` (+ ``unlabelled``, ``names``), or use ``plots``; without either, the virtual region's
    plots. The user's tables are read first, before the region is generated or a cluster started: a bad table fails
    in seconds."""
    h = cfg.habitats
    names = read_habitat_names(h.names) if h.names else None
    esy = expert_system(h) if h.esy else None
    virtual = plots is None and h.plots is None
    extra = [read_plots(u, h, labels=False) for u in h.unlabelled]
    if plots is None and h.plots is not None:
        plots = read_plots(h.plots, h, esy=esy is not None)
    if plots is None:
        from geoplantnet.runs.inputs import virtual_plots

        plots, _ = virtual_plots(cfg, progress=progress)
    labelled = plots.subset(plots.labelled)
    labelled.habitat = labelled.at_level(h.level)
    where = h.plots or "the virtual region's plots"
    if len(labelled) < 2 * h.folds:
        raise ConfigError(
            f"{where}: {len(labelled)} plots with one habitat code (column {h.habitat!r}) are too few for "
            f"habitats.folds={h.folds} (at least {2 * h.folds})"
        )
    classes = habitat_classes(labelled.habitat, h)
    if len(classes) < 2:
        counts = ", ".join(f"{c} {n}" for c, n in Counter(labelled.habitat).most_common(5))
        raise PlotTableError(
            f"{where}: {len(classes)} habitat class{'es' if len(classes) != 1 else ''} at EUNIS level {h.level} with "
            f"habitats.min_plots={h.min_plots} plots or more ({counts}); a classifier needs at least two"
        )
    corpus = Plots.concat([plots, *extra])
    # One survey listed in several tables is one sentence of the corpus (the first copy is kept).
    _, first = np.unique(corpus.ids.astype(str), return_index=True)
    corpus = corpus.subset(np.sort(first))
    notes = [*plots.notes, *(n for e in extra for n in e.notes)]
    data = HabitatData(labelled=labelled, corpus=corpus, notes=notes, names=names)
    if esy is not None:  # the expert-system peer: checked and run here, before any training
        load_esy(data, esy, h, where, named=not virtual)
    return data


def run_habitats(
    cfg: RunConfig,
    out: Path,
    client: Client,
    data: HabitatData | None = None,
    evaluate: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Cross-validate every configured model on spatial folds (one Dask task per fold, after the shared pre-training
    task), then train and save the final fill-mask model and classifier under ``out`` (``fill-mask/``, ``model/``);
    write the report there. ``data``: :func:`load_habitat_data`'s, read and checked before the cluster started
    (default: read here). ``progress``: bars for the training epochs and the folds."""
    from distributed import as_completed

    from geoplantnet.training.plantbert import submit

    h = cfg.habitats
    t0 = time.perf_counter()
    data = data or load_habitat_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "labelled_plots": len(data.labelled),
        "corpus": len(data.corpus),
        "classes": len(set(data.labelled.habitat)),
        "notes": data.notes,
    }
    futures = {}
    with EpochBars(client, TOPIC, progress=progress):
        folds, notes = assign_folds(data.labelled, h) if evaluate else (None, [])
        data.notes.extend(notes)
        data_future = client.scatter(data, broadcast=False)
        # the lists of no labelled plot: pre-trained on once, every fold and the final model continue from it
        shared = submit(client, pretrain_shared, data_future, h, key="habitat-shared-pretraining")
        if evaluate:
            futures = {
                submit(client, run_fold, data_future, folds, k, h, shared, key=f"habitat-fold-{k}"): k
                for k in range(h.folds)
            }
        final = submit(client, final_models, data_future, h, shared, key="habitat-final")
        tasks = bar(len(futures) + 1, progress=progress, desc="habitat folds + final", unit="task")
        parts: dict[int, dict[str, Any]] = {}
        for future in as_completed([*futures, final]):
            if future in futures:
                parts[futures[future]] = future.result()
            tasks.update(1)
        tasks.close()
    if futures:
        ordered = [parts[k] for k in sorted(parts)]
        rows = pd.DataFrame([r for p in ordered for r in p["rows"]] + esy_fold_rows(data, folds, h))
        fills = pd.DataFrame([p["fill_mask"] for p in ordered if p["fill_mask"]])
        rows.to_csv(out / "folds.csv", index=False)
        if len(fills):
            fills.to_csv(out / "fill_mask_folds.csv", index=False)
        table = summary_table(rows)
        report = habitats_markdown(
            table, rows, fills, h, labelled=len(data.labelled), corpus=len(data.corpus), notes=data.notes
        )
        (out / "report.md").write_text(report)
        result["models"] = json.loads(table.to_json(orient="index"))
        result["fill_mask"] = json.loads(fills.mean(numeric_only=True).to_json()) if len(fills) else {}
    fill, classifier = final.result()
    if fill is not None:
        fill.save(out / "fill-mask")
        result["fill_mask_model"] = {"path": str(out / "fill-mask"), "version": fill.version}
    if classifier is not None:
        if h.classifier == "plantbert":  # the stack has no fill-mask parent
            classifier.parent = fill.version if fill is not None else ""
        if data.names is not None:
            names = data.names
            classifier.names = tuple(names.get(c, "") for c in classifier.classes)
            missing = [c for c, n in zip(classifier.classes, classifier.names, strict=True) if not n]
            if missing:
                result["classes_without_name"] = missing
        classifier.save(out / "model")
        result["model"] = {"path": str(out / "model"), **classifier.describe()}
    result["seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    return result
