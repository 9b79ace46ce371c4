"""The error of an impact's change, beyond the networks' own spread: the count model's calibration error per
land-cover class, measured on held-out surveys, corrects the change and widens its interval; a class too rare among
the surveys to measure is an extrapolation, flagged and given the error any measured class could have.

Why per class: the species network's errors are not the same everywhere. On the demo region it over-predicts the
richness of broadleaf woodland and under-predicts that of urban cells, so sealing a wood doubled the true loss
(-16 against -8) although the scenario's edited imagery looks like the region's own urban cells: the network says
about those what it says about the edited footprint. A change from class a to class b carries the difference of the
two classes' errors; the surveys measure each (the mean residual of the counts: observed - expected), and its
uncertainty (the mean's standard error and the between-site error ``tau2``, a footprint's own offset from its
class, taken as one for the whole footprint: its pixels are neighbours).

The estimate of a zone's mean change is the models' change plus ``mean(bias[after] - bias[before])`` over its
pixels; a pixel whose class does not change (the buffer, the surroundings) gets no correction, so nothing is added
where the land cover stays. Its interval is normal at ``level`` with the variance of the Monte-Carlo draws plus the
correction's (:func:`change_estimates`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from geoplantnet.core.grid import Grid
from geoplantnet.inference.reader import MapSources
from geoplantnet.products.impact import ZONES, Assessment, ImpactPlan
from geoplantnet.products.indicators import IndicatorModel
from geoplantnet.products.scenarios import dominant_class
from geoplantnet.samples.plots import Plots
from geoplantnet.validation.conformal import Sampled, StratumErrors, presence_matrix, stratum_errors

COUNT_GROUPS = ("richness", "threatened", "invasive", "protected")


def land_cover(sources: MapSources, window: Grid, env_names: Sequence[str], variable: str) -> np.ndarray:
    """The land-cover class (y, x) of ``window``'s cells as the models read it (-1: no data)."""
    env = sources.environment(window, list(env_names))
    return dominant_class(env, list(env_names), variable)[0]


