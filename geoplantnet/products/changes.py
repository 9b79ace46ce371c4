"""Change maps between two years of the indicator and habitat maps, with the noise that separates change from
chance, compared like with like.

A year-to-year difference of a map holds real change and noise: another year's clouds, phenology and acquisition
dates fed to the same model. Two years that saw different seasons clear differ by their cloud gaps as well as by the
landscape, so each pixel's noise is that of its **coverage stratum**: the number of composite seasons the species
model saw clear in both years and the number it saw in one year only (``clear_seasons`` of ``species.zarr``, per
year). Annual monitoring sees little real change in a year, so the noise of each indicator's difference is estimated
from the differences themselves, robustly, per stratum: the shift is their median and the noise the median
absolute deviation x 1.4826 (the standard deviation under normal noise, unmoved while fewer than half of the pixels
changed) of the centred differences per unit of each pixel's **paired model spread** (both years' interval
half-widths added in quadrature: a pixel the model is unsure of needs a larger difference); a stratum with fewer than
``MIN_STRATUM`` sampled pixels takes the pooled estimate (:mod:`geoplantnet.products.change_noise`). A pixel's
change is scored by ``z = (difference - shift) / (noise x spread)`` and its
``_change_probability`` is ``1 - 2 Phi(-|z|)``: the probability, under the pixel's noise model, that noise alone
gives a smaller departure. A change is flagged where ``|z|`` exceeds the Bonferroni bound of a map-wide false-alarm
rate (``refresh.false_alarm_rate``: the chance that noise alone flags any pixel of the map, over every pixel and every
indicator that decides ``changed``), unless ``refresh.change_z`` sets the bound. A habitat transition is reported
only where the most probable class changed *and* each year's conformal prediction set leaves out the other year's
class (a set holding every stored class may hold more, so it excludes nothing), so two readings of an ambiguous pixel
are not a transition; it decides ``changed`` only when listed in ``refresh.change_indicators`` (its per-pixel false
alarms are those of two 90 % sets, not the map-wide rate).

Variables (y, x) of a year in ``changes.zarr``, the change from the previous mapped year:

- ``<indicator>_change`` float32: the difference (this year - previous), NaN = no data
- ``<indicator>_change_flag`` int8: 0 within the noise, 1 significant decrease, 2 significant increase; -1 no data
- ``<indicator>_change_probability`` float32: 1 - the two-sided tail probability of the difference under the
  pixel's noise; NaN = no data
- ``habitat_transition`` int8: 1 a significant transition, 0 none; -1 no data
- ``habitat_from`` / ``habitat_to`` int16: the classes of a significant transition (index in habitat_code), -1 else
- ``seasons_compared`` int16: bitmask of the seasons seen clear in both years (-1: coverage not recorded)
- ``changed`` int8: 1 where any indicator of ``refresh.change_indicators`` is significant (the detection map), 0
  not, -1 no data
- ``changed_probability`` float32: 1 - the Bonferroni-combined tail probability of those indicators

The product ``changes`` (registered here): a yearly product of the annual refresh that requires the indicator series
(and reads the habitat series when there is one, and the species series' coverage); its plan maps nothing in a
series' first year.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from scipy.special import ndtr

from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.products.base import Product, TilePlan, get, read_input, register
from geoplantnet.products.change_noise import (
    UNKNOWN,
    Noise,
    coverage_stratum,
    family_z,
    fit_noise,
    interval_names,
    spread_of,
)
from geoplantnet.products.species_map import COVERAGE
from geoplantnet.storage.overviews import CLASS_ATTRS
from geoplantnet.storage.store import exists, open_store, zarr_store
from geoplantnet.storage.tiles import TileOutput, tiled_variable, write_tile_blocks
from geoplantnet.storage.years import complete_slot, previous_year, year_records
from geoplantnet.validation.conformal import class_sets

PRODUCT = "changes"
INDICATORS = ("richness_expected", "invasive_expected", "threatened_expected", "shannon", "ecosystem_health")
HABITAT = "habitat_transition"
NO_FLAG = -1


@dataclass(frozen=True)
class ChangeModel:
    """Per indicator: its :class:`Noise`; ``z`` the bound ``|z|`` must exceed; the habitat sets' conformal radius of
    each year (NaN: top class only); what decides ``changed``; whether coverage is compared."""

    noises: Mapping[str, Noise]
    z: float
    habitat_radius: tuple[float, float] | None  # (previous year, this year); None: no habitat maps
    decides: tuple[str, ...] = ("richness_expected",)
    coverage: bool = False

    @property
    def indicators(self) -> list[str]:
        return list(self.noises)

    @property
    def shift(self) -> dict[str, float]:
        """The pooled shift of each indicator's difference."""
        return {name: n.shift for name, n in self.noises.items()}

    @property
    def noise(self) -> dict[str, float]:
        """The pooled noise of each indicator's difference."""
        return {name: n.noise for name, n in self.noises.items()}

    def tests(self) -> list[str]:
        """The indicators whose z-tests decide ``changed`` (the Bonferroni family of each pixel)."""
        return [name for name in self.decides if name in self.noises]

    def variables(self) -> list[str]:
        """Variable names in store order."""
        out = [v for name in self.indicators for v in (f"{name}_change", f"{name}_change_flag")]
        out += [f"{name}_change_probability" for name in self.indicators]
        if self.habitat_radius is not None:
            out += [HABITAT, "habitat_from", "habitat_to"]
        if self.coverage:
            out.append("seasons_compared")
        return [*out, "changed", "changed_probability"]


