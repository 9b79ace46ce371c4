"""Split conformal prediction for the indicator maps: quantiles of calibration scores, scores of count indicators
and of habitat classes, and the empirical coverage of the resulting intervals and sets on held-out data.

Counts (richness, invasive, threatened, protected species) are observed at presence-absence plots: the score of a
plot is its normalised residual ``|observed - expected| / (sd + 1)``, with ``expected`` the sum of the predicted
probabilities and ``sd`` their Poisson-binomial standard deviation, so intervals widen where the assemblage is
uncertain; the ``+ 1`` keeps near-certain pixels (sd -> 0) from getting zero-width intervals around a count that is
an integer. Habitats use the least-ambiguous set-valued classifier (Sadinle, Lei & Wasserman 2019): score
``1 - p(true class)``; the set keeps every class with ``p >= 1 - q``. With exchangeable calibration and test plots
both cover the truth with probability at least the nominal level (Vovk et al. 2005; Angelopoulos & Bates 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

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