def survey_classes(
    sources: MapSources, grid: Grid, tile: int, env_names: Sequence[str], variable: str, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """The land-cover class of the cells under points ``x``, ``y`` (-1 off the grid), read tile by tile (only the
    tiles holding points)."""
    row, col = grid.index(np.asarray(x), np.asarray(y))
    out = np.full(row.shape, -1, dtype="int16")
    for t in grid.tiles(tile):
        ys, xs = t.slices
        here = (row >= ys.start) & (row < ys.stop) & (col >= xs.start) & (col < xs.stop)
        if here.any():
            classes = land_cover(sources, grid.subgrid(ys, xs), env_names, variable)
            out[here] = classes[row[here] - ys.start, col[here] - xs.start]
    return out


def survey_errors(
    model: IndicatorModel, surveys: Plots, sampled: Sampled, species: Sequence[str], classes: np.ndarray,
    min_surveys: int,
) -> StratumErrors:  # fmt: skip
    """The count groups' error per land-cover class at the surveys (``sampled``: the fused predictor's values there,
    ``classes``: their class), on the probabilities' calibrated scale, as the assessment counts them."""
    p, _, _, valid = sampled
    p = p[valid]
    if model.calibration is not None:
        p = model.calibration.apply(p, axis=1)
    observed = presence_matrix(surveys.subset(valid), list(species))
    groups = {g: np.asarray(m) for g, m in model.groups.items() if g in COUNT_GROUPS}
    return stratum_errors(p, observed, groups, np.asarray(classes)[valid], min_surveys)


def change_estimates(
    plan: ImpactPlan, a: Assessment, before_classes: np.ndarray
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per count group and zone: the models' mean change per pixel, the survey correction, the estimate and its
    interval at ``plan.level``, its standard deviation's parts, and whether a class was unmeasured (extrapolated).
    ``before_classes`` (y, x): the window's land cover before; the footprint's is the scenario's after."""
    after_classes = np.where(a.zones == 1, a.edit.code, before_classes)
    finite = np.isfinite(a.before["richness_expected"])
    z = float(norm.ppf((1 + plan.level) / 2))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, drawn in a.draws["before"].items():
        key = f"{group}_expected"
        if group == "richness_pixels" or key not in a.before:
            continue
        change = a.after[key] - a.before[key]
        out[group] = {}
        for i, name in enumerate(ZONES):
            m = (a.zones == i + 1) & finite
            n = max(int(m.sum()), 1)
            model_change = float(np.nansum(change[m]) / n)
            spread = (a.draws["after"][group][:, i] - drawn[:, i]) / n
            var_draws = float(np.var(spread, ddof=1)) if spread.size > 1 else 0.0
            fix, var_fix, unmeasured = _correction(plan.errors, group, before_classes[m], after_classes[m], n)
            sd = float(np.sqrt(var_draws + var_fix))
            estimate = model_change + fix
            out[group][name] = {
                "model_change": model_change,
                "correction": fix,
                "change": estimate,
                "lower": estimate - z * sd,
                "upper": estimate + z * sd,
                "sd_draws": float(np.sqrt(var_draws)),
                "sd_calibration": float(np.sqrt(var_fix)),
                "extrapolated_classes": unmeasured,
            }
    return out


def _correction(
    errors: StratumErrors | None, group: str, before: np.ndarray, after: np.ndarray, n: int
) -> tuple[float, float, list[int]]:
    """The mean survey correction of ``n`` pixels' change from classes ``before`` to ``after``, its variance and the
    classes without enough surveys. Only pixels whose class changes count."""
    moved = before != after
    if errors is None or not moved.any():
        return 0.0, 0.0, []
    fix, var_bias, tau_before, tau_after, unmeasured = 0.0, 0.0, 0.0, 0.0, set()
    weights: dict[int, float] = {}
    for b, c in zip(before[moved].tolist(), after[moved].tolist(), strict=True):
        weights[c] = weights.get(c, 0.0) + 1.0 / n
        weights[b] = weights.get(b, 0.0) - 1.0 / n
        for code, sign in ((b, -1.0), (c, 1.0)):
            err, measured = errors.error(group, code)
            if not measured and code >= 0:
                unmeasured.add(int(code))
            fix += sign * err.bias / n
            if sign > 0:
                tau_after += np.sqrt(err.tau2) / n
            else:
                tau_before += np.sqrt(err.tau2) / n
    for code, w in weights.items():
        var_bias += w**2 * errors.error(group, code)[0].se ** 2
    # a footprint's own offsets from its classes' errors: one each before and after (neighbouring pixels share it)
    return float(fix), float(var_bias + tau_before**2 + tau_after**2), sorted(unmeasured)


def extrapolation(plan: ImpactPlan, a: Assessment) -> dict[str, Any] | None:
    """What the report says of the footprint's new class: how many surveys measured the models' error there, and
    whether the interval had to take the pooled error instead (an extrapolation: the class is rare in the data)."""
    if plan.errors is None:
        return None
    code = int(a.edit.code)
    n = plan.errors.surveys(code)
    measured = n >= plan.errors.min_surveys
    return {
        "class": code,
        "surveys": n,
        "min_surveys": plan.errors.min_surveys,
        "measured": measured,
        "message": (
            f"the models' error in class {code} was measured on {n} surveys"
            if measured
            else f"class {code} holds {n} of the surveys (fewer than {plan.errors.min_surveys}): the models "
            "extrapolate there, so the change is not corrected for that class and its interval takes the error any "
            "measured class has (the spread of their biases and their site error): wider, not refused"
        ),
    }


def errors_summary(errors: StratumErrors | None) -> Mapping[str, Any] | None:
    """The per-class errors as the summary records them (rounded)."""
    if errors is None:
        return None

    def row(e: Any) -> dict[str, Any]:
        return {"surveys": e.n, "bias": round(e.bias, 3), "se": round(e.se, 3), "tau": round(float(np.sqrt(e.tau2)), 3)}

    return {g: {str(c): row(e) for c, e in sorted(per.items())} for g, per in errors.groups.items()}


def estimates(plan: ImpactPlan, a: Assessment) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`change_estimates` of ``a``, the window's land cover read as the models read it."""
    before = land_cover(plan.sources, a.grid, plan.env_names, a.edit.scenario.variable)
    return change_estimates(plan, a, before)