def fit_change_model(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    *,
    z: float,
    habitat_radius: tuple[float, float] | None,
    coverage: tuple[np.ndarray, np.ndarray] | None = None,
    decides: Sequence[str] = ("richness_expected",),
) -> ChangeModel:
    """The noise of each indicator present in both years, from (a sample of) their pixels and, when given, both
    years' ``clear_seasons`` of the same pixels (``coverage``)."""
    stratum = coverage_stratum(*coverage) if coverage is not None else None
    noises = {
        name: fit_noise(
            np.asarray(after[name], "float64") - np.asarray(before[name], "float64"),
            stratum,
            spread_of(before, after, name),
        )
        for name in INDICATORS
        if name in before and name in after
    }
    return ChangeModel(noises, z, habitat_radius, tuple(decides), coverage is not None)


def change_blocks(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    model: ChangeModel,
    *,
    coverage: tuple[np.ndarray, np.ndarray] | None = None,
    habitat_before: tuple[np.ndarray, np.ndarray] | None = None,
    habitat_after: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Change arrays (y, x) of a tile from both years' indicators (name -> (y, x)), ``clear_seasons`` ((y, x) of
    each year) and habitat maps ((K, y, x) classes, (K, y, x) probabilities)."""
    first = next(iter(after.values()))
    shape = np.shape(first)
    out: dict[str, np.ndarray] = {}
    any_change = np.zeros(shape, dtype=bool)
    valid = np.ones(shape, dtype=bool)
    stratum = coverage_stratum(*coverage) if coverage is not None else None
    if stratum is None:
        stratum = np.full(shape, UNKNOWN)
    tails = []
    for name in model.indicators:
        delta = (np.asarray(after[name], "float64") - np.asarray(before[name], "float64")).astype("float32")
        ok = np.isfinite(delta)
        shift, noise = model.noises[name].at(stratum)
        if model.noises[name].relative:  # the pixel's own model spread of the difference
            noise = noise * spread_of(before, after, name)
        z = (delta - shift) / noise
        flag = np.where(z < -model.z, 1, np.where(z > model.z, 2, 0)).astype("int8")
        flag[~ok] = NO_FLAG
        tail = 2.0 * ndtr(-np.abs(z))  # NaN where there is no difference
        out[f"{name}_change"], out[f"{name}_change_flag"] = delta, flag
        out[f"{name}_change_probability"] = (1.0 - tail).astype("float32")
        if name in model.decides:
            any_change |= flag > 0
            tails.append(tail)
        if name == "richness_expected":
            valid &= ok  # richness is defined wherever the species maps are
    if model.habitat_radius is not None:
        if habitat_before is None or habitat_after is None:
            raise ValueError("the change model has habitats: both years' habitat maps are required")
        (c0, p0), (c1, p1) = habitat_before, habitat_after
        known = (c0[0] >= 0) & (c1[0] >= 0)
        moved = known & (c0[0] != c1[0])
        in_set0 = _in_set(c0, p0, c1[0], model.habitat_radius[0])
        in_set1 = _in_set(c1, p1, c0[0], model.habitat_radius[1])
        transition = moved & ~in_set0 & ~in_set1
        out[HABITAT] = np.where(known, transition, NO_FLAG).astype("int8")
        out["habitat_from"] = np.where(transition, c0[0], NO_FLAG).astype("int16")
        out["habitat_to"] = np.where(transition, c1[0], NO_FLAG).astype("int16")
        if HABITAT in model.decides:
            any_change |= transition
        valid &= known
    if model.coverage:
        a, b = (np.asarray(c, np.int64) for c in coverage) if coverage is not None else (stratum, stratum)
        out["seasons_compared"] = np.where((a >= 0) & (b >= 0), a & b, NO_FLAG).astype("int16")
    out["changed"] = np.where(valid, any_change, NO_FLAG).astype("int8")
    # Bonferroni: the smallest tail probability of the family, times its size
    combined = np.minimum(np.min(np.stack(tails), axis=0) * len(tails), 1.0) if tails else np.ones(shape)
    out["changed_probability"] = np.where(valid, 1.0 - combined, np.nan).astype("float32")
    return out


def _in_set(classes: np.ndarray, probability: np.ndarray, other: np.ndarray, radius: float) -> np.ndarray:
    """Whether ``other`` (y, x) may be in the conformal set made of ``classes``/``probability`` (K, y, x): a set
    holding all K stored classes may hold more, so there any class counts as in it (no transition is claimed)."""
    prob = np.moveaxis(probability, 0, -1)
    if np.isfinite(radius):
        members = class_sets(prob, radius)
    else:
        members = np.zeros(prob.shape, bool)
        members[..., 0] = True
    listed = ((np.moveaxis(classes, 0, -1) == other[..., None]) & members).any(axis=-1)
    return listed | members[..., -1]


INTEGER = {
    "habitat_transition": "int8",
    "habitat_from": "int16",
    "habitat_to": "int16",
    "seasons_compared": "int16",
    "changed": "int8",
}


def change_attrs(name: str, model: ChangeModel, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """CF attributes of a change variable, with how it was decided."""
    strata = "per coverage stratum (seasons clear in both years, in one only)" if model.coverage else "map-wide"
    if name.endswith("_change"):
        base = name.removesuffix("_change")
        return {
            "long_name": f"change of {base} since the previous mapped year",
            "units": "1",
            "description": f"{base} this year - {base} the previous year; pooled shift {model.shift[base]:.4g}, "
            f"noise (median absolute deviation x 1.4826) {model.noise[base]:.4g}"
            f"{' per unit of paired model spread' if model.noises[base].relative else ''}, {strata}",
        }
    if name.endswith("_change_flag"):
        base = name.removesuffix("_change_flag")
        return {
            "long_name": f"significant change of {base}",
            "flag_values": [0, 1, 2],
            "flag_meanings": "within_noise decrease increase",
            "description": f"|change - shift| > {model.z:.4g} x noise (see {base}_change); {NO_FLAG} = no data",
        }
    if name.endswith("_change_probability"):
        base = name.removesuffix("_change_probability")
        return {
            "long_name": f"probability that the change of {base} is more than noise",
            "units": "1",
            "description": "1 - 2 Phi(-|z|), z = (change - shift) / noise of the pixel's coverage stratum: the "
            "probability under the noise model that noise alone gives a smaller departure; NaN = no data",
        }
    codes = " ".join(classes or [])
    texts: dict[str, dict[str, Any]] = {
        "habitat_transition": {
            "long_name": "significant habitat transition since the previous mapped year",
            "flag_values": [0, 1],
            "flag_meanings": "none transition",
            "description": "the most probable class changed and each year's conformal habitat set leaves out the "
            f"other year's class; {NO_FLAG} = no data",
        },
        "habitat_from": {
            "long_name": "habitat class before a significant transition (index in habitat_code)",
            "description": f"{NO_FLAG} where no transition",
            "flag_meanings": codes,
        },
        "habitat_to": {
            "long_name": "habitat class after a significant transition (index in habitat_code)",
            "description": f"{NO_FLAG} where no transition",
            "flag_meanings": codes,
        },
        "seasons_compared": {
            "long_name": "composite seasons seen clear in both years (bitmask)",
            "description": "bit s set where season s was clear in both years' clear_seasons (species.zarr); "
            f"{NO_FLAG} = coverage not recorded",
        },
        "changed": {
            "long_name": "significant change of what decides it (refresh.change_indicators)",
            "flag_values": [0, 1],
            "flag_meanings": "unchanged changed",
            "description": f"1 where any of {', '.join(model.decides)} is significant; {NO_FLAG} = no data",
        },
        "changed_probability": {
            "long_name": "probability that the pixel changed beyond the noise",
            "units": "1",
            "description": "1 - min(1, n x the smallest tail probability) of the n indicators deciding changed "
            f"({', '.join(model.tests())}; Bonferroni); NaN = no data",
        },
    }
    return texts[name]


def change_template(
    grid: Grid, model: ChangeModel, tile: int, classes: Sequence[str] | None = None
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The lazy ``changes.zarr`` layout of one year on ``grid`` (one chunk per tile) and its encoding."""
    data: dict[str, xr.DataArray] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for name in model.variables():
        dtype = "float32" if name.endswith(("_change", "_probability")) else INTEGER.get(name, "int8")
        data[name], encoding[name] = tiled_variable(
            ("y", "x"),
            (grid.height, grid.width),
            dtype=dtype,
            fill=np.nan if dtype == "float32" else NO_FLAG,
            chunks=(tile, tile),
            attrs=change_attrs(name, model, classes) | (CLASS_ATTRS if name in INTEGER else {}),
        )
    coords: dict[str, Any] = dict(grid.coords())
    if classes is not None and model.habitat_radius is not None:
        coords["habitat_code"] = ("habitat_class", np.asarray(classes, dtype=object))
    return xr.Dataset(data, coords=coords), encoding


