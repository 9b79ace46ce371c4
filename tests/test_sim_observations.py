"""Habitats (hierarchy, diagnostic groups, the assignment rule) and the observations drawn from the truth."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio.features

from geoplantnet.core.config import GridConfig, SimConfig
from geoplantnet.sim.environment import Environment
from geoplantnet.sim.habitats import LEVEL1, MIN_DIAGNOSTIC_COVER, HabitatError, HabitatSet, expected_cover
from geoplantnet.sim.observations import (
    ObservationError,
    sample_plots,
    sample_presence_only,
    value_polygons,
    value_score,
    write_geoparquet,
)
from geoplantnet.sim.species import SpeciesPool

SIM = SimConfig(seed=11, n_species=40, n_habitats=8, n_plots=30, n_presence_only=300)
GRID = GridConfig(width_m=2000, height_m=2000, resolution=50).grid()


@pytest.fixture(scope="module")
def world():
    env = Environment(SIM, GRID)
    rng = np.random.default_rng(0)
    xmin, ymin, xmax, ymax = GRID.bounds
    x, y = rng.uniform(xmin, xmax, 2000), rng.uniform(ymin, ymax, 2000)
    sample = env.at_points(x, y)
    pool = SpeciesPool.generate(SIM.seed, SIM.n_species, sample, x, y)
    habitats = HabitatSet.generate(SIM.seed, SIM.n_habitats, pool, sample)
    return env, pool, habitats


# --- habitats ----------------------------------------------------------------------------------------------------
def test_hierarchy_and_diagnostic_groups(world):
    _, pool, habitats = world
    table = habitats.table()
    assert len(habitats.leaves) == SIM.n_habitats
    assert set(LEVEL1) <= set(habitats.codes)
    for row in table.itertuples():
        if row.level == 1:
            assert row.parent == "" and row.code in LEVEL1
        else:
            assert row.parent in habitats.codes and row.code.startswith(row.parent)
            assert len(row.code) == row.level
    for code in habitats.leaves:
        group = habitats.diagnostic[code]
        assert group and set(group) <= set(pool.ids)
    members = [s for c in habitats.leaves for s in habitats.diagnostic[c]]
    assert len(members) == len(set(members))  # disjoint groups


def test_habitat_table_round_trip(world, tmp_path):
    _, pool, habitats = world
    back = HabitatSet.from_table(pd.read_parquet(habitats.write_table(tmp_path / "h.parquet")), pool)
    assert back.codes == habitats.codes and dict(back.diagnostic) == dict(habitats.diagnostic)
    back_csv = HabitatSet.from_table(pd.read_csv(habitats.write_table(tmp_path / "h.csv")), pool)
    assert back_csv.parents == habitats.parents
    group = habitats.diagnostic[habitats.leaves[0]]
    assert back.assign_habitat(list(group), [10.0] * len(group)) == habitats.leaves[0]
    with pytest.raises(HabitatError, match="diagnostic_species"):
        HabitatSet.from_table(habitats.table().drop(columns="diagnostic_species"), pool)


def test_assignment_rule_on_hand_made_plots(world):
    _, _, habitats = world
    a, b = habitats.leaves[0], habitats.leaves[-1]
    ga, gb = habitats.diagnostic[a], habitats.diagnostic[b]
    # the group with the highest summed cover wins, whatever the order of the list
    assert habitats.assign_habitat([gb[0], ga[0]], [10.0, 30.0]) == a
    # summed, not single: several small covers of one group beat one larger cover of another
    if len(gb) >= 2:
        assert habitats.assign_habitat([ga[0], *gb[:2]], [5.0, 3.0, 3.0]) == b
    # no diagnostic species (or too little cover) -> level-1 code of the land cover
    assert habitats.assign_habitat([], [], land_cover=3) == "R"
    assert habitats.assign_habitat([ga[0]], [MIN_DIAGNOSTIC_COVER / 2], land_cover=4) == "T"
    # a tie between habitats of different level-1 groups -> land cover; of the same group -> that group
    other = next((c for c in habitats.leaves if c[0] != a[0]), None)
    if other is not None:
        go = habitats.diagnostic[other]
        assert habitats.assign_habitat([ga[0], go[0]], [20.0, 20.0], land_cover=8) == "C"
    with pytest.raises(HabitatError, match="sp9999"):
        habitats.assign_habitat(["sp9999"], [10.0])
    with pytest.raises(HabitatError, match="covers"):
        habitats.assign_habitat([ga[0]], [1.0, 2.0])


def test_habitat_raster_follows_the_rule(world):
    env, pool, habitats = world
    sub = GRID.subgrid(slice(0, 12), slice(0, 12))
    layers = env.layers(sub.x, sub.y)
    p = pool.probability(layers, sub.x, sub.y)
    raster = habitats.assign_expected(p, layers["land_cover"])
    assert raster.shape == sub.shape and raster.dtype == np.int16
    for r, c in [(0, 0), (5, 7), (11, 11), (3, 9)]:
        cover = expected_cover(p[:, r, c])
        code = habitats.assign_habitat(list(pool.ids), cover.tolist(), int(layers["land_cover"][r, c]))
        assert habitats.codes[raster[r, c]] == code


# --- observations ------------------------------------------------------------------------------------------------
def test_plots_ordered_by_cover_with_rule_habitat(world):
    env, pool, habitats = world
    plots, species = sample_plots(pool, habitats, env, GRID.bounds, SIM.n_plots, seed=SIM.seed)
    assert len(plots) == SIM.n_plots and plots.crs.to_epsg() == 3035
    assert GRID.contains(plots.geometry.x.values, plots.geometry.y.values).all()
    assert list(species.columns) == ["plot_id", "species_id", "species_name", "cover", "rank"]
    lc = env.at_points(plots.geometry.x.values, plots.geometry.y.values)["land_cover"]
    by_plot = dict(list(species.groupby("plot_id")))
    for i, plot in enumerate(plots.itertuples()):
        rows = by_plot.get(plot.plot_id, species.iloc[:0])
        assert plot.n_species == len(rows)
        assert (np.diff(rows["cover"].to_numpy()) <= 0).all()
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert plot.habitat == habitats.assign_habitat(rows["species_id"].tolist(), rows["cover"].tolist(), int(lc[i]))
    assert plots["n_species"].mean() > 1
    assert ((species["cover"] > 0) & (species["cover"] <= 100)).all()
    # deterministic
    again, _ = sample_plots(pool, habitats, env, GRID.bounds, SIM.n_plots, seed=SIM.seed)
    pd.testing.assert_frame_equal(pd.DataFrame(plots), pd.DataFrame(again))


def test_presence_only_biased_toward_roads_and_towns(world):
    env, pool, _ = world
    records = sample_presence_only(pool, env, GRID.bounds, SIM.n_presence_only, seed=SIM.seed)
    assert len(records) == SIM.n_presence_only
    assert set(records.columns) == {"record_id", "species_id", "species_name", "date", "geometry"}
    assert set(records["species_id"]) <= set(pool.ids)
    at_records = env.at_points(records.geometry.x.values, records.geometry.y.values)
    rng = np.random.default_rng(1)
    xmin, ymin, xmax, ymax = GRID.bounds
    at_random = env.at_points(rng.uniform(xmin, xmax, 3000), rng.uniform(ymin, ymax, 3000))
    near = [at_records[k].mean() < at_random[k].mean() for k in ("road_distance", "town_distance")]
    assert any(near), (at_records["road_distance"].mean(), at_random["road_distance"].mean())
    assert at_records["road_distance"].mean() < at_random["road_distance"].mean()
    with pytest.raises(ObservationError, match="n_presence_only"):
        sample_presence_only(pool, env, GRID.bounds, -1, seed=1)


def test_value_polygons_valid_with_both_classes(world, tmp_path):
    env, pool, _ = world
    layers = env.layers(GRID.x, GRID.y)
    p = pool.probability(layers, GRID.x, GRID.y)
    score = value_score(p.sum(axis=0), p[pool.threatened].sum(axis=0))
    polys = value_polygons(score, GRID)
    assert set(polys["value"]) == {"high", "low"}
    assert polys.is_valid.all() and polys.crs.to_epsg() == 3035
    high = polys.loc[polys["value"] == "high", "mean_score"].min()
    low = polys.loc[polys["value"] == "low", "mean_score"].max()
    assert high > low
    zoned = value_polygons(score, GRID, zones=layers["land_cover"])
    assert len(zoned) >= len(polys) and zoned.is_valid.all()
    for poly in zoned.itertuples():  # an area never crosses a land-cover boundary
        r, c = GRID.index(*np.asarray(poly.geometry.representative_point().coords[0]))
        inside = rasterio.features.geometry_mask([poly.geometry], GRID.shape, GRID.transform, invert=True)
        assert np.unique(layers["land_cover"][inside]).size == 1, (r, c)
    path = write_geoparquet(polys, tmp_path / "value.parquet")
    back = gpd.read_parquet(path)
    assert back.crs.to_epsg() == 3035 and len(back) == len(polys)
    with pytest.raises(ObservationError, match="grid"):
        value_polygons(score[:-1], GRID)
