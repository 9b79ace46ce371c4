"""Split conformal prediction for the indicator maps: quantiles of calibration scores, scores of count indicators
and of habitat classes, and the empirical coverage of the resulting intervals and sets on held-out data.

Counts (richness, invasive, threatened, protected species) are observed at presence-absence plots: the score of a
plot is its normalised residual ``|observed - expected| / (sd + 1)``, with ``expected`` the sum of the predicted
probabilities and ``sd`` their Poisson-binomial standard deviation, so intervals widen where the assemblage is
uncertain; the ``+ 1`` keeps near-certain pixels (sd -> 0) from getting zero-width intervals around a count that is
an integer. Habitats use the least-ambiguous set-valued classifier (Sadinle, Lei & Wasserman 2019): score
``1 - p(true class)``; the set keeps every class with ``p >= 1 - q``. With exchangeable calibration and test plots
both cover the truth with probability at least the nominal level (Vovk et al. 2005; Angelopoulos & Bates 2021).

The interval calibration of the indicator maps is here too (:func:`calibrate_on_surveys`): the maps' values at
held-out presence-absence surveys (:func:`sample_maps` from the stores; the fused mode computes the same values on the
cluster), optionally Platt maps per species fitted on one spatial half of them first, then the radii of every count
group and of the habitat sets, with their coverage measured by cross-conformal spatial folds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from geoplantnet.core.config import IndicatorsConfig
from geoplantnet.core.grid import Grid
from geoplantnet.inference.dense import decode
from geoplantnet.models.calibration import Calibration, fit_calibration
from geoplantnet.samples.plots import Plots
from geoplantnet.validation.blocks import spatial_folds

# the maps' values at surveys: p (n, S), habitat classes and their probabilities (n, K) or None, which are on data
Sampled = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]

UNCALIBRATED = float("nan")  # a radius no plots could calibrate: intervals fall back to the model's own spread


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal radius: the ``ceil((n + 1) level) / n`` empirical quantile of ``scores`` (inf when too few
    scores for that level, NaN when there are none)."""
    s = np.sort(np.asarray(scores, dtype="float64")[np.isfinite(scores)])
    if s.size == 0:
        return UNCALIBRATED
    k = math.ceil((s.size + 1) * level)
    return float(s[k - 1]) if k <= s.size else math.inf


