"""The indicators' plan (driver side, from the ``indicators`` and ``store`` sections): the stores opened and checked,
the status tables matched to the map's species, the habitat classes' Red List categories and typical species, the
intervals calibrated on surveys (:func:`geoplantnet.validation.conformal.calibrate_on_surveys`), the run's
fingerprint and attributes, the tile job. Two modes: two-pass (:func:`plan_from_stores`: ``species.zarr`` and
``habitat.zarr`` read tile by tile) and fused (:func:`plan_fused`: the species model and habitat classifier run in
each tile task); both calibrate and decide alike (:func:`plan`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import zarr

from geoplantnet.core.config import IndicatorsConfig, StoreConfig, redact
from geoplantnet.core.grid import Grid
from geoplantnet.core.hashing import fingerprint
from geoplantnet.inference.fused import FusedPredictor
from geoplantnet.models.calibration import Calibration
from geoplantnet.products.habitat_map import THRESHOLD, open_species_year, ranks, store_epsg
from geoplantnet.products.indicators.declared import indicator_template
from geoplantnet.products.indicators.model import IndicatorModel
from geoplantnet.products.indicators.tables import IndicatorInputs, digest, habitat_model, species_groups
from geoplantnet.products.indicators.tiles import (
    FusedTileJob,
    IndicatorError,
    IndicatorTileJob,
    fused_indicator_tile,
    indicator_tile,
)
from geoplantnet.samples.extraction import grid_of
from geoplantnet.storage.store import PRODUCT_ATTR, RUN_ATTR, StoreError, open_store, storage_options_for, zarr_store
from geoplantnet.storage.tiles import TileOutput
from geoplantnet.storage.years import complete_slot, year_records, year_view
from geoplantnet.validation.conformal import (
    IntervalCalibration,
    Sampled,
    calibrate_on_surveys,
    sample_maps,
)


@dataclass(frozen=True)
class IndicatorPlan:
    """Indicators decided on the driver before anything is written."""

    grid: Grid
    tile: int
    parts: dict[str, str]
    attrs: dict[str, str]
    job: IndicatorTileJob | FusedTileJob  # two-pass: reads the stores; fused: predicts in the task
    calibration: IntervalCalibration
    status_report: dict[str, Any]
    species: tuple[str, ...]

    @property
    def fused(self) -> bool:
        """Whether the tile tasks predict their species (fused) rather than read the stores (two-pass)."""
        return isinstance(self.job, FusedTileJob)

    @property
    def fn(self) -> Callable[[Any, Any], dict[str, Any]]:
        """The tile function of the plan's mode."""
        return fused_indicator_tile if self.fused else indicator_tile

    def layout(self) -> tuple[Any, dict[str, dict[str, Any]]]:
        """The store's layout (:func:`~geoplantnet.products.indicators.declared.indicator_template`)."""
        return indicator_template(self.grid, self.job.model, self.tile)


def _habitat_store(
    url: str, options: dict[str, Any], grid: Grid, year: int | None
) -> tuple[list[str], Any, int | None]:
    """The habitat map's classes, its store and the year's slot of a series (refused unless that year is complete),
    checked against the species map's grid."""
    ds = open_store(url, storage_options=options)
    if ds.attrs.get(PRODUCT_ATTR) != "habitat" or "top_k" not in ds:
        raise StoreError(f"{redact({'url': url})['url']}: not a habitat.zarr")
    if "top_k_probability" not in ds:
        raise IndicatorError(
            f"{redact({'url': url})['url']}: a habitat map without top_k_probability (made by an earlier version): "
            "rerun geoplantnet habitat-map with --out to a new store"
        )
    if ds.sizes["y"] != grid.height or ds.sizes["x"] != grid.width:
        raise IndicatorError(f"{redact({'url': url})['url']}: habitat map and species map are on different grids")
    return [str(c) for c in ds["habitat_code"].values], ds, complete_slot(url, ds.attrs, year)


