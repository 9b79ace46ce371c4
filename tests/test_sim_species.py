"""The virtual species pool on synthetic environmental gradients: determinism, niches, prevalences, clustering."""

import re

import numpy as np
import pytest

from geoplantnet.core.grid import Grid
from geoplantnet.sim.species import GROWTH_FORMS, NICHE_VARIABLES, SpeciesError, SpeciesPool

GRID = Grid(50.0, 4_321_000.0, 2_981_000.0, 40, 40)


def gradient_env(grid: Grid = GRID) -> dict[str, np.ndarray]:
    """Smooth gradients across a window: every niche variable and land cover vary over the region."""
    u, v = np.meshgrid(np.linspace(0, 1, grid.width), np.linspace(0, 1, grid.height))
    return {
        "temperature": (6 + 8 * u).astype("float32"),
        "precipitation": (600 + 700 * v).astype("float32"),
        "soil_ph": (4.5 + 3 * np.sin(3 * u + 2 * v) ** 2).astype("float32"),
        "elevation": (100 + 900 * (1 - u) * v).astype("float32"),
        "land_cover": np.clip(1 + np.floor(9 * (0.6 * u + 0.4 * v)), 1, 9).astype("uint8"),
    }


def sample(env: dict[str, np.ndarray], grid: Grid = GRID) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    xx, yy = np.meshgrid(grid.x, grid.y)
    return {k: a.ravel() for k, a in env.items()}, xx.ravel(), yy.ravel()


@pytest.fixture(scope="module")
def pool() -> SpeciesPool:
    return SpeciesPool.generate(7, 50, *sample(gradient_env()))


def test_deterministic_from_seed(pool):
    again = SpeciesPool.generate(7, 50, *sample(gradient_env()))
    other = SpeciesPool.generate(8, 50, *sample(gradient_env()))
    assert pool.table().equals(again.table())
    assert not pool.table()["species_name"].equals(other.table()["species_name"])
    env = gradient_env()
    np.testing.assert_array_equal(pool.probability(env, GRID.x, GRID.y), again.probability(env, GRID.x, GRID.y))


def test_ids_names_and_flags(pool):
    assert pool.ids[0] == "sp0001" and len(set(pool.ids)) == pool.n == 50
    assert len(set(pool.names)) == pool.n
    assert all(re.fullmatch(r"[A-Z][a-z]+ [a-z]+", n) for n in pool.names)
    assert 1 <= pool.invasive.sum() <= 0.1 * pool.n
    assert 0.05 * pool.n <= pool.threatened.sum() <= 0.15 * pool.n
    assert not np.any(pool.invasive & pool.threatened)
    assert set(pool.growth_form) <= set(GROWTH_FORMS)


def test_probabilities_and_prevalences(pool):
    env = gradient_env()
    p = pool.probability(env, GRID.x, GRID.y)
    assert p.shape == (pool.n, *GRID.shape) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))
    # calibrated on this very region: the region-wide mean p is the drawn prevalence
    np.testing.assert_allclose(p.mean(axis=(1, 2)), pool.prevalence, rtol=0.05, atol=2e-3)
    assert pool.prevalence.max() / pool.prevalence.min() > 10


def test_niche_widths_span_specialists_and_generalists(pool):
    breadth = np.exp(np.log(pool.width_low * pool.width_high).mean(axis=1) / 2)
    assert breadth.min() < 0.5 and breadth.max() > 2.0
    assert np.any(~np.isclose(pool.width_low, pool.width_high))  # skewed responses


def test_probability_higher_near_optimum(pool):
    """At a fixed place and land cover, p falls as the environment leaves the optimum, on either side."""
    n = pool.n
    x, y = np.full(3, GRID.x[5]), np.full(3, GRID.y[5])
    for s in range(n):
        env = {"land_cover": np.full(3, np.argmax(pool.land_cover_pref[s]) + 1)}
        for v, name in enumerate(NICHE_VARIABLES):
            mean, std = pool.scaling.mean[v], pool.scaling.std[v]
            opt = pool.optimum[s, v]
            z = np.array([opt, opt - 2 * pool.width_low[s, v], opt + 2 * pool.width_high[s, v]])
            env[name] = (mean + std * z).astype("float32")
        for name in NICHE_VARIABLES:  # move one variable at a time
            probe = {k: (np.full(3, a[0]) if k != name and k != "land_cover" else a) for k, a in env.items()}
            logit = pool.logit(probe, x, y)[s]  # logit: p itself may saturate at 1 for dominant specialists
            assert logit[0] > logit[1] and logit[0] > logit[2], (pool.ids[s], name, logit)
            p = pool.probability(probe, x, y)[s]
            assert p[0] >= p[1] and p[0] >= p[2]


def test_land_cover_preference(pool):
    env = {k: np.full(9, float(np.mean(a))) for k, a in gradient_env().items()}
    env["land_cover"] = np.arange(1, 10)
    logit = pool.logit(env, np.full(9, GRID.x[0]), np.full(9, GRID.y[0]))
    np.testing.assert_array_equal(np.argmax(logit, axis=1), np.argmax(pool.land_cover_pref, axis=1))
    env["land_cover"] = np.zeros(9, dtype="uint8")  # no data: nothing lives there
    assert np.all(pool.probability(env, np.full(9, GRID.x[0]), np.full(9, GRID.y[0])) == 0)


def test_spatial_autocorrelation_beyond_environment(pool):
    """Under a uniform environment p still varies in space, smoothly: neighbouring pixels are correlated."""
    uniform = {k: np.full(GRID.shape, np.median(a), dtype=a.dtype) for k, a in gradient_env().items()}
    logit = pool.logit(uniform, GRID.x, GRID.y)
    corr = []
    for s in range(pool.n):
        a = logit[s]
        assert a.std() > 0.05
        corr.append(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1])
    assert np.median(corr) > 0.8
    # windows and points agree: the truth is a function of place, not of how it is cut
    sub = GRID.subgrid(slice(10, 20), slice(5, 25))
    window = {k: a[10:20, 5:25] for k, a in uniform.items()}
    np.testing.assert_allclose(pool.logit(window, sub.x, sub.y), logit[:, 10:20, 5:25], rtol=1e-4, atol=1e-4)
    xx, yy = np.meshgrid(sub.x, sub.y)
    points = {k: a.ravel() for k, a in window.items()}
    np.testing.assert_allclose(
        pool.logit(points, xx.ravel(), yy.ravel()).reshape(-1, 10, 20), logit[:, 10:20, 5:25], rtol=1e-3, atol=1e-3
    )


def test_table_round_trip(pool, tmp_path):
    path = pool.write_table(tmp_path / "species.parquet")
    pool.write_table(tmp_path / "species.csv")
    back = SpeciesPool.read_table(path)
    env = gradient_env()
    np.testing.assert_allclose(back.probability(env, GRID.x, GRID.y), pool.probability(env, GRID.x, GRID.y), atol=1e-5)
    table = pool.table()
    assert {"temperature_optimum", "soil_ph_width_low", "land_cover_pref_9", "iucn_category", "invasive"} <= set(table)
    with pytest.raises(SpeciesError, match=r"species\.txt"):
        pool.write_table(tmp_path / "species.txt")


def test_bad_input_names_the_problem(pool):
    env = gradient_env()
    del env["soil_ph"]
    with pytest.raises(SpeciesError, match="soil_ph"):
        pool.probability(env, GRID.x, GRID.y)
    with pytest.raises(SpeciesError, match="len"):
        pool.probability(gradient_env(), GRID.x[:5], GRID.y)
