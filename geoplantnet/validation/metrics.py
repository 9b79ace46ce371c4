"""Metrics for multi-species predictions against labels with unknowns (1 present, 0 absent, -1 unknown).

* Ranking, per species: ROC AUC and TSS on every sample whose label is known (presence-only records count as presences
  of their species, background points as pseudo-absences). AUC is NaN where the test set holds one class only.
* Assemblages, on presence-absence ("pa") samples only (the only ones with a complete species list): micro and
  sample-averaged F1 of the top-K species and of the species above a threshold.
* Calibration on "pa" samples (presence-background data say nothing about absolute probabilities): expected
  calibration error and a reliability table.
* Against the truth (the virtual region): Pearson / Spearman correlation of predicted and true probabilities.
* Presence-only data, against the target group (``auc_tg``): a species' records against the other species' record
  sites of the same test part, which carry the same observer bias; background points, spread where nobody looked,
  reward a model for learning where people record (Phillips et al. 2009, *Ecol. Appl.* 19:181, on target-group
  background). It is the presence-only score closest to a presence-absence survey, and what recipes are chosen on.

Small samples are marked, not hidden: per species and fold, a test part without a presence or without an absence /
background point is *not informative* (metrics NaN); one with fewer than :data:`MIN_CASES` presences or absences gives
*few-cases* metrics (anecdotal); a model whose predictions are constant over the test part (a peer that was not
fitted, or never saw a presence) scores AUC 0.5 by construction, which is *constant*, not a result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from geoplantnet.core.config import ValidationConfig
from geoplantnet.samples.kinds import Source, target_group_labels

PA = Source.PA
PO = Source.PO
# Fewer test presences (or absences) than this: AUC/TSS of a species in a fold rest on a handful of points (an AUC from
# 2 presences takes only a few values) and are marked "few_cases"; the same bound on training presences marks a model
# that could hardly learn the species (the peers skip species below 5 presences, models/peers.py).
MIN_CASES = 5


class MetricsError(ValueError):
    """Labels, probabilities or sources whose shapes or values do not fit together (the message is one line)."""


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels), np.asarray(probs, dtype="float64")
    if labels.ndim == 1:
        labels, probs = labels[:, None], probs.reshape(-1, 1)
    if labels.shape != probs.shape:
        raise MetricsError(f"labels {labels.shape} and probs {probs.shape} must have the same (samples, species) shape")
    bad = ~np.isin(labels, (-1, 0, 1))
    if bad.any():
        raise MetricsError(f"labels must be -1/0/1; found {np.unique(labels[bad])[:5].tolist()}")
    if not np.isfinite(probs[labels >= 0]).all():
        raise MetricsError("probs hold NaN/inf where labels are known")
    return labels, probs


def _source_mask(source: np.ndarray | None, n: int, keep: str) -> np.ndarray:
    if source is None:
        return np.ones(n, dtype=bool)
    source = np.asarray(source).astype(str)
    if source.shape != (n,):
        raise MetricsError(f"source must have one entry per sample ({n}), got shape {source.shape}")
    return source == keep


# --- ranking, per species ------------------------------------------------------------------------------------------


def _per_column(labels: np.ndarray, probs: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], float]) -> np.ndarray:
    labels, probs = _check(labels, probs)
    out = np.full(labels.shape[1], np.nan)
    for s in range(labels.shape[1]):
        known = labels[:, s] >= 0
        y = labels[known, s]
        if 0 < y.sum() < len(y):  # both classes present
            out[s] = fn(y, probs[known, s])
    return out


def _tss_max(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.max(tpr - fpr))


def _tss_at(threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    def tss(y: np.ndarray, p: np.ndarray) -> float:
        pred = p >= threshold
        sensitivity = pred[y == 1].mean()
        specificity = (~pred[y == 0]).mean()
        return float(sensitivity + specificity - 1)

    return tss


def auc_per_species(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC AUC per species over samples with known labels; NaN where a species has one class only."""
    return _per_column(labels, probs, lambda y, p: float(roc_auc_score(y, p)))


