"""The virtual region over several years: change events, land cover, imagery and truth per year, the change store."""

import numpy as np
import pytest
import rasterio
from pydantic import ValidationError

from geoplantnet.core.config import ChangeEvent, GridConfig, RunConfig, SimConfig
from geoplantnet.sim.environment import CHANGE_KINDS, CHANGE_RULES, Environment
from geoplantnet.sim.region import PATHS, RegionError, config_hash, generate_region
from geoplantnet.sim.sentinel2 import _render, _scene, encode, plan_dates
from geoplantnet.sources.stac_items import read_ndjson
from geoplantnet.storage.store import open_store

SIM = SimConfig(seed=3, n_species=30, n_habitats=6, n_plots=12, n_presence_only=80, dates_per_season=1, chunk=64)
GRID = GridConfig(width_m=1000, height_m=1000, resolution=50)
TWO_YEARS = RunConfig(grid=GRID, sim=SIM.model_copy(update={"years": 2}))  # automatic changes in 2025
FINE_BANDS = ("B02", "B03", "B04", "B08")


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    return generate_region(TWO_YEARS, tmp_path_factory.mktemp("years"), progress=False)


@pytest.fixture(scope="module")
def env():
    return Environment(TWO_YEARS.sim, TWO_YEARS.grid.grid())


def _land_cover(env, grid, year):
    return env.layers(grid.x, grid.y, year=year)["land_cover"]


def test_one_year_is_unchanged(tmp_path):
    one = RunConfig(grid=GRID, sim=SIM)
    assert "changes" not in one.sim.model_dump(mode="json") and "changes" not in one.to_attrs()["geoplantnet_config"]
    assert config_hash(one) == config_hash(RunConfig(grid=GRID, sim=SIM.model_copy(update={"changes": None})))
    assert config_hash(one) != config_hash(RunConfig(grid=GRID, sim=SIM.model_copy(update={"years": 2})))
    assert SIM.change_events() == [] and Environment(SIM, GRID.grid()).changes == []
    manifest = generate_region(one, tmp_path, progress=False)
    assert manifest.paths == PATHS and "change_patches" not in manifest.counts and manifest.years == [2024]
    assert not (tmp_path / "truth" / "years").exists() and not (tmp_path / "truth" / "changes.zarr").exists()
    assert manifest.truth_path("species") == manifest.truth_path("species", 2024) == manifest.truth_species


def test_change_events_config():
    assert [e.kind for e in SimConfig(years=3).change_events() if e.year == 2026] == list(CHANGE_KINDS.values())
    explicit = SimConfig(years=3, changes=[ChangeEvent(year=2026, kind="built_up", count=2, size_m=50.0)])
    assert explicit.change_events() == explicit.changes and explicit.model_dump()["changes"][0]["year"] == 2026
    assert SimConfig(years=3, changes=[]).change_events() == []
    with pytest.raises(ValidationError, match="year 2024 is not a later year of the region"):
        SimConfig(years=2, changes=[{"year": 2024, "kind": "clearing"}])
    with pytest.raises(ValidationError, match=r"sim\.years is 1"):
        SimConfig(changes=[{"year": 2025, "kind": "clearing"}])


def test_manifest_and_change_store(region):
    assert region.years == [2024, 2025] and region.counts["change_patches"] > 0
    for kind in ("species", "habitat", "indicators"):
        assert region.truth_path(kind) == region.truth_path(kind, 2024) == region.path(f"truth_{kind}")
        assert (
            region.truth_path(kind, 2025)
            == region.root / "truth" / "years" / "2025" / region.path(f"truth_{kind}").name
        )
        open_store(str(region.truth_path(kind, 2025)))  # committed (complete flag) like the first year's
    with pytest.raises(RegionError, match="no year 2026"):
        region.truth_path("species", 2026)
    changes = open_store(str(region.truth_path("changes")))
    change = changes["change"]
    assert change.dims == ("year", "y", "x") and change.dtype == np.int8 and list(changes["year"].values) == [2025]
    assert change.attrs["flag_values"] == [0, 1, 2, 3]
    assert change.attrs["flag_meanings"] == "no_change clearing built_up wetland_restored"
    np.testing.assert_array_equal(changes["x"], TWO_YEARS.grid.grid().x)