def count_moments(p: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected count and Poisson-binomial variance of the species in ``mask`` ((S,) bool), from ``p`` (n, S)."""
    m = np.asarray(mask, dtype="float64")
    p64 = np.asarray(p, dtype="float64")
    return p64 @ m, (p64 * (1.0 - p64)) @ m


def count_scores(observed: np.ndarray, expected: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Normalised residuals of observed counts (see the module docstring)."""
    return np.abs(np.asarray(observed, "float64") - expected) / (np.sqrt(np.maximum(variance, 0.0)) + 1.0)


def count_interval(expected: np.ndarray, variance: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The interval ``expected +- q (sd + 1)``, clipped at 0 (counts are never negative)."""
    half = q * (np.sqrt(np.maximum(variance, 0.0)) + 1.0)
    return np.maximum(expected - half, 0.0), expected + half


def class_scores(probability: np.ndarray, classes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``1 - p(true class)`` of each sample from its top classes ``classes`` (n, K) and their ``probability`` (n, K);
    a true class outside the top K scores 1 (its probability is unknown but below the K-th: the conservative bound)."""
    hit = np.asarray(classes) == np.asarray(truth)[:, None]
    p_true = np.where(hit, probability, 0.0).sum(axis=1)
    return 1.0 - p_true


def class_sets(probability: np.ndarray, q: float) -> np.ndarray:
    """Membership (…, K) of each top class in the prediction set: ``p >= 1 - q``, and the most probable class always
    (an empty set says nothing a map reader can use; keeping it only adds coverage)."""
    keep = np.asarray(probability) >= 1.0 - q
    keep[..., 0] = True
    return keep


def habitat_calibration(
    proba: np.ndarray, classes: Sequence[str], truth: Sequence[str], level: float
) -> dict[str, Any] | None:
    """A classifier's habitat sets calibrated on held-out plots (``proba`` (n, classes), their ``truth``):
    ``{level, q, plots}`` with ``q`` the split-conformal radius of ``1 - p(true class)`` (a habitat the classifier
    lacks scores 1); None when the plots are too few for ``level`` (every class would be in every set)."""
    proba = np.asarray(proba, dtype="float64")
    scores = class_scores(proba, np.broadcast_to(np.asarray(classes, dtype=object), proba.shape), np.asarray(truth))
    q = conformal_quantile(scores, level)
    return {"level": level, "q": q, "plots": len(scores)} if math.isfinite(q) else None


@dataclass(frozen=True)
class Coverage:
    """Empirical coverage of a conformal interval or set on held-out samples, against the nominal level."""

    nominal: float
    coverage: float  # share of held-out samples whose truth lies inside
    n: int
    mean_width: float  # mean interval width, or mean set size
    radius: float  # the calibrated radius (q) of the whole sample (what the map uses)

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready values, rounded."""
        return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


def cross_coverage(
    scores: np.ndarray,
    folds: np.ndarray,
    level: float,
    inside: Callable[[np.ndarray, float], np.ndarray],
    width: Callable[[np.ndarray, float], np.ndarray],
) -> Coverage:
    """Coverage measured by calibrating on all folds but one and testing on that one, in turn (spatial folds keep
    neighbouring plots on one side). ``inside(idx, q)``: whether each sample of ``idx`` is covered with radius ``q``;
    ``width(idx, q)``: the interval width or set size there."""
    covered: list[np.ndarray] = []
    widths: list[np.ndarray] = []
    for f in np.unique(folds):
        test = np.flatnonzero(folds == f)
        q = conformal_quantile(scores[folds != f], level)
        if not math.isfinite(q) or test.size == 0:
            continue
        covered.append(inside(test, q))
        widths.append(width(test, q))
    n = int(sum(c.size for c in covered))
    return Coverage(
        nominal=level,
        coverage=float(np.concatenate(covered).mean()) if n else float("nan"),
        n=n,
        mean_width=float(np.concatenate(widths).mean()) if n else float("nan"),
        radius=conformal_quantile(scores, level),
    )


# -- the indicator maps' interval calibration on surveys


@dataclass
class IntervalCalibration:
    """The conformal radii and their measured coverage (cross-conformal spatial folds of the surveys)."""

    count_radius: dict[str, float] = field(default_factory=dict)
    habitat_radius: float = float("nan")
    coverage: dict[str, dict[str, Any]] = field(default_factory=dict)
    surveys: int = 0
    notes: list[str] = field(default_factory=list)


def presence_matrix(plots: Plots, species: list[str]) -> np.ndarray:
    """(plots, S) bool: which of the map's species each plot lists."""
    where = {s: i for i, s in enumerate(species)}
    out = np.zeros((len(plots), len(species)), dtype=bool)
    for i, sentence in enumerate(plots.sentences):
        idx = [where[s] for s in sentence if s in where]
        out[i, idx] = True
    return out


def sample_maps(species_codes: xr.Dataset, habitat_codes: xr.Dataset | None, grid: Grid, plots: Plots) -> Sampled:
    """The maps at the plots' cells (stores opened with ``mask_and_scale=False``; only the chunks under the plots are
    read): p (n, S), habitat classes and their probabilities (n, K) or None, and which plots fell on a cell with
    data."""
    row, col = grid.index(plots.x, plots.y)
    ok = row >= 0
    at = {"y": xr.DataArray(row[ok], dims="plot"), "x": xr.DataArray(col[ok], dims="plot")}
    k = habitat_codes.sizes["rank"] if habitat_codes is not None else None
    p = decode(np.asarray(species_codes["probability"].isel(at).transpose("plot", "species").values))
    top = top_p = None
    if habitat_codes is not None:
        top = habitat_codes["top_k"].isel(at).transpose("plot", "rank").values
        top_p = decode(np.asarray(habitat_codes["top_k_probability"].isel(at).transpose("plot", "rank").values))
    return gather_samples(len(plots), species_codes.sizes["species"], k, ok, [(ok, p, top, top_p)])


def gather_samples(
    n: int,
    n_species: int,
    ranks: int | None,
    on_map: np.ndarray,
    parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]],
) -> Sampled:
    """The maps' values at ``n`` plots from ``parts`` (the plots' indices, their p, habitat classes and their
    probabilities; ``ranks``: the classes kept, None without habitats), and which are on a cell with data (``on_map``:
    on the grid); plots in no part keep :func:`_empty_samples`."""
    p, top, top_p = _empty_samples(n, n_species, ranks)
    for idx, p_i, top_i, top_p_i in parts:
        p[idx] = p_i
        if top is not None and top_p is not None:
            top[idx], top_p[idx] = top_i, top_p_i
    return p, top, top_p, _valid_samples(p, top, on_map)


