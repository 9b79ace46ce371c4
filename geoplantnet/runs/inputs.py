"""Where a run's inputs come from: a user's files and STAC API, or the virtual region (the demo and the tests).

This is the only module of the jobs that imports the simulator (:mod:`geoplantnet.sim`): the virtual region is one
provider of inputs (COGs, STAC items served on loopback, observations, and its truth), and everything downstream
sees the same :class:`Inputs` whichever provider made them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from rasterio.errors import RasterioError

from geoplantnet.core.config import ConfigError, HabitatsConfig, RunConfig, redact
from geoplantnet.core.grid import Grid
from geoplantnet.core.hashing import file_digest, fingerprint
from geoplantnet.samples.observations import Observations
from geoplantnet.samples.plots import Plots, plots_from_frame
from geoplantnet.sources.stac_items import rehome_hrefs
from geoplantnet.storage.workdir import Workdir, scratch

if TYPE_CHECKING:
    from geoplantnet.evaluation.truth import VirtualTruth
    from geoplantnet.products.indicators.tables import IndicatorInputs
    from geoplantnet.sim.region import RegionManifest


@dataclass
class Inputs:
    """What a run reads: observations, predictor items, optional Sentinel-2 items and the true probabilities."""

    observations: Observations | None  # None when a trained model is applied to a user's predictors
    env_items: list
    s2_items: list | None = None
    truth: xr.DataArray | None = None  # (species, y, x) true probabilities on the map grid (virtual region only)
    notes: list[str] = field(default_factory=list)
    # the object store the items' s3:// assets were published to (an object-store workdir's options), which the
    # cube reads them through (GDAL /vsis3/); empty for local files
    read_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials: no repr


def workdir(cfg: RunConfig) -> Workdir:
    """The run's workdir with the options of its object store (none for a local folder)."""
    return Workdir.of(cfg.workdir, cfg.store)


def read_options(cfg: RunConfig) -> dict[str, Any]:
    """The options the run's published inputs (the virtual region's COGs, split rasters) are read with: the
    object-store workdir's; none for a local workdir (its files are read in place, as always)."""
    return dict(workdir(cfg).options)


# this process's local copy of each region it published or fetched: (region URL, settings hash) -> folder
_REGIONS: dict[tuple[str, str], Path] = {}


def region_folder(cfg: RunConfig) -> tuple[str, str]:
    """Where under an object-store workdir the virtual region of ``cfg``'s settings is published:
    ``region/<settings hash>``. One folder per settings: a run of other settings sharing the workdir never rewrites
    the files another run's workers are reading (nor leaves its own among them), and a worker's GDAL cache, keyed by
    URL, never serves one region's bytes for another's."""
    from geoplantnet.sim.region import config_hash

    return "region", config_hash(cfg)


def region(cfg: RunConfig, *, progress: bool = True) -> RegionManifest:
    """The virtual region of the run's settings, generated once. A local workdir keeps it in ``<workdir>/region``
    (as always). With an object-store workdir, workers share no disk with this driver: the region is generated in
    this process's scratch and published to ``<workdir>/region/<settings hash>/`` (:func:`region_folder`) with its
    items' asset hrefs pointing there (the marker last, so a half-published region never reads as one), or,
    published by an earlier run with these settings, fetched from there (what the driver reads itself:
    observations, truth, items)."""
    from geoplantnet.sim.region import MANIFEST, RegionManifest, generate_region

    wd = workdir(cfg)
    if wd.local:
        return generate_region(cfg, Path(cfg.workdir) / "region", progress=progress)
    folder = region_folder(cfg)
    key = (wd.url(*folder), folder[1])
    local = _REGIONS.get(key)
    if local is None or not (local / MANIFEST).exists():
        if _published_hash(wd, folder, MANIFEST) == folder[1]:
            local = wd.fetch(*folder, skip=(".tif",))  # the COGs stay on the store: only the workers read them
        else:
            # one folder per region URL too: its items name the store they were published to
            local = scratch("region", fingerprint(key)[:16])
            manifest = generate_region(cfg, local, progress=progress)
            for _, items in manifest.collections():
                rehome_hrefs(items, manifest.root, wd.url(*folder))
            wd.put(local, *folder)
        _REGIONS[key] = local
    return RegionManifest.load(local)


