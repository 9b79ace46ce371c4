"""Per-species probability calibration and decision thresholds, as stored in model files and applied by the map.

A :class:`Calibration` maps a model's raw probability of each species to a calibrated one:

* ``platt``: logistic regression on the logit, ``sigmoid(slope * logit(p) + intercept)`` (Platt scaling);
* ``isotonic``: a non-decreasing step function (isotonic regression), stored as its knots and interpolated linearly
  between them, flat beyond the first and last (what scikit-learn's ``IsotonicRegression.predict`` does).

Both are monotone, so ranks (AUC) within a species are kept; only the scale changes. They are fitted by
:func:`fit_calibration` on presence-absence rows only: presence-background data say nothing about the probability of
presence (background points are not absences), so models fitted on them output *relative suitability* and are left
uncalibrated. The fitting data and the honest (nested, out-of-fold) evaluation are the validation layer's business
(:mod:`geoplantnet.validation.calibration`); this module is what a model file carries and what inference applies, so
it sits below both.

:class:`Thresholds` are per-species cut-offs on the model's output scale (calibrated when the file has a
calibration): ``p >= threshold`` is a predicted presence.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

CalibrationMethod = Literal["platt", "isotonic"]
_EPS = 1e-6  # logits of 0 and 1 are infinite: probabilities are clipped to [eps, 1 - eps] first
_MAX_KNOTS = 100  # an isotonic map is thinned to this many knots, so a spec stays small with many samples
_PLATT_C = 1e4  # almost no regularisation: only keeps the slope finite when the classes are separable


class CalibrationError(ValueError):
    """A calibration or threshold set that does not fit the model's species or the data (one line)."""


class SpeciesCalibration(BaseModel):
    """One species' map: Platt (``slope``, ``intercept`` on the logit) or isotonic (knots ``x`` -> ``y``)."""

    model_config = ConfigDict(frozen=True)

    slope: float = 1.0
    intercept: float = 0.0
    x: list[float] | None = None
    y: list[float] | None = None
    shared: bool = False  # the map fitted on every species pooled (this species had too few cases of its own)

    @model_validator(mode="after")
    def _knots(self) -> SpeciesCalibration:
        if (self.x is None) != (self.y is None) or (self.x is not None and len(self.x) != len(self.y or ())):
            raise ValueError("isotonic knots x and y must both be given, of the same length")
        if self.x is not None and (not self.x or np.any(np.diff(self.x) < 0)):
            raise ValueError("isotonic knots x must be non-empty and sorted")
        return self

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of this species (float32, same shape as ``p``; NaN stays NaN)."""
        p = np.asarray(p, dtype="float64")
        if self.x is not None:
            out = np.interp(p, self.x, self.y)  # type: ignore[arg-type]
        else:
            q = np.clip(p, _EPS, 1 - _EPS)
            z = self.slope * (np.log(q) - np.log1p(-q)) + self.intercept
            out = 1.0 / (1.0 + np.exp(-z))
        return np.where(np.isnan(p), np.nan, out).astype("float32")


class Calibration(BaseModel):
    """Per-species calibration maps, in the model's species order (``None``: left as is, too few rows to fit)."""

    model_config = ConfigDict(frozen=True)

    method: CalibrationMethod
    species: list[SpeciesCalibration | None]
    fitted_on: str = "out-of-fold predictions at presence-absence samples (spatial-block cross-validation)"
    n_rows: int = 0  # presence-absence rows the maps were fitted on

    def apply(self, probs: np.ndarray, axis: int = -1) -> np.ndarray:
        """``probs`` with each species (along ``axis``) mapped by its calibration; float32."""
        probs = np.asarray(probs)
        moved = np.moveaxis(probs, axis, -1)
        if moved.shape[-1] != len(self.species):
            raise CalibrationError(
                f"{moved.shape[-1]} species in the probabilities, the calibration has {len(self.species)}"
            )
        out = moved.astype("float32", copy=True)
        for s, cal in enumerate(self.species):
            if cal is not None:
                out[..., s] = cal.apply(moved[..., s])
        return np.moveaxis(out, -1, axis)

    @property
    def n_calibrated(self) -> int:
        """Species with a map of their own."""
        return sum(c is not None and not c.shared for c in self.species)

    @property
    def n_shared(self) -> int:
        """Species given the map fitted on all species pooled."""
        return sum(c is not None and c.shared for c in self.species)


def calibrate(probs: np.ndarray, calibration: Calibration | None, axis: int = -1) -> np.ndarray:
    """``probs`` through ``calibration`` along the species ``axis``; unchanged when there is none."""
    return probs if calibration is None else calibration.apply(probs, axis)


