"""Background only where the predictors have data, and records on coastal cells rescued from the bilinear warp.

A synthetic two-layer GeoTIFF stack whose eastern half is sea (NaN), written with rasterio, goes through the real
path: ``from_geotiffs`` -> ``model_stack`` (bilinear warp onto the grid) -> ``ValidCells`` -> ``build_samples`` ->
``move_records_to_valid`` -> ``extract_samples`` -> the training set on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplantnet.core.grid import Grid
from geoplantnet.samples.extraction import extract_samples
from geoplantnet.samples.observations import SpeciesVocabulary, background_points, build_samples, load_observations
from geoplantnet.samples.training_set import open_training_set
from geoplantnet.samples.valid_cells import ValidCells, move_records_to_valid, values_at
from geoplantnet.sources import predictors
from geoplantnet.testing.fixtures import write_coast_layers

GRID = Grid(1000.0, 4_321_000.0, 2_981_000.0, 40, 30)
SEA_FROM = 4_321_000.0 + 12_500.0  # source pixels east of this are sea: ~69% of the grid
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
BRADYPUS = REAL / "predicts_bradypus_bioclim"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("coast")
    layers = write_coast_layers(folder, GRID, SEA_FROM, ("temperature", "precipitation"))
    return predictors.model_stack(predictors.from_geotiffs(layers), GRID, chunk=16)


@pytest.fixture(scope="module")
def warped(env) -> np.ndarray:
    return env.values  # (var, y, x) after the bilinear warp: what extraction reads


def _coast(warped: np.ndarray, row: int) -> int:
    """Column of the first no-data cell in ``row`` (the coastal cell the warp emptied)."""
    valid = np.isfinite(warped).all(axis=0)[row]
    return int(np.flatnonzero(~valid)[0])


def _centre(row: int, col: int) -> tuple[float, float]:
    return GRID.left + (col + 0.5) * GRID.resolution, GRID.top - (row + 0.5) * GRID.resolution


def _observations(tmp_path: Path, points: list[tuple[float, float]]):
    path = tmp_path / "records.csv"
    pd.DataFrame({"species": "Aa", "E": [p[0] for p in points], "N": [p[1] for p in points]}).to_csv(path, index=False)
    return load_observations(path, crs="EPSG:3035", x="E", y="N", grid=GRID)


def test_the_synthetic_coast_is_mostly_sea(warped):
    valid = np.isfinite(warped).all(axis=0)
    assert 0.2 < valid.mean() < 0.4  # most of a rectangle-uniform draw would land in the sea
    assert valid[:, 0].all() and not valid[:, -1].any()


@pytest.mark.parametrize("mask_cells", [1 << 22, 0], ids=["mask", "rounds"])
@pytest.mark.parametrize("kind", ["uniform", "target_group"])
def test_background_is_exactly_n_points_with_predictor_data(tmp_path, env, warped, kind, mask_cells, caplog):
    row = 10
    coast = _coast(warped, row)
    land, shore, sea = _centre(row, 2), _centre(row, coast), _centre(row, GRID.width - 3)
    obs = _observations(tmp_path, [land, shore, sea])
    vocab = SpeciesVocabulary.from_observations(obs)
    valid = ValidCells(env, epsg=GRID.epsg, mask_cells=mask_cells)
    assert (valid.mask is None) == (mask_cells == 0)
    n = 250
    with caplog.at_level(logging.WARNING):
        samples = build_samples(obs, vocab, GRID, n_background=n, background=kind, seed=3, valid=valid)
    assert not [r for r in caplog.records if "background" in r.getMessage()]
    bg = samples.source == "bg"
    assert bg.sum() == n
    assert valid.at(samples.x[bg], samples.y[bg]).all()
    if kind == "uniform":  # distinct cells
        assert len(set(zip(*GRID.index(samples.x[bg], samples.y[bg]), strict=True))) == n

    samples, rescue = move_records_to_valid(samples, valid, 1)
    assert (rescue.moved, rescue.unrescued, rescue.radius) == (1, 1, 1)
    ts = open_training_set(
        extract_samples(
            samples, GRID, composite=None, env=env, patch_size=1, env_patch_size=3, out=str(tmp_path / "ts.zarr")
        )
    )
    env_point = ts["env_point"].values
    source = np.array([str(s) for s in ts["source"].values])
    assert np.isfinite(env_point[source == "bg"]).all()
    # the shore record takes its inland neighbour's values; the record far at sea has none (dropped by sdm)
    np.testing.assert_array_equal(env_point[1], warped[:, row, coast - 1])
    np.testing.assert_allclose([ts["x"].values[1], ts["y"].values[1]], _centre(row, coast - 1))
    np.testing.assert_array_equal(env_point[0], warped[:, row, 2])
    assert np.isnan(env_point[2]).all()


def test_background_is_deterministic_given_the_seed(tmp_path, env):
    obs = _observations(tmp_path, [_centre(5, 3), _centre(20, 8)])
    for kind in ("uniform", "target_group"):
        valid = ValidCells(env, epsg=GRID.epsg, mask_cells=0)
        a = background_points(obs, GRID, 100, kind=kind, seed=7, valid=valid)
        b = background_points(obs, GRID, 100, kind=kind, seed=7, valid=valid)
        c = background_points(obs, GRID, 100, kind=kind, seed=8, valid=valid)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_too_small_a_valid_area_gives_fewer_points_and_says_why(tmp_path, env, warped, caplog):
    obs = _observations(tmp_path, [_centre(5, 3)])
    n_valid = int(np.isfinite(warped).all(axis=0).sum())
    with caplog.at_level(logging.WARNING):
        x, y = background_points(obs, GRID, n_valid + 50, kind="uniform", valid=ValidCells(env, epsg=GRID.epsg))
    assert len(x) == n_valid
    assert f"only {n_valid} cells with predictor data" in caplog.text
    # without a mask, bounded rounds: as many as they find, never a point at sea, and a warning with the count
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        x, y = background_points(
            obs, GRID, n_valid + 50, kind="uniform", valid=ValidCells(env, epsg=GRID.epsg, mask_cells=0)
        )
    assert len(x) <= n_valid and len(set(zip(x, y, strict=True))) == len(x)
    assert f"background: {len(x)} points instead of the {n_valid + 50} asked" in caplog.text


def test_nearest_valid_cells_zero_moves_nothing(tmp_path, env, warped):
    row = 4
    obs = _observations(tmp_path, [_centre(row, _coast(warped, row))])
    samples = build_samples(obs, SpeciesVocabulary.from_observations(obs), GRID)
    moved, rescue = move_records_to_valid(samples, ValidCells(env, epsg=GRID.epsg), 0)
    assert (rescue.moved, rescue.unrescued) == (0, 1)
    np.testing.assert_array_equal(moved.x, samples.x)


@pytest.mark.real_data
def test_bradypus_background_gets_the_full_count(tmp_path):
    """South America at 25 km (pipelines/bradypus.yaml): most of the grid rectangle is sea or outside the layers."""
    if not BRADYPUS.is_dir():
        pytest.skip(f"real data folder {BRADYPUS} is absent")
    grid = Grid(25_000.0, -12_075_000.0, 4_725_000.0, 360, 433, 6933)
    layers = predictors.split_bands(BRADYPUS / "bio.tif", tmp_path / "split")
    env = predictors.model_stack(predictors.from_geotiffs(layers), grid, chunk=512)
    obs = load_observations(BRADYPUS / "bradypus.csv", grid=grid)
    vocab = SpeciesVocabulary.from_observations(obs)
    for mask_cells in (1 << 22, 0):
        valid = ValidCells(env, epsg=grid.epsg, mask_cells=mask_cells)
        for kind in ("uniform", "target_group"):
            s = build_samples(obs, vocab, grid, n_background=1000, background=kind, seed=0, valid=valid)
            bg = s.source == "bg"
            assert bg.sum() == 1000, (kind, mask_cells)
            assert np.isfinite(values_at(env, grid, s.x[bg], s.y[bg])).all()