# -- the product: its tile job and function (worker side), its plan (driver side), its summary's numerics


class ChangeError(GeoplantnetError):
    """A change map that cannot be planned, or a change tile that failed."""


@dataclass(frozen=True)
class ChangeTileJob:
    """Everything a change tile needs: both years' slots of the indicator (and habitat) series, the change model."""

    indicators_url: str
    indicators_options: dict[str, Any]
    slots: tuple[int, int]  # (previous year, this year)
    habitat_url: str | None
    habitat_options: dict[str, Any]
    habitat_slots: tuple[int, int] | None
    model: ChangeModel
    output: TileOutput
    coverage_url: str | None = None  # the species series recording clear_seasons (None: not recorded)
    coverage_options: dict[str, Any] = field(default_factory=dict)
    coverage_slots: tuple[int, int] | None = None


def change_tile(job: ChangeTileJob, tile: Tile) -> dict[str, Any]:
    """Read both years of a tile, compute and write its change arrays (runs on a worker)."""
    from geoplantnet.products.indicators.tiles import read_habitat_tile

    t0 = time.perf_counter()
    group = zarr.open_group(zarr_store(job.indicators_url, job.indicators_options), mode="r")
    ys, xs = tile.slices
    names = [*job.model.indicators]
    names += [v for n, noise in job.model.noises.items() if noise.relative for v in interval_names(n)]
    before = {n: np.asarray(group[n][job.slots[0], ys, xs]) for n in names}
    after = {n: np.asarray(group[n][job.slots[1], ys, xs]) for n in names}
    hb = ha = coverage = None
    if job.coverage_url is not None and job.coverage_slots is not None:
        clear = zarr.open_group(zarr_store(job.coverage_url, job.coverage_options), mode="r")[COVERAGE]
        coverage = (np.asarray(clear[job.coverage_slots[0], ys, xs]), np.asarray(clear[job.coverage_slots[1], ys, xs]))
    if job.habitat_url is not None and job.habitat_slots is not None:
        hb = read_habitat_tile(job.habitat_url, tile, job.habitat_options, job.habitat_slots[0])
        ha = read_habitat_tile(job.habitat_url, tile, job.habitat_options, job.habitat_slots[1])
    t1 = time.perf_counter()
    blocks = change_blocks(before, after, job.model, coverage=coverage, habitat_before=hb, habitat_after=ha)
    info = {"read_s": round(t1 - t0, 3), "model_s": round(time.perf_counter() - t1, 3)}
    out = job.output
    write_tile_blocks(out.url, blocks, tile, run=out.run, info=info, storage_options=out.storage_options)
    changed = int((blocks["changed"] == 1).sum())
    return {**info, "tile": tile.id, "pixels": tile.height * tile.width, "model_loads": 0, "changed": changed}


