"""The biodiversity-value model's parts: the masked loss, polygon files in any CRS and format onto the grid, folds of
whole polygons, the model file, MC-dropout draws, and tiles with a halo that equal one pass over the whole grid."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from shapely.geometry import box

from geoplantnet.core.config import ConfigError, CubeConfig, ValueConfig, load_config
from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.reader import MapSources, ReadSettings
from geoplantnet.inference.species import ModelRef
from geoplantnet.inference.value import ValuePredictor, read_features
from geoplantnet.models.value_net import ValueModel, ValueSpec, halo, masked_bce
from geoplantnet.samples.value_labels import Labels, rasterise_labels, read_value_polygons
from geoplantnet.testing.fixtures import small_grid
from geoplantnet.validation.value import polygon_folds, sample_pixels

CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "default.yaml"


def test_masked_loss_gives_unlabelled_pixels_no_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 8, requires_grad=True)
    labels = torch.full((2, 8, 8), -1, dtype=torch.int64)
    labels[0, :3, :3] = 1
    labels[1, 5:, 5:] = 0
    masked_bce(logits, labels, (0.7, 1.3)).backward()
    grad = logits.grad.abs()
    assert (grad[labels < 0] == 0).all()
    assert (grad[labels >= 0] > 0).all()
    # a crop without labels: zero loss and zero gradient, not NaN
    empty = torch.randn(1, 4, 4, requires_grad=True)
    loss = masked_bce(empty, torch.full((1, 4, 4), -1))
    loss.backward()
    assert loss.item() == 0.0 and (empty.grad == 0).all()


def _polygons(grid: Grid) -> gpd.GeoDataFrame:
    """Three labelled polygons (one high and one low overlapping) and one with another label, off pixel corners."""
    x0, y1 = grid.left, grid.top
    shapes = [
        box(x0 + 33, y1 - 287, x0 + 251, y1 - 41),  # high
        box(x0 + 203, y1 - 404, x0 + 488, y1 - 214),  # low, overlapping the high one
        box(x0 + 412, y1 - 597, x0 + 603, y1 - 453),  # low
        box(x0 + 15, y1 - 600, x0 + 120, y1 - 500),  # "medium": not a label of the run
    ]
    return gpd.GeoDataFrame({"value": ["high", "low", "low", "medium"]}, geometry=shapes, crs=3035)


def test_geojson_in_lonlat_rasterises_as_the_geoparquet_in_3035(tmp_path: Path) -> None:
    grid = small_grid(10.0, 64)
    polys = _polygons(grid)
    polys.to_parquet(tmp_path / "sites.parquet")
    polys.to_crs(4326).to_file(tmp_path / "sites.geojson", driver="GeoJSON")
    polys.to_crs(4326).to_file(tmp_path / "sites.gpkg", driver="GPKG")
    kw = {"label_column": "value", "high": "high", "low": "low", "epsg": 3035}
    ref = rasterise_labels(read_value_polygons(str(tmp_path / "sites.parquet"), **kw), grid)
    for name in ("sites.geojson", "sites.gpkg"):
        other = rasterise_labels(read_value_polygons(str(tmp_path / name), **kw), grid)
        np.testing.assert_array_equal(other.label, ref.label)
        np.testing.assert_array_equal(other.polygon, ref.polygon)
    # pixel centres: the high box spans columns 3..24 (x 35..245), rows 4..28; the overlap is unlabelled
    assert ref.label[10, 10] == 1 and ref.polygon[10, 10] == 0
    assert ref.label[25, 22] == -1 and ref.polygon[25, 22] == -1  # inside both the high and the low polygon
    assert ref.label[35, 30] == 0 and ref.polygon[35, 30] == 1
    assert (ref.polygon != 3).all()  # the "medium" polygon is no label
    assert set(np.unique(ref.label)) == {-1, 0, 1}


def test_polygon_files_refused_in_one_line(tmp_path: Path) -> None:
    grid = small_grid(10.0, 64)
    polys = _polygons(grid)
    kw = {"label_column": "value", "high": "high", "low": "low", "epsg": 3035}
    cases = {"missing": (str(tmp_path / "nowhere.gpkg"), kw, "no such file")}
    polys.to_file(tmp_path / "sites.gpkg", driver="GPKG")
    cases["column"] = (str(tmp_path / "sites.gpkg"), {**kw, "label_column": "quality"}, "no label column 'quality'")
    cases["values"] = (str(tmp_path / "sites.gpkg"), {**kw, "high": "HIGH"}, "holds no 'HIGH'")
    polys.set_crs(None, allow_override=True).to_parquet(tmp_path / "nocrs.parquet")
    cases["crs"] = (str(tmp_path / "nocrs.parquet"), kw, "have no CRS")
    (tmp_path / "junk.geojson").write_text("not json")
    cases["junk"] = (str(tmp_path / "junk.geojson"), kw, "cannot read it")
    for path, settings, expected in cases.values():
        with pytest.raises(InputError, match=expected) as err:  # the labels' own kinds and the reader's
            read_value_polygons(path, **settings)
        assert "\n" not in str(err.value) and Path(path).name in str(err.value)


def test_folds_hold_whole_polygons_and_both_classes() -> None:
    rng = np.random.default_rng(3)
    grid = Grid(10.0, 4_321_000.0, 2_981_000.0, 400, 400)
    shapes, labels = [], []
    for i in range(40):  # small polygons, and a few large ones crossing block edges
        x, y = grid.left + rng.uniform(0, 3600), grid.top - rng.uniform(400, 4000)
        side = 700.0 if i % 10 == 0 else rng.uniform(30, 120)
        shapes.append(box(x, y, x + side, y + side))
        labels.append(i % 3 == 0)
    polys = gpd.GeoDataFrame(
        {"polygon_id": np.arange(40, dtype="int32"), "label": np.asarray(labels, "int8")}, geometry=shapes, crs=3035
    )
    settings = ValueConfig(folds=4, block_size_m=1000.0)
    folds, notes = polygon_folds(polys, settings)
    assert folds.shape == (40,) and set(folds.tolist()) == {0, 1, 2, 3}
    assert notes == []  # both classes in every fold
    for k in range(4):
        assert set(polys["label"][folds == k]) == {0, 1}
    # polygons whose centroids share a 1 km block share a fold
    centre = polys.geometry.centroid
    block = np.floor(centre.x / 1000) * 1e6 + np.floor(centre.y / 1000)
    for b in np.unique(block):
        assert len(set(folds[block == b])) == 1
    # every pixel of a polygon (a large one spans several blocks) lies in its polygon's single fold
    rasters = rasterise_labels(polys, grid)
    rows, cols = sample_pixels(rasters, 10_000, 0)
    pixel_fold = folds[rasters.polygon[rows, cols]]
    for pid in np.unique(rasters.polygon[rows, cols]):
        assert len(set(pixel_fold[rasters.polygon[rows, cols] == pid])) == 1
    # a class too rare for the folds is reported, not hidden
    few = polys.assign(label=np.where(np.arange(40) == 0, 1, 0).astype("int8"))
    assert sum("holds no 'high'" in n for n in polygon_folds(few, settings)[1]) == 3


def test_value_settings_validated() -> None:
    with pytest.raises(ConfigError, match=re.escape("value.crop=62 must be a multiple of 2**depth = 4")):
        load_config(CONFIG, ["value.crop=62"])
    with pytest.raises(ConfigError, match=re.escape("value.high and value.low")):
        load_config(CONFIG, ["value.low=high"])
    with pytest.raises(ConfigError, match=re.escape("must lie in [0, 1]")):
        load_config(CONFIG, ["value.blend_weights=[0.5, 1.5]"])
    with pytest.raises(ConfigError, match=re.escape("value.model")):
        load_config(CONFIG, ["value.model=svm"])
    from geoplantnet.products.value import value_grid

    bad = load_config(CONFIG, ["value.tile=64"])
    with pytest.raises(ConfigError, match="must be a multiple of 5"):
        value_grid(bad.grid, bad.value)
    cfg = load_config(CONFIG, [])
    grid = value_grid(cfg.grid, cfg.value)
    assert grid.resolution == 10.0 and grid.bounds == load_config(CONFIG, []).grid.grid().bounds


def _hole(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """6 x 6 pixels of the test grid without any input."""
    return (np.abs(x - 4_321_450) < 30) & (np.abs(y - 2_980_600) < 30)


@dataclass(frozen=True)
class Synthetic(MapSources):
    """Inputs as smooth functions of the coordinates, with a hole of no data: what a scenario's sources look like
    to the predictor (only ``composite`` and ``environment`` are read)."""

    def composite(self, window: Grid, bands: list[str]) -> np.ndarray:
        x, y = np.meshgrid(window.x, window.y)
        seasons = len(self.seasons or ())
        out = np.stack([[np.sin(x / 97 + s) * np.cos(y / 71 + b) for b in range(len(bands))] for s in range(seasons)])
        out[:, :, _hole(x, y)] = np.nan
        return out.astype(np.float32)

    def environment(self, window: Grid, names: list[str], *, check: bool = True) -> np.ndarray:
        x, y = np.meshgrid(window.x, window.y)
        out = np.stack([np.cos((x + 3 * y) / (150 + 40 * i)) for i in range(len(names))])
        out[0, (np.abs(x - 4_321_150) < 30) & (np.abs(y - 2_980_300) < 30)] = np.nan  # one variable missing
        out[:, _hole(x, y)] = np.nan
        return out.astype(np.float32)


def _synthetic_model(path: Path, n_features: int) -> ValueModel:
    torch.manual_seed(1)
    spec = ValueSpec(
        base_channels=4, depth=2, dropout=0.3, features=[f"f{i}" for i in range(n_features)], mean=[0.1] * n_features,
        std=[0.9] * n_features,
    )  # fmt: skip
    model = ValueModel.build(spec)
    with torch.no_grad():  # running statistics away from 0 / 1, so BatchNorm in eval mode is not an identity
        for m in model.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.net.eval()
    model.save(str(path))
    return model


def test_tiles_with_halo_equal_one_pass_and_draws_repeat(tmp_path: Path) -> None:
    grid = Grid(10.0, 4_321_000.0, 2_981_000.0, 72, 96)
    seasons = tuple(np.array(["2024-03-01", "2024-06-01"], dtype="datetime64[ns]"))
    sources = Synthetic(ReadSettings(CubeConfig()), None, None, seasons, (), ())
    bands, variables = ("B04", "B08"), ("bio1", "bio12", "elevation")
    model = _synthetic_model(tmp_path / "value.pt", 2 * 2 + 3)
    raw = (tmp_path / "value.pt").read_bytes()
    loaded, raw2 = ValueModel.load(str(tmp_path / "value.pt"))
    assert raw2 == raw and loaded.version == model.version and loaded.spec == model.spec
    ref = ModelRef(str(tmp_path / "value.pt"), hashlib.sha256(raw).hexdigest())
    h = halo(2)
    predictor = ValuePredictor(ref, sources, grid, bands, variables, h)
    # one pass over the whole grid padded by the halo (NaN beyond the grid, as tiles read it)
    whole = Tile(0, 0, 0, 0, grid.height, grid.width, "whole")
    features = read_features(
        sources, grid, whole, (-h, grid.height + h, -h, grid.width + h), list(bands), list(variables)
    )
    expected = loaded.predict(features)[0][h:-h, h:-h]
    tiles = list(grid.tiles(32))  # 3 x 3 tiles, the last row and column clipped
    mosaic = np.full(grid.shape, -1.0, np.float32)
    for tile in tiles:
        mosaic[tile.slices] = predictor.predict(tile)[0]
    hole = np.isnan(mosaic)
    assert hole.sum() == 36  # the 6 x 6 pixels without any input are no data; every other pixel has a value
    np.testing.assert_allclose(mosaic[~hole], expected[~hole], atol=5e-7)
    # the seams: pixels either side of a tile edge, against the one-pass values
    np.testing.assert_allclose(mosaic[31:33, :], expected[31:33, :], atol=5e-7)
    np.testing.assert_allclose(mosaic[:, 63:65], expected[:, 63:65], atol=5e-7)
    # MC dropout: draws differ from each other, repeat with the seed, leave BatchNorm's statistics alone
    before = {k: v.clone() for k, v in loaded.net.state_dict().items()}
    tile = tiles[4]  # holds the hole
    draws = predictor.predict(tile, draws=4, seed=7)
    ok = np.isfinite(draws)
    assert draws.shape == (4, tile.height, tile.width) and ((draws[ok] >= 0) & (draws[ok] <= 1)).all()
    assert (~ok).sum() == 4 * 36
    assert np.nanmax(np.abs(draws[0] - draws[1])) > 1e-4
    np.testing.assert_array_equal(predictor.predict(tile, draws=4, seed=7), draws)
    whole_draws = loaded.predict(features, draws=4, seed=7)[:, h:-h, h:-h]  # no seams in the draws either
    np.testing.assert_allclose(draws[ok], whole_draws[(slice(None), *tile.slices)][ok], atol=5e-7)
    assert np.nanmax(np.abs(predictor.predict(tile, draws=4, seed=8) - draws)) > 1e-4
    loaded.predict(features, draws=3, seed=1)
    assert all(torch.equal(before[k], v) for k, v in loaded.net.state_dict().items())


def test_early_stopping_keeps_the_best_validation_epoch() -> None:
    from geoplantnet.training.value import train_value_net

    # validation polygon B looks exactly like training polygon A (high) but is labelled low: the better the network
    # fits the training polygons, the worse its validation loss, so training stops soon after the first epochs
    features = np.zeros((2, 64, 64), np.float32)
    features[0, 4:20, 4:20] = features[0, 40:56, 40:56] = 1.0
    features[1] = np.linspace(0, 1, 64)[None, :] * 0.1
    label = np.full((64, 64), -1, np.int8)
    label[4:20, 4:20], label[4:20, 40:56] = 1, 0  # A high, C low (C: feature 0 is 0 there)
    val_label = np.full((64, 64), -1, np.int8)
    val_label[40:56, 40:56] = 0  # B
    polygon = np.full((64, 64), -1, np.int32)
    polygon[4:20, 4:20], polygon[4:20, 40:56], polygon[40:56, 40:56] = 0, 1, 2
    settings = ValueConfig(epochs=40, patience=3, crop=32, base_channels=4, batch=2, lr=1e-2)
    model, info = train_value_net(features, label, polygon, ["a", "b"], settings, val_label=val_label, device="cpu")
    assert info.validation_polygons == 1 and info.polygons == 2
    assert info.epochs == info.best_epoch + 3 < 40 and info.val_loss is not None
    _, without = train_value_net(features, label, polygon, ["a", "b"], settings.model_copy(update={"epochs": 8}))
    assert without.epochs == without.best_epoch == 8 and without.val_loss is None  # no validation: every epoch
    full = model.predict(features)[0]
    assert full[4:20, 4:20].mean() > full[4:20, 40:56].mean()  # it did learn the training polygons


def test_a_score_column_is_read_burnt_and_refused_in_one_line(tmp_path: Path) -> None:
    grid = small_grid(10.0, 64)
    polys = _polygons(grid).assign(condition=[31.5, 12.0, 14.5, 20.0])
    polys.to_file(tmp_path / "sites.gpkg", driver="GPKG")
    kw = {"label_column": "value", "high": "high", "low": "low", "epsg": 3035}
    read = read_value_polygons(str(tmp_path / "sites.gpkg"), **kw, score_column="condition")
    assert read["score"].tolist() == [31.5, 12.0, 14.5]  # the "medium" polygon is no label, its score not read
    rasters = rasterise_labels(read, grid)
    assert rasters.score[10, 10] == 31.5 and rasters.score[35, 30] == 12.0
    assert np.isnan(rasters.score[rasters.label < 0]).all() and np.isfinite(rasters.score[rasters.label >= 0]).all()
    assert rasterise_labels(read_value_polygons(str(tmp_path / "sites.gpkg"), **kw), grid).score is None
    polys.assign(condition=["31.5", "n/a", "14", "1"]).to_file(tmp_path / "bad.gpkg", driver="GPKG")
    for path, column, expected in (
        ("sites.gpkg", "survey", "no score column 'survey'"),
        ("bad.gpkg", "condition", "1 polygon\\(s\\) without a number \\(e.g. 'n/a'\\)"),
    ):
        with pytest.raises(InputError, match=expected) as err:
            read_value_polygons(str(tmp_path / path), **kw, score_column=column)
        assert "\n" not in str(err.value) and path in str(err.value)


def test_a_score_target_maps_linearly_without_saturating(tmp_path: Path) -> None:
    from geoplantnet.models.value_net import masked_mse
    from geoplantnet.training.value import train_value_net

    # the loss: labelled pixels only, each class weighted
    out = torch.zeros(1, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), -1)
    labels[0, 0, :2], labels[0, 3, :1] = 1, 0
    target = torch.full((1, 4, 4), 2.0)
    loss = masked_mse(out, target, labels, (3.0, 1.0))
    loss.backward()
    assert loss.item() == pytest.approx(4.0) and (out.grad[labels < 0] == 0).all()
    # three polygons whose score follows feature 0 (scores 10, 20, 30 where it is 0, 1, 2): the map follows the score
    # linearly past the extremes (feature 0 = 3 -> about 40), where a probability of high would sit at 1
    features = np.zeros((2, 64, 64), np.float32)
    features[1] = np.random.default_rng(0).normal(0, 0.1, (64, 64))
    label = np.full((64, 64), -1, np.int8)
    polygon = np.full((64, 64), -1, np.int32)
    score = np.full((64, 64), np.nan, np.float32)
    for pid, (rows, cols, level, cls) in enumerate(
        [((4, 20), (4, 20), 0.0, 0), ((4, 20), (40, 56), 1.0, 1), ((40, 56), (4, 20), 2.0, 1)]
    ):
        sl = (slice(*rows), slice(*cols))
        features[0][sl], label[sl], polygon[sl], score[sl] = level, cls, pid, 10.0 + 10.0 * level
    settings = ValueConfig(epochs=60, crop=32, base_channels=4, batch=3, lr=1e-2, depth=1, score_column="condition")
    model, _ = train_value_net(features, label, polygon, ["a", "b"], settings, score=score, device="cpu")
    spec = model.spec
    assert spec.target == "score" and spec.score["column"] == "condition"
    assert (spec.score["zero"], spec.score["one"]) == pytest.approx((0.0, 40.0))  # 10..30 widened by half each side
    meaning = spec.meaning()
    assert meaning["value_target"] == "score" and meaning["value_score_at_1"] == pytest.approx(40.0)
    assert spec.score_value(np.array([20.0])) == pytest.approx([0.5])
    probe = np.zeros((2, 32, 32), np.float32)
    got = []
    for level in (0.0, 1.0, 2.0):
        probe[0] = level
        got.append(float(np.median(model.predict(probe)[0])) * 40.0)  # the value back in score units
    assert got == sorted(got) and got[2] - got[0] > 10.0  # ordered, on the score's scale
    model.save(str(tmp_path / "m.pt"))
    saved, _ = ValueModel.load(str(tmp_path / "m.pt"))
    assert saved.spec == spec
    np.testing.assert_allclose(saved.predict(probe), model.predict(probe), atol=1e-6)


def test_the_virtual_polygons_carry_a_simulated_survey_score() -> None:
    from geoplantnet.sim.observations import value_polygons

    grid = small_grid(50.0, 40)
    yy, xx = np.mgrid[0:40, 0:40]
    truth = (10.0 + 20.0 * np.sin(xx / 6.0) * np.cos(yy / 7.0)).astype(np.float32)
    exact = value_polygons(truth, grid)
    surveyed = value_polygons(truth, grid, survey_sd=1.0, seed=5)
    assert (exact["condition"] == exact["mean_score"].round(1)).all()
    noise = surveyed["condition"] - surveyed["mean_score"]
    tenths = surveyed["condition"].to_numpy() * 10
    assert 0.3 < noise.std() < 2.0 and np.allclose(tenths, np.round(tenths))  # noted to 0.1
    again = value_polygons(truth, grid, survey_sd=1.0, seed=5)["condition"]
    np.testing.assert_array_equal(again, surveyed["condition"])  # seeded


def _blend_labels() -> tuple[np.ndarray, Labels]:
    """24 square polygons on a 160 x 160 grid (high where feature 0 is high, with noise), with their folds."""
    from geoplantnet.samples.value_labels import LabelRasters

    grid = Grid(10.0, 4_321_000.0, 2_981_000.0, 160, 160)
    rng = np.random.default_rng(5)
    shapes, labels = [], []
    for i in range(24):
        r, c = divmod(i, 6)
        x, y = grid.left + 40 + c * 250, grid.top - 40 - r * 380
        shapes.append(box(x, y - 100, x + 100, y))
        labels.append((i + r) % 2)
    polys = gpd.GeoDataFrame(
        {"polygon_id": np.arange(24, dtype="int32"), "label": np.asarray(labels, "int8")}, geometry=shapes, crs=3035
    )
    rasters = rasterise_labels(polys, grid)
    settings = ValueConfig(folds=3, block_size_m=500.0)
    polys["fold"] = polygon_folds(polys, settings)[0]
    features = rng.normal(0, 1, (2, 160, 160)).astype(np.float32)
    features[0] += 1.5 * (rasters.label == 1)
    out = Labels(polys, LabelRasters(rasters.label, rasters.polygon, None), (0, 160, 0, 160), "test", ())
    return features, out


def test_the_blend_weight_is_chosen_without_the_test_fold() -> None:
    from geoplantnet.samples.value_labels import LabelRasters
    from geoplantnet.validation.value import ValueTraining, cross_validate, fold_means

    features, labels = _blend_labels()
    settings = ValueConfig(
        model="blend", folds=3, block_size_m=500.0, epochs=2, crop=32, base_channels=4, batch=4, depth=1,
        pixels_per_polygon=30, forest_trees=20,
    )  # fmt: skip
    training = ValueTraining(settings, "cpu", "k")
    rows = cross_validate(training, features, labels, ["a", "b"], [])
    blend = {r["fold"]: r for r in rows if r["model"] == "blend"}
    assert set(blend) == {0, 1, 2} and set(fold_means(rows)) == {"unet", "random_forest", "blend"}
    assert all(r["unet_weight"] in settings.blend_weights and r["inner_pixels"] > 0 for r in blend.values())
    # the held-out polygons of fold 0 flipped (high <-> low): its test AUC turns, its chosen weight does not
    held = labels.polygons["polygon_id"][labels.polygons["fold"] == 0].to_numpy()
    r = labels.rasters
    flipped = np.where(np.isin(r.polygon, held) & (r.label >= 0), 1 - r.label, r.label).astype(np.int8)
    labels2 = Labels(labels.polygons, LabelRasters(flipped, r.polygon, None), labels.window, "test", ())
    again = {r["fold"]: r for r in cross_validate(training, features, labels2, ["a", "b"], []) if r["model"] == "blend"}
    assert again[0]["unet_weight"] == blend[0]["unet_weight"] and again[0]["inner_auc"] == blend[0]["inner_auc"]
    assert again[0]["auc"] == pytest.approx(1 - blend[0]["auc"], abs=1e-3)


def test_a_blend_maps_the_weighted_forest_and_scales_the_sd(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from geoplantnet.core.config import StoreConfig
    from geoplantnet.inference.value import ValueModelFile
    from geoplantnet.models.value_forest import ValueForest, ValueForestError, forest_url, pixel_rows

    grid = Grid(10.0, 4_321_000.0, 2_981_000.0, 32, 32)
    seasons = tuple(np.array(["2024-03-01", "2024-06-01"], dtype="datetime64[ns]"))
    sources = Synthetic(ReadSettings(CubeConfig()), None, None, seasons, (), ())
    bands, variables = ("B04", "B08"), ("bio1", "bio12", "elevation")
    path = tmp_path / "value" / "model.pt"
    path.parent.mkdir()
    unet = _synthetic_model(path, 7)
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (200, 7)).astype(np.float32)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, (X[:, 0] > 0).astype(int))
    ValueForest(forest, tuple(unet.spec.features), unet.spec.training_key, "blend", 0.25).save(str(path))
    read = ValueModelFile.read(str(path), StoreConfig())
    assert read.forest is not None and read.forest.unet_weight == 0.25
    ref = ModelRef(str(path), read.sha256)
    plain = ValuePredictor(ref, sources, grid, bands, variables, halo(2))
    blend = ValuePredictor(
        ref, sources, grid, bands, variables, halo(2), forest=ModelRef(forest_url(str(path)), read.forest.sha256),
        unet_weight=0.25,
    )  # fmt: skip
    assert blend.shipped == "blend" and plain.shipped == "unet"
    tile = Tile(0, 0, 0, 0, 32, 32, "t")
    features = blend.read(tile)
    h = halo(2)
    p_forest = forest.predict_proba(pixel_rows(features[:, h:-h, h:-h]))[:, 1].reshape(32, 32)
    np.testing.assert_allclose(blend.predict(tile)[0], 0.25 * plain.predict(tile)[0] + 0.75 * p_forest, atol=1e-5)
    draws = blend.predict(tile, draws=4, seed=3)
    np.testing.assert_allclose(draws.std(axis=0), 0.25 * plain.predict(tile, draws=4, seed=3).std(axis=0), atol=1e-5)
    # a forest of another training, or with changed bytes, is refused before it is unpickled
    payload = path.parent / "forest" / "forest.joblib"
    payload.write_bytes(payload.read_bytes() + b"x")
    with pytest.raises(ValueForestError, match="do not match"):
        ValueModelFile.read(str(path), StoreConfig())
    ValueForest(forest, tuple(unet.spec.features), "another", "blend", 0.25).save(str(path))
    with pytest.raises(ValueForestError, match="another training"):
        ValueModelFile.read(str(path), StoreConfig())
