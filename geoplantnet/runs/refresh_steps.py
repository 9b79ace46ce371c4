"""The annual refresh's steps for the products whose yearly run needs more than their generic plan: species,
habitat and indicators.

Each runs its product's own plan (:mod:`geoplantnet.products.species_map`, :mod:`geoplantnet.products.habitat_map`,
:mod:`geoplantnet.products.indicators`) with what only a series knows: the species map on the series' first model
and its seasons shifted to the year, the habitat map with the classifier read before the cluster started, the
indicators with the year's surveys and the first year's species calibration. Every other yearly product (``changes``,
or one a user registers) runs through its registered plan (:meth:`geoplantnet.runs.context.RunContext.make`).

What the steps of a year share is one :class:`YearRun`, made before any cluster starts (:func:`prepare_year`: every
file read and checked, the inputs loaded, the species run planned) and handed to each step with what the earlier
steps made (``made``: product name -> :class:`~geoplantnet.products.base.Made`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geoplantnet.core.config import ConfigError, redact
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.evaluation.registry import register_evaluation
from geoplantnet.products.base import Made
from geoplantnet.runs.context import RunContext
from geoplantnet.storage.store import exists, join, read_options_for
from geoplantnet.storage.years import complete_years

if TYPE_CHECKING:
    from distributed import Client


class RefreshError(GeoplantnetError):
    """A refresh that cannot run: its series or inputs do not fit."""


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


def series_origin(ctx: RunContext, species_url: str) -> SeriesOrigin | None:
    """The first complete year of the species series (None: no series yet)."""
    records = complete_years(species_url, ctx.options(species_url))
    if not records:
        return None
    first = min(records)
    attrs = records[first].get("attrs", {})
    return SeriesOrigin(first, attrs.get("model_file"), tuple(json.loads(attrs.get("seasons", "[]"))))


def habitat_classifier(ctx: RunContext, habitat_url: str, series: bool) -> tuple[str, bool]:
    """The habitat classifier folder and whether this refresh maps habitats: once a series exists its answer is
    the series' (a habitat series needs its classifier every year; a series without one stays without), else
    whether the classifier is there. A configured folder that holds no classifier is refused."""
    from geoplantnet.products.habitat_map import MODEL_FOLDER

    configured = ctx.cfg.refresh.habitat_model
    folder = configured or ctx.url(MODEL_FOLDER)
    marker = join(folder, "geoplantnet.json")
    found = exists(marker, read_options_for(marker, ctx.cfg.store))  # an input: a local one is no mistake
    if configured and not found:
        raise ConfigError(f"refresh.habitat_model {configured}: no habitat classifier there (no geoplantnet.json)")
    if not series:
        return folder, found
    mapped = exists(habitat_url, ctx.options(habitat_url))
    if mapped and not found:
        raise RefreshError(
            f"the series maps habitats ({redact({'u': habitat_url})['u']}) but {folder} holds no "
            "classifier: set refresh.habitat_model"
        )
    return folder, mapped


def first_species_calibration(ctx: RunContext, url: str, year: int, model_version: str) -> Any:
    """The species calibration maps the indicator series' first year fitted for the same species model (None:
    none, another model, or this is the first year): later years reuse them, so a difference between years is never
    a difference of calibrations."""
    from geoplantnet.models.calibration import Calibration

    records = complete_years(url, ctx.options(url))
    others = [y for y in records if y != year]
    if not others:
        return None
    first = records[min(others)].get("attrs", {})
    saved = first.get("species_calibration", "none")
    if saved == "none" or first.get("species_model_version") != model_version:
        return None  # a new model is calibrated afresh (its probabilities are on another scale)
    return Calibration.model_validate_json(saved)


@dataclass
class YearRun:
    """What the steps of one refresh year share: the series' context (the run's configuration, the year), the
    year's (its cube searches that year's imagery), each product's series, the species model (the one just trained
    once the species step ran), the habitat classifier, the loaded inputs and the species run's plan."""

    ctx: RunContext
    imagery: RunContext
    urls: dict[str, str]
    model_url: str | None
    model_file: Any
    habitats: bool
    habitat_model: str
    classifier: Any
    tables: Any
    inputs: Any
    sources: Any
    species_plan: Any
    trained: dict[str, Any] | None = None