def _sample(ds: Any, year: int, names: Sequence[str], limit: int) -> dict[str, np.ndarray]:
    """A regular subsample (at most ``limit`` pixels) of each variable of one year of a series (the same pixels for
    every series on the same grid)."""
    step = max(1, int(np.ceil(np.sqrt(ds.sizes["y"] * ds.sizes["x"] / limit))))
    one = ds.sel(year=year).isel(y=slice(None, None, step), x=slice(None, None, step))
    return {n: np.asarray(one[n].values, dtype="float64") for n in names}


def _habitat_radius(indicators_attrs: Mapping[str, Any], year: int) -> float:
    record = year_records(indicators_attrs).get(year, {})
    calibration = json.loads(record.get("attrs", {}).get("calibration", "{}"))
    return float(calibration.get("coverage", {}).get("habitat_set", {}).get("radius", float("nan")))


def _coverage(ctx: Any, grid: Grid, years: tuple[int, int]) -> tuple[str, dict[str, Any], tuple[int, int]] | None:
    """The species series' URL, options and both years' slots when it records ``clear_seasons`` on ``grid``."""
    url = ctx.url(get("species").store)
    options = ctx.options(url)
    if not exists(url, options):
        return None
    ds = open_store(url, storage_options=options)
    if COVERAGE not in ds or (ds.sizes["y"], ds.sizes["x"]) != (grid.height, grid.width):
        return None
    slots = (complete_slot(url, ds.attrs, years[0]), complete_slot(url, ds.attrs, years[1]))
    return url, options, (int(slots[0]), int(slots[1]))  # type: ignore[arg-type]


