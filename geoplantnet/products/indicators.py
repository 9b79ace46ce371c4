"""Biodiversity indicators of a tile, from its species probabilities (and its habitat map), with their uncertainty.

Definitions (docs/indicators.md has the reasoning and the references):

- ``<group>_expected``: expected number of species of a group (sum of calibrated probabilities): ``richness``
  (every species), ``invasive``, ``threatened``, ``protected`` (status tables); ``<group>_lower``/``_upper``: the
  split-conformal interval of the count a survey plot there would find (:mod:`geoplantnet.validation.conformal`),
  or the Poisson-binomial normal interval when no plots calibrated it.
- ``<group>_thresholded``: species of the group at or above their ``threshold_max_tss``; ``<group>_any`` (not for
  richness): the probability that at least one species of the group is present, ``1 - prod(1 - p)``.
- ``shannon``: Shannon diversity of the expected assemblage (``-sum q ln q``, ``q = p / sum p``).
- ``threatened_habitat``: the predicted habitat is on the European Red List as VU, EN or CR;
  ``habitat_red_list``: its category; ``habitat_set_size``: size of the conformal habitat set;
  ``threatened_habitat_set``: 0 no class of the set is threatened, 1 some, 2 all.
- ``ecosystem_health``: typical-species completeness of the predicted habitat times the share of the expected
  assemblage that is not invasive (see :func:`health`).
- ``shannon_lower``/``_upper``, ``ecosystem_health_lower``/``_upper``: quantiles over Monte-Carlo assemblages (each
  species present with its probability): the spread of the realised community, not calibrated (no plot observes
  these quantities the way the map defines them).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import xarray as xr

from geoplantnet.core.grid import Grid
from geoplantnet.models.calibration import Calibration
from geoplantnet.storage.tiles import tiled_variable
from geoplantnet.validation.conformal import class_sets, count_interval, count_moments

GROUPS = ("richness", "invasive", "threatened", "protected")
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
        """The names of the variables this model writes, in store order."""
        out: list[str] = []
        for g in self.groups:
            out += [f"{g}_expected", f"{g}_lower", f"{g}_upper"]
            if g != "richness":
                out.append(f"{g}_any")
            if self.thresholds is not None:
                out.append(f"{g}_thresholded")
        out += ["shannon", "shannon_lower", "shannon_upper"]
        if self.habitats is not None:
            out += ["habitat_red_list", "threatened_habitat", "habitat_set_size", "threatened_habitat_set"]
            out += ["ecosystem_health", "ecosystem_health_lower", "ecosystem_health_upper"]
        return out


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


def _interval(expected: np.ndarray, variance: np.ndarray, q: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    if np.isinf(q):  # too few surveys for the level: the honest interval is unbounded
        return np.zeros_like(expected), np.full_like(expected, np.inf)
    if np.isfinite(q):
        return count_interval(expected, variance, q)
    z = NormalDist().inv_cdf(0.5 + level / 2)  # no surveys: the count's own Poisson-binomial spread (normal)
    sd = np.sqrt(np.maximum(variance, 0.0))
    return np.maximum(expected - z * sd, 0.0), expected + z * sd


def indicator_rows(
    p: np.ndarray,
    model: IndicatorModel,
    *,
    top_classes: np.ndarray | None = None,
    top_probability: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Every indicator of ``n`` pixels with data: ``p`` (n, S) probabilities; ``top_classes`` (n, K) habitat classes
    by decreasing probability and ``top_probability`` (n, K) theirs, when the model has habitats. Returns
    name -> (n,) float64 (flags as small integers)."""
    p = np.asarray(p, dtype="float64")
    n, _ = p.shape
    out: dict[str, np.ndarray] = {}
    for g, mask in model.groups.items():
        mu, var = count_moments(p, mask)
        lo, hi = _interval(mu, var, model.count_radius.get(g, np.nan), model.level)
        out[f"{g}_expected"], out[f"{g}_lower"], out[f"{g}_upper"] = mu, lo, hi
        if g != "richness":  # presence without thresholds: at least one of the group, occurrences independent
            # p is capped just below 1: log(0) = -inf times a species outside the group (0) would be NaN
            out[f"{g}_any"] = 1.0 - np.exp(np.log1p(-np.clip(p, 0.0, 1.0 - 1e-12)) @ mask.astype("float64"))
        if model.thresholds is not None:
            present = p >= np.where(np.isnan(model.thresholds), np.inf, model.thresholds)
            out[f"{g}_thresholded"] = (present & mask).sum(axis=1).astype("float64")
    out["shannon"] = shannon(p)
    hab = model.habitats
    invasive = np.asarray(model.groups.get("invasive", np.zeros(p.shape[1], bool)))
    if hab is not None:
        if top_classes is None or top_probability is None:
            raise ValueError("the model has habitat indicators: top_classes and top_probability are required")
        top1 = top_classes[:, 0]
        out["habitat_red_list"] = hab.red_list[top1].astype("float64")
        threat = hab.threatened
        out["threatened_habitat"] = threat[top1].astype("float64")
        members = class_sets(top_probability, hab.set_radius) if np.isfinite(hab.set_radius) else None
        if members is None:
            members = np.zeros_like(top_probability, dtype=bool)
            members[:, 0] = True
        out["habitat_set_size"] = members.sum(axis=1).astype("float64")
        threatened_members = (threat[top_classes] & members).sum(axis=1)
        out["threatened_habitat_set"] = np.select(
            [threatened_members == 0, threatened_members == members.sum(axis=1)], [0.0, 2.0], 1.0
        )
        out["ecosystem_health"] = health(p, top1, invasive, hab)
    if model.draws == 0:  # point values only (the virtual truth has no interval)
        return out
    # Monte-Carlo assemblages: each species present with its probability, independently
    rng = rng or np.random.default_rng(model.seed)
    draws_h = np.empty((model.draws, n))
    draws_e = np.empty((model.draws, n)) if hab is not None else None
    for k in range(model.draws):
        present = rng.random(p.shape) < p
        draws_h[k] = shannon(np.where(present, p, 0.0))  # the realised community, weighted as the expected one
        if draws_e is not None and top_classes is not None:
            draws_e[k] = health(present.astype("float64"), top_classes[:, 0], invasive, hab)
    alpha = (1.0 - model.level) / 2.0
    out["shannon_lower"], out["shannon_upper"] = np.quantile(draws_h, [alpha, 1.0 - alpha], axis=0)
    if draws_e is not None:
        with warnings.catch_warnings():  # pixels of a class without typical species are all-NaN: NaN bounds
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(draws_e, [alpha, 1.0 - alpha], axis=0) if n else (np.empty(0), np.empty(0))
        out["ecosystem_health_lower"], out["ecosystem_health_upper"] = lo, hi
    return out