def _empty_samples(n: int, n_species: int, ranks: int | None) -> tuple[np.ndarray, Any, Any]:
    """What plots off the map get: NaN probabilities, habitat classes -1 of probability 0 (None without habitats)."""
    p = np.full((n, n_species), np.nan, dtype="float32")
    if ranks is None:
        return p, None, None
    return p, np.full((n, ranks), -1, dtype="int64"), np.zeros((n, ranks), dtype="float32")


def _valid_samples(p: np.ndarray, top: np.ndarray | None, on_map: np.ndarray) -> np.ndarray:
    """Plots on a cell with data: on the map, every species known and (with habitats) a class."""
    valid = on_map & np.isfinite(p).all(axis=1)
    if top is not None:
        valid &= (top >= 0).all(axis=1)
    return valid


def survey_folds(plots: Plots, settings: IndicatorsConfig, folds: int, notes: list[str]) -> np.ndarray:
    """Spatial-block folds of the surveys (``indicators.block_size``); random folds, said in ``notes``, when the
    surveys fill too few blocks (random folds put neighbours on both sides: coverage reads optimistic)."""
    out, said = spatial_folds(
        plots.x, plots.y, settings.block_size, folds, seed=settings.seed, fallback="random", what="surveys"
    )
    notes.extend(said)
    return out


def calibrate(
    p: np.ndarray,
    observed: np.ndarray,
    groups: Mapping[str, np.ndarray],
    folds: np.ndarray,
    level: float,
    *,
    top: np.ndarray | None = None,
    top_p: np.ndarray | None = None,
    truth_class: np.ndarray | None = None,
) -> IntervalCalibration:
    """Conformal radii of every count group (and of the habitat sets) from surveys: ``p`` (n, S) the maps at the
    surveys, ``observed`` (n, S) what they found, ``truth_class`` (n,) their habitat's index in the map's classes
    (-1 outside them, -2 unlabelled)."""
    cal = IntervalCalibration(surveys=len(p))
    for g, mask in groups.items():
        mu, var = count_moments(p, mask)
        obs = (observed & mask).sum(axis=1)
        scores = count_scores(obs, mu, var)

        def inside(idx: np.ndarray, q: float, mu=mu, var=var, obs=obs) -> np.ndarray:
            lo, hi = count_interval(mu[idx], var[idx], q)
            return (obs[idx] >= lo) & (obs[idx] <= hi)

        def width(idx: np.ndarray, q: float, mu=mu, var=var) -> np.ndarray:
            lo, hi = count_interval(mu[idx], var[idx], q)
            return hi - lo

        cov = cross_coverage(scores, folds, level, inside, width)
        cal.count_radius[g] = cov.radius
        cal.coverage[g] = cov.to_dict()
    if top is not None and top_p is not None and truth_class is not None:
        labelled = truth_class >= -1
        scores = class_scores(top_p[labelled], top[labelled], truth_class[labelled])
        t, tp, tc = top[labelled], top_p[labelled], truth_class[labelled]

        def in_set(idx: np.ndarray, q: float) -> np.ndarray:
            return ((t[idx] == tc[idx, None]) & class_sets(tp[idx], q)).any(axis=1)

        def size(idx: np.ndarray, q: float) -> np.ndarray:
            return class_sets(tp[idx], q).sum(axis=1)

        cov = cross_coverage(scores, folds[labelled], level, in_set, size)
        cal.habitat_radius = cov.radius
        cal.coverage["habitat_set"] = cov.to_dict()
        outside = int((tc == -1).sum())
        if outside:
            cal.notes.append(f"{outside} labelled surveys have a habitat that is not a class of the habitat map")
    return cal


