"""The annual monitoring refresh: ``geoplantnet refresh --year YYYY``.

One year, every product, appended along the ``year`` axis of the series under ``store.root`` (never rewriting another
year; :mod:`geoplantnet.storage.years`): the year's Sentinel-2 items are searched (``cube.datetime`` = the year),
the species model of the series (the one its first year was mapped with, unless ``--model`` names another) maps
``species.zarr``, the habitat classifier ``habitat.zarr`` (when there is one), the indicators ``indicators.zarr``,
and ``changes.zarr`` gets the change since the latest earlier year of the series. Each step is a resumable tiled
run of its own, so an interrupted refresh leaves earlier years readable and intact, and rerunning the command
completes the year; rerunning a complete year resumes to nothing, and ``--overwrite`` replaces only that year.
The run summary (``<store.root>/refresh/<YYYY>/summary.json``, ``report.md``, ``changes.png``) says what was mapped,
how long each step took, where and what changed most and, on the virtual region, how the detected changes compare
with the generator's true ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from geoplantnet.core.config import ConfigError, RunConfig, redact, redact_text
from geoplantnet.core.errors import GeoplantnetError, RefusedError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.products.changes import (
    ChangeModel,
    change_blocks,
    change_template,
    detection_scores,
    fit_change_model,
)
from geoplantnet.runs.context import streaming
from geoplantnet.runs.tiles import TileOutput, produce_tiles
from geoplantnet.storage.outputs import claim_folder, finish_folder, place, place_json
from geoplantnet.storage.store import (
    PRODUCT_ATTR,
    YEARS_ATTR,
    exists,
    join,
    open_store,
    preflight,
    storage_options_for,
    zarr_store,
)
from geoplantnet.storage.tiles import write_tile_blocks
from geoplantnet.storage.years import complete_slot, year_records

PRODUCTS = ("species", "habitat", "indicators", "changes")


class RefreshError(GeoplantnetError):
    """A refresh that cannot run (its series or inputs do not fit) or a change tile that failed."""


def year_window(composite: str, year: int) -> str:
    """The imagery of monitoring year ``year``: whole composite periods, so every year has the same seasons. With
    meteorological seasons (``QS-DEC``) the year runs from December of the year before to November (its winter is one
    December-February season, not two halves); monthly and yearly composites use the calendar year."""
    if composite == "QS-DEC":
        return f"{year - 1}-12-01/{year}-11-30"
    return f"{year}-01-01/{year}-12-31"


def year_config(cfg: RunConfig, year: int) -> RunConfig:
    """``cfg`` with the cube searching the imagery of monitoring year ``year`` only (:func:`year_window`)."""
    cube = cfg.cube.model_copy(update={"datetime": year_window(cfg.cube.composite, year)})
    return cfg.model_copy(update={"cube": cube})


def series_urls(cfg: RunConfig) -> dict[str, str]:
    """Where each product's series lives under ``store.root``."""
    return {p: join(cfg.store.root, f"{p}.zarr") for p in PRODUCTS}


def _exists(url: str, cfg: RunConfig) -> bool:
    return exists(url, storage_options_for(url, cfg.store))


def check_series(cfg: RunConfig, urls: Mapping[str, str], overwrite: bool) -> None:
    """Before anything runs: every output is free, and a store already there is a series of its product (a
    single-year store of the same name is refused: the refresh never turns it into something else)."""
    for product, url in urls.items():
        target = preflight(url, storage_options_for(url, cfg.store), product=product, overwrite=overwrite)
        if target.state == "store" and YEARS_ATTR not in target.attrs:
            raise RefusedError(
                f"{redact({'u': url})['u']} is a {target.attrs.get(PRODUCT_ATTR, 'geoplantnet')} store without a "
                "year axis; a refresh writes series: use another store.root"
            )


