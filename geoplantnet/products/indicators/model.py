"""What a tile's indicators need besides its pixels (:class:`IndicatorModel`: the groups, thresholds, calibrated
radii, the habitat classes' Red List categories and typical species) and the numerics the declarations
(:mod:`geoplantnet.products.indicators.declared`) compute with: Shannon diversity, ecosystem health, the count
intervals, typical species by phi fidelity. docs/indicators.md has the definitions, the reasoning and the references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from geoplantnet.models.calibration import Calibration
from geoplantnet.validation.conformal import count_interval

# Red List categories (European Red List of Habitats); the index is stored in habitat_red_list, -1 = unknown
RED_LIST = ("LC", "NT", "VU", "EN", "CR", "CO", "DD", "NE")
THREATENED_CATEGORIES = ("VU", "EN", "CR")
NO_FLAG = -1


@dataclass(frozen=True)
class HabitatIndicatorModel:
    """What the habitat-based indicators know of each class of the habitat map (H classes, S species)."""

    codes: tuple[str, ...]
    red_list: np.ndarray  # (H,) int8 index into RED_LIST, -1 unknown
    typical: np.ndarray  # (H, S) bool: the class's typical species among the map's species
    reference: np.ndarray  # (H,) mean frequency of the typical species in plots of the class (NaN: none)
    set_radius: float  # conformal q of the habitat sets (NaN: top class only)

    @property
    def threatened(self) -> np.ndarray:
        """(H,) bool: category VU, EN or CR."""
        idx = [RED_LIST.index(c) for c in THREATENED_CATEGORIES]
        return np.isin(self.red_list, idx)


@dataclass(frozen=True)
class IndicatorModel:
    """Everything a tile's indicators need besides its pixels: per-species vectors, calibrated radii, settings."""

    thresholds: np.ndarray | None  # (S,) threshold_max_tss, NaN = never counted present
    groups: Mapping[str, np.ndarray]  # group -> (S,) bool, "richness" first
    count_radius: Mapping[str, float]  # group -> conformal q (NaN: normal interval)
    level: float
    habitats: HabitatIndicatorModel | None = None
    draws: int = 32  # Monte-Carlo assemblages per pixel; 0: point values only (no Shannon or health interval)
    seed: int = 0
    versions: Mapping[str, str] = field(default_factory=dict)
    calibration: Calibration | None = None  # per-species maps applied to the store's probabilities first
    # where the probabilities come from: "store" (species.zarr read, two-pass) or "model" (predicted in the tile
    # task, fused); both give the same values, the store says which made it
    source: str = "store"

    def variables(self) -> list[str]:
        """The names of the variables this model writes, in store order (from the declarations)."""
        from geoplantnet.products.indicators.declared import variables  # the declarations build on this module

        return variables(self)


def shannon(weights: np.ndarray) -> np.ndarray:
    """Shannon diversity ``-sum q ln q`` of each row of non-negative ``weights`` (n, S); 0 for an empty row."""
    w = np.asarray(weights, dtype="float64")
    total = w.sum(axis=1, keepdims=True)
    q = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q), 0.0)
    return -terms.sum(axis=1)


def health(presence: np.ndarray, habitat: np.ndarray, invasive: np.ndarray, model: HabitatIndicatorModel) -> np.ndarray:
    """Ecosystem health of each row: ``completeness x (1 - invasive share)``, in [0, 1].

    ``presence`` (n, S): probabilities (the expected indicator) or 0/1 draws (Monte Carlo); ``habitat`` (n,) class
    index. Completeness = mean presence of the class's typical species / their mean frequency in the class's plots
    (the reference state), capped at 1; invasive share = invasive part of the (expected) richness. NaN where the
    class has no typical species."""
    pres = np.asarray(presence, dtype="float64")
    h = np.asarray(habitat, dtype="int64")
    typical = model.typical[h]  # (n, S)
    n_typical = typical.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        completeness = np.minimum((pres * typical).sum(axis=1) / n_typical / model.reference[h], 1.0)
        total = pres.sum(axis=1)
        inv_share = np.where(total > 0, pres @ invasive.astype("float64") / total, 0.0)
    out = completeness * (1.0 - inv_share)
    out[n_typical == 0] = np.nan
    return out


def interval(expected: np.ndarray, variance: np.ndarray, q: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """A count's interval: conformal with radius ``q``, unbounded (0, inf) when ``q`` is inf, the normal
    approximation of the Poisson-binomial at ``level`` when ``q`` is NaN (no surveys)."""
    if np.isinf(q):  # too few surveys for the level: the honest interval is unbounded
        return np.zeros_like(expected), np.full_like(expected, np.inf)
    if np.isfinite(q):
        return count_interval(expected, variance, q)
    z = NormalDist().inv_cdf(0.5 + level / 2)  # no surveys: the count's own Poisson-binomial spread (normal)
    sd = np.sqrt(np.maximum(variance, 0.0))
    return np.maximum(expected - z * sd, 0.0), expected + z * sd


def typical_species(
    presence: np.ndarray, labels: np.ndarray, n_classes: int, *, top: int = 10, min_phi: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Typical (diagnostic) species of each class from labelled plots: the ``top`` species of highest fidelity, phi
    coefficient of association with the class (Chytrý et al. 2002) above ``min_phi``. ``presence`` (plots, S) bool,
    ``labels`` (plots,) class index (-1 unlabelled). Returns (H, S) bool and the reference completeness (H,): the
    mean frequency of the typical species in plots of the class (NaN where the class has none)."""
    x = np.asarray(presence, dtype="float64")
    lab = np.asarray(labels)
    keep = lab >= 0
    x, lab = x[keep], lab[keep]
    n = x.shape[0]
    typical = np.zeros((n_classes, x.shape[1]), dtype=bool)
    reference = np.full(n_classes, np.nan)
    if n == 0:
        return typical, reference
    f_species = x.sum(axis=0)  # plots with the species
    for h in range(n_classes):
        in_h = lab == h
        n_h = in_h.sum()
        if n_h == 0 or n_h == n:
            continue
        f_both = x[in_h].sum(axis=0)
        num = n * f_both - f_species * n_h
        den = np.sqrt(f_species * (n - f_species) * n_h * (n - n_h))
        phi = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        order = np.argsort(-phi, kind="stable")[:top]
        chosen = order[phi[order] > min_phi]
        if chosen.size:
            typical[h, chosen] = True
            reference[h] = float(x[in_h][:, chosen].mean())
    return typical, reference