def _published_hash(wd: Workdir, folder: tuple[str, ...], manifest: str) -> str | None:
    """The settings hash of the region published in ``folder`` of the workdir, None when there is none complete."""
    if not wd.complete(*folder):
        return None
    try:
        return str(json.loads(wd.read_bytes(*folder, manifest))["config_hash"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def stac_api(cfg: RunConfig, progress: bool) -> Iterator[str]:
    """The STAC API URL to search: ``cfg.stac.url`` as given, or a server we start on loopback for the region."""
    if cfg.stac.url:
        yield cfg.stac.url
        return
    from geoplantnet.sim.stac_server import start_server

    manifest = region(cfg, progress=progress)
    server = start_server(cfg.stac.backend, cfg.stac.host, cfg.stac.port, manifest.collections())
    try:
        yield server.url
    finally:
        server.stop()


def virtual_inputs(cfg: RunConfig, *, progress: bool = False) -> Inputs:
    """The virtual region's observations, predictors (searched through its STAC API) and true probabilities."""
    from geoplantnet.samples.observations import from_virtual_region
    from geoplantnet.sources import catalog
    from geoplantnet.storage.store import open_store

    manifest = region(cfg, progress=progress)
    grid = cfg.grid.grid(cfg.cube.resolution)
    with stac_api(cfg, progress) as url:
        where = {"bbox": grid.bounds, "bbox_crs": grid.epsg, "timeout": cfg.stac.timeout, "retries": cfg.stac.retries}
        s2 = list(
            catalog.search(
                url,
                cfg.stac.s2_collection,
                max_cloud_cover=cfg.cube.max_cloud_cover,
                datetime=cfg.cube.datetime,  # a refresh maps one year of a region imaged over several
                **where,
            )
        )
        env = list(catalog.search(url, cfg.stac.env_collection, **where))
    truth = open_store(str(manifest.truth_species))["probability"]
    where = manifest.root if workdir(cfg).local else workdir(cfg).url("region")
    return Inputs(from_virtual_region(manifest), env, s2, truth, [f"virtual region {where}"], read_options(cfg))


@dataclass(frozen=True)
class InputsPlan:
    """What a run will read, checked before any heavy work (no cluster, no region generated, no search): a user's
    files read (observations, raster headers and declared classes, the settings each needs) or, with nothing
    configured, the virtual region, whose layers and years its settings say. :meth:`load` does the rest."""

    cfg: RunConfig
    observations: Observations | None = None  # the user's records when training needs them
    env_items: tuple = ()  # the user's rasters as STAC items (the virtual region's are found by load)

    @property
    def virtual(self) -> bool:
        return self.cfg.inputs.virtual

    def classes(self, variable: str) -> dict[int, str]:
        """Code -> name of the classes the layer ``variable`` declares (empty: none, or no such layer)."""
        if self.virtual:
            from geoplantnet.sim.environment import layer_classes

            return layer_classes(variable)
        from geoplantnet.sources import predictors  # stackstac and Dask arrays: for the stacks, not the headers

        return predictors.class_names(list(self.env_items), variable)

    def years(self) -> list[int] | None:
        """The calendar years the inputs hold imagery for, when known without a search (the virtual region's)."""
        return self.cfg.sim.calendar_years if self.virtual else None

    def load(self, *, progress: bool = False) -> Inputs:
        """The inputs themselves: the virtual region generated (cached under the workdir) and searched through its
        STAC API, or the user's Sentinel-2 items searched in ``stac.url``."""
        if self.virtual:
            return virtual_inputs(self.cfg, progress=progress)
        given, cfg = self.cfg.inputs, self.cfg
        s2 = sentinel2_items(cfg) if given.sentinel2 else None
        what = [f"observations {given.observations}"] if self.observations is not None else []
        what += [f"rasters {[Path(p).name for p in given.rasters]}"] if given.rasters else []
        what += [f"Sentinel-2 from {redact({'url': cfg.stac.url})['url']}"] if given.sentinel2 else []
        env = published_rasters(cfg, self.env_items)
        return Inputs(self.observations, env, s2, None, ["; ".join(what)], read_options(cfg))


def plan_inputs(cfg: RunConfig, *, observations: bool = True) -> InputsPlan:
    """Read and check what ``cfg.inputs`` names (the observations file, CSV or GeoParquet, only when
    ``observations``: training needs it, applying a model does not; predictor GeoTIFFs, any CRS; Sentinel-2 needs
    ``stac.url``), or nothing for the virtual region. Cheap: a bad file or setting fails here, before a cluster
    starts or a region is generated."""
    if cfg.inputs.virtual:
        return InputsPlan(cfg)
    from geoplantnet.samples.observations import load_observations

    given = cfg.inputs
    if observations and given.observations is None:
        raise ConfigError("no observations file given (--observations FILE or inputs.observations)")
    if not given.rasters and not given.sentinel2:
        raise ConfigError("no predictors: give rasters (--rasters, inputs.rasters) and/or Sentinel-2 (--with-s2)")
    if given.sentinel2 and not cfg.stac.url:
        raise ConfigError("Sentinel-2 inputs (--with-s2, inputs.sentinel2) need a STAC API: --set stac.url=https://...")
    obs = None
    if observations:
        obs = load_observations(
            Path(given.observations or ""),
            crs=given.crs,
            x=given.x,
            y=given.y,
            species=given.species,
            presence=given.presence,
            survey=given.survey,
            grid=cfg.grid.grid(),
        )
    return InputsPlan(cfg, obs, tuple(raster_items(cfg)) if given.rasters else ())


def raster_items(cfg: RunConfig) -> list:
    """STAC items for the rasters of ``inputs.rasters`` (multi-band files split into one layer per band)."""
    from geoplantnet.sources import predictors  # stackstac and Dask arrays: for the stacks, not the headers

    layers: dict[str, Path] = {}
    # bands split once; an object-store workdir's are split here and published by published_rasters
    split = Path(cfg.workdir) / "predictors" if workdir(cfg).local else scratch("predictors")
    for name in cfg.inputs.rasters:
        path = Path(name)
        try:
            with rasterio.open(path) as ds:
                multi = ds.count > 1
        except RasterioError as exc:
            raise predictors.PredictorError(f"{path}: cannot open as a raster: {' '.join(str(exc).split())}") from None
        layers.update(predictors.split_bands(path, split) if multi else {path.stem: path})
    return predictors.from_geotiffs(layers, categorical=cfg.inputs.categorical)


def published_rasters(cfg: RunConfig, items: Sequence[Any]) -> list:
    """The rasters' items as the workers read them: unchanged with a local workdir; with an object-store workdir
    (workers that share no disk with the driver) each layer file published once as
    ``<workdir>/predictors/<sha256>/<name>`` (one whole object: never half there) and its href pointing there."""
    from geoplantnet.sources.stac_items import local_path

    wd = workdir(cfg)
    if wd.local:
        return list(items)
    out = []
    for item in items:
        item = item.clone()
        for asset in item.assets.values():
            path = local_path(asset.href)
            names = ("predictors", file_digest(path), path.name)
            if not wd.exists(*names):
                wd.put(path, *names)
            asset.href = wd.url(*names)
        out.append(item)
    return out


def sentinel2_items(cfg: RunConfig, url: str | None = None) -> list:
    """Sentinel-2 items over the grid from ``url`` (default ``stac.url``: :func:`plan_inputs` checked it is set;
    ``stac.s2_collection``, ``cube.datetime``, cloud cover)."""
    from geoplantnet.sources import catalog

    grid = cfg.grid.grid(cfg.cube.resolution)
    return list(
        catalog.search(
            url or cfg.stac.url,
            cfg.stac.s2_collection,
            bbox=grid.bounds,
            bbox_crs=grid.epsg,
            datetime=cfg.cube.datetime,
            max_cloud_cover=cfg.cube.max_cloud_cover,
            timeout=cfg.stac.timeout,
            retries=cfg.stac.retries,
        )
    )


def run_inputs(cfg: RunConfig, *, observations: bool = True, progress: bool = False) -> Inputs:
    """The run's inputs from the configured provider: the user's (``cfg.inputs``) or, when nothing is configured,
    the virtual region. ``observations=False`` when a trained model is applied (map, predict). A job that has its
    own files to check first calls :func:`plan_inputs`, checks, then :meth:`InputsPlan.load`."""
    return plan_inputs(cfg, observations=observations).load(progress=progress)


def _plots_of(plots: pd.DataFrame, species: pd.DataFrame, source: str) -> Plots:
    """The simulator's plot tables (plots with habitat and point geometry; plot_species long rows) as sentences."""
    long = species.merge(
        pd.DataFrame(
            {"plot_id": plots["plot_id"], "habitat": plots["habitat"], "x": plots.geometry.x, "y": plots.geometry.y}
        ),
        on="plot_id",
    )
    settings = HabitatsConfig(plot="plot_id", species="species_id", cover="cover", habitat="habitat", x="x", y="y")
    return plots_from_frame(long, settings, source)


def virtual_plots(cfg: RunConfig, *, progress: bool = False) -> tuple[Plots, str]:
    """The virtual region's presence-absence plots as sentences (species ids by cover) with their habitats, and the
    path of the region's true habitat raster (``truth/habitat.zarr``) to score habitat maps against."""
    import geopandas as gpd

    manifest = region(cfg, progress=progress)
    plots = gpd.read_parquet(manifest.plots)
    species = pd.read_parquet(manifest.plot_species)
    return _plots_of(plots, species, str(manifest.plot_species)), str(manifest.truth_habitat)


def virtual_surveys(cfg: RunConfig, n: int, *, progress: bool = False, year: int | None = None) -> Plots:
    """``n`` presence-absence surveys of the virtual region (in ``year``: after that year's changes) that no model was
    trained on (another random stream than its plots): held-out data to calibrate and test the indicators' intervals."""
    from geoplantnet.sim.surveys import independent_surveys

    manifest = region(cfg, progress=progress)
    plots, species = independent_surveys(manifest, cfg, n, year=year)
    return _plots_of(plots, species, f"{manifest.root} (independent surveys)")


def virtual_status_tables(cfg: RunConfig) -> dict[str, str]:
    """The virtual region's species and habitat status tables (the statuses its generator assigned)."""

    manifest = region(cfg)
    return {"species": str(manifest.path("species_status")), "habitats": str(manifest.path("habitat_status"))}


def virtual_truth(cfg: RunConfig, year: int | None = None) -> tuple[xr.DataArray, str]:
    """The virtual region's true probabilities (species, y, x) and the path of its true habitat store (of ``year``:
    after that year's changes; default the first year)."""
    from geoplantnet.storage.store import open_store

    manifest = region(cfg)
    species = open_store(str(manifest.truth_path("species", year)))["probability"]
    return species, str(manifest.truth_path("habitat", year))


def region_truth(cfg: RunConfig) -> VirtualTruth:
    """The virtual region's truth as the evaluations read it (:mod:`geoplantnet.evaluation.registry`); refused
    (one line) when the configuration names the user's inputs."""
    from geoplantnet.evaluation.truth import VirtualTruth

    if not cfg.inputs.virtual:
        raise ConfigError("--evaluate scores against the virtual region's truth; inputs.* are set")
    return VirtualTruth(region(cfg))


def virtual_changes(cfg: RunConfig, year: int) -> xr.DataArray:
    """The virtual region's true land-cover change codes (y, x) from the year before ``year`` (0 = none)."""
    from geoplantnet.storage.store import open_store

    manifest = region(cfg)
    return open_store(str(manifest.truth_path("changes")))["change"].sel(year=int(year))


def virtual_scenario_truth(cfg: RunConfig, window: Grid, inside: np.ndarray, code: int) -> tuple[Any, Any, list[str]]:
    """The virtual region's truth on ``window`` (a sub-grid of the map grid) before and after its pixels ``inside``
    become land-cover ``code`` (:func:`geoplantnet.sim.scenario.scenario_truth`), and the habitat codes."""
    from geoplantnet.sim.scenario import scenario_truth

    manifest = region(cfg, progress=False)
    return scenario_truth(cfg, manifest, window, inside, code)


def virtual_value_polygons(cfg: RunConfig, *, progress: bool = False) -> str:
    """The path of the virtual region's value polygons (``value/biodiversity_value.parquet``: connected areas of the
    top and bottom 15 % of its true value score, labelled ``high`` / ``low`` in column ``value``)."""

    manifest = region(cfg, progress=progress)
    return str(manifest.path("value_polygons"))


def virtual_value_score(cfg: RunConfig) -> xr.DataArray:
    """The virtual region's true biodiversity value score (y, x) on the map grid (``truth/indicators.zarr``
    ``value_score``: expected richness + 4 x expected threatened species)."""
    from geoplantnet.storage.store import open_store

    manifest = region(cfg)
    return open_store(str(manifest.truth_path("indicators")))["value_score"]


def indicator_inputs(cfg: RunConfig, *, progress: bool = False, year: int | None = None) -> IndicatorInputs:
    """The configured tables, or on the virtual region its own tables, independent surveys (of ``year``) and plots.
    A user's tables are read first: a bad one fails before the region is generated."""
    from geoplantnet.products.indicators.tables import IndicatorInputs
    from geoplantnet.samples import status as status_tables
    from geoplantnet.samples.plots import read_plots

    ind = cfg.indicators
    surveys = reference = None
    if ind.plots is not None:
        if cfg.habitats.plots is not None and Path(ind.plots).resolve() == Path(cfg.habitats.plots).resolve():
            raise ConfigError(
                f"indicators.plots {ind.plots} is the habitat classifier's training table (habitats.plots): the "
                "intervals need surveys no model saw"
            )
        surveys = read_plots(ind.plots, cfg.habitats)
    if cfg.habitats.plots is not None:
        reference = read_plots(cfg.habitats.plots, cfg.habitats)
    invasive = status_tables.eu_invasive_names(ind.invasive_list) if ind.invasive_list is not None else None
    protected = status_tables.habitats_directive_names(ind.protected_list) if ind.protected_list is not None else None
    red_list = status_tables.read_habitat_red_list(ind.habitat_red_list) if ind.habitat_red_list is not None else None
    status = ind.status
    if cfg.inputs.virtual:
        if surveys is None and ind.n_surveys > 0:
            surveys = virtual_surveys(cfg, ind.n_surveys, progress=progress, year=year)
        if reference is None:
            reference, _ = virtual_plots(cfg, progress=progress)
        tables = virtual_status_tables(cfg)
        status = status or tables["species"]
        if red_list is None:
            red_list = status_tables.read_habitat_red_list(tables["habitats"])
    return IndicatorInputs(status, invasive, protected, red_list, surveys, reference)


def asset_state(item: Mapping[str, Any]) -> list[Any]:
    """Each local asset's size and modification time: a file replaced under the same name changes them."""
    from geoplantnet.sources.stac_items import local_path

    state: list[Any] = []
    for key, asset in sorted(item.get("assets", {}).items()):
        path = local_path(asset.get("href", ""))
        with contextlib.suppress(OSError, TypeError):
            st = os.stat(path) if path else None
            state.append([key, st.st_size, st.st_mtime_ns] if st else [key, asset.get("href")])
    return state


def inputs_digest(inputs: Inputs) -> str:
    """A hash of a run's training inputs by content: the observation records, every item and its files' state."""
    records = pd.util.hash_pandas_object(inputs.observations.records, index=False).to_numpy().tobytes()
    items = []
    for item in [*(inputs.env_items or ()), *(inputs.s2_items or ())]:
        d = item.to_dict()
        # not links (they carry the serving API's address, a new port each run) nor server-set timestamps
        props = {k: v for k, v in d.get("properties", {}).items() if k not in ("created", "updated")}
        items.append([d.get("id"), d.get("collection"), props, d.get("assets"), asset_state(d)])
    return fingerprint(records, items)
