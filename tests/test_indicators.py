"""Indicator computations and their conformal uncertainty: values by hand, coverage on synthetic exchangeable data."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from geoplantnet.core.grid import Grid
from geoplantnet.products.indicators import (
    INDICATORS,
    RED_LIST,
    HabitatIndicatorModel,
    Indicator,
    IndicatorModel,
    definitions_table,
    describe,
    health,
    indicator_blocks,
    indicator_rows,
    indicator_template,
    shannon,
    typical_species,
    variables,
)
from geoplantnet.products.indicators import declared as declared_module
from geoplantnet.products.indicators.declared import declared
from geoplantnet.validation.conformal import (
    class_scores,
    class_sets,
    conformal_quantile,
    count_interval,
    count_moments,
    count_scores,
    cross_coverage,
)


def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    scores = np.arange(1.0, 10.0)  # n = 9
    assert conformal_quantile(scores, 0.8) == 8.0  # ceil(10 * 0.8) = 8th smallest
    assert conformal_quantile(scores, 0.5) == 5.0
    assert conformal_quantile(np.array([1.0, 2.0, 3.0]), 0.9) == math.inf  # ceil(4 * 0.9) = 4 > 3
    assert math.isnan(conformal_quantile(np.array([]), 0.9))


def test_count_intervals_cover_at_the_nominal_level_on_exchangeable_plots() -> None:
    rng = np.random.default_rng(0)
    n, s = 4000, 60
    p_true = rng.beta(0.5, 2.0, (n, s))
    p_map = np.clip(p_true + rng.normal(0, 0.08, (n, s)), 0, 1)  # an imperfect map
    observed = (rng.random((n, s)) < p_true).sum(axis=1)
    mu, var = count_moments(p_map, np.ones(s, bool))
    np.testing.assert_allclose(mu, p_map.sum(axis=1))
    np.testing.assert_allclose(var, (p_map * (1 - p_map)).sum(axis=1))
    scores = count_scores(observed, mu, var)
    cal, test = np.arange(n) < n // 2, np.arange(n) >= n // 2
    for level in (0.8, 0.9):
        q = conformal_quantile(scores[cal], level)
        lo, hi = count_interval(mu[test], var[test], q)
        covered = ((observed[test] >= lo) & (observed[test] <= hi)).mean()
        assert level - 0.03 <= covered <= level + 0.04, (level, covered)
    folds = rng.integers(0, 5, n)
    cov = cross_coverage(
        scores,
        folds,
        0.9,
        lambda idx, q: (lambda lo, hi: (observed[idx] >= lo) & (observed[idx] <= hi))(
            *count_interval(mu[idx], var[idx], q)
        ),
        lambda idx, q: np.subtract(*count_interval(mu[idx], var[idx], q)[::-1]),
    )
    assert 0.87 <= cov.coverage <= 0.94 and cov.n == n and cov.mean_width > 0
    assert cov.radius == pytest.approx(conformal_quantile(scores, 0.9))


def test_habitat_sets_cover_the_true_class() -> None:
    rng = np.random.default_rng(1)
    n, h, k = 3000, 12, 5
    logits = rng.normal(0, 2.0, (n, h))
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(h, p=row) for row in prob])  # calibrated classifier
    order = np.argsort(-prob, axis=1)[:, :k]
    top_p = np.take_along_axis(prob, order, axis=1)
    scores = class_scores(top_p, order, truth)
    outside = ~(order == truth[:, None]).any(axis=1)
    assert (scores[outside] == 1.0).all()  # a class beyond the top K: the conservative score
    q = conformal_quantile(scores[: n // 2], 0.8)
    sets = class_sets(top_p[n // 2 :], q)
    assert sets[:, 0].all()  # never empty
    covered = ((order[n // 2 :] == truth[n // 2 :, None]) & sets).any(axis=1).mean()
    assert 0.77 <= covered <= 0.86


def test_indicator_rows_by_hand() -> None:
    p = np.array([[0.9, 0.5, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2]])
    invasive = np.array([False, False, True, False])
    threatened = np.array([True, False, False, False])
    hab = HabitatIndicatorModel(
        codes=("A1", "B1"),
        red_list=np.array([RED_LIST.index("EN"), RED_LIST.index("LC")], "int8"),
        typical=np.array([[True, True, False, False], [False, False, True, True]]),
        reference=np.array([0.8, 0.5]),
        set_radius=0.7,  # classes with p >= 0.3 are in the set
    )
    model = IndicatorModel(
        thresholds=np.array([0.5, 0.6, np.nan, 0.1], "float32"),
        groups={"richness": np.ones(4, bool), "invasive": invasive, "threatened": threatened},
        count_radius={"richness": 2.0, "invasive": float("nan")},
        level=0.9,
        habitats=hab,
        draws=200,
    )
    top = np.array([[0, 1], [1, 0]])
    top_p = np.array([[0.6, 0.35], [0.9, 0.05]])
    out = indicator_rows(p, model, top_classes=top, top_probability=top_p)
    np.testing.assert_allclose(out["richness_expected"], [1.5, 0.8])
    sd = np.sqrt([0.09 + 0.25 + 0.09, 4 * 0.16])
    np.testing.assert_allclose(out["richness_upper"], [1.5, 0.8] + 2 * (sd + 1))
    np.testing.assert_allclose(out["richness_lower"], np.maximum([1.5, 0.8] - 2 * (sd + 1), 0))
    z = 1.6448536  # uncalibrated: the normal quantile of the level
    np.testing.assert_allclose(out["invasive_upper"], [0.1 + z * 0.3, 0.2 + z * 0.4], rtol=1e-6)
    few = indicator_rows(p, replace(model, count_radius={"richness": float("inf")}, habitats=None))
    assert (few["richness_upper"] == np.inf).all() and (few["richness_lower"] == 0).all()  # too few surveys
    np.testing.assert_allclose(out["richness_thresholded"], [1, 1])  # 0.9>=0.5, 0.5<0.6, NaN never / only 0.2>=0.1
    np.testing.assert_allclose(out["threatened_thresholded"], [1, 0])
    np.testing.assert_allclose(out["invasive_any"], [0.1, 0.2])  # one invasive species
    np.testing.assert_allclose(out["threatened_any"], [0.9, 0.2])
    assert "richness_any" not in out
    point = indicator_rows(p, replace(model, draws=0), top_classes=top, top_probability=top_p)
    assert "shannon_lower" not in point and np.array_equal(point["shannon"], out["shannon"])
    sure = indicator_rows(np.array([[1.0, 0.0, 0.3, 0.0]]), model, top_classes=top[:1], top_probability=top_p[:1])
    assert sure["threatened_any"][0] == pytest.approx(1.0) and sure["invasive_any"][0] == pytest.approx(0.3)
    q = np.array([0.9, 0.5, 0.1]) / 1.5
    assert out["shannon"][0] == pytest.approx(-(q * np.log(q)).sum())
    assert out["shannon"][1] == pytest.approx(np.log(4))
    np.testing.assert_array_equal(out["threatened_habitat"], [1, 0])
    np.testing.assert_array_equal(out["habitat_red_list"], [RED_LIST.index("EN"), RED_LIST.index("LC")])
    np.testing.assert_array_equal(out["habitat_set_size"], [2, 1])
    np.testing.assert_array_equal(out["threatened_habitat_set"], [1, 0])  # {A1 EN, B1 LC} / {B1}
    # health: completeness (0.9 + 0.5) / 2 / 0.8, times 1 - 0.1 / 1.5; B1: (0.2 + 0.2) / 2 / 0.5
    np.testing.assert_allclose(out["ecosystem_health"], [0.875 * (1 - 0.1 / 1.5), 0.4 * (1 - 0.2 / 0.8)])
    capped = HabitatIndicatorModel(hab.codes, hab.red_list, hab.typical, np.array([0.5, 0.5]), hab.set_radius)
    assert health(p, np.array([0, 1]), invasive, capped)[0] == pytest.approx(1 - 0.1 / 1.5)  # 0.7 / 0.5 capped at 1
    assert (out["shannon_lower"] <= out["shannon_upper"]).all()
    assert (out["ecosystem_health_lower"] <= out["ecosystem_health_upper"]).all()


def test_health_without_typical_species_is_nan() -> None:
    hab = HabitatIndicatorModel(("A",), np.array([-1], "int8"), np.zeros((1, 2), bool), np.array([np.nan]), 0.5)
    assert np.isnan(health(np.array([[0.5, 0.5]]), np.array([0]), np.zeros(2, bool), hab)).all()


def test_shannon_of_empty_rows_is_zero() -> None:
    np.testing.assert_allclose(shannon(np.array([[0.0, 0.0], [1.0, 0.0]])), [0.0, 0.0])


def test_typical_species_phi_by_hand() -> None:
    # 6 plots, classes 0 0 0 1 1 -1 (unlabelled, ignored); species 0 in class 0 only, species 1 everywhere
    presence = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [0, 1, 1], [1, 1, 1]], bool)
    labels = np.array([0, 0, 0, 1, 1, -1])
    typical, reference = typical_species(presence, labels, 2, top=2, min_phi=0.2)
    # species 0 vs class 0: n=5, f=3, n_h=3, both=3: (5*3 - 3*3) / sqrt(3*2*3*2) = 1; species 1: f=n -> phi 0
    # species 2 vs class 0: f=3, both=1: (5 - 9) / 6 < 0
    assert typical[0].tolist() == [True, False, False]
    assert typical[1].tolist() == [False, False, True]
    assert reference.tolist() == [1.0, 1.0]


def _model(habitats: bool) -> IndicatorModel:
    hab = HabitatIndicatorModel(
        ("A", "B"), np.array([3, 0], "int8"), np.array([[1, 1, 0], [0, 0, 1]], bool), np.array([0.5, 0.5]), 0.5
    )
    return IndicatorModel(
        thresholds=np.array([0.3, 0.3, 0.3], "float32"),
        groups={"richness": np.ones(3, bool), "invasive": np.array([False, False, True])},
        count_radius={"richness": 1.5, "invasive": 1.0},
        level=0.9,
        habitats=hab if habitats else None,
        draws=16,
    )


def test_blocks_keep_no_data_and_are_reproducible() -> None:
    rng = np.random.default_rng(3)
    p = rng.random((3, 4, 5)).astype("float32")
    p[1, 0, 0] = np.nan  # one species without data: the pixel is unknown
    top = np.zeros((2, 4, 5), "int16")
    top[1] = 1
    top[:, 3, 4] = -1  # no habitat
    top_p = np.stack([np.full((4, 5), 0.7), np.full((4, 5), 0.2)]).astype("float32")
    model = _model(True)
    a = indicator_blocks(p, model, habitat_top=top, habitat_top_probability=top_p, seed=7)
    b = indicator_blocks(p, model, habitat_top=top, habitat_top_probability=top_p, seed=7)
    assert list(a) == model.variables()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert np.isnan(a["richness_expected"][0, 0]) and np.isnan(a["shannon_upper"][3, 4])
    assert a["threatened_habitat"][0, 0] == -1 and a["habitat_set_size"][3, 4] == -1
    np.testing.assert_allclose(a["richness_expected"][2, 2], p[:, 2, 2].sum(), rtol=1e-6)
    assert a["threatened_habitat"][1, 1] == 1  # class A is EN
    c = indicator_blocks(p, model, habitat_top=top, habitat_top_probability=top_p, seed=8)
    assert not np.array_equal(a["shannon_lower"], c["shannon_lower"], equal_nan=True)  # another tile, other draws


def test_template_describes_every_variable() -> None:
    grid = Grid(50.0, 4_000_000.0, 3_001_000.0, 20, 20)
    for habitats in (False, True):
        model = _model(habitats)
        ds, enc = indicator_template(grid, model, 16)
        assert list(ds.data_vars) == model.variables()
        for name, var in ds.data_vars.items():
            assert var.attrs["long_name"], name
            assert ("units" in var.attrs) or ("flag_values" in var.attrs), name
            assert var.attrs.get("description"), name
            assert enc[name]["chunks"] == (16, 16)
        assert ("ecosystem_health" in ds) is habitats


def test_declarations_are_the_single_source() -> None:
    """The variables, their order, dtypes and attributes in a store, a tile's blocks and rows all come from the
    declarations (INDICATORS): nothing else lists an indicator."""
    grid = Grid(50.0, 4_000_000.0, 3_001_000.0, 20, 20)
    p = np.random.default_rng(0).random((3, 4, 5)).astype("float32")
    top = np.zeros((2, 4, 5), "int16")
    top[1] = 1
    top_p = np.stack([np.full((4, 5), 0.7), np.full((4, 5), 0.2)]).astype("float32")
    written: set[str] = set()
    for habitats in (False, True):
        for thresholds in (False, True):
            model = _model(habitats)
            model = model if thresholds else replace(model, thresholds=None)
            pairs = declared(model)
            names = [ind.variable(g) for ind, g in pairs]
            assert names == model.variables() == variables(model)
            ds, _ = indicator_template(grid, model, 16)
            assert list(ds.data_vars) == names
            hab = {"habitat_top": top, "habitat_top_probability": top_p} if habitats else {}
            blocks = indicator_blocks(p, model, seed=1, **hab)
            assert list(blocks) == names
            for ind, g in pairs:
                name = ind.variable(g)
                assert str(ds[name].dtype) == ind.dtype == str(blocks[name].dtype), name
                attrs = ind.attrs(model, g)
                assert attrs == describe(name, model)
                assert {k: ds[name].attrs[k] for k in attrs} == attrs, name  # every declared attribute is stored
                assert set(ds[name].attrs) - set(attrs) <= {"model_versions"}, name  # and nothing undeclared
            written |= {ind.name for ind, _ in pairs}
    assert written == {ind.name for ind in INDICATORS}  # every declaration is written by some model


def test_an_indicator_is_one_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    toy = Indicator(
        "toy_max",
        lambda px, group: px.p.max(axis=1),
        "largest probability of any species",
        "max(p) over the species",
        "the largest probability of any species",
    )
    monkeypatch.setattr(declared_module, "INDICATORS", (*INDICATORS, toy))
    model = _model(False)
    assert model.variables()[-1] == "toy_max"
    ds, _ = indicator_template(Grid(50.0, 4_000_000.0, 3_001_000.0, 20, 20), model, 16)
    assert ds["toy_max"].attrs["long_name"] == "largest probability of any species"
    p = np.random.default_rng(1).random((3, 4, 5)).astype("float32")
    np.testing.assert_allclose(indicator_blocks(p, model)["toy_max"], p.max(axis=0), rtol=1e-6)
    assert "`toy_max`" in definitions_table()


def test_the_docs_table_is_the_declarations() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "indicators.md").read_text()
    assert definitions_table() in docs, "docs/indicators.md: paste the regenerated definitions_table()"
