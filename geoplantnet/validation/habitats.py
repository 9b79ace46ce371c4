"""Scores of habitat classifiers and of fill-mask models on held-out plots.

Habitat scores (:func:`habitat_scores`): top-1 and top-3 accuracy at the trained level, macro-F1 over the classes of
the test plots, and level-2 / level-1 accuracy of the top-1 code cut along the EUNIS hierarchy. A test plot whose
class was never trained counts as wrong (it is reported, not dropped).

Fill-mask scores (:func:`fill_mask_scores`): one species of each held-out plot with at least two species is hidden
(seeded choice); a model ranks the species it knows, minus those still visible in the plot; top-1 and top-5 accuracy
of the hidden one, for Pl@ntBERT and the co-occurrence baseline on the same hidden species.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score

from geoplantnet.models.habitat_peers import CooccurrenceFill
from geoplantnet.models.plantbert import PlotModel, missing_species_logits
from geoplantnet.samples.plots import eunis_ancestor, species_token


def habitat_scores(truth: Sequence[str], proba: np.ndarray, classes: Sequence[str], level: int) -> dict[str, float]:
    """Top-1/top-3 accuracy, macro-F1 and the accuracy one and two levels up, for ``proba`` (n, classes)."""
    classes = np.asarray(classes, dtype=object)
    order = np.argsort(-proba, axis=1, kind="stable")
    return code_scores(truth, classes[order[:, 0]], classes, level, top3=classes[order[:, : min(3, len(classes))]])


def code_scores(
    truth: Sequence[str], top1: Sequence[str], classes: Sequence[str], level: int, top3: np.ndarray | None = None
) -> dict[str, float]:
    """:func:`habitat_scores` of predicted codes: ``top1`` per plot, ``top3`` (n, <=3) where the model ranks classes
    (None: one answer per plot, an expert system's: top-3 is NaN). ``classes``: those the model was trained on."""
    truth = np.asarray([str(t) for t in truth], dtype=object)
    top1 = np.asarray([str(t) for t in top1], dtype=object)
    out = {
        "n": float(len(truth)),
        "untrained_class": float(np.mean(~np.isin(truth, np.asarray(classes, dtype=object)))),
        "top1": float(np.mean(top1 == truth)),
        "top3": float(np.mean((top3 == truth[:, None]).any(axis=1))) if top3 is not None else float("nan"),
        "macro_f1": float(f1_score(truth, top1, labels=sorted(set(truth)), average="macro", zero_division=0)),
    }
    for up in range(level - 1, 0, -1):
        cut = np.vectorize(lambda c, u=up: eunis_ancestor(c, u), otypes=[object])
        out[f"top1_level{up}"] = float(np.mean(cut(top1) == cut(truth)))
    return out


def hide_one(sentences: Sequence[Sequence[str]], seed: int) -> tuple[np.ndarray, list[list[str]], list[str], list[int]]:
    """For plots with >= 2 species: (their index, the sentence with one seeded species removed, the removed one, its
    place in the sentence)."""
    rng = np.random.default_rng(seed)
    idx, visible, hidden, place = [], [], [], []
    for i, s in enumerate(sentences):
        s = [species_token(t) for t in s]
        if len(s) < 2:
            continue
        j = int(rng.integers(len(s)))
        idx.append(i)
        visible.append(s[:j] + s[j + 1 :])
        hidden.append(s[j])
        place.append(j)
    return np.asarray(idx, dtype="int64"), visible, hidden, place


def _topk_hits(scores: np.ndarray, target: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    valid = target >= 0
    order = np.argsort(-scores, axis=1)[:, : max(ks)]
    return {k: float(np.mean(valid & (order[:, :k] == target[:, None]).any(axis=1))) for k in ks}


def fill_mask_scores(
    model: PlotModel, baseline: CooccurrenceFill, sentences: Sequence[Sequence[str]], seed: int = 0
) -> dict[str, float]:
    """Top-1/top-5 accuracy at recovering one hidden species per plot: Pl@ntBERT vs the co-occurrence baseline.

    The hidden species goes back at its place in cover order as [MASK]; a hidden species neither model knows counts
    as a miss for both."""
    idx, visible, hidden, place = hide_one(sentences, seed)
    if not len(idx):
        return {"plots": 0.0}
    logits, keep = missing_species_logits(model, visible, place)
    vocab = model.tokenizer.get_vocab()
    # a hidden species beyond max_species has no [MASK] position (not kept): it counts as a miss
    target = np.asarray([vocab.get(h, -1) for h in hidden])
    target[~keep] = -1
    bert = _topk_hits(logits, target, (1, 5))
    base_scores = baseline.scores(visible)
    base_target = np.asarray([baseline.index.column.get(h, -1) for h in hidden])
    base = _topk_hits(base_scores, base_target, (1, 5))
    return {
        "plots": float(len(idx)),
        "hidden_unknown": float(np.mean(target < 0)),
        "plantbert_top1": bert[1],
        "plantbert_top5": bert[5],
        "cooccurrence_top1": base[1],
        "cooccurrence_top5": base[5],
    }