@dataclass(frozen=True)
class SeriesOrigin:
    """What the series' first mapped year used: its year, species model and composite periods."""

    year: int
    model: str | None
    seasons: tuple[str, ...]

    def seasons_for(self, year: int) -> list[np.datetime64] | None:
        """The first year's composite periods shifted by whole years to ``year`` (the model sees the same seasons
        every year; a period without imagery is NaN, like a cloudy season)."""
        if not self.seasons:
            return None
        shift = pd.DateOffset(years=year - self.year)
        return [np.datetime64(pd.Timestamp(t) + shift, "ns") for t in self.seasons]


def complete_records(url: str, cfg: RunConfig) -> dict[int, dict[str, Any]]:
    """The complete years of the series at ``url`` and their records, by year (empty: nothing there yet). Read raw:
    a series whose first year was interrupted has no complete year, and the refresh completing it must still run."""
    if not _exists(url, cfg):
        return {}
    attrs = zarr.open_group(zarr_store(url, storage_options_for(url, cfg.store)), mode="r").attrs
    return {y: r for y, r in sorted(year_records(dict(attrs)).items()) if r.get("completed")}


def habitat_classifier(cfg: RunConfig, urls: Mapping[str, str], series: bool) -> tuple[str, bool]:
    """The habitat classifier folder and whether this refresh maps habitats: once a series exists its answer is
    the series' (a habitat series needs its classifier every year; a series without one stays without), else
    whether the classifier is there. A configured folder that holds no classifier is refused."""
    configured = cfg.refresh.habitat_model
    folder = configured or join(cfg.store.root, "habitats/model")
    found = _exists(join(folder, "geoplantnet.json"), cfg)
    if configured and not found:
        raise ConfigError(f"refresh.habitat_model {configured}: no habitat classifier there (no geoplantnet.json)")
    if not series:
        return folder, found
    mapped = _exists(urls["habitat"], cfg)
    if mapped and not found:
        raise RefreshError(
            f"the series maps habitats ({redact({'u': urls['habitat']})['u']}) but {folder} holds no "
            "classifier: set refresh.habitat_model"
        )
    return folder, mapped


def series_origin(cfg: RunConfig, species_url: str) -> SeriesOrigin | None:
    """The first complete year of the species series (None: no series yet)."""
    records = complete_records(species_url, cfg)
    if not records:
        return None
    first = min(records)
    attrs = records[first].get("attrs", {})
    return SeriesOrigin(first, attrs.get("model_file"), tuple(json.loads(attrs.get("seasons", "[]"))))


def first_species_calibration(cfg: RunConfig, url: str, year: int, model_version: str) -> Any:
    """The species calibration maps the indicator series' first year fitted for the same species model (None:
    none, another model, or this is the first year): later years reuse them, so a difference between years is never
    a difference of calibrations."""
    from geoplantnet.models.calibration import Calibration

    records = complete_records(url, cfg)
    others = [y for y in records if y != year]
    if not others:
        return None
    first = records[min(others)].get("attrs", {})
    saved = first.get("species_calibration", "none")
    if saved == "none" or first.get("species_model_version") != model_version:
        return None  # a new model is calibrated afresh (its probabilities are on another scale)
    return Calibration.model_validate_json(saved)


def previous_year(url: str, cfg: RunConfig, year: int) -> int | None:
    """The latest complete year before ``year`` of the series at ``url`` (None: nothing earlier)."""
    earlier = [y for y in complete_records(url, cfg) if y < year]
    return max(earlier) if earlier else None


# -- change maps


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
    from geoplantnet.jobs.indicators import read_habitat_tile

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