INTEGER_VARIABLES = {
    "habitat_red_list": "int8",
    "threatened_habitat": "int8",
    "habitat_set_size": "int16",
    "threatened_habitat_set": "int8",
}


def indicator_blocks(
    p: np.ndarray,
    model: IndicatorModel,
    *,
    habitat_top: np.ndarray | None = None,
    habitat_top_probability: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Indicator arrays (y, x) of a tile: ``p`` (S, y, x) with NaN for no data; ``habitat_top`` (K, y, x) int16 class
    indices (-1 no data) and ``habitat_top_probability`` (K, y, x) float. A pixel is no data when a species or its
    habitat is. ``seed`` makes the Monte-Carlo draws of a tile reproducible (a resumed tile gets the same values)."""
    if model.calibration is not None:
        p = model.calibration.apply(p, axis=0)
    _, h, w = p.shape
    valid = ~np.isnan(p).any(axis=0)
    if model.habitats is not None:
        if habitat_top is None or habitat_top_probability is None:
            raise ValueError("the model has habitat indicators: habitat_top and habitat_top_probability are required")
        valid &= (habitat_top >= 0).all(axis=0)
    rows = indicator_rows(
        p[:, valid].T,
        model,
        top_classes=habitat_top[:, valid].T.astype("int64") if habitat_top is not None else None,
        top_probability=habitat_top_probability[:, valid].T if habitat_top_probability is not None else None,
        rng=np.random.default_rng([model.seed, seed]),
    )
    blocks: dict[str, np.ndarray] = {}
    for name in model.variables():
        dtype = INTEGER_VARIABLES.get(name, "float32")
        fill = NO_FLAG if dtype != "float32" else np.nan
        block = np.full((h, w), fill, dtype=dtype)
        block[valid] = rows[name]
        blocks[name] = block
    return blocks


def describe(name: str, model: IndicatorModel) -> dict[str, Any]:
    """CF attributes of an indicator: ``long_name``, ``units``, ``description`` (how it is derived), flags."""
    level = f"{model.level:.0%}"
    group, _, part = name.rpartition("_")
    what = {
        "richness": "species",
        "invasive": "invasive alien species (status table and/or the EU list of Union concern)",
        "threatened": "threatened species (IUCN VU, EN or CR, or flagged threatened in the status table)",
        "protected": "protected species (status table and/or Habitats Directive annexes)",
    }
    if group in what and part in ("expected", "lower", "upper", "thresholded", "any"):
        radius = model.count_radius.get(group, np.nan)
        if np.isinf(radius):
            calibrated = "too few surveys for the level: the interval is unbounded (0, inf)"
        elif np.isfinite(radius):
            calibrated = (
                f"split-conformal radius q={radius:.3f} (normalised residual |observed - expected| / (sd + 1)) "
                "calibrated on presence-absence surveys"
            )
        else:
            calibrated = "no surveys calibrated it: the Poisson-binomial normal interval (model-based)"
        texts = {
            "expected": (f"expected number of {what[group]}", "sum of the calibrated probabilities of the group"),
            "lower": (f"lower bound of the {level} interval of the number of {what[group]}", calibrated),
            "upper": (f"upper bound of the {level} interval of the number of {what[group]}", calibrated),
            "any": (
                f"probability that at least one of the {what[group]} is present",
                "1 - prod(1 - p) over the group (occurrences taken as independent); needs no threshold",
            ),
            "thresholded": (
                f"number of {what[group]} predicted present",
                "species at or above their threshold_max_tss (species without a threshold never count)",
            ),
        }
        long_name, description = texts[part]
        return {"long_name": long_name, "units": "1", "description": description}
    mc = (
        f"{level} interval over {model.draws} Monte-Carlo assemblages (each species present with its probability); "
        "the spread of the realised community, not calibrated against observations"
    )
    radius = model.habitats.set_radius if model.habitats is not None else np.nan
    flags = " ".join(RED_LIST)
    table: dict[str, dict[str, Any]] = {
        "shannon": {
            "long_name": "Shannon diversity of the expected assemblage",
            "units": "1",
            "description": "-sum(q ln q) with q = p / sum(p) over all species (natural log)",
        },
        "shannon_lower": {"long_name": f"lower bound of the {level} interval of shannon", "units": "1"},
        "shannon_upper": {"long_name": f"upper bound of the {level} interval of shannon", "units": "1"},
        "habitat_red_list": {
            "long_name": "European Red List category of the predicted habitat",
            "flag_values": list(range(len(RED_LIST))),
            "flag_meanings": flags,
            "description": "category of the most probable habitat class (EU28+ where assessed, else EU28); "
            f"{NO_FLAG} = unknown or no data",
        },
        "threatened_habitat": {
            "long_name": "the predicted habitat is threatened (Red List VU, EN or CR)",
            "flag_values": [0, 1],
            "flag_meanings": "not_threatened threatened",
            "description": f"from habitat_red_list of the most probable class; {NO_FLAG} = unknown or no data",
        },
        "habitat_set_size": {
            "long_name": f"number of habitat classes in the {level} conformal prediction set",
            "units": "1",
            "description": f"classes with probability >= 1 - q, q={radius:.3f} calibrated on labelled plots "
            "(least-ambiguous sets), the most probable class always; counted among the habitat map's top_k classes, "
            "so a value equal to top_k means top_k or more",
        },
        "threatened_habitat_set": {
            "long_name": "threatened classes in the conformal habitat set",
            "flag_values": [0, 1, 2],
            "flag_meanings": "none some all",
            "description": "whether the habitat is threatened whatever the set's class (2), may be (1), or is not (0)",
        },
        "ecosystem_health": {
            "long_name": "ecosystem health: typical-species completeness x (1 - invasive share)",
            "units": "1",
            "description": "completeness = mean probability of the predicted habitat's typical species / their mean "
            "frequency in reference plots of that habitat (capped at 1); invasive share = invasive_expected / "
            "richness_expected; NaN where the habitat has no typical species (docs/indicators.md)",
        },
        "ecosystem_health_lower": {"long_name": f"lower bound of the {level} interval of ecosystem_health"},
        "ecosystem_health_upper": {"long_name": f"upper bound of the {level} interval of ecosystem_health"},
    }
    attrs = dict(table[name])
    if name.endswith(("_lower", "_upper")):
        attrs.setdefault("units", "1")
        attrs["description"] = mc
    return attrs


def indicator_template(grid: Grid, model: IndicatorModel, tile: int) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The lazy, never computed ``indicators.zarr`` layout on ``grid`` (one chunk per tile) and its encoding."""
    shape = (grid.height, grid.width)
    data: dict[str, xr.DataArray] = {}
    encoding: dict[str, dict[str, Any]] = {}
    versions = "; ".join(f"{k}={v}" for k, v in model.versions.items())
    for name in model.variables():
        dtype = INTEGER_VARIABLES.get(name, "float32")
        attrs = describe(name, model)
        if versions:
            attrs["model_versions"] = versions
        data[name], encoding[name] = tiled_variable(
            ("y", "x"),
            shape,
            dtype=dtype,
            fill=NO_FLAG if dtype != "float32" else np.nan,
            chunks=(tile, tile),
            attrs=attrs,
        )
    return xr.Dataset(data, coords=grid.coords()), encoding


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


def class_index(codes: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Index of each code in ``classes`` (-1 where absent)."""
    where = {c: i for i, c in enumerate(classes)}
    return np.asarray([where.get(str(c), -1) for c in codes], dtype="int64")
