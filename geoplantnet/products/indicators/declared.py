"""Each indicator declared once: its name, dtype, CF attributes and computation (:data:`INDICATORS`). The variables a
model writes and their order (:func:`variables`), the store's layout (:func:`indicator_template`), the attributes
(:func:`describe`), a tile's values (:func:`indicator_rows`, :func:`indicator_blocks`) and the definitions table of
docs/indicators.md (:func:`definitions_table`) all derive from the declarations.

Adding an indicator is one :class:`Indicator` in :data:`INDICATORS` (its computation from :class:`Pixels`, which
holds what several indicators share), then the regenerated table pasted into docs/indicators.md (a test says when it
is stale). A per-group indicator is declared once for every count group of :data:`GROUPS`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import xarray as xr

from geoplantnet.core.grid import Grid
from geoplantnet.products.indicators.model import NO_FLAG, RED_LIST, IndicatorModel, health, interval, shannon
from geoplantnet.reports.markdown import table
from geoplantnet.storage.overviews import CLASS_ATTRS
from geoplantnet.storage.tiles import tiled_variable
from geoplantnet.validation.conformal import class_sets, count_moments

# the count groups, "richness" first, and what each counts (in the attributes and the docs)
GROUPS = {
    "richness": "species",
    "invasive": "invasive alien species (status table and/or the EU list of Union concern)",
    "threatened": "threatened species (IUCN VU, EN or CR, or flagged threatened in the status table)",
    "protected": "protected species (status table and/or Habitats Directive annexes)",
}


class Pixels:
    """The ``n`` pixels with data the indicators are computed from: ``p`` (n, S) probabilities, the habitat classes
    (n, K) by decreasing probability and theirs (with habitats), the model. What several indicators share (a group's
    count moments and interval, the habitat set, the Monte-Carlo assemblages) is computed once, on first use."""

    def __init__(
        self,
        p: np.ndarray,
        model: IndicatorModel,
        top_classes: np.ndarray | None,
        top_probability: np.ndarray | None,
        rng: np.random.Generator | None,
    ) -> None:
        self.p = np.asarray(p, dtype="float64")
        self.model = model
        self.top, self.top_p = top_classes, top_probability
        self._rng = rng
        self._moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._intervals: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def habitats(self) -> Any:
        """The model's :class:`~geoplantnet.products.indicators.model.HabitatIndicatorModel`."""
        return self.model.habitats

    def moments(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """Expected count and Poisson-binomial variance of ``group``."""
        if group not in self._moments:
            self._moments[group] = count_moments(self.p, self.model.groups[group])
        return self._moments[group]

    def interval(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """The interval of ``group``'s count: conformal, normal without surveys, unbounded with too few."""
        if group not in self._intervals:
            mu, var = self.moments(group)
            self._intervals[group] = interval(mu, var, self.model.count_radius.get(group, np.nan), self.model.level)
        return self._intervals[group]

    @cached_property
    def present(self) -> np.ndarray:
        """(n, S) species at or above their threshold (NaN thresholds never)."""
        return self.p >= np.where(np.isnan(self.model.thresholds), np.inf, self.model.thresholds)

    @cached_property
    def invasive(self) -> np.ndarray:
        """(S,) the invasive group's mask (none without it)."""
        return np.asarray(self.model.groups.get("invasive", np.zeros(self.p.shape[1], bool)))

    @property
    def top1(self) -> np.ndarray:
        """(n,) the most probable habitat class."""
        return self.top[:, 0]

    @cached_property
    def members(self) -> np.ndarray:
        """(n, K) membership of the top classes in the conformal habitat set (the top class only, uncalibrated)."""
        radius = self.habitats.set_radius
        members = class_sets(self.top_p, radius) if np.isfinite(radius) else None
        if members is None:
            members = np.zeros_like(self.top_p, dtype=bool)
            members[:, 0] = True
        return members

    @cached_property
    def monte_carlo(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Lower and upper quantiles of Shannon (and ecosystem health) over Monte-Carlo assemblages: each species
        present with its probability, independently; one stream of draws for both."""
        model, p, hab = self.model, self.p, self.habitats
        n = p.shape[0]
        rng = self._rng or np.random.default_rng(model.seed)
        draws_h = np.empty((model.draws, n))
        draws_e = np.empty((model.draws, n)) if hab is not None else None
        for k in range(model.draws):
            present = rng.random(p.shape) < p
            draws_h[k] = shannon(np.where(present, p, 0.0))  # the realised community, weighted as the expected one
            if draws_e is not None and self.top is not None:
                draws_e[k] = health(present.astype("float64"), self.top1, self.invasive, hab)
        alpha = (1.0 - model.level) / 2.0
        lo, hi = np.quantile(draws_h, [alpha, 1.0 - alpha], axis=0)
        out = {"shannon": (lo, hi)}
        if draws_e is not None:
            with warnings.catch_warnings():  # pixels of a class without typical species are all-NaN: NaN bounds
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = np.nanquantile(draws_e, [alpha, 1.0 - alpha], axis=0) if n else (np.empty(0), np.empty(0))
            out["ecosystem_health"] = (lo, hi)
        return out


@dataclass(frozen=True)
class When:
    """Which models write an indicator (``test(model, group)``), in words for the docs."""

    text: str
    test: Callable[[IndicatorModel, str], bool]


ALWAYS = When("always", lambda model, group: True)
NOT_RICHNESS = When("every group but richness", lambda model, group: group != "richness")
THRESHOLDS = When("with thresholds", lambda model, group: model.thresholds is not None)
HABITATS = When("with a habitat map", lambda model, group: model.habitats is not None)

# templates of the attributes' text: {level}, {what} (the group's), {calibrated} (the group's interval), {draws},
# {radius} (the habitat sets'), {no_flag}
MONTE_CARLO = (
    "{level} interval over {draws} Monte-Carlo assemblages (each species present with its probability); "
    "the spread of the realised community, not calibrated against observations"
)


@dataclass(frozen=True)
class Indicator:
    """One indicator, declared once. ``name``: the variable (the part after ``<group>_`` when ``per_group``: one
    variable per count group of the model); ``compute(pixels, group)`` -> (n,) float64 (flags as small integers);
    ``long_name`` and ``description``: templates of the CF attributes; ``units`` or ``flags`` (``flag_values`` are
    their indices); ``doc``: the definition in docs/indicators.md; ``monte_carlo``: a bound over the Monte-Carlo
    assemblages (not computed without draws)."""

    name: str
    compute: Callable[[Pixels, str], np.ndarray]
    long_name: str
    description: str
    doc: str
    dtype: str = "float32"
    units: str | None = "1"
    flags: tuple[str, ...] | None = None
    per_group: bool = False
    when: When = ALWAYS
    monte_carlo: bool = False

    @property
    def fill(self) -> float | int:
        """The no-data value: NaN, or -1 for a flag."""
        return NO_FLAG if self.dtype != "float32" else np.nan

    def variable(self, group: str = "") -> str:
        """The variable's name (of ``group`` for a per-group indicator)."""
        return f"{group}_{self.name}" if self.per_group else self.name

    def attrs(self, model: IndicatorModel, group: str = "") -> dict[str, Any]:
        """CF attributes: ``long_name``, ``units`` or ``flag_values``/``flag_meanings``, ``description``."""
        text = _texts(model, group)
        out: dict[str, Any] = {"long_name": self.long_name.format(**text)}
        if self.units is not None:
            out["units"] = self.units
        if self.flags is not None:
            out["flag_values"] = list(range(len(self.flags)))
            out["flag_meanings"] = " ".join(self.flags)
            out.update(CLASS_ATTRS)
        out["description"] = self.description.format(**text)
        return out


def _texts(model: IndicatorModel, group: str) -> dict[str, Any]:
    """What the attribute templates name."""
    text: dict[str, Any] = {"level": f"{model.level:.0%}", "draws": model.draws, "no_flag": NO_FLAG}
    text["radius"] = model.habitats.set_radius if model.habitats is not None else np.nan
    if group:
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
        text |= {"what": GROUPS[group], "calibrated": calibrated}
    return text


def _any(px: Pixels, group: str) -> np.ndarray:
    # p is capped just below 1: log(0) = -inf times a species outside the group (0) would be NaN
    return 1.0 - np.exp(np.log1p(-np.clip(px.p, 0.0, 1.0 - 1e-12)) @ px.model.groups[group].astype("float64"))


def _threatened_set(px: Pixels, group: str) -> np.ndarray:
    threatened_members = (px.habitats.threatened[px.top] & px.members).sum(axis=1)
    return np.select([threatened_members == 0, threatened_members == px.members.sum(axis=1)], [0.0, 2.0], 1.0)


def _bounds(of: str, when: When, doc: str) -> tuple[Indicator, Indicator]:
    """``<of>_lower`` and ``<of>_upper``: the Monte-Carlo interval of ``of``."""
    return tuple(  # type: ignore[return-value]
        Indicator(
            f"{of}_{side}",
            lambda px, group, i=i: px.monte_carlo[of][i],
            f"{side} bound of the {{level}} interval of {of}",
            MONTE_CARLO,
            f"{side} bound of the {doc}",
            when=when,
            monte_carlo=True,
        )
        for i, side in enumerate(("lower", "upper"))
    )


COUNT_INTERVAL = (
    "bound of the `indicators.level` interval of the group's count a survey plot would find: split-conformal, or "
    "the Poisson-binomial normal interval without surveys (Uncertainty, below)"
)
MC_INTERVAL = "`indicators.level` interval over `indicators.draws` Monte-Carlo assemblages (not calibrated)"

INDICATORS: tuple[Indicator, ...] = (
    # per count group, in this order for each group of the model
    Indicator(
        "expected",
        lambda px, group: px.moments(group)[0],
        "expected number of {what}",
        "sum of the calibrated probabilities of the group",
        "Σ p over the group's species: the expected number a survey plot would find (p are calibrated probabilities "
        "when the species model was calibrated, `species.zarr`'s `output_scale` says so)",
        per_group=True,
    ),
    Indicator(
        "lower",
        lambda px, group: px.interval(group)[0],
        "lower bound of the {level} interval of the number of {what}",
        "{calibrated}",
        f"lower {COUNT_INTERVAL}",
        per_group=True,
    ),
    Indicator(
        "upper",
        lambda px, group: px.interval(group)[1],
        "upper bound of the {level} interval of the number of {what}",
        "{calibrated}",
        f"upper {COUNT_INTERVAL}",
        per_group=True,
    ),
    Indicator(
        "any",
        _any,
        "probability that at least one of the {what} is present",
        "1 - prod(1 - p) over the group (occurrences taken as independent); needs no threshold",
        "probability that at least one species of the group is present, 1 − Π(1 − p) over the group (occurrences "
        "taken as independent): presence without thresholds",
        per_group=True,
        when=NOT_RICHNESS,
    ),
    Indicator(
        "thresholded",
        lambda px, group: (px.present & px.model.groups[group]).sum(axis=1).astype("float64"),
        "number of {what} predicted present",
        "species at or above their threshold_max_tss (species without a threshold never count)",
        "number of the group's species with p ≥ their `threshold_max_tss` (species without a threshold never count)",
        per_group=True,
        when=THRESHOLDS,
    ),
    # once per pixel
    Indicator(
        "shannon",
        lambda px, group: shannon(px.p),
        "Shannon diversity of the expected assemblage",
        "-sum(q ln q) with q = p / sum(p) over all species (natural log)",
        "Shannon diversity of the expected assemblage, −Σ q ln q with q = p / Σ p (natural log)",
    ),
    *_bounds("shannon", ALWAYS, MC_INTERVAL),
    Indicator(
        "habitat_red_list",
        lambda px, group: px.habitats.red_list[px.top1].astype("float64"),
        "European Red List category of the predicted habitat",
        "category of the most probable habitat class (EU28+ where assessed, else EU28); {no_flag} = unknown or no data",
        "European Red List of Habitats category (LC NT VU EN CR CO DD NE) of the predicted (most probable) habitat "
        "class, EU28+ where assessed, else EU28; a class absent from the list takes its nearest listed ancestor's "
        "category",
        dtype="int8",
        units=None,
        flags=RED_LIST,
        when=HABITATS,
    ),
    Indicator(
        "threatened_habitat",
        lambda px, group: px.habitats.threatened[px.top1].astype("float64"),
        "the predicted habitat is threatened (Red List VU, EN or CR)",
        "from habitat_red_list of the most probable class; {no_flag} = unknown or no data",
        "the predicted habitat's category is VU, EN or CR",
        dtype="int8",
        units=None,
        flags=("not_threatened", "threatened"),
        when=HABITATS,
    ),
    Indicator(
        "habitat_set_size",
        lambda px, group: px.members.sum(axis=1).astype("float64"),
        "number of habitat classes in the {level} conformal prediction set",
        "classes with probability >= 1 - q, q={radius:.3f} calibrated on labelled plots (least-ambiguous sets), the "
        "most probable class always; counted among the habitat map's top_k classes, so a value equal to top_k means "
        "top_k or more",
        "size of the conformal habitat prediction set (Uncertainty, below)",
        dtype="int16",
        when=HABITATS,
    ),
    Indicator(
        "threatened_habitat_set",
        _threatened_set,
        "threatened classes in the conformal habitat set",
        "whether the habitat is threatened whatever the set's class (2), may be (1), or is not (0)",
        "0: no class of the set is threatened, 1: some are, 2: all are (the pixel's habitat is threatened whichever "
        "class of the set it is)",
        dtype="int8",
        units=None,
        flags=("none", "some", "all"),
        when=HABITATS,
    ),
    Indicator(
        "ecosystem_health",
        lambda px, group: health(px.p, px.top1, px.invasive, px.habitats),
        "ecosystem health: typical-species completeness x (1 - invasive share)",
        "completeness = mean probability of the predicted habitat's typical species / their mean frequency in "
        "reference plots of that habitat (capped at 1); invasive share = invasive_expected / richness_expected; NaN "
        "where the habitat has no typical species (docs/indicators.md)",
        "typical-species completeness × (1 − invasive share), in [0, 1] (Ecosystem health, below)",
        when=HABITATS,
    ),
    *_bounds("ecosystem_health", HABITATS, MC_INTERVAL),
)


def declared(model: IndicatorModel) -> list[tuple[Indicator, str]]:
    """The indicators ``model`` writes, each with its group ("" for one per pixel), in store order: every group's
    per-group indicators, group by group, then the others."""
    per_group = [(ind, g) for g in model.groups for ind in INDICATORS if ind.per_group and ind.when.test(model, g)]
    return per_group + [(ind, "") for ind in INDICATORS if not ind.per_group and ind.when.test(model, "")]


def variables(model: IndicatorModel) -> list[str]:
    """The names of the variables ``model`` writes, in store order."""
    return [ind.variable(g) for ind, g in declared(model)]


def lookup(name: str) -> tuple[Indicator, str]:
    """The declaration of the variable ``name`` and its group ("" for one per pixel)."""
    group, _, part = name.rpartition("_")
    for ind in INDICATORS:
        if (ind.per_group and group in GROUPS and part == ind.name) or (not ind.per_group and name == ind.name):
            return ind, group if ind.per_group else ""
    raise KeyError(name)


def describe(name: str, model: IndicatorModel) -> dict[str, Any]:
    """CF attributes of an indicator: ``long_name``, ``units`` or flags, ``description`` (how it is derived)."""
    ind, group = lookup(name)
    return ind.attrs(model, group)


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
    name -> (n,) float64 (flags as small integers); without draws, point values only (no Monte-Carlo bounds)."""
    if model.habitats is not None and (top_classes is None or top_probability is None):
        raise ValueError("the model has habitat indicators: top_classes and top_probability are required")
    pixels = Pixels(p, model, top_classes, top_probability, rng)
    return {
        ind.variable(g): ind.compute(pixels, g)
        for ind, g in declared(model)
        if not (ind.monte_carlo and model.draws == 0)
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
    for ind, g in declared(model):
        name = ind.variable(g)
        block = np.full((h, w), ind.fill, dtype=ind.dtype)
        block[valid] = rows[name]
        blocks[name] = block
    return blocks


def indicator_template(grid: Grid, model: IndicatorModel, tile: int) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The lazy, never computed ``indicators.zarr`` layout on ``grid`` (one chunk per tile) and its encoding."""
    shape = (grid.height, grid.width)
    data: dict[str, xr.DataArray] = {}
    encoding: dict[str, dict[str, Any]] = {}
    versions = "; ".join(f"{k}={v}" for k, v in model.versions.items())
    for ind, g in declared(model):
        name, attrs = ind.variable(g), ind.attrs(model, g)
        if versions:
            attrs["model_versions"] = versions
        data[name], encoding[name] = tiled_variable(
            ("y", "x"), shape, dtype=ind.dtype, fill=ind.fill, chunks=(tile, tile), attrs=attrs
        )
    return xr.Dataset(data, coords=grid.coords()), encoding


def definitions_table(groups: Mapping[str, str] = GROUPS) -> str:
    """The Markdown table of docs/indicators.md's definitions: the count groups, then every declared indicator (its
    variable, dtype, when it is written, definition)."""
    group_rows = [(f"`{g}`", what) for g, what in groups.items()]
    rows = [
        (
            f"`<group>_{ind.name}`" if ind.per_group else f"`{ind.name}`",
            ind.dtype if ind.flags is None else f"{ind.dtype} flags: {' '.join(ind.flags)}",
            ind.when.text,
            ind.doc,
        )
        for ind in INDICATORS
    ]
    lines = [*table(["group", "counts"], group_rows), "", *table(["variable", "dtype", "written", "definition"], rows)]
    return "\n".join(lines) + "\n"
