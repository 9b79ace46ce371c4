"""The generator's truth under a landscape scenario: the same species niches and habitat rule, applied to the
land cover the scenario gives the footprint. It is what a perfect model would predict, so an impact assessment on the
virtual region can be scored against it (predicted versus true change)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from geoplantnet.core.config import RunConfig
from geoplantnet.core.grid import Grid
from geoplantnet.sim.environment import Environment
from geoplantnet.sim.habitats import HabitatSet
from geoplantnet.sim.observations import value_score
from geoplantnet.sim.region import RegionManifest
from geoplantnet.sim.species import SpeciesPool


@dataclass(frozen=True)
class TruthState:
    """The truth of one landscape on a window: probabilities (species, y, x), habitat indices into the region's
    habitat codes, expected richness / threatened / invasive counts and the value score (y, x)."""

    probability: np.ndarray
    habitat: np.ndarray
    richness: np.ndarray
    threatened: np.ndarray
    invasive: np.ndarray
    value_score: np.ndarray
    land_cover: np.ndarray


def scenario_truth(
    config: RunConfig, manifest: RegionManifest, window: Grid, inside: np.ndarray, code: int
) -> tuple[TruthState, TruthState, list[str]]:
    """(before, after, habitat codes) on ``window`` (a sub-grid of the region's map grid): the first year's land
    cover, and the same with ``inside`` set to land-cover ``code``. Edge effects are not part of the generator's
    ecology: its species respond to land cover, climate, terrain and soil only."""
    env = Environment(config.sim, manifest.map_grid)
    pool = SpeciesPool.read_table(manifest.path("species_table"))
    habitats = HabitatSet.from_table(pd.read_parquet(manifest.path("habitat_table")), pool)
    layers = env.layers(window.x, window.y)
    first = np.asarray(layers["land_cover"])
    changed = np.where(inside, np.uint8(code), first).astype(first.dtype)
    threatened, invasive = pool.threatened, np.asarray(pool.invasive)

    def state(land_cover: np.ndarray) -> TruthState:
        p = pool.probability({**layers, "land_cover": land_cover}, window.x, window.y)
        richness, n_threatened = p.sum(axis=0), p[threatened].sum(axis=0)
        return TruthState(
            probability=p,
            habitat=habitats.assign_expected(p, land_cover),
            richness=richness,
            threatened=n_threatened,
            invasive=p[invasive].sum(axis=0),
            value_score=value_score(richness, n_threatened),
            land_cover=land_cover,
        )

    return state(first), state(changed), list(habitats.codes)