@dataclass(frozen=True)
class IndicatorStores:
    """The two-pass mode's stores, opened and checked on the driver (complete, of their product, on one grid; the
    output none of them): the species map (the ``year`` of a series), the habitat map or None, the output."""

    species_url: str
    species_options: dict[str, Any]
    species: Any  # xarray Dataset: the species store (the year's view of a series)
    species_slot: int | None
    species_run: str
    grid: Grid
    tile: int
    habitat_url: str | None
    habitat_options: dict[str, Any]
    habitat: Any | None  # xarray Dataset or None
    classes: list[str] | None
    habitat_slot: int | None
    out_url: str
    year: int | None = None

    @classmethod
    def open(
        cls,
        store: StoreConfig,
        epsg: int,
        species_url: str,
        habitat_url: str | None,
        out_url: str,
        year: int | None = None,
    ) -> IndicatorStores:
        """Open the stores (metadata only; ``epsg``: the grid's when the species store names none): cheap, so a
        missing or wrong store fails before the tables are read, the virtual region generated or a cluster started."""
        for url in (species_url, habitat_url):
            if url is not None and out_url.rstrip("/") == url.rstrip("/"):
                raise IndicatorError(f"--out {out_url} is an input store of the indicators; choose another path")
        species_options = storage_options_for(species_url, store)
        ds, species_slot, species_run = open_species_year(species_url, species_options, year)
        grid = grid_of(ds["probability"], store_epsg(ds, epsg))
        raw = zarr.open_group(zarr_store(species_url, species_options), mode="r")["probability"]
        habitat_options = storage_options_for(habitat_url, store) if habitat_url else {}
        classes, hds, habitat_slot = (
            _habitat_store(habitat_url, habitat_options, grid, year) if habitat_url else (None, None, None)
        )
        return cls(
            species_url=species_url,
            species_options=species_options,
            species=ds,
            species_slot=species_slot,
            species_run=species_run,
            grid=grid,
            tile=int((raw.shards or raw.chunks)[-1]),
            habitat_url=habitat_url,
            habitat_options=habitat_options,
            habitat=hds,
            classes=classes,
            habitat_slot=habitat_slot,
            out_url=out_url,
            year=year,
        )


def plan_from_stores(
    settings: IndicatorsConfig,
    store: StoreConfig,
    stores: IndicatorStores,
    inputs: IndicatorInputs,
    species_calibration: Calibration | None = None,
    *,
    scale: str,
) -> IndicatorPlan:
    """The two-pass mode: with the stores opened (:meth:`IndicatorStores.open`), match the tables, calibrate the
    intervals on the maps' values at the surveys (``scale``: the species map's output scale, whether its values are
    calibrated probabilities), and fingerprint the run; with the stores' ``year``, that year of the species and
    habitat series into that year of an indicator series."""
    ds, grid, tile, year = stores.species, stores.grid, stores.tile, stores.year
    species_url, species_options = stores.species_url, stores.species_options
    habitat_url, habitat_options = stores.habitat_url, stores.habitat_options
    classes, hds, out_url = stores.classes, stores.habitat, stores.out_url
    species = [str(s) for s in ds["species"].values]
    names = [str(s) for s in ds["species_name"].values] if "species_name" in ds.coords else None
    thresholds = ds[THRESHOLD].values.astype("float32") if THRESHOLD in ds else None
    groups, status_report = species_groups(inputs, species, names)

    sampled = None
    if inputs.surveys is not None and len(inputs.surveys):
        codes = year_view(open_store(species_url, storage_options=species_options, mask_and_scale=False), year)
        habitat_codes = (
            year_view(open_store(habitat_url, storage_options=habitat_options, mask_and_scale=False), year)
            if habitat_url
            else None
        )
        sampled = sample_maps(codes, habitat_codes, grid, inputs.surveys)
    recalibrate = needs_recalibration(settings.recalibrate, scale)
    cal, species_cal, thresholds = calibrate_on_surveys(
        settings, inputs.surveys, sampled, species, classes, groups, thresholds, recalibrate, species_calibration
    )
    species_version = str(ds.attrs.get("model_version", "unknown"))
    versions = {"species_model": species_version}
    habitat_run = "none"
    if habitat_url is not None and hds is not None:
        record = year_records(hds.attrs).get(int(year)) if year is not None else None
        provenance = record.get("attrs", {}) if record else hds.attrs
        versions["habitat_model"] = str(provenance.get("habitat_model_version", "unknown"))
        habitat_run = str(record["run"]) if record else str(hds.attrs.get(RUN_ATTR, "unknown"))

    def job(model: IndicatorModel, output: TileOutput) -> IndicatorTileJob:
        return IndicatorTileJob(
            species_url=species_url,
            species_options=species_options,
            habitat_url=habitat_url,
            habitat_options=habitat_options,
            model=model,
            species_slot=stores.species_slot,
            habitat_slot=stores.habitat_slot,
            output=output,
        )

    return plan(
        settings,
        store,
        inputs,
        IndicatorSource(
            kind=STORE,
            parts={"source": f"{STORE} {stores.species_run}", "habitat": habitat_run},
            attrs={
                "species_store": redact({"u": species_url})["u"],
                "habitat_store": redact({"u": habitat_url})["u"] if habitat_url else "none",
            },
            versions=versions,
        ),
        grid=grid,
        tile=tile,
        species=species,
        classes=classes,
        groups=groups,
        status_report=status_report,
        calibration=(cal, species_cal, thresholds),
        job=job,
        out_url=out_url,
        year=year,
    )


