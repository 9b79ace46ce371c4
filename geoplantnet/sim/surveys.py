"""Independent presence-absence surveys of a generated region: drawn like its plots, from another random stream, and
used by no model, so intervals calibrated or tested on them are honest about new places."""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from geoplantnet.core.config import RunConfig
from geoplantnet.sim.habitats import HabitatSet
from geoplantnet.sim.observations import sample_plots
from geoplantnet.sim.region import RegionManifest
from geoplantnet.sim.species import SpeciesPool

SURVEY_STREAM = 0x5E7  # added to the region's seed: a stream the region's own plots never use


class _YearPoints:
    """The environment at points in one year (land cover after that year's changes)."""

    def __init__(self, env: Any, year: int | None) -> None:
        self.env, self.year = env, year

    def at_points(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        return self.env.at_points(x, y, year=self.year)


def independent_surveys(
    manifest: RegionManifest, config: RunConfig, n: int, *, stream: int = 0, year: int | None = None
) -> tuple[gpd.GeoDataFrame, pd.DataFrame]:
    """``n`` surveys (plots, plot_species) of the region of ``manifest`` in ``year`` (default: the first): the truth
    read back from its tables, plot ids ``survey<stream>-<k>`` so they never collide with the training plots'."""
    from geoplantnet.sim.environment import Environment

    grid = config.grid.grid()
    env = _YearPoints(Environment(config.sim, grid), year)
    pool = SpeciesPool.read_table(manifest.species_table)
    habitats = HabitatSet.from_table(pd.read_parquet(manifest.habitat_table), pool)
    seed = config.sim.seed + SURVEY_STREAM + 1009 * stream + (0 if year is None else 7 * int(year))
    plots, species = sample_plots(
        pool, habitats, env, grid.bounds, n, seed=seed, start=config.sim.start, years=config.sim.years
    )
    rename = {old: f"survey{stream}-{k + 1:05d}" for k, old in enumerate(plots["plot_id"])}
    plots["plot_id"] = plots["plot_id"].map(rename)
    species["plot_id"] = species["plot_id"].map(rename)
    return plots, species
