"""Habitat classifiers on spatial folds (``geoplantnet habitats``): each fold's models trained on the other folds and
scored on it, and the final models trained on every labelled plot.

Per fold (whole blocks of ``habitats.block_size`` in x/y go to one fold), on the training plots only:

1. the tokenizer and the fill-mask model learn from the pre-training corpus (the unlabelled tables and the labelled
   plots) minus every plot of the test fold (matched by plot id: a survey that is both labelled and in an unlabelled
   list never leaks its species into the fold that scores it); early stopping on a spatial validation split. Where
   the corpus has lists of no labelled plot, the job pre-trains on them once
   (:func:`~geoplantnet.training.habitats.pretrain_shared`) and the fold continues on its own training plots;
2. the fill-mask model is scored on the test plots (one hidden species each) next to the co-occurrence baseline;
3. the classifier is fine-tuned from it (``plantbert``) and, when selected, from scratch (``plantbert_scratch``, the
   ablation);
4. the peers (bag-of-species logistic regression, random forest, Jaccard nearest plots) fit on the same plots, and the
   stack (:mod:`geoplantnet.models.habitat_stack`) makes its choices on the validation plots, then refits;
5. every model is scored on the test plots at ``habitats.level`` and one and two levels up
   (:mod:`geoplantnet.validation.habitats`).

:func:`run_fold` and :func:`final_models` are what the job runs as Dask tasks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from geoplantnet.core.config import HabitatsConfig
from geoplantnet.samples.plots import Plots
from geoplantnet.training.habitats import FILL_MASK, HabitatData, train_models
from geoplantnet.validation.blocks import BlockError, spatial_folds, validation_split

if TYPE_CHECKING:
    from geoplantnet.models.habitat_classifier import PlotClassifier
    from geoplantnet.models.plantbert import PlotModel


def assign_folds(plots: Plots, h: HabitatsConfig) -> tuple[np.ndarray, list[str]]:
    """Spatial block folds; plots without coordinates are dealt to folds at random (and said so)."""
    return spatial_folds(plots.x, plots.y, h.block_size, h.folds, seed=h.seed, what="labelled plots")


def inner_split(plots: Plots, train: np.ndarray, h: HabitatsConfig) -> tuple[np.ndarray, np.ndarray]:
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


def run_fold(
    data: HabitatData, folds: np.ndarray, k: int, h: HabitatsConfig, shared: PlotModel | None = None
) -> dict[str, Any]:
    """Train on every fold but ``k``, score on ``k``: one row per model, plus the fill-mask scores. ``shared``: the
    fill-mask model of the lists of no labelled plot (:func:`~geoplantnet.training.habitats.pretrain_shared`)."""
    from geoplantnet.models.plantbert import PlotModel, encode_sentences
    from geoplantnet.validation.habitats import fill_mask_scores, habitat_scores

    labelled = data.labelled
    test = folds == k
    fit, val = inner_split(labelled, ~test, h)
    # The test fold's surveys leave the corpus too (by id), with the validation plots.
    corpus = data.corpus.subset(~np.isin(data.corpus.ids.astype(str), labelled.ids[test].astype(str)))
    trained = train_models(labelled, corpus, fit, val, h, list(h.models), shared, task=f"fold {k}")
    sentences = [labelled.sentences[i] for i in np.flatnonzero(test)]
    truth = labelled.habitat[test]
    rows = []
    for name, model in trained.classifiers.items():
        t0 = time.perf_counter()
        proba = model.predict_proba(sentences)
        scores = habitat_scores(truth, proba, model.classes, h.level)
        rows.append(
            {
                "fold": k,
                "model": name,
                **scores,
                "fit_seconds": trained.seconds.get(name, 0.0),
                "predict_seconds": time.perf_counter() - t0,
                "classes": len(model.classes),
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


def final_models(
    data: HabitatData, h: HabitatsConfig, shared: PlotModel | None = None
) -> tuple[PlotModel | None, PlotClassifier | None]:
    """The fill-mask model (when ``plantbert`` is among ``habitats.models``) and the ``habitats.classifier`` trained
    on every labelled plot (a spatial split for early stopping and the stack's choices), Pl@ntBERT continuing from
    ``shared`` where given."""
    labelled = data.labelled
    everything = np.ones(len(labelled), dtype=bool)
    fit, val = inner_split(labelled, everything, h)
    # the fill-mask model without a Pl@ntBERT classifier fine-tuned from it only to be thrown away
    models = [h.classifier, *([FILL_MASK] if "plantbert" in h.models and h.classifier != "plantbert" else [])]
    trained = train_models(labelled, data.corpus, fit, val, h, models, shared, task="final")
    classifier = trained.classifiers.get(h.classifier)
    if classifier is not None:
        classifier.conformal = calibrate_sets(classifier, labelled.subset(val), h.conformal_level)
    return trained.fill_mask, classifier


def calibrate_sets(classifier: PlotClassifier, plots: Plots, level: float) -> dict[str, Any] | None:
    """The final classifier's conformal habitat sets (``{level, q, plots}``, saved with it) from ``plots`` it did not
    train on: the inner validation split, the only labelled plots left out of the final fit (they early-stopped it,
    so the sets may cover a little less than ``level``). A classifier refitted on them (the stack) brings its own
    probabilities of these plots from before the refit (``validation_proba``, in their order), or none (then no
    sets: None)."""
    from geoplantnet.validation.conformal import habitat_calibration

    if hasattr(classifier, "validation_proba"):
        proba = classifier.validation_proba
        if proba is None or len(proba) != len(plots):
            # refitted on these plots without their earlier probabilities (the stack's fallback without validation
            # plots): its probabilities now would be in-sample and the sets too narrow, so it gets none
            return None
    else:
        proba = classifier.predict_proba(plots.sentences)
    return habitat_calibration(proba, classifier.classes, plots.habitat, level)
