"""How good the indicator maps are on the virtual region: each indicator recomputed from the true probabilities and
the true habitat by the same definitions (:func:`geoplantnet.products.indicators.indicator_rows`, the map's species
and habitat classes, typical species and Red List categories), then the map's error against it, and how often its
intervals contain it. The whole grid is read into memory: an evaluation region, not a continent."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr

from geoplantnet.products.indicators import IndicatorModel, class_index, indicator_rows
from geoplantnet.storage.store import open_store
from geoplantnet.storage.years import year_view

CONTINUOUS = ("shannon", "ecosystem_health")


def truth_indicators(
    model: IndicatorModel, p_true: np.ndarray, habitat_true: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Indicators (n,) of the true probabilities ``p_true`` (n, S) and true habitat classes (n,) (index in the
    model's classes, -1 where the true habitat is none of them: habitat indicators NaN there)."""
    exact = replace(model, draws=0)  # the truth has no interval: no Monte-Carlo draws
    n = p_true.shape[0]
    if model.habitats is None or habitat_true is None:
        return indicator_rows(p_true, replace(exact, habitats=None))
    known = habitat_true >= 0
    top = np.where(known, habitat_true, 0)[:, None]
    rows = indicator_rows(p_true, exact, top_classes=top, top_probability=np.ones((n, 1)))
    for name in ("habitat_red_list", "threatened_habitat", "ecosystem_health"):
        rows[name] = np.where(known, rows[name], np.nan)
    return rows


def _errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(pred) & np.isfinite(truth)
    d = pred[ok] - truth[ok]
    r = float(np.corrcoef(pred[ok], truth[ok])[0, 1]) if ok.sum() > 2 and truth[ok].std() > 0 else float("nan")
    return {
        "pixels": int(ok.sum()),
        "truth_mean": round(float(truth[ok].mean()), 4) if ok.any() else float("nan"),
        "mae": round(float(np.abs(d).mean()), 4) if ok.any() else float("nan"),
        "rmse": round(float(np.sqrt((d**2).mean())), 4) if ok.any() else float("nan"),
        "bias": round(float(d.mean()), 4) if ok.any() else float("nan"),
        "r": round(r, 4),
    }


def _coverage(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(lower) & np.isfinite(upper) & np.isfinite(truth)
    inside = (truth[ok] >= lower[ok] - 1e-6) & (truth[ok] <= upper[ok] + 1e-6)
    return {
        "coverage_of_truth": round(float(inside.mean()), 4) if ok.any() else float("nan"),
        "mean_width": round(float((upper[ok] - lower[ok]).mean()), 4) if ok.any() else float("nan"),
    }


def score_indicators(store: xr.Dataset, truth: dict[str, np.ndarray], model: IndicatorModel) -> dict[str, Any]:
    """Each map variable against the truth of the same indicator (flattened pixels)."""
    out: dict[str, Any] = {}

    def flat(name: str) -> np.ndarray:
        return np.asarray(store[name].values, dtype="float64").ravel()

    for g in model.groups:
        t = truth[f"{g}_expected"]
        row = {"expected": _errors(flat(f"{g}_expected"), t), **_coverage(flat(f"{g}_lower"), flat(f"{g}_upper"), t)}
        if f"{g}_thresholded" in store:
            row["thresholded"] = _errors(flat(f"{g}_thresholded"), t)
        if f"{g}_any" in store:
            row["any"] = _errors(flat(f"{g}_any"), truth[f"{g}_any"])
        out[g] = row
    for name in CONTINUOUS:
        if name in store:
            out[name] = {
                **_errors(flat(name), truth[name]),
                **_coverage(flat(f"{name}_lower"), flat(f"{name}_upper"), truth[name]),
            }
    if "threatened_habitat" in store:
        pred = flat("threatened_habitat")
        t = truth["threatened_habitat"]
        ok = (pred >= 0) & np.isfinite(t)
        tp = float(((pred == 1) & (t == 1) & ok).sum())
        out["threatened_habitat"] = {
            "pixels": int(ok.sum()),
            "accuracy": round(float((pred[ok] == t[ok]).mean()), 4) if ok.any() else float("nan"),
            "true_share": round(float(t[ok].mean()), 4) if ok.any() else float("nan"),
            "precision": round(tp / max(float(((pred == 1) & ok).sum()), 1.0), 4),
            "recall": round(tp / max(float(((t == 1) & ok).sum()), 1.0), 4),
        }
        size = flat("habitat_set_size")
        out["habitat_set_size"] = {"mean": round(float(size[size >= 0].mean()), 3) if (size >= 0).any() else None}
    return out


def evaluate_indicators(
    store_url: str,
    model: IndicatorModel,
    species: list[str],
    truth_species: xr.DataArray,
    truth_habitat_url: str,
    year: int | None = None,
) -> dict[str, Any]:
    """The indicator store at ``store_url`` against indicators of the virtual truth: ``truth_species`` the true
    probabilities (species, y, x) on the map grid, of which the map's ``species`` are taken (the truth of the
    species the map knows); ``truth_habitat_url`` the true habitat store; ``year``: that year of a series."""
    store = year_view(open_store(store_url), year)
    p = np.asarray(truth_species.sel(species=species).values, dtype="float64")
    p = p.reshape(p.shape[0], -1).T
    habitat = None
    if model.habitats is not None:
        truth = open_store(truth_habitat_url, mask_and_scale=False)
        codes = np.asarray([str(c) for c in truth["habitat_code"].values])
        idx = np.asarray(truth["habitat"].values).ravel()
        habitat = np.where(idx >= 0, class_index(codes[np.clip(idx, 0, None)], model.habitats.codes), -1)
    truth = truth_indicators(model, p, habitat)
    return score_indicators(store, truth, model)
