"""The ``habitats`` job: Pl@ntBERT (fill-mask pre-training + habitat fine-tuning) against its peers on spatial folds,
then the final models trained on every labelled plot.

Per fold (whole blocks of ``habitats.block_size`` in x/y go to one fold), on the training plots only:

1. the tokenizer and the fill-mask model learn from the pre-training corpus (the unlabelled tables and the labelled
   plots) minus every plot of the test fold (matched by plot id: a survey that is both labelled and in an unlabelled
   list never leaks its species into the fold that scores it); early stopping on a spatial validation split;
2. the fill-mask model is scored on the test plots (one hidden species each) next to the co-occurrence baseline;
3. the classifier is fine-tuned from it (``plantbert``) and from scratch (``plantbert_scratch``, the ablation);
4. the peers (bag-of-species logistic regression, random forest, Jaccard nearest plots) fit on the same plots;
5. every model is scored on the test plots at ``habitats.level`` and one and two levels up.

Each fold is one Dask task (``GPU=1`` when the cluster offers it); the final models are one more. The report (JSON,
Markdown, per-fold CSV) shows every model side by side with the spread over folds.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geoplantnet.core.config import ConfigError, HabitatsConfig, RunConfig
from geoplantnet.samples.plots import Plots, PlotTableError, read_habitat_names, read_plots
from geoplantnet.validation.blocks import BlockError, spatial_folds, validation_split

# the models, their training and scoring (torch, transformers, scikit-learn) are imported where they run: a bad plot
# table is refused without them (tests/test_refusal_times.py)
if TYPE_CHECKING:
    from distributed import Client

    from geoplantnet.models.habitat_peers import CooccurrenceFill
    from geoplantnet.models.plantbert import PlotModel

log = logging.getLogger(__name__)
BERT_MODELS = ("plantbert", "plantbert_scratch")


@dataclass
class HabitatData:
    """Labelled plots (codes cut to the level), the pre-training corpus, and what reading them noticed."""

    labelled: Plots
    corpus: Plots
    notes: list[str] = field(default_factory=list)
    names: dict[str, str] | None = None  # habitat code -> name (``habitats.names``)


def load_habitat_data(cfg: RunConfig, plots: Plots | None = None, *, progress: bool = False) -> HabitatData:
    """Read ``habitats.plots`` (+ ``unlabelled``, ``names``), or use ``plots``; without either, the virtual region's
    plots. The user's tables are read first, before the region is generated or a cluster started: a bad table fails
    in seconds."""
    h = cfg.habitats
    names = read_habitat_names(h.names) if h.names else None
    extra = [read_plots(u, h, labels=False) for u in h.unlabelled]
    if plots is None and h.plots is not None:
        plots = read_plots(h.plots, h)
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
    classes = _classes(labelled.habitat, h)
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
    return HabitatData(labelled=labelled, corpus=corpus, notes=notes, names=names)


def assign_folds(plots: Plots, h: HabitatsConfig) -> tuple[np.ndarray, list[str]]:
    """Spatial block folds; plots without coordinates are dealt to folds at random (and said so)."""
    return spatial_folds(plots.x, plots.y, h.block_size, h.folds, seed=h.seed, what="labelled plots")


def _inner_split(plots: Plots, train: np.ndarray, h: HabitatsConfig) -> tuple[np.ndarray, np.ndarray]:
    """A spatial validation split of the training plots (early stopping, the logistic penalty); blocks are halved
    until the training part has the five it needs, and plots without coordinates are split at random."""
    located = np.isfinite(plots.x) & np.isfinite(plots.y)
    size = h.block_size
    while located[train].all() and size > h.block_size / 16:
        try:
            return validation_split(plots.x, plots.y, train, size, 0.2, seed=h.seed)
        except BlockError:
            size /= 2
    rng = np.random.default_rng(h.seed + 1)
    val = train & (rng.random(len(plots)) < 0.2)
    return train & ~val, val


def _classes(labels: np.ndarray, h: HabitatsConfig) -> tuple[str, ...]:
    count = Counter(labels)
    return tuple(sorted(c for c, n in count.items() if n >= h.min_plots))


def _index(labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    where = {c: i for i, c in enumerate(classes)}
    return np.asarray([where.get(c, -1) for c in labels], dtype="int64")


@dataclass
class TrainedModels:
    """What one training run made: the models by name, the fill-mask model, timings and histories."""

    classifiers: dict[str, Any]
    fill_mask: PlotModel | None
    baseline: CooccurrenceFill | None
    classes: tuple[str, ...]
    seconds: dict[str, float]
    history: dict[str, list[dict[str, float]]]


def _fit_threads() -> None:
    """Inside a Dask task, torch uses the worker's threads, not every core (workers would oversubscribe the CPU)."""
    import torch

    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except ValueError:  # not on a worker
        pass


