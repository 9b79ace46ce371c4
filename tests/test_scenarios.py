"""Landscape scenarios (products/scenarios.py): footprints in any CRS on any window, edge weights, typical imagery,
the edits of composites and environment layers, scenario files, Monte-Carlo dropout, no-net-loss verdicts."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from torch import nn

from geoplantnet.core.errors import ConfigError
from geoplantnet.core.grid import Grid
from geoplantnet.models.mc_dropout import has_dropout, mc_dropout
from geoplantnet.products.impact import coarsen
from geoplantnet.products.offsets import compensation
from geoplantnet.products.scenarios import (
    Scenario,
    ScenarioError,
    dominant_class,
    edit_composite,
    edit_environment,
    learn_signature,
    load_scenario,
    resolve_class,
    zone,
)
from geoplantnet.samples.vectors import VectorError, read_polygons

GRID = Grid.from_origin(4_321_000.0, 2_981_000.0, 10.0, 40, 30)  # 400 m x 300 m at 10 m
SQUARE = shapely.box(4_321_100.0, 2_980_800.0, 4_321_200.0, 2_980_900.0)  # 10 x 10 pixels


def test_zone_inside_and_edge_weights():
    where = zone(SQUARE, GRID, 50.0, 0.4)
    assert where.inside.sum() == 100
    assert where.edge[where.inside].max() == 0
    ring = where.edge > 0
    # a pixel centre 5 m from the edge gets 0.4 x (1 - 5/50); nothing beyond 50 m
    assert np.isclose(where.edge.max(), 0.4 * (1 - 5 / 50))
    assert (where.distance[ring] <= 50).all() and (where.distance[ring] > 0).all()
    assert not ring[0, :].any()  # the first row is 100 m above the square
    # weights fall with distance
    d, w = where.distance[ring], where.edge[ring]
    assert np.all(np.diff(w[np.argsort(d)]) <= 1e-6)
    assert not zone(SQUARE, GRID, 0.0, 0.4).edge.any()


def test_a_footprint_in_lonlat_is_the_same_footprint(tmp_path):
    frame = gpd.GeoDataFrame({"name": ["site"]}, geometry=[SQUARE], crs=3035)
    frame.to_crs(4326).to_file(tmp_path / "fp.geojson", driver="GeoJSON")
    frame.to_parquet(tmp_path / "fp.parquet")
    lonlat = read_polygons(tmp_path / "fp.geojson", 3035, "footprint")
    metric = read_polygons(tmp_path / "fp.parquet", 3035, "footprint")
    a = zone(lonlat.geometry[0], GRID, 0.0, 0.0).inside
    b = zone(metric.geometry[0], GRID, 0.0, 0.0).inside
    assert (a == b).all() and a.sum() == 100


def test_bad_footprints_are_named(tmp_path):
    with pytest.raises(VectorError, match="no such file"):
        read_polygons(tmp_path / "none.geojson", 3035, "footprint")
    gpd.GeoDataFrame(geometry=[shapely.Point(4_321_100, 2_980_800)], crs=3035).to_file(tmp_path / "p.gpkg")
    with pytest.raises(VectorError, match="Point geometries"):
        read_polygons(tmp_path / "p.gpkg", 3035, "footprint")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(VectorError, match=r"bad\.geojson: cannot read"):
        read_polygons(tmp_path / "bad.geojson", 3035, "footprint")


def test_edits_keep_missing_data_missing():
    where = zone(SQUARE, GRID, 30.0, 0.5)
    values = np.full((2, 3, *GRID.shape), 0.2, dtype="float32")
    values[1, :, 15, 15] = np.nan  # a cloudy season inside the footprint
    signature = np.array([[0.5, 0.6, 0.7], [0.1, 0.1, np.nan]], dtype="float32")
    out = edit_composite(values, where, signature)
    assert np.allclose(out[0, :, where.inside], [0.5, 0.6, 0.7])
    assert np.isnan(out[1, :, 15, 15]).all()  # no data stays no data
    ring = where.edge > 0
    expected = 0.2 + where.edge[ring] * (0.5 - 0.2)
    assert np.allclose(out[0, 0][ring], expected)
    assert np.allclose(out[1, 2][ring], 0.2)  # a season the class has no typical value for is left as it was
    inside = out[1, 2][where.inside]
    assert np.allclose(inside[~np.isnan(inside)], 0.2)  # inside too: the data mask never changes
    assert (np.isnan(out) == np.isnan(values)).all()
    far = where.distance == np.inf
    assert (out[:, :, far] == values[:, :, far]).all()

    names = ["elevation", "land_cover_2", "land_cover_4", "land_cover_9"]
    env = np.zeros((4, *GRID.shape), dtype="float32")
    env[0] = 300.0
    env[2] = 1.0  # broadleaf everywhere
    env[:, 0, 0] = np.nan
    after = edit_environment(env, names, where, "land_cover", 2)
    assert (after[1][where.inside] == 1).all() and (after[2][where.inside] == 0).all()
    assert (after[0] == env[0])[~np.isnan(env[0])].all()
    assert (after[2][~where.inside][1:] == 1).all()
    classes, _ = dominant_class(after, names, "land_cover")
    assert (classes[where.inside] == 2).all() and classes[0, 0] == -1
    with pytest.raises(ScenarioError, match="land_cover_7"):
        edit_environment(env, names, where, "land_cover", 7)


def test_typical_values_are_the_class_medians():
    lc = np.zeros((10, 10), dtype="int16")
    lc[:5] = 3
    comp = np.random.default_rng(0).random((2, 2, 10, 10)).astype("float32")
    comp[0, 0, 0, 0] = np.nan
    sig = learn_signature(comp, lc, 3, min_pixels=10, where="test")
    assert np.isclose(sig[1, 1], np.median(comp[1, 1, :5]))
    assert np.isclose(sig[0, 0], np.nanmedian(comp[0, 0, :5]))
    with pytest.raises(ScenarioError, match="only 0 pixels of land-cover class 7"):
        learn_signature(comp, lc, 7, min_pixels=10, where="test")


def test_scenario_files(tmp_path):
    good = tmp_path / "s.yaml"
    good.write_text("name: road\nland_cover: Urban\nbuffer_m: 50\n")
    sc = load_scenario(good)
    assert resolve_class(sc, {1: "urban", 2: "cropland"}) == 1
    assert resolve_class(Scenario(name="x", land_cover=2), {1: "urban", 2: "cropland"}) == 2
    with pytest.raises(ConfigError, match="'forest' is not a class"):
        resolve_class(Scenario(name="x", land_cover="forest"), {1: "urban"})
    for text, message in (
        ("name: a\nland_cover: 1\nbuffer: 5\n", "buffer: Extra inputs"),
        ("name: a\nland_cover: 1\nedge_strength: 2\n", "edge_strength"),
        ("- a\n", "expected a mapping"),
        ("name: [\n", "not YAML"),
    ):
        (tmp_path / "b.yaml").write_text(text)
        with pytest.raises(ScenarioError, match=message):
            load_scenario(tmp_path / "b.yaml")
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "none.yaml")
    (tmp_path / "up.yaml").write_text("name: ../elsewhere\nland_cover: 1\n")
    with pytest.raises(ScenarioError, match="name: String should match"):  # the name is a report folder's
        load_scenario(tmp_path / "up.yaml")


def test_mc_dropout_draws_are_seeded_and_leave_the_model_in_eval():
    net = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.3), nn.Linear(32, 1)).eval()
    x = torch.ones(4, 8)
    with torch.no_grad():
        plain = net(x)
        with mc_dropout(net, 1):
            a = net(x)
        with mc_dropout(net, 1):
            b = net(x)
        with mc_dropout(net, 2):
            c = net(x)
        assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
        assert not net[1].training and torch.equal(net(x), plain)
    assert has_dropout(net) and not has_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)))


def test_no_net_loss_verdicts():
    loss = np.array([9.0, 10.0, 11.0])
    assert compensation(np.array([20.0, 21.0]), loss, 1.0, 0.9) == (1.0, "yes")
    assert compensation(np.array([5.0, 6.0]), loss, 1.0, 0.9) == (0.0, "no")
    assert compensation(np.array([10.5, 12.0]), loss, 1.0, 0.9)[1] == "uncertain"
    assert compensation(np.array([15.0, 16.0]), loss, 2.0, 0.9)[1] == "no"  # a ratio of 2 needs 2 x the loss
    assert compensation(None, loss, 1.0, 0.9) == (None, None)


def test_coarsen_is_a_nan_aware_block_mean():
    fine = np.arange(100, dtype="float32").reshape(10, 10)
    fine[:5, :5] = np.nan
    out = coarsen(fine, 5)
    assert np.isnan(out[0, 0]) and out[1, 1] == fine[5:, 5:].mean()


def test_a_draw_is_one_thinned_network():
    """The same channels are dropped for every pixel and whatever the batch: zone sums keep the draw's spread."""
    net = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5)).eval()
    x = torch.randn(10, 8)
    with torch.no_grad(), mc_dropout(net, 3):
        rows, one = net(x), net(x[:1])
    dropped = rows == 0
    assert dropped[0].any() and (dropped == dropped[0]).all()
    assert torch.allclose(rows[:1], one, atol=1e-5)
    conv = nn.Sequential(nn.Conv2d(2, 16, 1), nn.Dropout2d(0.5)).eval()
    with torch.no_grad(), mc_dropout(conv, 3):
        maps = conv(torch.randn(1, 2, 5, 7))
    off = (maps == 0).all(dim=(2, 3))[0]
    assert off.any() and ((maps[0, ~off] != 0).any(dim=(1, 2))).all()  # whole channels, never single pixels
