"""The noise model of a change map: each indicator's year-to-year difference has a shift and a noise, pooled and per
coverage stratum (the seasons a pixel's species prediction saw clear in both years, and in one year only), and a
change is flagged beyond a map-wide false-alarm rate (see :mod:`geoplantnet.products.changes`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtri

from geoplantnet.core.encoding import SCALE

MAD_SCALE = 1.4826  # the median absolute deviation of normal noise is 0.6745 standard deviations
MIN_STRATUM = 200  # sampled pixels a coverage stratum needs for its own noise estimate
UNKNOWN = -1  # the stratum of a pixel whose coverage is not recorded in both years


@dataclass(frozen=True)
class Noise:
    """Shift and noise of one indicator's difference: pooled, and per coverage stratum (:func:`coverage_stratum`)
    where the sample held enough pixels of it."""

    shift: float
    noise: float
    strata: Mapping[int, tuple[float, float]] = field(default_factory=dict)
    relative: bool = False  # noise in units of each pixel's paired model spread (:func:`paired_spread`)

    def at(self, stratum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shift, noise) arrays of pixels in ``stratum`` (codes; :data:`UNKNOWN` takes the pooled values)."""
        shift = np.full(stratum.shape, self.shift)
        noise = np.full(stratum.shape, self.noise)
        for code, (s, n) in self.strata.items():
            inside = stratum == code
            shift[inside], noise[inside] = s, n
        return shift, noise


def family_z(rate: float, pixels: int, tests: int) -> float:
    """The ``|z|`` that normal noise exceeds with probability ``rate`` anywhere among ``pixels`` x ``tests``
    two-sided tests (Bonferroni): a map-wide false-alarm rate."""
    return float(-ndtri(rate / (2.0 * max(pixels, 1) * max(tests, 1))))


def robust_noise(delta: np.ndarray, spread: np.ndarray | None = None) -> tuple[float, float]:
    """(median, noise) of the finite values of ``delta`` (see the module docstring); (0, NaN) without any. With
    ``spread`` (each pixel's paired model spread) the noise is that of ``(delta - median) / spread``: per unit of
    spread."""
    d = np.asarray(delta, dtype="float64")
    u = np.ones_like(d) if spread is None else np.asarray(spread, dtype="float64")
    ok = np.isfinite(d) & np.isfinite(u)
    d, u = d[ok], u[ok]
    if d.size == 0:
        return 0.0, float("nan")
    med = float(np.median(d))
    # never below one step of the uint8 probability codes (per unit of spread: a thousandth): where most pixels
    # repeat the same code in both years the deviation is 0, and every one-code wobble would read as change
    floor = 1.0 / SCALE if spread is None else 1e-3
    return med, max(float(np.median(np.abs(d - med) / u) * MAD_SCALE), floor)


def paired_spread(
    before_interval: tuple[np.ndarray, np.ndarray], after_interval: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Each pixel's model uncertainty of a difference: the two years' interval half-widths added in quadrature
    (never below one probability code), from each year's (lower, upper) prediction interval."""
    half = [
        (np.asarray(hi, "float64") - np.asarray(lo, "float64")) / 2.0 for lo, hi in (before_interval, after_interval)
    ]
    return np.maximum(np.hypot(half[0], half[1]), 1.0 / SCALE)


def coverage_stratum(before: np.ndarray | None, after: np.ndarray | None) -> np.ndarray | None:
    """Each pixel's coverage stratum from both years' ``clear_seasons`` bitmasks: 16 x (seasons clear in both) +
    (seasons clear in one year only); :data:`UNKNOWN` where either year has no record; None without coverage."""
    if before is None or after is None:
        return None
    a, b = np.asarray(before, np.int64), np.asarray(after, np.int64)
    known = (a >= 0) & (b >= 0)
    a, b = np.where(known, a, 0), np.where(known, b, 0)
    code = 16 * np.bitwise_count(a & b).astype(np.int64) + np.bitwise_count(a ^ b)
    return np.where(known, code, UNKNOWN)


def fit_noise(delta: np.ndarray, stratum: np.ndarray | None, spread: np.ndarray | None = None) -> Noise:
    """The pooled and per-stratum shift and noise of ``delta`` (strata with fewer than :data:`MIN_STRATUM` finite
    pixels, and unknown coverage, take the pooled values); per unit of ``spread`` when given."""
    d = np.asarray(delta, "float64").ravel()
    u = None if spread is None else np.asarray(spread, "float64").ravel()
    shift, noise = robust_noise(d, u)
    strata: dict[int, tuple[float, float]] = {}
    if stratum is not None:
        codes = np.asarray(stratum).ravel()
        for code in np.unique(codes[np.isfinite(d)]):
            inside = (codes == code) & np.isfinite(d)
            if code != UNKNOWN and inside.sum() >= MIN_STRATUM:
                strata[int(code)] = robust_noise(d[inside], None if u is None else u[inside])
    return Noise(shift, noise, strata, spread is not None)


def interval_names(indicator: str) -> tuple[str, str]:
    """The (lower, upper) prediction-interval variables of an indicator in ``indicators.zarr``."""
    base = indicator.removesuffix("_expected")
    return f"{base}_lower", f"{base}_upper"


def spread_of(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], indicator: str) -> np.ndarray | None:
    """The paired model spread of ``indicator`` from both years' intervals in ``before``/``after`` (None: no
    intervals there)."""
    lo, hi = interval_names(indicator)
    if not all(n in year for n in (lo, hi) for year in (before, after)):
        return None
    return paired_spread((before[lo], before[hi]), (after[lo], after[hi]))
