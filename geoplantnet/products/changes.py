"""Change maps between two years of the indicator and habitat maps, with the noise that separates change from
chance.

A year-to-year difference of a map holds real change and noise (another year's clouds, phenology and acquisition
dates fed to the same model). Annual monitoring sees little real change in a year, so the noise of each indicator's
difference is estimated from the differences themselves, robustly: the region-wide shift is their median and their
noise the 90th percentile of the absolute deviations from it, over 1.645 (the standard deviation under normal noise;
unmoved as long as fewer than 10 % of the pixels really changed). A median absolute deviation would be the textbook
choice, but most pixels of a deterministic model fed near-identical imagery differ by almost nothing, which makes the
MAD collapse to ~0 while the tail of ordinary noise stays wide. A pixel's change is reported only where it leaves
the band ``shift +- z * noise``. A habitat transition is reported only where the most probable class changed *and*
each year's conformal prediction set leaves out the other year's class (a set holding every stored class may hold
more, so it excludes nothing), so two readings of an ambiguous pixel are not a transition.

Variables (y, x) of a year in ``changes.zarr``, the change from the previous mapped year:

- ``<indicator>_change`` float32: the difference (this year - previous), NaN = no data
- ``<indicator>_change_flag`` int8: 0 within the noise, 1 significant decrease, 2 significant increase; -1 no data
- ``habitat_transition`` int8: 1 a significant transition, 0 none; -1 no data
- ``habitat_from`` / ``habitat_to`` int16: the classes of a significant transition (index in habitat_code), -1 else
- ``changed`` int8: 1 where any of the above is significant (the detection map), 0 not, -1 no data

The product ``changes`` (registered here): a yearly product of the annual refresh that requires the indicator series
(and reads the habitat series when there is one); its plan maps nothing in a series' first year.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from geoplantnet.core.encoding import SCALE
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.products.base import Product, TilePlan, get, read_input, register
from geoplantnet.storage.store import exists, open_store, zarr_store
from geoplantnet.storage.tiles import TileOutput, tiled_variable, write_tile_blocks
from geoplantnet.storage.years import complete_slot, previous_year, year_records
from geoplantnet.validation.conformal import class_sets

PRODUCT = "changes"
INDICATORS = ("richness_expected", "invasive_expected", "threatened_expected", "shannon", "ecosystem_health")
NO_FLAG = -1
NOISE_QUANTILE = 0.9
NOISE_SCALE = 1.6449  # the 90th percentile of |normal noise| is 1.645 standard deviations


@dataclass(frozen=True)
class ChangeModel:
    """Per indicator: the region-wide shift and noise of its difference; ``z`` the multiple of the noise a change
    must exceed; the habitat sets' conformal radius of each year (NaN: top class only)."""

    shift: Mapping[str, float]
    noise: Mapping[str, float]
    z: float
    habitat_radius: tuple[float, float] | None  # (previous year, this year); None: no habitat maps

    @property
    def indicators(self) -> list[str]:
        return list(self.noise)

    def variables(self) -> list[str]:
        """Variable names in store order."""
        out = [v for name in self.indicators for v in (f"{name}_change", f"{name}_change_flag")]
        if self.habitat_radius is not None:
            out += ["habitat_transition", "habitat_from", "habitat_to"]
        return [*out, "changed"]


def robust_noise(delta: np.ndarray) -> tuple[float, float]:
    """(median, noise) of the finite values of ``delta`` (see the module docstring); (0, NaN) without any."""
    d = np.asarray(delta, dtype="float64")
    d = d[np.isfinite(d)]
    if d.size == 0:
        return 0.0, float("nan")
    med = float(np.median(d))
    # never below one step of the uint8 probability codes: where most pixels repeat the same code in both years the
    # quantile is 0, and every one-code wobble would read as change
    return med, max(float(np.quantile(np.abs(d - med), NOISE_QUANTILE) / NOISE_SCALE), 1.0 / SCALE)


def fit_change_model(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    *,
    z: float,
    habitat_radius: tuple[float, float] | None,
) -> ChangeModel:
    """Shift and noise of each indicator present in both years, from (a sample of) their pixels."""
    shift, noise = {}, {}
    for name in INDICATORS:
        if name in before and name in after:
            shift[name], noise[name] = robust_noise(np.asarray(after[name]) - np.asarray(before[name]))
    return ChangeModel(shift, noise, z, habitat_radius)


