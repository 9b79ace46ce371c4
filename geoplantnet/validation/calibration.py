"""Calibration and thresholds from the spatial-block cross-validation's out-of-fold predictions, measured honestly.

Map products (indicators, habitat maps) sum and threshold probabilities, so a model's scale matters, not just its
ranking. After :func:`geoplantnet.validation.metrics.cross_validate`, each model has an out-of-fold (OOF) prediction
for every sample, made by a model that never saw the sample's spatial block. :func:`calibrate_oof` uses them:

* **Calibration** (``validation.calibration``: ``platt``, ``isotonic`` or ``none``) is fitted per species on the OOF
  predictions of the presence-absence rows (source ``pa``) only, never on a test set, and never on presence-background
  data: background points are not absences, so those models output *relative suitability*, which no calibration can
  turn into a probability of presence. A species with fewer than 5 presences or absences among those rows gets the
  map fitted on all species' entries pooled (:func:`geoplantnet.models.calibration.fit_calibration`).
* **Its effect is measured nested**: for each fold, a calibration fitted on the OOF predictions of the *other* folds is
  applied to this fold's; ECE and Brier score before/after are pooled over all folds' presence-absence rows. The
  "after" numbers are therefore out of sample, like the "before" ones. The calibration saved with the final model is
  then fitted on all OOF rows (it is applied to the final model, fitted on every sample, which the OOF predictions
  approximate: a model on (k-1)/k of the data).
* **ECE** here: equal-width bins (10 over [0, 1]), count-weighted mean |observed frequency - mean prediction|, pooled
  over every (sample, species) entry with a known label: the one ECE of ``validation.metrics`` (the report's ``ece``).
  :func:`expected_calibration_error` also offers quantile bins (equal counts), which resolve the low-probability range
  where most entries of rare species lie.
* **Thresholds** (:func:`choose_thresholds`): per species, max TSS and "observed prevalence", on the OOF predictions
  after calibration when calibrated, of presence-absence rows, or of presences vs background points when the data
  have no presence-absence rows (labelled as such).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.metrics import roc_curve

from geoplantnet.models.calibration import (
    Calibration,
    CalibrationError,
    CalibrationMethod,
    Thresholds,
    check_species,
    fit_calibration,
)
from geoplantnet.reports.markdown import table
from geoplantnet.samples.kinds import Source
from geoplantnet.validation.metrics import expected_calibration_error, known_pairs

RELATIVE_SUITABILITY = (
    "relative suitability (presence-only data: presences against background points; not a probability of presence)"
)
CALIBRATED = "calibrated probability of presence (per-species calibration on presence-absence surveys)"
UNCALIBRATED = "probability of presence, uncalibrated (presence-absence surveys; calibration off)"


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared difference between prediction and outcome over the known entries (NaN with none)."""
    y, p = known_pairs(labels, probs)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def _max_tss_threshold(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))  # the highest threshold among ties
    return float(min(thr[best], 1.0))  # roc_curve's first threshold is +inf (nothing predicted present)


def _prevalence_threshold(y: np.ndarray, p: np.ndarray) -> float:
    k = max(1, round(y.mean() * len(y)))  # as many predicted presences as observed ones
    return float(np.sort(p)[::-1][k - 1])


def choose_thresholds(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    basis: Literal["presence-absence", "presence-background"],
    calibrated: bool,
) -> Thresholds:
    """Per-species max-TSS and observed-prevalence thresholds (``p >= t`` is a predicted presence) from ``probs``
    against ``labels`` (samples, species; -1 ignored). A species without both classes gets ``None``."""
    labels, probs = np.asarray(labels), np.asarray(probs, "float64")
    if labels.shape != probs.shape or labels.ndim != 2:
        raise CalibrationError(f"labels {labels.shape} and probs {probs.shape} must be the same (samples, species)")
    max_tss: list[float | None] = []
    prevalence: list[float | None] = []
    for s in range(labels.shape[1]):
        known = (labels[:, s] >= 0) & np.isfinite(probs[:, s])
        y, p = labels[known, s], probs[known, s]
        if not 0 < y.sum() < len(y):
            max_tss.append(None)
            prevalence.append(None)
            continue
        max_tss.append(_max_tss_threshold(y, p))
        prevalence.append(_prevalence_threshold(y, p))
    return Thresholds(basis=basis, calibrated=calibrated, max_tss=max_tss, prevalence=prevalence)


def nested_calibration(
    oof: np.ndarray, labels: np.ndarray, folds: np.ndarray, method: CalibrationMethod, *, min_cases: int = 5
) -> np.ndarray:
    """``oof`` with each fold's rows calibrated by a map fitted on the other folds' rows only (all rows given must be
    presence-absence rows): out-of-sample calibrated predictions, for scoring the calibration honestly."""
    oof, folds = np.asarray(oof, "float64"), np.asarray(folds)
    out = np.full(oof.shape, np.nan, dtype="float32")
    for k in np.unique(folds):
        test = folds == k
        cal = fit_calibration(oof[~test], labels[~test], method, min_cases=min_cases)
        out[test] = cal.apply(oof[test])
    return out


@dataclass(frozen=True)
class CalibrationOutcome:
    """What one model's calibration step produced: the map for its file (None: not calibrated), its thresholds,
    what its outputs mean (``scale``) and the scores for the report (``table``: ECE/Brier before and after)."""

    calibration: Calibration | None
    thresholds: Thresholds
    scale: str  # CALIBRATED, UNCALIBRATED or RELATIVE_SUITABILITY
    table: dict[str, Any]