STORE, MODEL = "store", "model"  # where a run's species probabilities come from: species.zarr, or the model itself
SOURCE_ATTR = "indicator_source"
SOURCES = {
    STORE: "store: species.zarr (and habitat.zarr) read tile by tile (two-pass)",
    MODEL: "model: species predicted (and habitats classified) inside each indicator tile task (fused); "
    "no species.zarr or habitat.zarr",
}


@dataclass(frozen=True)
class IndicatorSource:
    """Where a run's probabilities and habitats come from (``kind``: ``store`` or ``model``), the fingerprint parts
    and store attributes that say so, and the versions of the models behind them."""

    kind: str
    parts: dict[str, str]
    attrs: dict[str, str]
    versions: dict[str, str]

    @classmethod
    def of_model(
        cls, model_attrs: Mapping[str, str], sha256: str, map_parts: Mapping[str, str], classifier: Any | None
    ) -> IndicatorSource:
        """The fused mode's source: the species model file (``model_attrs``: its ``model_file``, ``model_sha256``
        and ``model_version``), the map's fingerprint parts (``map_parts``) and the habitat classifier or None."""
        versions = {"species_model": model_attrs["model_version"]}
        habitat_part, habitat_attrs = "none", {"habitat_model_folder": "none"}
        if classifier is not None:
            versions["habitat_model"] = classifier.version
            habitat_part = f"{MODEL} {classifier.model.version[:12]} {classifier.assemblage} top_k={classifier.top_k}"
            habitat_attrs = {
                "habitat_model_folder": redact({"u": classifier.model.folder})["u"],
                "assemblage": classifier.assemblage,
            }
        return cls(
            kind=MODEL,
            parts={
                "source": f"{MODEL} {sha256[:12]}",
                "habitat": habitat_part,
                **{f"map_{k}": v for k, v in map_parts.items() if k != "model"},
            },
            attrs={
                "species_store": "none",
                "habitat_store": "none",
                "species_model_file": model_attrs["model_file"],
                "species_model_sha256": model_attrs["model_sha256"],
                **habitat_attrs,
            },
            versions=versions,
        )