def prepare_year(ctx: RunContext, imagery: RunContext, urls: dict[str, str], model: str | None) -> YearRun:
    """Everything the year's steps read, read and checked before the virtual region is generated, imagery searched
    or a cluster started: the series' model (the one its first year was mapped with, unless ``model`` says
    otherwise) and classifier, the inputs, the species run's plan when the model is given."""
    from geoplantnet.inference.habitat import ClassifierFolder
    from geoplantnet.runs.inputs import indicator_inputs, plan_inputs

    year = int(ctx.year)  # type: ignore[arg-type]
    origin = series_origin(ctx, urls["species"])
    habitat_model, habitats = habitat_classifier(ctx, urls["habitat"], origin is not None)
    model_url = model or (origin.model if origin else None) or ctx.cfg.map.model
    model_file = ctx.model_file(model_url) if model_url is not None else None
    classifier = ClassifierFolder.read(habitat_model) if habitats else None
    planned = plan_inputs(imagery.cfg, observations=model_url is None)
    years = planned.years()
    if years is not None and year not in years:
        held = f"the year {years[0]}" if len(years) == 1 else f"the years {years[0]}-{years[-1]}"
        raise RefreshError(f"--year {year}: the virtual region holds {held} (sim.start, sim.years)")
    tables = indicator_inputs(imagery.cfg, progress=ctx.progress, year=year)
    inputs = planned.load(progress=ctx.progress)
    if not inputs.s2_items and ctx.cfg.inputs.virtual:
        raise RefreshError(f"no Sentinel-2 items in {year}: the virtual region's years are set by sim.start/sim.years")
    seasons = origin.seasons_for(year) if origin else None
    sources = imagery.sources(inputs, seasons)
    # inputs that do not fit a given model: refused before a cluster starts
    plan = _species_plan(imagery, model_file, sources, urls["species"]) if model_file is not None else None
    return YearRun(
        ctx, imagery, urls, model_url, model_file, habitats, habitat_model, classifier, tables, inputs, sources, plan
    )


def _made(name: str, url: str, plan: Any, run: Any, t0: float, **extra: Any) -> Made:
    seconds = round(time.perf_counter() - t0, 1)
    return Made(name, url, plan, run, seconds, {"seconds": seconds, **extra})


def species_step(year: YearRun, client: Client, made: Mapping[str, Made]) -> Made:
    """The year's species map (the model trained first when the series has none)."""
    t0 = time.perf_counter()
    imagery, url = year.imagery, year.urls["species"]
    if year.species_plan is None:
        year.model_url, year.trained = imagery.species_model(client, year.inputs)
        year.species_plan = _species_plan(imagery, year.model_url, year.sources, url)
    plan = year.species_plan
    run = imagery.produce_plan(client, plan.tiles(client), "species")
    return _made("species", url, plan, run, t0, tiles=len(run.tiles), tiles_computed=len(run.results))


def _species_plan(imagery: RunContext, model: Any, sources: Any, url: str) -> Any:
    """The species run of the year (:func:`geoplantnet.products.species_map.plan_map`) writing its slot of ``url``."""
    from geoplantnet.products.species_map import plan_map

    return plan_map(model, sources, imagery.cfg.grid, imagery.cfg.map, url, imagery.options(url), imagery.year)


def habitat_step(year: YearRun, client: Client, made: Mapping[str, Made]) -> Made:
    """The year's habitat map, where the series has habitat maps (else nothing mapped, the series still listed)."""
    from geoplantnet.products.habitat_map import PRODUCT, on_cluster, plan_in

    url = year.urls["habitat"]
    if not year.habitats:
        return Made("habitat", url, None, None, 0.0, None)
    t0 = time.perf_counter()
    imagery = year.imagery
    plan = plan_in(imagery, year.urls["species"], year.classifier or year.habitat_model, url)
    run = imagery.produce_plan(client, on_cluster(plan, client), PRODUCT)
    return _made("habitat", url, plan, run, t0, tiles_computed=len(run.results))


def indicators_step(year: YearRun, client: Client, made: Mapping[str, Made]) -> Made:
    """The year's indicators, with the species calibration of the series' first year of the same species model."""
    from geoplantnet.runs.indicators import open_stores, plan_indicators, produce_indicators

    t0 = time.perf_counter()
    imagery, urls = year.imagery, year.urls
    stores = open_stores(
        imagery.cfg, urls["species"], urls["habitat"] if year.habitats else None, urls["indicators"], imagery.year
    )
    version = made["species"].plan.attrs["model_version"]
    calibration = first_species_calibration(year.ctx, urls["indicators"], int(imagery.year), version)  # type: ignore[arg-type]
    plan = plan_indicators(imagery.cfg, stores, year.tables, calibration)
    run = produce_indicators(
        client, imagery.cfg, plan, overwrite=imagery.overwrite, progress=imagery.progress, year=imagery.year
    )
    return _made(
        "indicators", urls["indicators"], plan, run, t0, tiles_computed=run.tiles_computed, calibration=run.calibration
    )


Step = Callable[[YearRun, "Client", Mapping[str, Made]], "Made | None"]
STEPS: dict[str, Step] = {"species": species_step, "habitat": habitat_step, "indicators": indicators_step}


def evaluate_indicators(ctx: Any, truth: Any, made: Mapping[str, Made]) -> dict[str, Any]:
    """The year's indicators against the indicators of that year's truth (``indicators`` of the evaluation)."""
    from geoplantnet.evaluation.indicators import evaluate_indicators as score

    plan = made["indicators"].plan
    return {
        "indicators": score(
            made["indicators"].url,
            plan.job.model,
            list(plan.species),
            truth.species(ctx.year),
            truth.habitat(ctx.year),
            year=ctx.year,
        )
    }


register_evaluation("indicators", evaluate_indicators)
