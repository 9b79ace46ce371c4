"""Spatial blocks: alignment, whole blocks per fold, balance, autocorrelation range, block-size rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from geoplantnet.validation.blocks import (
    BlockError,
    autocorrelation_range,
    block_ids,
    block_index,
    block_origin,
    blocks_geodataframe,
    choose_block_size,
    fold_masks,
    n_blocks,
    spatial_blocks,
    validation_split,
)

LEFT, BOTTOM = 4_000_000.0, 2_800_000.0  # EPSG:3035, central Europe


def _points(n: int = 3000, extent: float = 200_000.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return LEFT + rng.uniform(0, extent, n), BOTTOM + rng.uniform(0, extent, n)


def test_blocks_never_split_and_folds_balanced() -> None:
    x, y = _points()
    folds = spatial_blocks(x, y, 20_000.0, folds=5, seed=1)
    ids = block_ids(x, y, 20_000.0)
    for b in np.unique(ids):
        assert len(np.unique(folds[ids == b])) == 1
    sizes = np.bincount(folds, minlength=5)
    assert sorted(np.unique(folds).tolist()) == [0, 1, 2, 3, 4]
    biggest_block = np.unique(ids, return_counts=True)[1].max()
    assert sizes.max() - sizes.min() <= biggest_block


def test_seed_changes_assignment_but_is_reproducible() -> None:
    x, y = _points()
    a = spatial_blocks(x, y, 20_000.0, 5, seed=1)
    assert np.array_equal(a, spatial_blocks(x, y, 20_000.0, 5, seed=1))
    assert not np.array_equal(a, spatial_blocks(x, y, 20_000.0, 5, seed=2))


def test_stratify_spreads_rare_presences() -> None:
    x, y = _points(seed=3)
    rare = (np.random.default_rng(3).random(len(x)) < 0.05).astype(int)
    folds = spatial_blocks(x, y, 20_000.0, 5, seed=0, stratify=rare)
    per_fold = np.bincount(folds[rare == 1], minlength=5)
    assert per_fold.min() > 0.5 * per_fold.mean()


@settings(max_examples=200, deadline=None)
@given(
    x=st.floats(1e6, 7e6, allow_nan=False),
    y=st.floats(1e6, 5e6, allow_nan=False),
    size_km=st.integers(1, 500),
)
def test_block_alignment_property(x: float, y: float, size_km: int) -> None:
    size = size_km * 1000.0
    col, row = block_index(np.array([x]), np.array([y]), size)
    x0, y0 = block_origin(block_ids(np.array([x]), np.array([y]), size), size)
    # Edges on multiples of the size from the CRS origin, and the point inside its block.
    assert x0[0] == col[0] * size and y0[0] == row[0] * size
    assert x0[0] % size == 0 and y0[0] % size == 0
    assert x0[0] - 1e-6 <= x < x0[0] + size + 1e-6 and y0[0] - 1e-6 <= y < y0[0] + size + 1e-6


def test_fold_masks_and_validation_split_are_block_based() -> None:
    x, y = _points()
    folds = spatial_blocks(x, y, 20_000.0, 5, seed=0)
    train, test = fold_masks(folds, 2)
    assert not (train & test).any() and (train | test).all()
    fit, val = validation_split(x, y, train, 20_000.0, fraction=0.2, seed=0)
    assert not (fit & val).any() and np.array_equal(fit | val, train)
    assert 0.1 < val.sum() / train.sum() < 0.3
    ids = block_ids(x, y, 20_000.0)
    assert not set(ids[fit]) & set(ids[val]) and not set(ids[val]) & set(ids[test])
    with pytest.raises(BlockError, match="fold 7"):
        fold_masks(folds, 7)


def test_bad_inputs_give_one_line_errors() -> None:
    x, y = _points(50)
    with pytest.raises(BlockError, match="block_size"):
        spatial_blocks(x, y, 0.0, 5)
    with pytest.raises(BlockError, match="no samples to split") as empty:  # nothing upstream: not a block problem
        spatial_blocks(np.array([]), np.array([]), 1000.0, folds=5)
    assert "smaller blocks" not in str(empty.value)
    with pytest.raises(BlockError, match="no samples to choose"):
        choose_block_size(np.array([]), np.array([]), np.zeros((0, 2)), folds=5)
    with pytest.raises(BlockError, match="fewer than folds=5"):
        spatial_blocks(x, y, 1e7, 5)
    with pytest.raises(BlockError, match="same length"):
        block_ids(x, y[:-1], 1000.0)
    with pytest.raises(BlockError, match="non-finite"):
        block_ids(np.r_[x[:-1], np.nan], y, 1000.0)


def _gaussian_field(sigma_px: float, seed: int, n_vars: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Points sampling smoothed white noise; its covariance is Gaussian with practical range 2*sqrt(3)*sigma."""
    rng = np.random.default_rng(seed)
    n, pix = 200, 1000.0
    idx = rng.integers(0, n, size=(3000, 2))
    fields = [gaussian_filter(rng.normal(size=(n, n)), sigma_px, mode="wrap") for _ in range(n_vars)]
    cols = [f[idx[:, 0], idx[:, 1]] for f in fields]
    x, y = LEFT + (idx[:, 1] + 0.5) * pix, BOTTOM + (idx[:, 0] + 0.5) * pix
    return x, y, np.column_stack(cols), 2 * np.sqrt(3) * sigma_px * pix