def _fit_platt(p: np.ndarray, y: np.ndarray) -> SpeciesCalibration:
    from sklearn.linear_model import LogisticRegression

    q = np.clip(p, _EPS, 1 - _EPS)
    z = (np.log(q) - np.log1p(-q))[:, None]
    if np.ptp(z) == 0:  # a constant prediction: only the intercept is identified, the slope stays 1
        rate = np.clip(y.mean(), _EPS, 1 - _EPS)
        return SpeciesCalibration(slope=1.0, intercept=float(np.log(rate / (1 - rate)) - z[0, 0]))
    model = LogisticRegression(C=_PLATT_C, max_iter=1000).fit(z, y)
    return SpeciesCalibration(slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0]))


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> SpeciesCalibration:
    from sklearn.isotonic import IsotonicRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    x, v = np.asarray(iso.X_thresholds_, "float64"), np.asarray(iso.y_thresholds_, "float64")
    if len(x) > _MAX_KNOTS:  # thinned evenly, ends kept; linear interpolation between the kept knots
        keep = np.unique(np.linspace(0, len(x) - 1, _MAX_KNOTS).round().astype(int))
        x, v = x[keep], v[keep]
    return SpeciesCalibration(x=x.tolist(), y=v.tolist())


def fit_calibration(
    probs: np.ndarray, labels: np.ndarray, method: CalibrationMethod, *, min_cases: int = 5, shared: bool = True
) -> Calibration:
    """Fit one map per species on ``probs`` (samples, species) against ``labels`` (1 present, 0 absent, -1 unknown:
    ignored). The rows must be presence-absence samples, predicted out of fold. A species with fewer than
    ``min_cases`` presences or absences gets no map of its own (a handful of points would give a map that fits
    noise) but, with ``shared``, the map fitted on every species' entries pooled: a model's miscalibration is
    largely common to its species (a network trained a few epochs says ~0.5 everywhere), so the pooled map corrects
    most of it; ``None`` (passed through) when even the pool has too few cases."""
    probs, labels = np.asarray(probs, "float64"), np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise CalibrationError(f"probs {probs.shape} and labels {labels.shape} must be the same (samples, species)")
    if method not in ("platt", "isotonic"):
        raise CalibrationError(f"unknown calibration method {method!r} (platt or isotonic)")
    fit = _fit_platt if method == "platt" else _fit_isotonic
    out: list[SpeciesCalibration | None] = []
    for s in range(labels.shape[1]):
        known = (labels[:, s] >= 0) & np.isfinite(probs[:, s])
        y, p = labels[known, s].astype("float64"), probs[known, s]
        n_pos = int(y.sum())
        out.append(fit(p, y) if min(n_pos, len(y) - n_pos) >= min_cases else None)
    if shared and any(c is None for c in out):
        known = (labels >= 0) & np.isfinite(probs)
        y, p = labels[known].astype("float64"), probs[known]
        if min(y.sum(), len(y) - y.sum()) >= min_cases:
            pooled = fit(p, y).model_copy(update={"shared": True})
            out = [pooled if c is None else c for c in out]
    return Calibration(method=method, species=out, n_rows=len(labels))


ThresholdBasis = Literal["presence-absence", "presence-background"]


class Thresholds(BaseModel):
    """Per-species cut-offs on the model's output scale (``p >= t`` is a predicted presence); ``None`` where a species
    had one class only in the data they were chosen on.

    * ``max_tss``: maximises sensitivity + specificity - 1;
    * ``prevalence``: the share of samples predicted present equals the share observed present.

    ``basis`` says which samples chose them: presence-absence surveys, or presences against background points (then
    "prevalence" is the share of presences among presence + background points, a property of the sampling design,
    and the outputs are relative suitability). ``calibrated``: chosen on calibrated probabilities (the model file's
    calibration is applied before the thresholds are)."""

    model_config = ConfigDict(frozen=True)

    basis: ThresholdBasis
    calibrated: bool
    max_tss: list[float | None]
    prevalence: list[float | None]

    @model_validator(mode="after")
    def _lengths(self) -> Thresholds:
        if len(self.max_tss) != len(self.prevalence):
            raise ValueError("max_tss and prevalence need one value per species each")
        return self

    def as_arrays(self) -> dict[str, np.ndarray]:
        """``{"max_tss": float32 (species,), "prevalence": ...}`` with NaN for ``None``."""
        return {
            name: np.array([np.nan if v is None else v for v in getattr(self, name)], dtype="float32")
            for name in ("max_tss", "prevalence")
        }


def check_species(n_species: int, calibration: Calibration | None, thresholds: Thresholds | None) -> None:
    """Refuse a calibration or thresholds whose species count is not the model's."""
    if calibration is not None and len(calibration.species) != n_species:
        raise CalibrationError(f"calibration for {len(calibration.species)} species, the model has {n_species}")
    if thresholds is not None and len(thresholds.max_tss) != n_species:
        raise CalibrationError(f"thresholds for {len(thresholds.max_tss)} species, the model has {n_species}")