def train_models(
    labelled: Plots, corpus: Plots, fit: np.ndarray, val: np.ndarray, h: HabitatsConfig, models: list[str]
) -> TrainedModels:
    """Every model in ``models`` trained on ``labelled[fit]`` (+ ``corpus`` for pre-training), early-stopped on
    ``labelled[val]``."""
    from geoplantnet.models.habitat_peers import PEERS, CooccurrenceFill, JaccardNeighbours
    from geoplantnet.models.plantbert import build_tokenizer, encode_sentences
    from geoplantnet.training.plantbert import finetune, pretrain

    _fit_threads()
    classes = _classes(labelled.habitat[fit], h)
    if not classes:
        raise ConfigError(f"no habitat has habitats.min_plots={h.min_plots} training plots")
    use = fit & np.isin(labelled.habitat, classes)
    seconds: dict[str, float] = {}
    history: dict[str, list[dict[str, float]]] = {}
    out: dict[str, Any] = {}
    fill = baseline = None
    if any(m in BERT_MODELS for m in models):
        val_ids_set = set(labelled.ids[val].astype(str))
        pre = corpus.subset(~np.isin(corpus.ids.astype(str), list(val_ids_set)))
        tokenizer = build_tokenizer(sorted({t for s in pre.sentences for t in s}))
        mc, tc = h.model, h.train
        corpus_ids, _ = encode_sentences(tokenizer, pre.sentences, mc.max_species)
        val_sentences = [labelled.sentences[i] for i in np.flatnonzero(val)]
        val_ids, _ = encode_sentences(tokenizer, val_sentences, mc.max_species)
        fit_ids, _ = encode_sentences(tokenizer, [labelled.sentences[i] for i in np.flatnonzero(use)], mc.max_species)
        fit_y, val_y = _index(labelled.habitat[use], classes), _index(labelled.habitat[val], classes)
        if "plantbert" in models and tc.pretrain_epochs > 0:
            t0 = time.perf_counter()
            fill, history["fill_mask"] = pretrain(tokenizer, corpus_ids, val_ids, mc, tc)
            seconds["fill_mask"] = time.perf_counter() - t0
            baseline = CooccurrenceFill(pre.sentences)
        for name in (m for m in models if m in BERT_MODELS):
            parent = fill if name == "plantbert" else None
            t0 = time.perf_counter()
            out[name], history[name] = finetune(tokenizer, parent, fit_ids, fit_y, val_ids, val_y, classes, mc, tc)
            seconds[name] = time.perf_counter() - t0
    for name in (m for m in models if m in PEERS):
        t0 = time.perf_counter()
        peer = JaccardNeighbours(classes, h.seed, h.knn) if name == "knn_jaccard" else PEERS[name](classes, h.seed)
        out[name] = peer.fit(
            [labelled.sentences[i] for i in np.flatnonzero(use)],
            labelled.habitat[use],
            [labelled.sentences[i] for i in np.flatnonzero(val)],
            labelled.habitat[val],
        )
        seconds[name] = time.perf_counter() - t0
    return TrainedModels(out, fill, baseline, classes, seconds, history)


def run_fold(data: HabitatData, folds: np.ndarray, k: int, h: HabitatsConfig) -> dict[str, Any]:
    """Train on every fold but ``k``, score on ``k``: one row per model, plus the fill-mask scores."""
    from geoplantnet.models.plantbert import PlotModel, encode_sentences
    from geoplantnet.validation.habitats import fill_mask_scores, habitat_scores

    labelled = data.labelled
    test = folds == k
    fit, val = _inner_split(labelled, ~test, h)
    # The test fold's surveys leave the corpus too (by id), with the validation plots.
    corpus = data.corpus.subset(~np.isin(data.corpus.ids.astype(str), labelled.ids[test].astype(str)))
    trained = train_models(labelled, corpus, fit, val, h, list(h.models))
    sentences = [labelled.sentences[i] for i in np.flatnonzero(test)]
    truth = labelled.habitat[test]
    rows = []
    for name, model in trained.classifiers.items():
        t0 = time.perf_counter()
        proba = model.predict_proba(sentences)
        scores = habitat_scores(truth, proba, trained.classes, h.level)
        rows.append(
            {
                "fold": k,
                "model": name,
                **scores,
                "fit_seconds": trained.seconds.get(name, 0.0),
                "predict_seconds": time.perf_counter() - t0,
                "classes": len(trained.classes),
            }
        )
    bert = next((m for m in trained.classifiers.values() if isinstance(m, PlotModel)), None)
    if bert is not None:
        _, unknown = encode_sentences(bert.tokenizer, sentences, bert.cfg.max_species)
        known = sum(min(len(s), bert.cfg.max_species) for s in sentences)
        for row in rows:  # species of the test plots the fold's tokenizer never saw: fed as [UNK]
            row["test_species_unknown"] = unknown / max(known, 1)
    fill = {}
    if trained.fill_mask is not None and trained.baseline is not None:
        fill = {
            "fold": k,
            **fill_mask_scores(trained.fill_mask, trained.baseline, sentences, seed=h.seed + k),
            "seconds": trained.seconds.get("fill_mask", 0.0),
            "epochs": len(trained.history.get("fill_mask", [])),
        }
    return {"rows": rows, "fill_mask": fill}