@pytest.mark.parametrize(("sigma_px", "model"), [(4, "spherical"), (8, "spherical"), (8, "exponential")])
def test_autocorrelation_range_recovers_length_scale(sigma_px: float, model: str) -> None:
    x, y, values, truth = _gaussian_field(sigma_px, seed=1)
    found = autocorrelation_range(x, y, values, model=model)
    assert truth / 1.5 < found < truth * 1.5, (found, truth)


def test_choose_block_size_rounds_and_clips() -> None:
    x, y, values, truth = _gaussian_field(5, seed=2)
    size = choose_block_size(x, y, values, folds=5)
    assert size % 1000 == 0 and size >= truth / 1.5
    assert n_blocks(x, y, size) >= 10
    # A few clustered points: the autocorrelation range is far too big for 10 blocks, so it is shrunk.
    small = slice(0, 40)
    size_small = choose_block_size(x[small] / 10, y[small] / 10, values[small], folds=5)
    assert n_blocks(x[small] / 10, y[small] / 10, size_small) >= 10


def test_blocks_geodataframe() -> None:
    x, y = _points(500)
    folds = spatial_blocks(x, y, 50_000.0, 3, seed=0)
    gdf = blocks_geodataframe(x, y, 50_000.0, folds)
    assert gdf.crs.to_epsg() == 3035
    assert gdf["n_samples"].sum() == 500 and set(gdf["fold"]) == {0, 1, 2}
    assert np.allclose(gdf.geometry.area, 50_000.0**2)
    minx = gdf.geometry.bounds["minx"].to_numpy()
    assert np.allclose(minx % 50_000.0, 0)
    with pytest.raises(BlockError, match="more than one fold"):
        blocks_geodataframe(x, y, 50_000.0, np.arange(500) % 3)


def test_spatial_folds_say_their_fallback():
    from geoplantnet.validation.blocks import BlockError, spatial_folds

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 900, 60), rng.uniform(0, 900, 60)  # one 1 km block
    with pytest.raises(BlockError):
        spatial_folds(x, y, 1000.0, 3)
    folds, notes = spatial_folds(x, y, 1000.0, 3, fallback="smaller_blocks", what="plots")
    assert set(folds) == {0, 1, 2} and notes == ["plots in blocks of 500 m (not 1000 m: fewer blocks than folds)"]
    folds, notes = spatial_folds(x, y, 1000.0, 3, fallback="random", what="surveys")
    assert set(folds) == {0, 1, 2} and "random folds" in notes[0]
    x[:5] = np.nan  # no coordinates: dealt at random, said
    folds, notes = spatial_folds(x, y, 100.0, 3, what="plots")
    assert (folds >= 0).all() and notes == ["5 plots dealt to folds at random (without coordinates)"]
    folds, notes = spatial_folds(np.full(9, np.nan), np.full(9, np.nan), 100.0, 3, what="plots")  # none placed
    assert set(folds) == {0, 1, 2}
    assert notes == ["9 plots dealt to folds at random (fewer than the folds have coordinates)"]


def test_validation_split_of_a_part_with_few_blocks_uses_fewer_parts_or_smaller_blocks() -> None:
    """A fold's training part holding fewer blocks than 1 / fraction (large blocks, few folds) still gets a block-based
    validation split: fewer, larger parts; in a single block, halved blocks."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 9_000, 60), rng.uniform(10_000, 19_000, 60), rng.uniform(20_000, 29_000, 60)])
    y = rng.uniform(0, 9_000, 180)
    fit, val = validation_split(x, y, np.ones(180, bool), 10_000.0, fraction=0.2, seed=0)
    assert fit.any() and val.any() and not (fit & val).any()
    held = {int(v // 10_000) for v in x[val]}
    assert len(held) == 1 and not ({int(v // 10_000) for v in x[fit]} & held)  # one whole block held out
    one = x < 9_000  # every training row in one 10 km block
    fit, val = validation_split(x, y, one, 10_000.0, fraction=0.2, seed=0)
    assert fit.any() and val.any() and not (fit & val).any() and not (val & ~one).any()