def plan(
    settings: IndicatorsConfig,
    store: StoreConfig,
    inputs: IndicatorInputs,
    source: IndicatorSource,
    *,
    grid: Grid,
    tile: int,
    species: list[str],
    classes: list[str] | None,
    groups: dict[str, np.ndarray],
    status_report: dict[str, Any],
    calibration: tuple[IntervalCalibration, Calibration | None, np.ndarray | None],
    job: Callable[[IndicatorModel, TileOutput], IndicatorTileJob | FusedTileJob],
    out_url: str,
    year: int | None,
) -> IndicatorPlan:
    """What both modes decide alike once the probabilities at the surveys are calibrated: the habitat model, the
    indicator model, the fingerprint parts (the source's first), the store's attributes, the tile job."""
    cal, species_cal, thresholds = calibration
    hab, hab_report = (None, {})
    if classes is not None:
        hab, hab_report = habitat_model(inputs, classes, species, settings, cal.habitat_radius)
    ind = settings
    model = IndicatorModel(
        thresholds=thresholds,
        groups=groups,
        count_radius=cal.count_radius,
        level=ind.level,
        habitats=hab,
        draws=ind.draws,
        seed=ind.seed,
        versions=source.versions,
        calibration=species_cal,
        source=source.kind,
    )
    parts = {
        **source.parts,
        "tables": digest(inputs, groups, hab),
        "calibration": json.dumps(
            {k: round(v, 6) for k, v in {**cal.count_radius, "habitat": cal.habitat_radius}.items()}, sort_keys=True
        ),
        "settings": f"level={ind.level} draws={ind.draws} seed={ind.seed}",
        "species_calibration": "none" if species_cal is None else fingerprint(species_cal.model_dump(mode="json")),
        "tiling": f"tile={tile}",
        "variables": fingerprint(model.variables())[:16],  # a new indicator is a new layout, never a resume
    }
    output = TileOutput.of(out_url, parts, storage_options_for(out_url, store), year=year)
    species_version = source.versions["species_model"]
    attrs = {
        **source.attrs,
        SOURCE_ATTR: SOURCES[source.kind],
        "species_model_version": species_version,
        "habitat_model_version": source.versions.get("habitat_model", "none"),
        "model_version": species_version,
        "calibration": json.dumps({"coverage": cal.coverage, "surveys": cal.surveys, "notes": cal.notes}),
        "nominal_level": str(ind.level),
        "species_calibration": species_cal.model_dump_json() if species_cal is not None else "none",
    }
    report = {**status_report, **hab_report}
    return IndicatorPlan(grid, tile, parts, attrs, job(model, output), cal, report, tuple(species))


@dataclass(frozen=True)
class FusedSetup:
    """The fused mode decided on the driver before any cluster work: the species model checked against the run's
    inputs, the status tables matched to its species, the habitat classifier checked against them, the fingerprint
    parts and attributes naming the models. :func:`plan_fused` adds the calibration (on the cluster)."""

    fused: FusedPredictor
    inputs: IndicatorInputs
    spec: Any  # the species model's ModelSpec or PeerSpec
    classes: list[str] | None
    thresholds: np.ndarray | None
    groups: dict[str, np.ndarray]
    status_report: dict[str, Any]
    source: IndicatorSource
    scale: str = ""  # the species model's output scale (calibrated probabilities or not)

    @property
    def species(self) -> list[str]:
        """The species model's species ids."""
        return [str(s) for s in self.spec.species]

    @classmethod
    def of(
        cls,
        predictor: Any,
        spec: Any,
        model_attrs: Mapping[str, str],
        map_parts: Mapping[str, str],
        inputs: IndicatorInputs,
        classify: Callable[[list[str], np.ndarray | None], tuple[Any, list[str]]] | None,
        top_k: int,
        scale: str,
    ) -> FusedSetup:
        """The setup of the species ``predictor`` checked (its ``spec``, ``model_attrs`` and the map's fingerprint
        parts), the tables matched to its species, then the habitat classifier checked against them (``classify``:
        the map's species and thresholds -> the classifier and its classes; None without habitats)."""
        species = [str(s) for s in spec.species]
        names = [str(s) for s in spec.species_name] if spec.species_name else None
        # the thresholds species.zarr would hold (the species map's threshold_max_tss)
        thresholds = spec.thresholds.as_arrays()["max_tss"] if spec.thresholds is not None else None
        groups, status_report = species_groups(inputs, species, names)
        classifier, classes = classify(species, thresholds) if classify is not None else (None, None)
        n_ranks = ranks(len(classes), top_k) if classes is not None else 0
        fused = FusedPredictor(predictor, classifier, len(species), n_ranks)
        source = IndicatorSource.of_model(model_attrs, predictor.model.sha256, map_parts, classifier)
        return cls(fused, inputs, spec, classes, thresholds, groups, status_report, source, scale)