def plan_changes(cfg: RunConfig, urls: Mapping[str, str], year: int, previous: int, habitats: bool) -> tuple:
    """The change model (noise from a sample of both years) and the tile job of ``changes.zarr`` for ``year``."""
    from geoplantnet.products.changes import INDICATORS

    ind_url = urls["indicators"]
    options = storage_options_for(ind_url, cfg.store)
    ds = open_store(ind_url, storage_options=options)
    names = [n for n in INDICATORS if n in ds]
    limit = cfg.refresh.noise_pixels
    radius = None
    hab_url = urls["habitat"] if habitats else None
    hab_slots = None
    classes = None
    if hab_url is not None:
        hab = open_store(hab_url, storage_options=storage_options_for(hab_url, cfg.store))
        hab_slots = (complete_slot(hab_url, hab.attrs, previous), complete_slot(hab_url, hab.attrs, year))
        radius = (_habitat_radius(ds.attrs, previous), _habitat_radius(ds.attrs, year))
        classes = [str(c) for c in hab["habitat_code"].values]
    model = fit_change_model(
        _sample(ds, previous, names, limit),
        _sample(ds, year, names, limit),
        z=cfg.refresh.change_z,
        habitat_radius=radius,
    )
    slots = (complete_slot(ind_url, ds.attrs, previous), complete_slot(ind_url, ds.attrs, year))
    parts = {
        "indicators": f"{year_records(ds.attrs)[previous]['run']}->{year_records(ds.attrs)[year]['run']}",
        "previous_year": str(previous),
        "model": json.dumps({"shift": model.shift, "noise": model.noise, "z": model.z}, sort_keys=True),
        "habitat_radius": str(radius),
    }
    out = urls["changes"]
    job = ChangeTileJob(
        indicators_url=ind_url,
        indicators_options=options,
        slots=(int(slots[0]), int(slots[1])),  # type: ignore[arg-type]
        habitat_url=hab_url,
        habitat_options=storage_options_for(hab_url, cfg.store) if hab_url else {},
        habitat_slots=hab_slots,  # type: ignore[arg-type]
        model=model,
        output=TileOutput.of(out, parts, storage_options_for(out, cfg.store), year=year),
    )
    return model, job, parts, classes


# -- the run


