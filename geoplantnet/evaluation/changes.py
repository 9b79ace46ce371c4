"""The change map against the virtual region's true changes: detection precision and recall, recall by kind of
change, the change of richness against the true change of the same species (everywhere and where land changed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from geoplantnet.evaluation.registry import register_evaluation
from geoplantnet.evaluation.truth import VirtualTruth
from geoplantnet.products.base import Made, read_input
from geoplantnet.products.changes import PRODUCT
from geoplantnet.storage.store import open_store


def detection_scores(changed: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Precision and recall of detected changed pixels (``changed`` 1/0, -1 no data) against true changes
    (``truth`` > 0 changed, 0 not)."""
    ok = (np.asarray(changed) >= 0) & np.isfinite(np.asarray(truth, dtype="float64"))
    pred = np.asarray(changed)[ok] == 1
    true = np.asarray(truth)[ok] > 0
    tp = int((pred & true).sum())
    fp = int((pred & ~true).sum())
    fn = int((~pred & true).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "pixels": int(ok.sum()),
        "true_changed": int(true.sum()),
        "detected": int(pred.sum()),
        "true_positive": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def change_errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean true and predicted change, correlation, and how often the sign agrees where the truth moved by more
    than 0.1 species."""
    ok = np.isfinite(pred) & np.isfinite(truth)
    p, t = pred[ok], truth[ok]
    moved = np.abs(t) > 0.1
    r = float(np.corrcoef(p, t)[0, 1]) if ok.sum() > 2 and t.std() > 0 and p.std() > 0 else float("nan")
    return {
        "pixels": int(ok.sum()),
        "true_mean": round(float(t.mean()), 4) if ok.any() else float("nan"),
        "predicted_mean": round(float(p.mean()), 4) if ok.any() else float("nan"),
        "r": round(r, 4),
        "sign_agreement": round(float((np.sign(p[moved]) == np.sign(t[moved])).mean()), 4) if moved.any() else None,
    }


def evaluate_changes(ctx: Any, truth: VirtualTruth, made: Mapping[str, Made]) -> dict[str, Any]:
    """``change_detection``: the year's ``changes`` against the truth's changes since the previous year."""
    changes = made[PRODUCT]
    year, previous = int(ctx.year), int(changes.plan.attrs["previous_year"])
    codes = np.asarray(truth.changes(year).values)
    ds = open_store(changes.url, storage_options=ctx.options(changes.url), mask_and_scale=False)
    changed = np.asarray(ds.sel(year=year)["changed"].values)
    scores = detection_scores(changed, codes)
    # the change of richness against the true change of the map's species
    species = [str(s) for s in read_input(ctx, "species", "probability").ds["species"].values]
    before, after = truth.species(previous), truth.species(year)
    true_delta = (after.sel(species=species).sum("species") - before.sel(species=species).sum("species")).values
    delta = np.asarray(ds.sel(year=year)["richness_expected_change"].values, dtype="float64")
    scores["richness_change"] = {
        "all_pixels": change_errors(delta, true_delta),
        "changed_pixels": change_errors(delta[codes > 0], true_delta[codes > 0]),
    }
    scores["recall_by_kind"] = {}
    for name, code in truth.change_kinds(year).items():
        mask = codes == code
        if mask.any():
            scores["recall_by_kind"][name] = round(float((changed[mask] == 1).mean()), 4)
    return {"change_detection": scores}


register_evaluation(PRODUCT, evaluate_changes)