def calibrate_oof(
    oof: np.ndarray,
    labels: np.ndarray,
    source: np.ndarray,
    folds: np.ndarray,
    method: Literal["platt", "isotonic", "none"],
    *,
    min_cases: int = 5,
) -> CalibrationOutcome:
    """Calibration (fitted on every presence-absence OOF row), nested ECE/Brier before and after, and thresholds of
    one model's out-of-fold predictions ``oof`` (samples, species) on the cross-validation's ``folds``. Without
    presence-absence rows nothing is calibrated and thresholds are chosen on presences vs background points."""
    oof, labels = np.asarray(oof, "float64"), np.asarray(labels)
    source, folds = np.asarray(source).astype(str), np.asarray(folds)
    if oof.shape != labels.shape or source.shape != (len(labels),) or folds.shape != (len(labels),):
        raise CalibrationError(
            f"oof {oof.shape}, labels {labels.shape}, source {source.shape}, folds {folds.shape} do not fit together"
        )
    pa = source == Source.PA
    table: dict[str, Any] = {
        "method": "none",
        "basis": "presence-background",
        "n_rows": 0,
        "n_species_calibrated": 0,
        "n_species_shared": 0,
        "ece_before": float("nan"),
        "ece_after": float("nan"),
        "brier_before": float("nan"),
        "brier_after": float("nan"),
    }
    if not pa.any():
        thresholds = choose_thresholds(labels, oof, basis="presence-background", calibrated=False)
        return CalibrationOutcome(None, thresholds, RELATIVE_SUITABILITY, table)
    lab, raw, f = labels[pa], oof[pa], folds[pa]
    table.update(
        basis="presence-absence",
        n_rows=int(pa.sum()),
        ece_before=expected_calibration_error(lab, raw),
        brier_before=brier_score(lab, raw),
    )
    if method == "none":
        thresholds = choose_thresholds(lab, raw, basis="presence-absence", calibrated=False)
        return CalibrationOutcome(None, thresholds, UNCALIBRATED, table)
    held_out = nested_calibration(raw, lab, f, method, min_cases=min_cases)
    calibration = fit_calibration(raw, lab, method, min_cases=min_cases)
    table.update(
        method=method,
        n_species_calibrated=calibration.n_calibrated,
        n_species_shared=calibration.n_shared,
        ece_after=expected_calibration_error(lab, held_out),
        brier_after=brier_score(lab, held_out),
    )
    thresholds = choose_thresholds(lab, calibration.apply(raw), basis="presence-absence", calibrated=True)
    return CalibrationOutcome(calibration, thresholds, CALIBRATED, table)


def write_into_model_file(path: str | os.PathLike[str], outcome: CalibrationOutcome) -> str:
    """Rewrite the model file at ``path`` (a species network ``.pt`` or a ``.peer`` file, told apart by content) with
    ``outcome``'s calibration and thresholds in its spec, atomically, through the files' own writers."""
    from geoplantnet.models.peers import is_peer_file, load_peer
    from geoplantnet.training.train import load_model, save_model

    update = {"calibration": outcome.calibration, "thresholds": outcome.thresholds}
    if is_peer_file(path):
        peer, peer_spec = load_peer(path)
        check_species(len(peer_spec.species), outcome.calibration, outcome.thresholds)
        return peer.save(path, peer_spec.model_copy(update=update))
    model, spec = load_model(path)
    check_species(len(spec.species), outcome.calibration, outcome.thresholds)
    return save_model(path, model, spec.model_copy(update=update))


def calibration_markdown(outcomes: dict[str, CalibrationOutcome], files: dict[str, str] | None = None) -> list[str]:
    """The report's calibration section: one row per model (method, rows, ECE and Brier before/after) and what the
    outputs mean; ``files``: where each model's thresholds were written."""
    if not outcomes:
        return []

    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) and np.isfinite(v) else "–"

    header = ["model", "method", "basis", "PA rows", "species: own map / pooled map", "ECE before", "ECE after"]
    header += ["Brier before", "Brier after", "thresholds in"]
    rows = []
    for name, out in outcomes.items():
        t = out.table
        where = os.path.basename(files[name]) if files and name in files else "–"
        species = f"{t['n_species_calibrated']} / {t['n_species_shared']}"
        scores = [num(t[k]) for k in ("ece_before", "ece_after", "brier_before", "brier_after")]
        rows.append([name, t["method"], t["basis"], t["n_rows"], species, *scores, where])
    lines = table(header, rows)
    scales = sorted({o.scale for o in outcomes.values()})
    return [
        "",
        "## Calibration and thresholds",
        "",
        "Calibration fitted per species on out-of-fold predictions at presence-absence samples (species with fewer "
        "than 5 presences or absences: one map fitted on all species pooled); ECE (10 equal-width "
        "bins, pooled over (sample, species)) and Brier score before/after are nested: each fold is calibrated by a "
        "map fitted on the other folds only. Thresholds (max TSS, observed prevalence) per species from the "
        "out-of-fold predictions, after calibration when calibrated; saved in the final model files.",
        "",
        *lines,
        "",
        *[f"Outputs: {s}." for s in scales],
    ]


def species_thresholds_table(species: Sequence[str], outcomes: dict[str, CalibrationOutcome]) -> list[dict[str, Any]]:
    """Rows (model, species, basis, calibrated, max_tss, prevalence) for a thresholds CSV."""
    rows = []
    for name, out in outcomes.items():
        th = out.thresholds
        for s, sp in enumerate(species):
            rows.append(
                {
                    "model": name,
                    "species": sp,
                    "basis": th.basis,
                    "calibrated": th.calibrated,
                    "threshold_max_tss": th.max_tss[s],
                    "threshold_prevalence": th.prevalence[s],
                }
            )
    return rows