def change_blocks(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    model: ChangeModel,
    *,
    habitat_before: tuple[np.ndarray, np.ndarray] | None = None,
    habitat_after: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Change arrays (y, x) of a tile from both years' indicators (name -> (y, x)) and habitat maps ((K, y, x)
    classes, (K, y, x) probabilities)."""
    first = next(iter(after.values()))
    shape = np.shape(first)
    out: dict[str, np.ndarray] = {}
    any_change = np.zeros(shape, dtype=bool)
    valid = np.ones(shape, dtype=bool)
    for name in model.indicators:
        delta = (np.asarray(after[name], "float64") - np.asarray(before[name], "float64")).astype("float32")
        ok = np.isfinite(delta)
        band = model.z * model.noise[name]
        centred = delta - model.shift[name]
        flag = np.where(centred < -band, 1, np.where(centred > band, 2, 0)).astype("int8")
        flag[~ok] = NO_FLAG
        out[f"{name}_change"], out[f"{name}_change_flag"] = delta, flag
        any_change |= flag > 0
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
        out["habitat_transition"] = np.where(known, transition, NO_FLAG).astype("int8")
        out["habitat_from"] = np.where(transition, c0[0], NO_FLAG).astype("int16")
        out["habitat_to"] = np.where(transition, c1[0], NO_FLAG).astype("int16")
        any_change |= transition
        valid &= known
    out["changed"] = np.where(valid, any_change, NO_FLAG).astype("int8")
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


INTEGER = {"habitat_transition": "int8", "habitat_from": "int16", "habitat_to": "int16", "changed": "int8"}


def change_attrs(name: str, model: ChangeModel, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """CF attributes of a change variable, with how it was decided."""
    if name.endswith("_change"):
        base = name.removesuffix("_change")
        return {
            "long_name": f"change of {base} since the previous mapped year",
            "units": "1",
            "description": f"{base} this year - {base} the previous year; region-wide shift "
            f"{model.shift[base]:.4g}, noise (90th percentile of |difference - shift| / 1.645) "
            f"{model.noise[base]:.4g}",
        }
    if name.endswith("_change_flag"):
        base = name.removesuffix("_change_flag")
        return {
            "long_name": f"significant change of {base}",
            "flag_values": [0, 1, 2],
            "flag_meanings": "within_noise decrease increase",
            "description": f"|change - shift| > {model.z:g} x noise (see {base}_change); {NO_FLAG} = no data",
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
        "changed": {
            "long_name": "any significant change (indicators or habitat)",
            "flag_values": [0, 1],
            "flag_meanings": "unchanged changed",
            "description": f"1 where any *_change_flag is 1 or 2 or habitat_transition is 1; {NO_FLAG} = no data",
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
        dtype = "float32" if name.endswith("_change") else INTEGER.get(name, "int8")
        data[name], encoding[name] = tiled_variable(
            ("y", "x"),
            (grid.height, grid.width),
            dtype=dtype,
            fill=np.nan if dtype == "float32" else NO_FLAG,
            chunks=(tile, tile),
            attrs=change_attrs(name, model, classes),
        )
    coords: dict[str, Any] = dict(grid.coords())
    if classes is not None and model.habitat_radius is not None:
        coords["habitat_code"] = ("habitat_class", np.asarray(classes, dtype=object))
    return xr.Dataset(data, coords=coords), encoding


def detection_scores(changed: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Precision and recall of detected changed pixels (``changed`` 1/0, -1 no data) against true changes
    (``truth`` > 0 changed, 0 not)."""
    ok = (np.asarray(changed) >= 0) & np.isfinite(np.asarray(truth, dtype="float64"))
    pred = np.asarray(changed)[ok] == 1
    true = np.asarray(truth)[ok] > 0
    tp = int((pred & true).sum())
    fp = int((pred & ~true).sum())
    fn = int((~pred & true).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "pixels": int(ok.sum()),
        "true_changed": int(true.sum()),
        "detected": int(pred.sum()),
        "true_positive": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


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


def change_tile(job: ChangeTileJob, tile: Tile) -> dict[str, Any]:
    """Read both years of a tile, compute and write its change arrays (runs on a worker)."""
    from geoplantnet.products.indicators.tiles import read_habitat_tile

    t0 = time.perf_counter()
    group = zarr.open_group(zarr_store(job.indicators_url, job.indicators_options), mode="r")
    ys, xs = tile.slices
    before = {n: np.asarray(group[n][job.slots[0], ys, xs]) for n in job.model.indicators}
    after = {n: np.asarray(group[n][job.slots[1], ys, xs]) for n in job.model.indicators}
    hb = ha = None
    if job.habitat_url is not None and job.habitat_slots is not None:
        hb = read_habitat_tile(job.habitat_url, tile, job.habitat_options, job.habitat_slots[0])
        ha = read_habitat_tile(job.habitat_url, tile, job.habitat_options, job.habitat_slots[1])
    t1 = time.perf_counter()
    blocks = change_blocks(before, after, job.model, habitat_before=hb, habitat_after=ha)
    info = {"read_s": round(t1 - t0, 3), "model_s": round(time.perf_counter() - t1, 3)}
    out = job.output
    write_tile_blocks(out.url, blocks, tile, run=out.run, info=info, storage_options=out.storage_options)
    changed = int((blocks["changed"] == 1).sum())
    return {**info, "tile": tile.id, "pixels": tile.height * tile.width, "model_loads": 0, "changed": changed}


def _sample(ds: Any, year: int, names: list[str], limit: int) -> dict[str, np.ndarray]:
    """A regular subsample (at most ``limit`` pixels) of each variable of one year of a series."""
    step = max(1, int(np.ceil(np.sqrt(ds.sizes["y"] * ds.sizes["x"] / limit))))
    one = ds.sel(year=year).isel(y=slice(None, None, step), x=slice(None, None, step))
    return {n: np.asarray(one[n].values, dtype="float64") for n in names}


def _habitat_radius(indicators_attrs: Mapping[str, Any], year: int) -> float:
    record = year_records(indicators_attrs).get(year, {})
    calibration = json.loads(record.get("attrs", {}).get("calibration", "{}"))
    return float(calibration.get("coverage", {}).get("habitat_set", {}).get("radius", float("nan")))


def plan_changes(ctx: Any, client: Any = None) -> TilePlan | None:
    """The change model of the run's year (noise from a sample of both years of the indicator series) and the tile
    job of that year of ``changes.zarr``; None in a series' first year (nothing earlier to compare with). The habitat
    series, when there is one, is compared too. ``ctx``: the run's context with its ``year``; settings
    ``refresh.noise_pixels`` and ``refresh.change_z``."""
    if ctx.year is None:
        raise ChangeError("a change map is one year of a series against the one before: give --year")
    year = int(ctx.year)
    ind = read_input(ctx, "indicators", "richness_expected")  # the year complete, its grid and tiles
    previous = previous_year(ind.url, year, ind.options)
    if previous is None:
        return None
    settings = ctx.cfg.refresh
    ds = open_store(ind.url, storage_options=ind.options)
    names = [n for n in INDICATORS if n in ds]
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
    model = fit_change_model(
        _sample(ds, previous, names, settings.noise_pixels),
        _sample(ds, year, names, settings.noise_pixels),
        z=settings.change_z,
        habitat_radius=radius,
    )
    slots = (complete_slot(ind.url, ds.attrs, previous), complete_slot(ind.url, ds.attrs, year))
    records = year_records(ds.attrs)
    parts = {
        "indicators": f"{records[previous]['run']}->{records[year]['run']}",
        "previous_year": str(previous),
        "model": json.dumps({"shift": model.shift, "noise": model.noise, "z": model.z}, sort_keys=True),
        "habitat_radius": str(radius),
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
    )
    return TilePlan(
        fn=change_tile,
        job=job,
        output=job.output,
        grid=ind.grid,
        tile=ind.tile,
        layout=change_template(ind.grid, model, ind.tile, classes),
        parts=parts,
        attrs={"previous_year": str(previous), "change_z": str(settings.change_z)},
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
        "z": model.z,
        "habitat_radius": model.habitat_radius,
    }


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


def change_errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean true and predicted change, correlation, and how often the sign agrees where the truth moved by more
    than 0.1 species."""
    ok = np.isfinite(pred) & np.isfinite(truth)
    p, t = pred[ok], truth[ok]
    moved = np.abs(t) > 0.1
    r = float(np.corrcoef(p, t)[0, 1]) if ok.sum() > 2 and t.std() > 0 and p.std() > 0 else float("nan")
    return {
        "pixels": int(ok.sum()),
        "true_mean": round(float(t.mean()), 4) if ok.any() else float("nan"),
        "predicted_mean": round(float(p.mean()), 4) if ok.any() else float("nan"),
        "r": round(r, 4),
        "sign_agreement": round(float((np.sign(p[moved]) == np.sign(t[moved])).mean()), 4) if moved.any() else None,
    }


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