def test_changes_sit_on_their_source_classes_and_match_the_land_cover(region, env):
    grid = region.map_grid
    before, after = _land_cover(env, grid, 2024), _land_cover(env, grid, 2025)
    code = open_store(str(region.truth_path("changes")))["change"].values[0]
    np.testing.assert_array_equal(code != 0, before != after)
    assert set(np.unique(code[code != 0])) == set(CHANGE_KINDS)  # every kind happens in this region
    for value, kind in CHANGE_KINDS.items():
        sources, target = CHANGE_RULES[kind]
        assert np.isin(before[code == value], sources).all() and (after[code == value] == target).all()
    built = [p for p in env.changes if p.kind == "built_up"]
    near = env.at_points(np.array([p.x for p in built]), np.array([p.y for p in built]))["road_distance"]
    open_land = np.isin(before, CHANGE_RULES["built_up"][0])
    roads = env.layers(grid.x, grid.y)["road_distance"][open_land]
    assert built and near.max() < np.quantile(roads, 0.2)  # new houses along the roads


def test_truth_differs_only_where_land_cover_changed(region, env):
    changed = open_store(str(region.truth_path("changes")))["change"].values[0] != 0
    for kind, var in (("species", "probability"), ("habitat", "habitat"), ("indicators", "richness_expected")):
        first = open_store(str(region.truth_path(kind)))[var].values
        later = open_store(str(region.truth_path(kind, 2025)))[var].values
        np.testing.assert_array_equal(first[..., ~changed], later[..., ~changed])  # bit-identical elsewhere
        if kind == "species":
            assert (first[:, changed] != later[:, changed]).any(axis=0).all()


def test_imagery_of_a_year_renders_that_years_land_cover(region, env):
    s2_grid = TWO_YEARS.grid.grid(TWO_YEARS.sim.s2_resolution)
    items = read_ndjson(region.s2_items_path)
    plans = plan_dates(TWO_YEARS.sim, s2_grid)
    assert sorted({it.datetime.year for it in items}) == [2024, 2025]
    for year in (2024, 2025):  # a search with datetime=YYYY finds that year's spring, summer and autumn at least
        assert {it.datetime.month // 3 % 4 for it in items if it.datetime.year == year} >= {1, 2, 3}
    lc = {y: _land_cover(env, s2_grid, y) for y in (2024, 2025)}
    changed = lc[2024] != lc[2025]
    assert changed.any()
    scenes = {y: _scene(env, s2_grid, y) for y in (2024, 2025)}
    summer = next(p for p in plans if p.when.year == 2025 and p.when.month in (6, 7, 8))
    item = next(it for it in items if it.id.startswith(summer.item_id))
    refl = {y: _render(scenes[y], summer, env.seed, FINE_BANDS, with_scl=False) for y in (2024, 2025)}
    for band in FINE_BANDS:
        with rasterio.open(item.assets[band].href) as ds:
            written = ds.read(1)
        # the 2025 file is the 2025 ground; the 2024 ground on the same date differs exactly on changed pixels
        np.testing.assert_array_equal(written, encode(refl[2025][0][band], refl[2025][1]))
        differs = refl[2024][0][band] != refl[2025][0][band]
        assert not differs[~changed].any() and differs[changed].mean() > 0.9
    ndvi = {y: (r[0]["B08"] - r[0]["B04"]) / (r[0]["B08"] + r[0]["B04"]) for y, r in refl.items()}
    felled = (lc[2025] != lc[2024]) & np.isin(lc[2025], (1, 6))  # clearing and built-up
    assert felled.any() and (ndvi[2025][felled] - ndvi[2024][felled]).mean() < -0.1


def test_year_aware_windows_stitch_and_accumulate():
    sim = SIM.model_copy(update={"years": 3})
    grid = GRID.grid(10.0)
    env = Environment(sim, grid)
    big = env.layers(grid.x, grid.y, year=2026)["land_cover"]
    for ys, xs in ((slice(13, 61), slice(40, 97)), (slice(0, 100), slice(0, 7)), (slice(55, 56), slice(3, 90))):
        window = env.layers(grid.x[xs], grid.y[ys], year=2026)["land_cover"]
        np.testing.assert_array_equal(window, big[ys, xs])
    yy, xx = np.meshgrid(grid.y[::7], grid.x[::7], indexing="ij")
    points = env.at_points(xx.ravel(), yy.ravel(), year=2026)["land_cover"]
    np.testing.assert_array_equal(points, big[::7, ::7].ravel())
    # cumulative: a pixel changed in 2025 keeps its 2025 class in 2026 unless 2026 changes it again
    first = env.layers(grid.x, grid.y)["land_cover"]
    lc25, code25 = env.year_land_cover(first, grid.x, grid.y, 2025)
    lc26, code26 = env.year_land_cover(first, grid.x, grid.y, 2026)
    np.testing.assert_array_equal(lc26, big)
    assert (code25 != 0).any() and (code26 != 0).any()
    np.testing.assert_array_equal(lc26[code26 == 0], lc25[code26 == 0])
    np.testing.assert_array_equal((code26 != 0), lc26 != lc25)
    assert {p.year for p in env.changes} == {2025, 2026}