def tss_max_per_species(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Maximum over thresholds of sensitivity + specificity - 1, per species (NaN where one class only)."""
    return _per_column(labels, probs, _tss_max)


def tss_per_species(labels: np.ndarray, probs: np.ndarray, threshold: float) -> np.ndarray:
    """TSS at a fixed threshold (``p >= threshold`` is a predicted presence), per species."""
    return _per_column(labels, probs, _tss_at(threshold))


# --- assemblages ---------------------------------------------------------------------------------------------------


def _f1_from_sets(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(micro F1, sample-averaged F1) of boolean (samples, species) matrices; a sample with nothing true and
    nothing predicted scores 1, one with either side empty scores 0."""
    tp = (truth & pred).sum(axis=1)
    denom = truth.sum(axis=1) + pred.sum(axis=1)
    total = denom.sum()
    micro = float(2 * tp.sum() / total) if total else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return micro, float(per_sample.mean()) if len(per_sample) else float("nan")


def top_k_mask(probs: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of each row's ``k`` highest probabilities (ties broken by species order)."""
    probs = np.asarray(probs, dtype="float64")
    if k < 1:
        raise MetricsError(f"top_k must be >= 1, got {k}")
    k = min(k, probs.shape[1])
    idx = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    mask = np.zeros(probs.shape, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


def f1_top_k(labels: np.ndarray, probs: np.ndarray, k: int) -> tuple[float, float]:
    """(micro F1, sample-averaged F1) of the top-``k`` predicted species; unknown labels (-1) count as absent."""
    labels, probs = _check(labels, probs)
    return _f1_from_sets(labels == 1, top_k_mask(probs, k))


def f1_threshold(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float]:
    """(micro F1, sample-averaged F1) of the species with ``p >= threshold``; unknown labels count as absent."""
    labels, probs = _check(labels, probs)
    return _f1_from_sets(labels == 1, probs >= threshold)


# --- calibration ---------------------------------------------------------------------------------------------------


def reliability_table(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Known (sample, species) entries binned by predicted probability: count, mean prediction, observed frequency."""
    labels, probs = _check(labels, probs)
    known = labels >= 0
    y, p = labels[known].astype("float64"), np.clip(probs[known], 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=n_bins) / n
        freq = np.bincount(b, weights=y, minlength=n_bins) / n
    return pd.DataFrame(
        {"bin_lower": edges[:-1], "bin_upper": edges[1:], "n": n, "mean_predicted": mean_p, "observed_frequency": freq}
    )


def known_pairs(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries with a known label (0/1; -1 is unknown) and a finite prediction, as float outcome and prediction
    clipped to [0, 1]."""
    labels, probs = np.asarray(labels), np.asarray(probs, "float64")
    if labels.shape != probs.shape:
        raise MetricsError(f"labels {labels.shape} and probs {probs.shape} must have the same shape")
    known = (labels >= 0) & np.isfinite(probs)
    return labels[known].astype("float64"), np.clip(probs[known], 0.0, 1.0)


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = 10, bins: Literal["uniform", "quantile"] = "uniform"
) -> float:
    """Count-weighted mean |observed frequency - mean prediction| over ``n_bins`` bins of the known entries
    (:func:`known_pairs`): equal-width bins over [0, 1] (``uniform``, the bins of :func:`reliability_table`) or bins of
    equal counts (``quantile``, which resolve the low-probability range where most predictions fall). NaN with no
    known entry."""
    y, p = known_pairs(labels, probs)
    if not len(y):
        return float("nan")
    if bins == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    n = np.bincount(b, minlength=len(edges))
    used = n > 0
    gap = np.abs(np.bincount(b, weights=y, minlength=len(n))[used] - np.bincount(b, weights=p, minlength=len(n))[used])
    return float(gap.sum() / len(y))  # sum over bins of n_b * |mean_y - mean_p| / N


# --- against the truth ---------------------------------------------------------------------------------------------


def truth_correlation(probs: np.ndarray, true_probs: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of predicted vs true probabilities: pooled over all entries, and the mean
    of the per-species Pearson correlations (species with a constant truth or prediction are left out)."""
    probs, true_probs = np.asarray(probs, dtype="float64"), np.asarray(true_probs, dtype="float64")
    if probs.shape != true_probs.shape:
        raise MetricsError(f"probs {probs.shape} and true_probs {true_probs.shape} must have the same shape")
    p, t = probs.reshape(len(probs), -1), true_probs.reshape(len(true_probs), -1)
    ok = np.isfinite(p) & np.isfinite(t)
    if ok.sum() < 3:
        raise MetricsError("fewer than 3 finite (prediction, truth) pairs")
    return {
        "pearson": float(stats.pearsonr(p[ok], t[ok]).statistic),
        "spearman": float(stats.spearmanr(p[ok], t[ok]).statistic),
        "pearson_species_mean": _nanmean(_pearson_per_species(p, t)),
    }


def _pearson_per_species(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Pearson r per column over finite pairs; NaN where fewer than 3 pairs or either side is constant."""
    out = np.full(p.shape[1], np.nan)
    for s in range(p.shape[1]):
        ok = np.isfinite(p[:, s]) & np.isfinite(t[:, s])
        a, b = p[ok, s], t[ok, s]
        if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
            out[s] = stats.pearsonr(a, b).statistic
    return out


# --- summaries -----------------------------------------------------------------------------------------------------


def _nanmean(a: np.ndarray) -> float:
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def evaluate(
    labels: np.ndarray,
    probs: np.ndarray,
    source: np.ndarray | None = None,
    cfg: ValidationConfig | None = None,
    true_probs: np.ndarray | None = None,
) -> dict[str, float]:
    """One-line summary of a test set: macro AUC/TSS over species, F1 and calibration on "pa" samples, and the
    correlation with ``true_probs`` when given. Keys whose samples are missing are NaN, never absent."""
    cfg = cfg or ValidationConfig()
    labels, probs = _check(labels, probs)
    auc = auc_per_species(labels, probs)
    out: dict[str, float] = {
        "auc": _nanmean(auc),
        "auc_median": float(np.nanmedian(auc)) if np.isfinite(auc).any() else float("nan"),
        "tss_max": _nanmean(tss_max_per_species(labels, probs)),
        "tss": _nanmean(tss_per_species(labels, probs, cfg.threshold)),
        "n_species_evaluated": float(np.isfinite(auc).sum()),
        "n_samples": float(len(labels)),
    }
    po = _source_mask(source, len(labels), PO) if source is not None else np.zeros(len(labels), dtype=bool)
    out["auc_tg"] = _nanmean(auc_per_species(target_group_labels(labels[po]), probs[po])) if po.any() else float("nan")
    pa = _source_mask(source, len(labels), PA)
    keys = ("auc_pa", "f1_micro_topk", "f1_samples_topk", "f1_micro_thr", "f1_samples_thr", "ece")
    out.update(dict.fromkeys(keys, float("nan")))
    if pa.any():
        lab, pr = labels[pa], probs[pa]
        out["auc_pa"] = _nanmean(auc_per_species(lab, pr))
        out["f1_micro_topk"], out["f1_samples_topk"] = f1_top_k(lab, pr, cfg.top_k)
        out["f1_micro_thr"], out["f1_samples_thr"] = f1_threshold(lab, pr, cfg.threshold)
        out["ece"] = expected_calibration_error(lab, pr)
    if true_probs is not None:
        out.update(truth_correlation(probs, true_probs))
    return out


def per_species(
    labels: np.ndarray,
    probs: np.ndarray,
    species: Sequence[Any] | None = None,
    threshold: float = 0.5,
    true_probs: np.ndarray | None = None,
    train_presences: np.ndarray | None = None,
    min_cases: int = MIN_CASES,
) -> pd.DataFrame:
    """One row per species: ``species``, ``n_presence``, ``n_absence`` (absences and background), the flags
    ``informative`` (both classes in the test part), ``few_cases`` (informative, but fewer than ``min_cases``
    presences or absences) and ``constant`` (one predicted value over the known test samples: AUC 0.5 by
    construction), then ``auc``, ``tss_max``, ``tss`` (at ``threshold``; NaN where not informative) and, with
    ``true_probs``, ``pearson`` against the truth. With ``train_presences`` (per species, in the training part):
    ``n_train_presence`` and ``few_train`` (fewer than ``min_cases``)."""
    labels, probs = _check(labels, probs)
    names = list(range(labels.shape[1])) if species is None else list(species)
    if len(names) != labels.shape[1]:
        raise MetricsError(f"{len(names)} species names for {labels.shape[1]} label columns")
    n_pres, n_abs = (labels == 1).sum(axis=0), (labels == 0).sum(axis=0)
    informative = (n_pres > 0) & (n_abs > 0)
    known = labels >= 0
    constant = np.where(known, probs, -np.inf).max(axis=0) == np.where(known, probs, np.inf).min(axis=0)
    table = pd.DataFrame(
        {
            "species": names,
            "n_presence": n_pres,
            "n_absence": n_abs,
            "informative": informative,
            "few_cases": informative & ((n_pres < min_cases) | (n_abs < min_cases)),
            "constant": informative & constant,
            "auc": auc_per_species(labels, probs),
            "tss_max": tss_max_per_species(labels, probs),
            "tss": tss_per_species(labels, probs, threshold),
        }
    )
    if train_presences is not None:
        train = np.asarray(train_presences).reshape(-1)
        if train.shape != (labels.shape[1],):
            raise MetricsError(f"train_presences needs one count per species ({labels.shape[1]}), got {train.shape}")
        table.insert(3, "n_train_presence", train)
        table.insert(7, "few_train", train < min_cases)
    if true_probs is not None:
        t = np.asarray(true_probs, dtype="float64").reshape(probs.shape)
        table["pearson"] = _pearson_per_species(probs, t)
    return table


# --- cross-validation over precomputed folds -----------------------------------------------------------------------


def _fit_folds_together(
    make_model: Any, X: np.ndarray, labels: np.ndarray, source: np.ndarray, trains: list[np.ndarray]
) -> list[Any] | None:
    """A model maker with ``fit_many(parts)`` (one fitted model per ``(X, labels, source)`` part, in order: the species
    network, whose folds train side by side on the cluster) fits every fold's training part at once; None for the
    others, which cross_validate fits fold by fold (one fitted model in memory at a time)."""
    fit_many = getattr(make_model, "fit_many", None)
    if fit_many is None:
        return None
    return list(fit_many([(X[t], labels[t], source[t]) for t in trains]))


def cross_validate(
    make_model: Callable[[], Any],
    X: np.ndarray,
    labels: np.ndarray,
    source: np.ndarray,
    folds: np.ndarray,
    *,
    cfg: ValidationConfig | None = None,
    species: Sequence[Any] | None = None,
    true_probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit ``make_model()`` (anything with ``fit(X, labels, source)`` / ``predict_proba(X)``) on each fold's training
    part and score its test part; a ``make_model`` with ``fit_many`` fits all the folds in one call (in parallel)
    and must give the models a fold-by-fold fit would. Returns the structure
    :func:`geoplantnet.validation.report.write_report` reads: ``{"folds": [summary per fold], "per_species":
    DataFrame with a fold column, "reliability": DataFrame, "oof": out-of-fold probabilities, "reliability_basis":
    "presence-absence" or "presence-background"}``. Each fold summary also counts its test presences and the species
    that were informative, scored from few cases, predicted by a constant, or trained on few presences (``n_*``
    keys); the per-species table carries the flags (see :func:`per_species`)."""
    cfg = cfg or ValidationConfig()
    labels = np.asarray(labels)
    source = np.asarray(source).astype(str)
    folds = np.asarray(folds)
    if folds.shape != (len(labels),):
        raise MetricsError(f"folds must have one entry per sample ({len(labels)}), got shape {folds.shape}")
    oof = np.full(labels.shape, np.nan, dtype="float32")
    summaries, tables = [], []
    fold_ids = np.unique(folds).tolist()
    fitted = _fit_folds_together(make_model, X, labels, source, [folds != k for k in fold_ids])
    for i, k in enumerate(fold_ids):
        test = folds == k
        model = fitted[i] if fitted is not None else make_model().fit(X[~test], labels[~test], source[~test])
        probs = np.asarray(model.predict_proba(X[test]))
        oof[test] = probs
        truth = None if true_probs is None else np.asarray(true_probs)[test]
        table = per_species(
            labels[test], probs, species, cfg.threshold, truth, train_presences=(labels[~test] == 1).sum(axis=0)
        )
        summaries.append(
            {
                "fold": float(k),
                **evaluate(labels[test], probs, source[test], cfg, truth),
                "n_test_presences": float(table["n_presence"].sum()),
                "n_species_informative": float(table["informative"].sum()),
                "n_species_few_cases": float(table["few_cases"].sum()),
                "n_species_constant": float(table["constant"].sum()),
                "n_species_few_train": float((table["informative"] & table["few_train"]).sum()),
            }
        )
        table.insert(1, "fold", k)
        tables.append(table)
    pa = source == PA
    reliability = reliability_table(labels[pa], oof[pa]) if pa.any() else reliability_table(labels, oof)
    per_species_table = pd.concat(tables, ignore_index=True)
    return {
        "folds": summaries,
        "per_species": per_species_table,
        "reliability": reliability,
        "oof": oof,
        # without presence-absence rows the reliability table is presences vs background: relative suitability
        "reliability_basis": "presence-absence" if pa.any() else "presence-background",
    }