def plan_changes(ctx: Any, client: Any = None) -> TilePlan | None:
    """The change model of the run's year (noise from a sample of both years of the indicator series, per coverage
    stratum where the species series records ``clear_seasons``) and the tile job of that year of ``changes.zarr``;
    None in a series' first year (nothing earlier to compare with). The habitat series, when there is one, is
    compared too. ``ctx``: the run's context with its ``year``; settings ``refresh.noise_pixels``,
    ``refresh.false_alarm_rate`` (or ``refresh.change_z``) and ``refresh.change_indicators``."""
    if ctx.year is None:
        raise ChangeError("a change map is one year of a series against the one before: give --year")
    settings = ctx.cfg.refresh
    unknown = sorted(set(settings.change_indicators) - {*INDICATORS, HABITAT})
    if unknown:
        raise ChangeError(f"refresh.change_indicators: {unknown} unknown; choose among {[*INDICATORS, HABITAT]}")
    year = int(ctx.year)
    ind = read_input(ctx, "indicators", "richness_expected")  # the year complete, its grid and tiles
    previous = previous_year(ind.url, year, ind.options)
    if previous is None:
        return None
    ds = open_store(ind.url, storage_options=ind.options)
    names = [n for n in INDICATORS if n in ds]
    names += [v for n in names if all(i in ds for i in interval_names(n)) for v in interval_names(n)]
    # the habitat series is read where the refresh maps habitats: then it holds both years (or says which is missing)
    hab_url: str | None = ctx.url(get("habitat").store)
    hab_options = ctx.options(hab_url)
    radius = hab_slots = classes = None
    if exists(hab_url, hab_options):
        hab = open_store(hab_url, storage_options=hab_options)
        hab_slots = (complete_slot(hab_url, hab.attrs, previous), complete_slot(hab_url, hab.attrs, year))
        radius = (_habitat_radius(ds.attrs, previous), _habitat_radius(ds.attrs, year))
        classes = [str(c) for c in hab["habitat_code"].values]
    else:
        hab_url, hab_options = None, {}
    covered = _coverage(ctx, ind.grid, (previous, year))
    sampled = None
    if covered is not None:
        species = open_store(covered[0], storage_options=covered[1], mask_and_scale=False)
        sampled = tuple(_sample(species, y, [COVERAGE], settings.noise_pixels)[COVERAGE] for y in (previous, year))
    tests = [n for n in settings.change_indicators if n in names]
    z = settings.change_z or family_z(settings.false_alarm_rate, ind.grid.height * ind.grid.width, len(tests))
    model = fit_change_model(
        _sample(ds, previous, names, settings.noise_pixels),
        _sample(ds, year, names, settings.noise_pixels),
        z=z,
        habitat_radius=radius,
        coverage=sampled,  # type: ignore[arg-type]
        decides=settings.change_indicators,
    )
    slots = (complete_slot(ind.url, ds.attrs, previous), complete_slot(ind.url, ds.attrs, year))
    records = year_records(ds.attrs)
    noises = {n: [v.shift, v.noise, sorted(v.strata.items()), v.relative] for n, v in model.noises.items()}
    parts = {
        "indicators": f"{records[previous]['run']}->{records[year]['run']}",
        "previous_year": str(previous),
        "model": json.dumps({"noise": noises, "z": model.z, "decides": model.decides}, sort_keys=True),
        "habitat_radius": str(radius),
        "coverage": "clear_seasons" if covered is not None else "none",
    }
    out = ctx.url(get(PRODUCT).store)
    job = ChangeTileJob(
        indicators_url=ind.url,
        indicators_options=ind.options,
        slots=(int(slots[0]), int(slots[1])),  # type: ignore[arg-type]
        habitat_url=hab_url,
        habitat_options=hab_options,
        habitat_slots=hab_slots,  # type: ignore[arg-type]
        model=model,
        output=ctx.tile_output(out, parts),
        coverage_url=covered[0] if covered else None,
        coverage_options=covered[1] if covered else {},
        coverage_slots=covered[2] if covered else None,
    )
    return TilePlan(
        fn=change_tile,
        job=job,
        output=job.output,
        grid=ind.grid,
        tile=ind.tile,
        layout=change_template(ind.grid, model, ind.tile, classes),
        parts=parts,
        attrs={
            "previous_year": str(previous),
            "change_z": f"{model.z:.4g}",
            "false_alarm_rate": str(settings.false_alarm_rate),
            "change_indicators": " ".join(model.decides),
        },
        error=ChangeError,
    )


