"""Change maps between two years: the noise band, habitat transitions through conformal sets, detection scores."""

from __future__ import annotations

import numpy as np
import pytest

from geoplantnet.core.grid import Grid, Tile
from geoplantnet.evaluation.changes import detection_scores
from geoplantnet.products.change_noise import coverage_stratum, family_z, robust_noise
from geoplantnet.products.changes import change_blocks, change_template, fit_change_model


def test_robust_noise_ignores_the_few_changed_pixels() -> None:
    rng = np.random.default_rng(0)
    delta = rng.normal(0.3, 0.5, 10_000)
    delta[:200] = -8.0  # real change on 2 % of the pixels
    shift, noise = robust_noise(delta)
    assert shift == pytest.approx(0.3, abs=0.05) and noise == pytest.approx(0.5, rel=0.08)
    assert robust_noise(np.array([np.nan]))[0] == 0.0


def test_changes_inside_the_noise_are_not_reported() -> None:
    rng = np.random.default_rng(1)
    before = {"richness_expected": rng.normal(20, 2, (30, 30)).astype("float32")}
    after = {"richness_expected": before["richness_expected"] + rng.normal(0.5, 0.4, (30, 30)).astype("float32")}
    after["richness_expected"][:5, :5] -= 6.0  # a clearing
    after["richness_expected"][29, 29] = np.nan
    model = fit_change_model(before, after, z=3.0, habitat_radius=None)
    out = change_blocks(before, after, model)
    flag = out["richness_expected_change_flag"]
    assert (flag[:5, :5] == 1).all()  # decrease
    noise_only = np.ones((30, 30), bool)
    noise_only[:5, :5] = False
    noise_only[29, 29] = False
    assert (flag[noise_only] == 0).mean() > 0.99  # a global shift of +0.5 is not change
    assert flag[29, 29] == -1 and out["changed"][29, 29] == -1
    np.testing.assert_array_equal(out["changed"][:5, :5], 1)
    truth = np.zeros((30, 30))
    truth[:5, :5] = 1
    scores = detection_scores(out["changed"], truth)
    assert scores["recall"] == 1.0 and scores["precision"] > 0.9 and scores["pixels"] == 899


def test_habitat_transitions_need_disjoint_sets() -> None:
    ones = {"richness_expected": np.ones((1, 3), "float32")}
    # sets: p >= 0.4; habitat transitions decide `changed` only when listed (refresh.change_indicators)
    model = fit_change_model(
        ones, ones, z=3.0, habitat_radius=(0.6, 0.6), decides=("richness_expected", "habitat_transition")
    )
    c0 = np.array([[[0, 0, 0]], [[1, 1, 1]]])  # (K=2, y=1, x=3)
    p0 = np.array([[[0.9, 0.5, 0.9]], [[0.05, 0.45, 0.05]]])
    c1 = np.array([[[1, 1, 0]], [[0, 0, 1]]])
    p1 = np.array([[[0.9, 0.9, 0.9]], [[0.05, 0.05, 0.05]]])
    out = change_blocks(ones, ones, model, habitat_before=(c0, p0), habitat_after=(c1, p1))
    # pixel 0: 0 -> 1, both sets singletons: a transition; pixel 1: class 1 was in the earlier set; pixel 2: unchanged
    np.testing.assert_array_equal(out["habitat_transition"][0], [1, 0, 0])
    np.testing.assert_array_equal(out["habitat_from"][0], [0, -1, -1])
    np.testing.assert_array_equal(out["habitat_to"][0], [1, -1, -1])
    np.testing.assert_array_equal(out["changed"][0], [1, 0, 0])
    default = fit_change_model(ones, ones, z=3.0, habitat_radius=(0.6, 0.6))
    out = change_blocks(ones, ones, default, habitat_before=(c0, p0), habitat_after=(c1, p1))
    np.testing.assert_array_equal(out["habitat_transition"][0], [1, 0, 0])
    np.testing.assert_array_equal(out["changed"][0], [0, 0, 0])


def test_template_describes_every_variable() -> None:
    ones = {name: np.ones(4) for name in ("richness_expected", "shannon")}
    model = fit_change_model(ones, ones, z=2.5, habitat_radius=(0.5, 0.5))
    ds, enc = change_template(Grid(50.0, 4_000_000.0, 3_001_000.0, 20, 20), model, 16, ["A1", "B2"])
    assert list(ds.data_vars) == model.variables()
    for name, var in ds.data_vars.items():
        assert var.attrs["long_name"] and var.attrs["description"], name
    assert ds["richness_expected_change"].dtype == np.float32 and enc["changed"]["chunks"] == (16, 16)