def calibrate_on_surveys(
    settings: IndicatorsConfig,
    surveys: Plots | None,
    sampled: Sampled | None,
    species: list[str],
    classes: list[str] | None,
    groups: Mapping[str, np.ndarray],
    thresholds: np.ndarray | None,
    recalibrate: bool,
    given: Calibration | None = None,
) -> tuple[IntervalCalibration, Calibration | None, np.ndarray | None]:
    """The intervals' radii from the surveys and the maps' values there (``sampled``: :func:`sample_maps` or the
    fused mode's sampling, None without surveys); with ``recalibrate``, Platt maps per species fitted on half of the
    surveys first, or the ``given`` maps (a refresh keeps its first year's, so years stay comparable). Returns the
    calibration, the species maps (None when none apply) and the thresholds on the probabilities' final scale."""
    cal = IntervalCalibration()
    if surveys is None or sampled is None:
        return (
            cal,
            given,
            thresholds if given is None or thresholds is None else given.apply(thresholds[None, :], axis=1)[0],
        )
    p, top, top_p, valid = sampled
    species_cal = given
    notes: list[str] = []
    surveys = surveys.subset(valid)
    p, observed = p[valid], presence_matrix(surveys, species)
    truth_class = None
    if classes is not None and top is not None and top_p is not None:
        top, top_p = top[valid], top_p[valid]
        truth_class = np.where(surveys.labelled, class_index(surveys.habitat, classes), -2)
    rows = np.ones(len(p), dtype=bool)
    if given is not None or recalibrate:
        # two spatial halves: one fits the species' Platt maps, the other (never seen by them) calibrates and tests
        # the intervals; deterministic, so a later year given the first year's maps keeps the same held-out half
        fit_rows = survey_folds(surveys, settings, 2, notes) == 0
        if given is None:
            species_cal = fit_calibration(p[fit_rows], observed[fit_rows].astype("int8"), "platt")
        p, rows = species_cal.apply(p, axis=1), ~fit_rows
    held = surveys.subset(rows)
    cal = calibrate(
        p[rows],
        observed[rows],
        groups,
        survey_folds(held, settings, settings.folds, notes),
        settings.level,
        top=top[rows] if top is not None else None,
        top_p=top_p[rows] if top_p is not None else None,
        truth_class=truth_class[rows] if truth_class is not None else None,
    )
    cal.notes += [f"{int((~valid).sum())} surveys off the map or on no-data cells left out", *notes]
    if given is not None:
        cal.notes.append(
            f"species probabilities through given Platt maps (the series' first year's); the intervals are "
            f"calibrated and tested on the {int(rows.sum())} surveys of the half those maps were not fitted on"
        )
    elif species_cal is not None:
        cal.notes.append(
            f"species map not calibrated: Platt maps per species ({species_cal.n_calibrated} own, "
            f"{species_cal.n_shared} pooled) fitted on {int((~rows).sum())} surveys (one spatial half); the "
            f"intervals are calibrated and tested on the other {int(rows.sum())}"
        )
    if species_cal is not None and thresholds is not None:
        thresholds = species_cal.apply(thresholds[None, :], axis=1)[0]  # the same cut on the new scale
    return cal, species_cal, thresholds