def _final(data: HabitatData, h: HabitatsConfig) -> tuple[PlotModel | None, PlotModel | None]:
    """The fill-mask model and the classifier trained on every labelled plot (spatial split for early stopping)."""
    labelled = data.labelled
    everything = np.ones(len(labelled), dtype=bool)
    fit, val = _inner_split(labelled, everything, h)
    trained = train_models(labelled, data.corpus, fit, val, h, ["plantbert"])
    return trained.fill_mask, trained.classifiers.get("plantbert")


def _summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    metrics = [c for c in ("top1", "top3", "macro_f1", "top1_level2", "top1_level1") if c in rows.columns]
    agg = rows.groupby("model")[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    return agg.sort_values(f"{metrics[0]}_mean", ascending=False)


def _markdown(
    table: pd.DataFrame, rows: pd.DataFrame, fills: pd.DataFrame, data: HabitatData, h: HabitatsConfig
) -> str:
    lines = [
        f"# Habitat classification, EUNIS level {h.level}, {h.folds} spatial folds (blocks of {h.block_size:g})",
        "",
        f"{len(data.labelled)} labelled plots, {len(data.corpus)} sentences in the pre-training corpus.",
        "",
        "| model | top-1 | top-3 | macro-F1 | " + " | ".join(f"top-1 L{u}" for u in range(h.level - 1, 0, -1)) + " |",
        "|---|---|---|---|" + "---|" * (h.level - 1),
    ]
    ups = [f"top1_level{u}" for u in range(h.level - 1, 0, -1)]
    for name, r in table.iterrows():
        cells = [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in ("top1", "top3", "macro_f1", *ups)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(fills):
        lines += [
            "",
            "Fill-mask (one hidden species per test plot), mean ± sd over folds:",
            "",
            "| model | top-1 | top-5 |",
            "|---|---|---|",
        ]
        for who in ("plantbert", "cooccurrence"):
            lines.append(
                f"| {who} | {fills[f'{who}_top1'].mean():.3f} ± {fills[f'{who}_top1'].std():.3f} | "
                f"{fills[f'{who}_top5'].mean():.3f} ± {fills[f'{who}_top5'].std():.3f} |"
            )
    notes = list(data.notes)
    if "test_species_unknown" in rows.columns:
        notes.append(
            f"species of the test plots unknown to their fold's tokenizer ([UNK]): "
            f"{rows['test_species_unknown'].mean():.1%} (mean over folds)"
        )
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def run_habitats(
    cfg: RunConfig, out: Path, client: Client, data: HabitatData | None = None, evaluate: bool = True
) -> dict[str, Any]:
    """Cross-validate every configured model on spatial folds (one Dask task per fold), then train and save the
    final fill-mask model and classifier under ``out`` (``fill-mask/``, ``model/``); write the report there.
    ``data``: :func:`load_habitat_data`'s, read and checked before the cluster started (default: read here)."""
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
    if evaluate:
        folds, notes = assign_folds(data.labelled, h)
        data.notes.extend(notes)
        data_future = client.scatter(data, broadcast=False)
        futures = {
            k: submit(client, run_fold, data_future, folds, k, h, key=f"habitat-fold-{k}") for k in range(h.folds)
        }
    final = submit(client, _final, data, h, key="habitat-final")
    if futures:
        parts = [f.result() for f in futures.values()]
        rows = pd.DataFrame([r for p in parts for r in p["rows"]])
        fills = pd.DataFrame([p["fill_mask"] for p in parts if p["fill_mask"]])
        rows.to_csv(out / "folds.csv", index=False)
        if len(fills):
            fills.to_csv(out / "fill_mask_folds.csv", index=False)
        table = _summary_table(rows)
        (out / "report.md").write_text(_markdown(table, rows, fills, data, h))
        result["models"] = json.loads(table.to_json(orient="index"))
        result["fill_mask"] = json.loads(fills.mean(numeric_only=True).to_json()) if len(fills) else {}
    fill, classifier = final.result()
    if fill is not None:
        fill.save(out / "fill-mask")
        result["fill_mask_model"] = {"path": str(out / "fill-mask"), "version": fill.version}
    if classifier is not None:
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