def _gapped_years(seed: int) -> tuple[dict, dict, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Two years of richness on 60 x 60 pixels: the same landscape, but the right half saw a season clear in one
    year only (its summer was cloudy the year before), which makes the species map wobble there by 3 species; the
    left half saw the same four seasons both years and differs by 0.2. A clearing (-3 species) in the left half."""
    rng = np.random.default_rng(seed)
    before = rng.normal(20, 2, (60, 60)).astype("float32")
    after = before + rng.normal(0, 0.2, (60, 60)).astype("float32")
    after[:, 30:] = before[:, 30:] + rng.normal(0, 3.0, (60, 30)).astype("float32")
    clear_before = np.full((60, 60), 0b1111, np.int16)
    clear_before[:, 30:] = 0b1011  # season 2 cloudy the year before
    clear_after = np.full((60, 60), 0b1111, np.int16)
    truth = np.zeros((60, 60))
    truth[10:15, 10:15] = 1
    after[10:15, 10:15] -= 3.0
    return {"richness_expected": before}, {"richness_expected": after}, (clear_before, clear_after), truth


def test_change_noise_follows_each_pixels_coverage() -> None:
    """Pixels that saw other seasons clear are judged by their own (wider) noise, pixels that saw the same seasons
    by theirs: the cloud gaps alone flag nothing and a change where both years saw alike is found. One noise for
    the whole map (coverage unknown) misses the change or flags the cloud gaps."""
    before, after, coverage, truth = _gapped_years(2)
    z = family_z(0.05, 60 * 60, 1)
    model = fit_change_model(before, after, z=z, habitat_radius=None, coverage=coverage)
    assert model.coverage and set(model.noises["richness_expected"].strata) == {16 * 4, 16 * 3 + 1}
    out = change_blocks(before, after, model, coverage=coverage)
    scores = detection_scores(out["changed"], truth)
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0
    assert (out["changed"][:, 30:] == 0).all()  # the cloud gaps alone: nothing
    np.testing.assert_array_equal(out["seasons_compared"][:, 30:], 0b1011)
    np.testing.assert_array_equal(out["seasons_compared"][:, :30], 0b1111)
    assert out["changed_probability"][10:15, 10:15].min() > 0.999
    assert np.median(out["changed_probability"][:, 30:]) < 0.9
    pooled = fit_change_model(before, after, z=z, habitat_radius=None)
    blind = detection_scores(change_blocks(before, after, pooled)["changed"], truth)
    assert blind["f1"] < 0.5


def test_identical_years_but_their_cloud_gaps_show_no_change() -> None:
    rng = np.random.default_rng(3)
    before = {"richness_expected": rng.normal(20, 2, (40, 40)).astype("float32")}
    after = {"richness_expected": before["richness_expected"].copy()}
    clear_before = np.full((40, 40), 0b1111, np.int16)
    clear_before[::2] = 0b0111
    after["richness_expected"][::2] += rng.normal(0, 2.0, (20, 40)).astype("float32")  # the cloud gap's wobble
    coverage = (clear_before, np.full((40, 40), 0b1111, np.int16))
    model = fit_change_model(before, after, z=family_z(0.05, 1600, 1), habitat_radius=None, coverage=coverage)
    out = change_blocks(before, after, model, coverage=coverage)
    assert (out["changed"] == 0).all()
    np.testing.assert_array_equal(out["richness_expected_change"][1::2], 0.0)


def test_family_bound_and_unknown_coverage() -> None:
    assert family_z(0.05, 10_000, 1) == pytest.approx(4.56, abs=0.01)
    assert family_z(0.05, 10_000, 5) > family_z(0.05, 10_000, 1)
    stratum = coverage_stratum(np.array([0b1111, -1, 0b0101]), np.array([0b0111, 0b1111, 0b0101]))
    np.testing.assert_array_equal(stratum, [16 * 3 + 1, -1, 16 * 2])


def test_clear_seasons_reads_the_pixel_centres() -> None:
    from geoplantnet.inference.dense import TileGeometry
    from geoplantnet.inference.species import TileInputs, clear_seasons

    patch = np.ones((3, 2, 6, 6), np.float32)  # (season, band, y, x) on the cube window rows 10-16, cols 20-26
    patch[1, 0, 2, 3] = np.nan  # season 1 cloudy (one band is enough) at map pixel (0, 1)'s centre
    patch[2, :, 4, 4] = np.nan  # season 2 cloudy off every centre: no effect
    geom = TileGeometry(Tile(0, 0, 0, 0, 2, 2, "0_0"), (10, 16, 20, 26), None, np.array([12, 15]), np.array([21, 23]))
    bits = clear_seasons(TileInputs(geom, patch, None, 0.0, 0, 0))
    np.testing.assert_array_equal(bits, [[0b111, 0b101], [0b111, 0b111]])
    assert clear_seasons(TileInputs(geom, None, None, 0.0, 0, 0)) is None