def class_index(codes: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Index of each code in ``classes`` (-1 where absent)."""
    where = {c: i for i, c in enumerate(classes)}
    return np.asarray([where.get(str(c), -1) for c in codes], dtype="int64")


# -- the count indicators' calibration error per stratum (impact: the error of a change between land-cover classes)


@dataclass(frozen=True)
class StratumError:
    """A count model's error measured on held-out surveys, per stratum (a land-cover class): ``n`` surveys, the mean
    residual ``bias`` (observed - expected: what the model misses there), its standard error ``se`` and ``tau2``,
    the variance of the model's error at one site beyond the survey's own sampling noise (the residuals' variance
    less the mean Poisson-binomial variance, at least 0)."""

    n: int
    bias: float
    se: float
    tau2: float


@dataclass(frozen=True)
class StratumErrors:
    """:class:`StratumError` per group and stratum code; ``pooled``: the group's error for a stratum with too few
    surveys to measure (bias 0, the calibrated model's own average; variance the spread of the measured strata's
    biases plus their mean ``tau2``: an unmeasured class can be as wrong as any measured one)."""

    groups: Mapping[str, Mapping[int, StratumError]]
    pooled: Mapping[str, StratumError]
    min_surveys: int

    def error(self, group: str, stratum: int) -> tuple[StratumError, bool]:
        """The error of ``stratum`` and whether it was measured (False: the pooled stand-in)."""
        measured = self.groups.get(group, {}).get(int(stratum))
        if measured is not None and measured.n >= self.min_surveys:
            return measured, True
        return self.pooled[group], False

    def surveys(self, stratum: int) -> int:
        """How many surveys lie in ``stratum``."""
        return max((g.get(int(stratum), StratumError(0, 0.0, 0.0, 0.0)).n for g in self.groups.values()), default=0)


def stratum_errors(
    p: np.ndarray, observed: np.ndarray, groups: Mapping[str, np.ndarray], strata: np.ndarray, min_surveys: int
) -> StratumErrors:
    """Every count group's error per stratum from surveys: ``p`` (n, S) the calibrated probabilities at them,
    ``observed`` (n, S) what they found, ``strata`` (n,) their stratum codes (negative: none)."""
    out: dict[str, dict[int, StratumError]] = {}
    pooled: dict[str, StratumError] = {}
    for g, mask in groups.items():
        mu, var = count_moments(p, mask)
        res = (observed & mask).sum(axis=1) - mu
        per: dict[int, StratumError] = {}
        for code in np.unique(strata[strata >= 0]):
            r, v = res[strata == code], var[strata == code]
            sd = float(r.std(ddof=1)) if r.size > 1 else 0.0
            tau2 = max(float(r.var(ddof=1)) - float(v.mean()), 0.0) if r.size > 1 else 0.0
            per[int(code)] = StratumError(int(r.size), float(r.mean()), sd / math.sqrt(r.size), tau2)
        out[g] = per
        known = [e for e in per.values() if e.n >= min_surveys]
        if known:
            w = np.array([e.n for e in known], dtype="float64")
            biases = np.array([e.bias for e in known])
            spread = float(np.average(biases**2, weights=w))  # around 0, the calibrated model's average
            tau2 = float(np.average([e.tau2 for e in known], weights=w))
            pooled[g] = StratumError(0, 0.0, math.sqrt(spread), tau2)
        else:
            pooled[g] = StratumError(0, 0.0, math.inf, math.inf)
    return StratumErrors(out, pooled, min_surveys)