def change_record(plan: TilePlan) -> dict[str, Any]:
    """What a year's change map was decided with: the previous year, each indicator's shift and noise, ``z``, the
    habitat sets' radius of both years (the ``change`` entry of a refresh summary)."""
    model: ChangeModel = plan.job.model
    return {
        "previous_year": int(plan.attrs["previous_year"]),
        "shift": model.shift,
        "noise": model.noise,
        "noise_by_coverage": {
            name: {_stratum_label(code): {"shift": v[0], "noise": v[1]} for code, v in n.strata.items()}
            for name, n in model.noises.items()
        },
        "z": model.z,
        "false_alarm_rate": float(plan.attrs["false_alarm_rate"]),
        "decides": list(model.decides),
        "coverage": model.coverage,
        "paired_spread": {name: n.relative for name, n in model.noises.items()},
        "habitat_radius": model.habitat_radius,
    }


def _stratum_label(code: int) -> str:
    """A coverage stratum for people: ``"3 both, 1 one"`` (seasons clear in both years, in one year only)."""
    return f"{code // 16} both, {code % 16} one"


def describe_changes(url: str, options: Mapping[str, Any], year: int, grid: Grid, tile: int) -> dict[str, Any]:
    """Where and what changed most in ``year`` of the change series at ``url``: significant decreases/increases per
    indicator, habitat transitions by class pair, the tiles with most changed pixels."""
    ds = open_store(url, storage_options=dict(options), mask_and_scale=False).sel(year=year)
    out: dict[str, Any] = {}
    changed = np.asarray(ds["changed"].values)
    valid = changed >= 0
    out["changed_pixels"] = int((changed == 1).sum())
    out["changed_share"] = round(float((changed == 1).sum() / max(valid.sum(), 1)), 4)
    out["changed_km2"] = round(float((changed == 1).sum()) * grid.resolution**2 / 1e6, 4)
    flags = {}
    for name in ds.data_vars:
        if str(name).endswith("_change_flag"):
            f = np.asarray(ds[name].values)
            base = str(name).removesuffix("_change_flag")
            delta = np.asarray(ds[f"{base}_change"].values)
            flags[base] = {
                "decrease": int((f == 1).sum()),
                "increase": int((f == 2).sum()),
                "mean_change_where_significant": round(float(delta[f > 0].mean()), 4) if (f > 0).any() else None,
            }
    out["indicators"] = flags
    if "habitat_transition" in ds:
        t = np.asarray(ds["habitat_transition"].values) == 1
        codes = [str(c) for c in ds["habitat_code"].values]
        pairs = pd.Series(
            [
                f"{codes[a]} -> {codes[b]}"
                for a, b in zip(ds["habitat_from"].values[t], ds["habitat_to"].values[t], strict=True)
            ]
        )
        out["habitat_transitions"] = {k: int(v) for k, v in pairs.value_counts().head(10).items()}
    per_tile = []
    for t in grid.tiles(tile):
        ys, xs = t.slices
        n = int((changed[ys, xs] == 1).sum())
        if n:
            x0, y0 = grid.left + xs.start * grid.resolution, grid.top - ys.stop * grid.resolution
            per_tile.append(
                {
                    "tile": t.id,
                    "changed_pixels": n,
                    "bbox": [
                        x0,
                        y0,
                        x0 + (xs.stop - xs.start) * grid.resolution,
                        y0 + (ys.stop - ys.start) * grid.resolution,
                    ],
                }
            )
    out["tiles_most_changed"] = sorted(per_tile, key=lambda r: -r["changed_pixels"])[:5]
    return out


register(
    Product(
        PRODUCT,
        "changes.zarr",
        "significant change since the previous mapped year",
        requires=("indicators",),
        yearly=True,
        plan=plan_changes,
    )
)
