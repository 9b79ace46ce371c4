"""Where a run's inputs come from: a user's files and STAC API, or the virtual region (the demo and the tests).

This is the only module of the jobs that imports the simulator (:mod:`geoplantnet.sim`): the virtual region is one
provider of inputs (COGs, STAC items served on loopback, observations, and its truth), and everything downstream
sees the same :class:`Inputs` whichever provider made them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
import xarray as xr
from rasterio.errors import RasterioError

from geoplantnet.core.config import ConfigError, RunConfig
from geoplantnet.core.errors import InputError
from geoplantnet.samples.observations import Observations
from geoplantnet.sources import predictors


@dataclass
class Inputs:
    """What a run reads: observations, predictor items, optional Sentinel-2 items and the true probabilities."""

    observations: Observations
    env_items: list
    s2_items: list | None = None
    truth: xr.DataArray | None = None  # (species, y, x) true probabilities on the map grid (virtual region only)
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def stac_api(cfg: RunConfig, progress: bool) -> Iterator[str]:
    """The STAC API URL to search: ``cfg.stac.url`` as given, or a server we start on loopback for the region."""
    if cfg.stac.url:
        yield cfg.stac.url
        return
    from geoplantnet.sim.region import generate_region
    from geoplantnet.sim.stac_server import start_server

    manifest = generate_region(cfg, Path(cfg.workdir) / "region", progress=progress)
    server = start_server(cfg.stac.backend, cfg.stac.host, cfg.stac.port, manifest.collections())
    try:
        yield server.url
    finally:
        server.stop()


def virtual_inputs(cfg: RunConfig, *, progress: bool = False) -> Inputs:
    """The virtual region's observations, predictors (searched through its STAC API) and true probabilities."""
    from geoplantnet.samples.observations import from_virtual_region
    from geoplantnet.sim.region import generate_region
    from geoplantnet.sources import catalog
    from geoplantnet.storage.store import open_store

    manifest = generate_region(cfg, Path(cfg.workdir) / "region", progress=progress)
    grid = cfg.grid.grid(cfg.cube.resolution)
    with stac_api(cfg, progress) as url:
        where = {"bbox": grid.bounds, "bbox_crs": grid.epsg, "timeout": cfg.stac.timeout, "retries": cfg.stac.retries}
        s2 = list(catalog.search(url, cfg.stac.s2_collection, max_cloud_cover=cfg.cube.max_cloud_cover, **where))
        env = list(catalog.search(url, cfg.stac.env_collection, **where))
    truth = open_store(str(manifest.truth_species))["probability"]
    return Inputs(from_virtual_region(manifest), env, s2, truth, [f"virtual region {manifest.root}"])


def user_inputs(
    cfg: RunConfig,
    observations: Path,
    rasters: list[Path],
    *,
    crs: str = "EPSG:4326",
    x: str = "lon",
    y: str = "lat",
    species: str = "species",
    presence: str | None = None,
    survey: str | None = None,
    with_s2: bool = False,
    categorical: Sequence[str] = (),
) -> Inputs:
    """A user's observations file (CSV or GeoParquet) and predictor GeoTIFFs (any CRS), optionally with Sentinel-2."""
    from geoplantnet.samples.observations import load_observations
    from geoplantnet.sources import catalog

    if not rasters:
        raise InputError("no predictor rasters given (--rasters a.tif b.tif ...)")
    grid = cfg.grid.grid()
    obs = load_observations(
        observations, crs=crs, x=x, y=y, species=species, presence=presence, survey=survey, grid=grid
    )
    layers: dict[str, Path] = {}
    for path in rasters:
        try:
            with rasterio.open(path) as ds:
                multi = ds.count > 1
        except RasterioError as exc:
            raise predictors.PredictorError(f"{path}: cannot open as a raster: {' '.join(str(exc).split())}") from None
        layers.update(
            predictors.split_bands(path, Path(cfg.workdir) / "predictors") if multi else {Path(path).stem: Path(path)}
        )
    env_items = predictors.from_geotiffs(layers, categorical=categorical)
    s2 = None
    if with_s2:
        if not cfg.stac.url:
            raise ConfigError("--with-s2 needs a STAC API: --set stac.url=https://...")
        cgrid = cfg.grid.grid(cfg.cube.resolution)
        s2 = list(
            catalog.search(
                cfg.stac.url, cfg.stac.s2_collection, bbox=cgrid.bounds, bbox_crs=cgrid.epsg,
                datetime=cfg.cube.datetime, max_cloud_cover=cfg.cube.max_cloud_cover,
                timeout=cfg.stac.timeout, retries=cfg.stac.retries,
            )
        )
    return Inputs(obs, env_items, s2, None, [f"observations {observations}; rasters {[p.name for p in rasters]}"])