def run_refresh(
    cfg: RunConfig,
    year: int,
    *,
    model: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> dict[str, Any]:
    """Map ``year`` into every series under ``store.root`` and write its run summary (see the module docstring)."""
    from geoplantnet.jobs.habitat_map import ClassifierFolder, plan_habitat_map, produce_habitat_map
    from geoplantnet.jobs.indicators import IndicatorStores, indicator_inputs, plan_indicators, produce_indicators
    from geoplantnet.jobs.mapping import MapSources, ModelFile, ensure_model, plan_map, produce_map
    from geoplantnet.runs.inputs import plan_inputs
    from geoplantnet.runtime.cluster import connect
    from geoplantnet.storage.store import is_local

    if not is_local(cfg.store.root):
        raise ConfigError(f"refresh writes its run summary beside the stores and store.root is {cfg.store.root}")
    if not 1000 <= year <= 9999:  # imagery is searched by ISO 8601 dates
        raise RefreshError(f"--year {year}: give the calendar year with its four digits (e.g. 2025)")
    t_start = time.perf_counter()
    cfg_y = year_config(cfg, year)
    urls = series_urls(cfg)
    check_series(cfg, urls, overwrite)
    report_dir = summary_folder(cfg, year)
    origin = series_origin(cfg, urls["species"])
    habitat_model, habitats = habitat_classifier(cfg, urls, origin is not None)
    # the series' model first: every year is mapped with the one its first year used, unless --model says otherwise
    model_url = model or (origin.model if origin else None) or cfg.map.model
    # every file is read and checked before the virtual region is generated, imagery searched or a cluster started
    model_file = ModelFile.read(model_url) if model_url is not None else None
    classifier = ClassifierFolder.read(habitat_model) if habitats else None
    planned = plan_inputs(cfg_y, observations=model_url is None)
    years = planned.years()
    if years is not None and year not in years:
        held = f"the year {years[0]}" if len(years) == 1 else f"the years {years[0]}-{years[-1]}"
        raise RefreshError(f"--year {year}: the virtual region holds {held} (sim.start, sim.years)")
    tables = indicator_inputs(cfg_y, progress=progress, year=year)
    inputs = planned.load(progress=progress)
    if not inputs.s2_items and cfg.inputs.virtual:
        raise RefreshError(f"no Sentinel-2 items in {year}: the virtual region's years are set by sim.start/sim.years")
    seasons = origin.seasons_for(year) if origin else None
    sources = MapSources.from_items(cfg_y, inputs.s2_items, inputs.env_items, seasons)
    # inputs that do not fit a given model: refused before a cluster starts
    plan = plan_map(cfg_y, model_file, sources, urls["species"], year) if model_file is not None else None
    steps: dict[str, dict[str, Any]] = {}
    trained = None
    with connect(cfg.cluster) as client:
        t0 = time.perf_counter()
        if plan is None:
            model_url, trained = ensure_model(cfg_y, inputs, client)
            plan = plan_map(cfg_y, model_url, sources, urls["species"], year)
        species = produce_map(
            client,
            cfg_y,
            plan.job.predictor.model.url,  # the given model's, or the one just trained
            sources,
            urls["species"],
            plan=plan,
            year=year,
            progress=progress,
            overwrite=overwrite,
        )
        steps["species"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "tiles": species.tiles,
            "tiles_computed": species.tiles_computed,
        }
        if habitats:
            t0 = time.perf_counter()
            hplan = plan_habitat_map(cfg_y, urls["species"], classifier or habitat_model, urls["habitat"], year)
            hab = produce_habitat_map(client, cfg_y, hplan, overwrite=overwrite, progress=progress, year=year)
            steps["habitat"] = {"seconds": round(time.perf_counter() - t0, 1), "tiles_computed": hab.tiles_computed}
        t0 = time.perf_counter()
        stores = IndicatorStores.open(
            cfg_y, urls["species"], urls["habitat"] if habitats else None, urls["indicators"], year
        )
        iplan = plan_indicators(
            cfg_y,
            stores,
            tables,
            first_species_calibration(cfg, urls["indicators"], year, plan.attrs["model_version"]),
        )
        ind = produce_indicators(client, cfg_y, iplan, overwrite=overwrite, progress=progress, year=year)
        steps["indicators"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "tiles_computed": ind.tiles_computed,
            "calibration": ind.calibration,
        }
        previous = previous_year(urls["indicators"], cfg, year)
        change = None
        if previous is not None:
            t0 = time.perf_counter()
            change_model, job, parts, classes = plan_changes(cfg, urls, year, previous, habitats)
            grid = iplan.grid
            done = produce_tiles(
                client,
                change_tile,
                job,
                output=job.output,
                grid=grid,
                tile=iplan.tile,
                layout=change_template(grid, change_model, iplan.tile, classes),
                product="changes",
                parts=parts,
                settings=streaming(cfg),
                provenance=cfg.to_attrs(),
                attrs={"previous_year": str(previous), "change_z": str(cfg.refresh.change_z)},
                overwrite=overwrite,
                resources=None,
                progress=progress,
                error=RefreshError,
                year=year,
            )
            steps["changes"] = {"seconds": round(time.perf_counter() - t0, 1), "tiles_computed": len(done.results)}
            change = {
                "previous_year": previous,
                "shift": change_model.shift,
                "noise": change_model.noise,
                "z": change_model.z,
                "habitat_radius": change_model.habitat_radius,
            }
    summary: dict[str, Any] = {
        "year": year,
        "store_root": redact({"u": cfg.store.root})["u"],
        "stores": {p: redact({"u": u})["u"] for p, u in urls.items() if p != "changes" or change is not None},
        "model": redact({"u": model_url})["u"],
        "trained": trained,
        "habitat_maps": habitats,
        "area_km2": round(iplan.grid.width * iplan.grid.height * iplan.grid.resolution**2 / 1e6, 3),
        "shape": [iplan.grid.height, iplan.grid.width],
        "tiles": species.tiles,
        "steps": steps,
        "change": change,
        "inputs": [redact_text(note) for note in inputs.notes],
    }
    if change is not None:
        summary["changes"] = describe_changes(cfg, urls["changes"], year, iplan.grid, iplan.tile)
    if evaluate:
        summary["evaluation"] = evaluate_refresh(cfg, urls, year, iplan, previous)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    write_summary(summary, report_dir, cfg, urls, year)
    return summary


def describe_changes(cfg: RunConfig, url: str, year: int, grid: Grid, tile: int) -> dict[str, Any]:
    """Where and what changed most: significant decreases/increases per indicator, habitat transitions by class
    pair, the tiles with most changed pixels."""
    ds = open_store(url, storage_options=storage_options_for(url, cfg.store), mask_and_scale=False).sel(year=year)
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


def evaluate_refresh(cfg: RunConfig, urls: Mapping[str, str], year: int, iplan: Any, previous: int | None) -> dict:
    """Virtual region: the year's indicators against that year's truth, detected changes against true changes."""
    from geoplantnet.jobs.indicator_eval import evaluate_indicators
    from geoplantnet.runs.inputs import virtual_changes, virtual_truth

    if not cfg.inputs.virtual:
        raise ConfigError("--evaluate scores a refresh against the virtual region's truth; inputs.* are set")
    truth_species, truth_habitat = virtual_truth(cfg, year)
    out: dict[str, Any] = {
        "indicators": evaluate_indicators(
            urls["indicators"], iplan.job.model, list(iplan.species), truth_species, truth_habitat, year=year
        )
    }
    if previous is not None:
        truth = np.asarray(virtual_changes(cfg, year).values)
        ds = open_store(
            urls["changes"], storage_options=storage_options_for(urls["changes"], cfg.store), mask_and_scale=False
        )
        changed = np.asarray(ds.sel(year=year)["changed"].values)
        scores = detection_scores(changed, truth)
        # the change of richness against the true change (the same species), everywhere and where land changed
        before, _ = virtual_truth(cfg, previous)
        after = truth_species
        species = list(iplan.species)
        true_delta = (after.sel(species=species).sum("species") - before.sel(species=species).sum("species")).values
        delta = np.asarray(ds.sel(year=year)["richness_expected_change"].values, dtype="float64")
        scores["richness_change"] = {
            "all_pixels": change_errors(delta, true_delta),
            "changed_pixels": change_errors(delta[truth > 0], true_delta[truth > 0]),
        }
        scores["recall_by_kind"] = {}
        for name, code in true_change_kinds(cfg, year).items():
            mask = truth == code
            if mask.any():
                scores["recall_by_kind"][name] = round(float((changed[mask] == 1).mean()), 4)
        out["change_detection"] = scores
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


def true_change_kinds(cfg: RunConfig, year: int) -> dict[str, int]:
    """The virtual truth's change kinds and codes (its ``flag_meanings`` / ``flag_values``; no-change left out)."""
    from geoplantnet.runs.inputs import virtual_changes

    attrs = virtual_changes(cfg, year).attrs
    pairs = zip(str(attrs.get("flag_meanings", "")).split(), attrs.get("flag_values", []), strict=False)
    return {name: int(code) for name, code in pairs if int(code) != 0}


SUMMARY_FILES = ("summary.json", "report.md", "changes.png")
SUMMARY_KIND = "refresh summary"


def summary_folder(cfg: RunConfig, year: int) -> Path:
    """``<store.root>/refresh/<year>``, checked before the run: refused when geoplantnet did not write it (a user's
    files); an earlier summary of the year is replaced when the new one is written."""
    folder = Path(cfg.store.root) / "refresh" / str(year)
    claim_folder(folder, SUMMARY_KIND, SUMMARY_FILES, overwrite=True, check_only=True)
    return folder


def write_summary(summary: Mapping[str, Any], folder: Path, cfg: RunConfig, urls: Mapping[str, str], year: int) -> None:
    """``summary.json``, ``report.md`` and ``changes.png`` of a refresh, each written beside its name and renamed
    into place (the JSON last: its presence says the summary is whole)."""
    # the year's stores were claimed first (another run's year needs --overwrite there): the summary is theirs
    claim_folder(folder, SUMMARY_KIND, SUMMARY_FILES, overwrite=True)
    place(folder, "report.md", lambda path: path.write_text(markdown(summary)))
    place(folder, "changes.png", lambda path: plot_changes(cfg, urls, year, summary, path))
    place_json(folder, "summary.json", summary)
    finish_folder(folder)


def markdown(summary: Mapping[str, Any]) -> str:
    """The run summary for people."""
    lines = [f"# Monitoring refresh {summary['year']}", ""]
    lines += [
        f"- area: {summary['area_km2']} km2 ({summary['shape'][0]} x {summary['shape'][1]} pixels, "
        f"{summary['tiles']} tiles); {summary['seconds']} s in all",
        f"- species model: `{summary['model']}`; habitat maps: {'yes' if summary['habitat_maps'] else 'no'}",
    ]
    lines += [
        f"- {step}: {info['seconds']} s, {info.get('tiles_computed')} tiles computed"
        for step, info in summary["steps"].items()
    ]
    change = summary.get("change")
    if change is None:
        lines += ["", "No earlier year in the series: no change map this year."]
    else:
        c = summary["changes"]
        lines += [
            "",
            f"## Changes since {change['previous_year']}",
            "",
            f"{c['changed_pixels']} pixels ({c['changed_km2']} km2, {c['changed_share']:.1%}) changed "
            f"beyond the noise (|change - shift| > {change['z']:g} x noise).",
            "",
            "| indicator | shift | noise | decrease | increase | mean significant change |",
            "|---|---|---|---|---|---|",
        ]
        for name, f in c["indicators"].items():
            lines.append(
                f"| {name} | {change['shift'][name]:.3g} | {change['noise'][name]:.3g} | {f['decrease']} | "
                f"{f['increase']} | {f['mean_change_where_significant']} |"
            )
        if c.get("habitat_transitions"):
            lines += ["", "| habitat transition | pixels |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in c["habitat_transitions"].items()]
        if c["tiles_most_changed"]:
            lines += [
                "",
                "Tiles with most change: "
                + ", ".join(f"{t['tile']} ({t['changed_pixels']} px)" for t in c["tiles_most_changed"]),
            ]
    ev = summary.get("evaluation")
    if ev and "change_detection" in ev:
        d = ev["change_detection"]
        lines += [
            "",
            "## Against the virtual truth",
            "",
            f"Changed pixels: precision {d['precision']}, recall {d['recall']}, F1 {d['f1']} "
            f"({d['true_changed']} truly changed, {d['detected']} detected); recall by kind: "
            f"{d['recall_by_kind']}",
        ]
    return "\n".join(lines) + "\n"


def plot_changes(cfg: RunConfig, urls: Mapping[str, str], year: int, summary: Mapping[str, Any], path: Path) -> None:
    """Richness of the year, its change and the detected changes (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ind = open_store(urls["indicators"], storage_options=storage_options_for(urls["indicators"], cfg.store))
    panels: list[tuple[str, np.ndarray, str]] = [
        (f"richness_expected {year}", np.asarray(ind.sel(year=year)["richness_expected"].values), "viridis")
    ]
    if summary.get("change") is not None:
        ch = open_store(urls["changes"], storage_options=storage_options_for(urls["changes"], cfg.store)).sel(year=year)
        panels.append(
            (
                f"richness change since {summary['change']['previous_year']}",
                np.asarray(ch["richness_expected_change"].values),
                "RdBu",
            )
        )
        changed = np.asarray(ch["changed"].values).astype("float32")
        changed[changed < 0] = np.nan
        panels.append(("significant change", changed, "Greys"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (title, data, cmap) in zip(axes[0], panels, strict=True):
        if cmap == "RdBu":
            lim = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
            im = ax.imshow(data, cmap=cmap, vmin=-lim, vmax=lim)
        else:
            im = ax.imshow(data, cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
