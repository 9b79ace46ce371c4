"""The random evaluation's draws (footprints and candidate sites over a land-cover map) and the offsets' currency,
without a cluster: the end-to-end run is in tests/test_impact.py."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from geoplantnet.core.grid import Grid
from geoplantnet.evaluation.random_assessments import (
    aggregate,
    assign_scenarios,
    draw_polygons,
    majority_class,
    random_shape,
    site_sets,
)
from geoplantnet.products.offsets import ERROR_DRAWS, Currency, check_units, compensation
from geoplantnet.products.scenarios import ScenarioError


def _grid() -> Grid:
    return Grid(resolution=50.0, left=4321000.0, top=2981000.0, width=100, height=100)


def test_shapes_have_their_area():
    rng = np.random.default_rng(1)
    for _ in range(30):
        shape, kind = random_shape(rng, 1000.0, 2000.0, 5e4)
        assert shape.is_valid and shape.area == pytest.approx(5e4, rel=1e-6)
        assert kind in ("rectangle", "ellipse", "irregular")


def test_polygons_are_stratified_inside_and_apart():
    grid = _grid()
    land_cover = np.zeros((100, 100), dtype="int16")
    land_cover[:, 50:] = 3  # two classes, half the region each
    land_cover[:3, :3] = 7  # too few cells to be a stratum
    drawn = draw_polygons(np.random.default_rng(0), land_cover, grid, 12, prefix="site", area_ha=(2, 8),
                          margin_m=100, exclude=(0,), apart=True)  # fmt: skip
    inner = shapely.box(*grid.bounds).buffer(-100)
    assert [d.id for d in drawn] == [f"site-{i}" for i in range(1, 13)]
    assert {d.land_cover for d in drawn} == {3}  # 0 excluded, 7 too rare
    assert all(inner.contains(d.geometry) and 2 <= d.area_ha <= 8 for d in drawn)
    assert all(a.geometry.distance(b.geometry) >= 20 for i, a in enumerate(drawn) for b in drawn[i + 1 :])
    again = draw_polygons(np.random.default_rng(0), land_cover, grid, 12, prefix="site", area_ha=(2, 8),
                          margin_m=100, exclude=(0,), apart=True)  # fmt: skip
    assert [d.geometry.wkt for d in again] == [d.geometry.wkt for d in drawn]  # seeded
    with pytest.raises(ValueError, match="no land-cover class"):
        draw_polygons(np.random.default_rng(0), land_cover, grid, 1, prefix="x", area_ha=(2, 8), margin_m=0,
                      exclude=(0, 3))  # fmt: skip
    sets = site_sets(np.random.default_rng(0), 12, 5, 4)
    assert len(sets) == 5 and all(len(set(s)) == 4 and max(s) < 12 for s in sets)


def test_footprints_never_get_their_own_majority_class():
    """Several scenarios: each footprint's drawn among those that change its majority class; one scenario: a
    footprint mostly of its class is drawn again, and no draw is spent on the assignment."""
    grid = _grid()
    land_cover = np.zeros((100, 100), dtype="int16")
    land_cover[:, 50:] = 3
    box = shapely.box(grid.left + 100, grid.top - 1000, grid.left + 2000, grid.top - 100)  # 38 x 18 cells of 0
    assert majority_class(land_cover, grid, box, -1) == 0
    drawn = draw_polygons(np.random.default_rng(0), land_cover, grid, 30, prefix="f", area_ha=(2, 8), margin_m=100)
    assert {d.majority for d in drawn} == {0, 3}
    chosen = assign_scenarios(np.random.default_rng(1), drawn, [0, 3, 5])
    assert all([0, 3, 5][c] != d.majority for c, d in zip(chosen, drawn, strict=True))
    assert set(chosen) == {0, 1, 2}  # every scenario drawn somewhere
    assert assign_scenarios(np.random.default_rng(1), drawn, [5]) == [0] * 30
    only = draw_polygons(np.random.default_rng(0), land_cover, grid, 10, prefix="f", area_ha=(2, 8), margin_m=100,
                         not_majority=3)  # fmt: skip
    assert {d.majority for d in only} == {0}


def test_aggregate_per_scenario():
    row = {"richness_true_in_interval": True, "threatened_true_in_interval": None, "beyond_buffer_max_abs_change": 0.0,
           "richness_change_predicted": -3.0, "richness_change_true": -2.0}  # fmt: skip
    rows = [row | {"scenario": k, "richness_relative_error": e} for k, e in (("a", 0.5), ("b", 0.1), ("a", 0.3))]
    agg = aggregate(rows, [])
    assert agg["footprints"] == 3 and set(agg["by_scenario"]) == {"a", "b"}
    assert agg["by_scenario"]["a"]["footprints"] == 2
    assert agg["by_scenario"]["a"]["richness_mean_relative_error"] == pytest.approx(0.4)
    assert "by_scenario" not in aggregate(rows[:1], [])


def _summary(richness: float, threatened: float, draws: list[float], estimates: dict | None = None) -> dict:
    zones = {"footprint": {"area_ha": 2.0, "pixels": 8}, "buffer": {"area_ha": 1.0, "pixels": 4}}
    out = {
        "zones": zones,
        "species_ha": {
            "richness": {
                "footprint": {"change": richness, "draws": draws},
                "buffer": {"change": 0.0, "draws": [0.0] * len(draws)},
            },
            "threatened": {"footprint": {"change": threatened, "draws": [threatened] * len(draws)}},
        },
    }  # fmt: skip
    if estimates is not None:
        out["change_estimates"] = estimates
    return out


def test_species_currency_counts_threatened_species_and_model_error():
    currency = Currency("species", threatened_weight=4.0)
    assert currency.unit == "species-ha"
    point, draws = currency.change(_summary(10.0, 1.0, [9.0, 11.0]))
    assert point == pytest.approx(14.0)
    assert draws.shape == (ERROR_DRAWS,) and set(np.round(draws, 6)) == {13.0, 15.0}  # no model error: MC only
    # a model-error correction of the counts (per pixel, per zone) moves the point and widens the draws
    est = {"richness": {"footprint": {"correction": -1.5, "sd_calibration": 0.5}}}
    point, widened = currency.change(_summary(10.0, 1.0, [9.0, 11.0], est))
    assert point == pytest.approx(14.0 - 3.0)
    assert np.std(widened) > np.std(draws) and np.mean(widened) == pytest.approx(11.0, abs=0.2)
    # draw i of a gain and of a loss is the same thinned network: compared pairwise
    p, verdict = compensation(draws, draws - 1.0, 1.0, 0.9, paired=True)
    assert p == 1.0 and verdict == "yes"


def test_aggregate_names_the_targets():
    rows = [
        {"richness_relative_error": 0.2, "richness_true_in_interval": True, "threatened_true_in_interval": False,
         "beyond_buffer_max_abs_change": 0.0, "richness_change_predicted": -3.0, "richness_change_true": -2.5},
        {"richness_relative_error": None, "richness_true_in_interval": False, "threatened_true_in_interval": None,
         "beyond_buffer_max_abs_change": 0.1, "richness_change_predicted": 0.2, "richness_change_true": -0.1},
    ]  # fmt: skip
    sets = [
        {"spearman": 0.8, "verdict_agrees": True, "verdict_true": "yes", "verdict_predicted": "yes",
         "predicted_best_site": "a", "true_best_site": "a"},
        {"spearman": 0.4, "verdict_agrees": False, "verdict_true": "no", "verdict_predicted": "yes",
         "predicted_best_site": "a", "true_best_site": "b"},
    ]  # fmt: skip
    agg = aggregate(rows, sets)
    assert agg["richness_mean_relative_error"] == pytest.approx(0.2) and agg["footprints_scored_relative"] == 1
    assert agg["richness_interval_coverage"] == 0.5 and agg["threatened_interval_coverage"] == 0.0
    assert agg["richness_sign_agrees"] == 0.5 and agg["beyond_buffer_max_abs_change"] == 0.1
    assert agg["spearman_mean"] == pytest.approx(0.6) and agg["verdicts_agree_share"] == 0.5
    assert agg["true_yes_share"] == 0.5 and agg["best_site_agrees_share"] == 0.5


def test_value_hectares_of_two_value_models_are_not_compared():
    impact = {"draws_of": {"value_model": "a" * 64}}
    check_units(impact, {"value_model": "a" * 64}, Currency("value"), "r")
    check_units(impact, {"value_model": "b" * 64}, Currency("species"), "r")  # species count alike
    with pytest.raises(ScenarioError, match="another value model"):
        check_units(impact, {"value_model": "b" * 64}, Currency("value"), "r")