def plan_fused(
    settings: IndicatorsConfig,
    store: StoreConfig,
    setup: FusedSetup,
    sampled: Sampled | None,
    tile: int,
    out_url: str,
) -> IndicatorPlan:
    """The fused mode: with the models checked (:class:`FusedSetup`) and their values at the surveys (``sampled``,
    computed as fused tiles compute them; None without surveys), the intervals calibrated and the run fingerprinted
    by the model files and inputs rather than by stores."""
    fused = setup.fused
    recalibrate = needs_recalibration(settings.recalibrate, setup.scale)
    calibration = calibrate_on_surveys(
        settings,
        setup.inputs.surveys,
        sampled,
        setup.species,
        setup.classes,
        setup.groups,
        setup.thresholds,
        recalibrate,
    )
    return plan(
        settings,
        store,
        setup.inputs,
        setup.source,
        grid=fused.species.map_grid,
        tile=tile,
        species=setup.species,
        classes=setup.classes,
        groups=setup.groups,
        status_report=setup.status_report,
        calibration=calibration,
        job=lambda model, output: FusedTileJob(fused, model, output),
        out_url=out_url,
        year=None,
    )


def needs_recalibration(setting: str, scale: str) -> bool:
    """Whether the species probabilities get Platt maps from surveys first (``indicators.recalibrate``): always,
    never, or (auto) when the species map says its values are not calibrated probabilities."""
    if setting != "auto":
        return setting == "always"
    return not str(scale).startswith("calibrated")


class StreamedTiles(Protocol):
    """What the tile stream reports of a run (:class:`geoplantnet.runs.tiles.TiledRun`, a layer above)."""

    tiles: list[Any]
    todo: list[Any]
    results: list[dict[str, Any]]

    @property
    def pixels_per_second(self) -> float | None: ...


@dataclass
class IndicatorSummary:
    """What an indicators run did."""

    store: str
    run: str
    variables: list[str]
    groups: dict[str, int]
    tiles: int
    tiles_computed: int
    tiles_skipped: int
    shape: list[int]
    cores: int
    pixels_per_second: float | None
    pixels_per_second_per_core: float | None
    seconds: float
    calibration: dict[str, Any]
    tables: dict[str, Any]
    evaluation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values."""
        return asdict(self)

    @classmethod
    def of(cls, plan: IndicatorPlan, level: float, done: StreamedTiles, cores: int, seconds: float) -> IndicatorSummary:
        """The summary of ``plan`` written (``done``: what the tile stream did) on ``cores`` in ``seconds``."""
        out, cal, model = plan.job.output, plan.calibration, plan.job.model
        pps = done.pixels_per_second
        return cls(
            store=redact({"url": out.url})["url"],
            run=out.run,
            variables=model.variables(),
            groups={g: int(m.sum()) for g, m in model.groups.items()},
            tiles=len(done.tiles),
            tiles_computed=len(done.results),
            tiles_skipped=len(done.tiles) - len(done.todo),
            shape=[plan.grid.height, plan.grid.width],
            cores=cores,
            pixels_per_second=pps,
            pixels_per_second_per_core=round(pps / cores, 1) if pps else None,
            seconds=seconds,
            calibration={
                "level": level,
                "surveys": cal.surveys,
                "radius": {**cal.count_radius, "habitat_set": cal.habitat_radius},
                "coverage": cal.coverage,
                "notes": cal.notes,
            },
            tables=plan.status_report,
        )
