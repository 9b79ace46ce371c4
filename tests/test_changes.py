"""Change maps between two years: the noise band, habitat transitions through conformal sets, detection scores."""

from __future__ import annotations

import numpy as np
import pytest

from geoplantnet.core.grid import Grid
from geoplantnet.products.changes import (
    change_blocks,
    change_template,
    detection_scores,
    fit_change_model,
    robust_noise,
)


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
    model = fit_change_model(ones, ones, z=3.0, habitat_radius=(0.6, 0.6))  # sets: p >= 0.4
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


def test_template_describes_every_variable() -> None:
    ones = {name: np.ones(4) for name in ("richness_expected", "shannon")}
    model = fit_change_model(ones, ones, z=2.5, habitat_radius=(0.5, 0.5))
    ds, enc = change_template(Grid(50.0, 4_000_000.0, 3_001_000.0, 20, 20), model, 16, ["A1", "B2"])
    assert list(ds.data_vars) == model.variables()
    for name, var in ds.data_vars.items():
        assert var.attrs["long_name"] and var.attrs["description"], name
    assert ds["richness_expected_change"].dtype == np.float32 and enc["changed"]["chunks"] == (16, 16)
