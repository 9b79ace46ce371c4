"""The impact's error model (:mod:`geoplantnet.products.impact_error`): the count model's error per land-cover class
measured at surveys, the change it corrects, and the extrapolation a class without surveys is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoplantnet.core.config import ModelConfig
from geoplantnet.models.species_net import ModelSpec, SpeciesEnsemble, SpeciesNet, member_of
from geoplantnet.products.impact_error import _correction
from geoplantnet.samples.training_set import NormStats
from geoplantnet.validation.conformal import stratum_errors


def _surveys(rng: np.random.Generator, n: int, p_true: float, p_model: float, species: int = 40):
    observed = rng.random((n, species)) < p_true
    return np.full((n, species), p_model), observed


def test_stratum_errors_measure_each_class_bias():
    """A model over-predicting class 4 and under-predicting class 2: the residual means say so, within their
    standard errors; a class below the survey minimum takes the pooled error (bias 0, the spread of the others)."""
    rng = np.random.default_rng(0)
    p4, o4 = _surveys(rng, 60, 0.5, 0.6)  # over by 4 species of 40
    p2, o2 = _surveys(rng, 60, 0.5, 0.45)  # under by 2
    p1, o1 = _surveys(rng, 2, 0.3, 0.5)
    p = np.concatenate([p4, p2, p1])
    observed = np.concatenate([o4, o2, o1])
    strata = np.array([4] * 60 + [2] * 60 + [1] * 2)
    errors = stratum_errors(p, observed, {"richness": np.ones(40, bool)}, strata, min_surveys=10)
    e4, measured4 = errors.error("richness", 4)
    e2, _ = errors.error("richness", 2)
    assert measured4 and e4.n == 60
    assert e4.bias == pytest.approx(-4.0, abs=3 * e4.se)
    assert e2.bias == pytest.approx(2.0, abs=3 * e2.se)
    assert e4.tau2 < 4  # the model's error is one bias per class: no site-to-site error beyond sampling noise
    e1, measured1 = errors.error("richness", 1)
    assert not measured1 and e1.bias == 0.0
    assert e1.se == pytest.approx(np.sqrt((e4.bias**2 + e2.bias**2) / 2), rel=0.01)
    assert errors.surveys(1) == 2 and errors.surveys(7) == 0


def test_the_correction_acts_only_where_the_class_changes():
    rng = np.random.default_rng(1)
    p4, o4 = _surveys(rng, 50, 0.5, 0.6)
    p2, o2 = _surveys(rng, 50, 0.5, 0.45)
    errors = stratum_errors(
        np.concatenate([p4, p2]), np.concatenate([o4, o2]), {"richness": np.ones(40, bool)},
        np.array([4] * 50 + [2] * 50), min_surveys=10,
    )  # fmt: skip
    e4, e2 = errors.error("richness", 4)[0], errors.error("richness", 2)[0]
    before = np.array([4, 4, 4, 4])
    fix, var, unmeasured = _correction(errors, "richness", before, np.array([2, 2, 4, 4]), 4)
    assert fix == pytest.approx((e2.bias - e4.bias) / 2)
    assert var > 0 and unmeasured == []
    # nothing changes class (a buffer): no correction and no added variance
    assert _correction(errors, "richness", before, before, 4) == (0.0, 0.0, [])
    # a class without surveys: flagged, uncorrected on its side, and a wider variance than a measured one
    fix1, var1, unmeasured1 = _correction(errors, "richness", before, np.array([1, 1, 4, 4]), 4)
    assert unmeasured1 == [1]
    assert fix1 == pytest.approx(-e4.bias / 2)
    assert var1 > var


def test_a_draw_of_an_ensemble_is_one_member():
    """Draw k of an impact runs member k of an ensemble file (modulo their number): the draws' spread holds the
    disagreement of independently trained networks; a single network is itself."""
    spec = ModelSpec(
        model=ModelConfig(env_hidden=8, fusion_hidden=8),
        modalities={"env": (5, 1, 1)},
        species=["a", "b"],
        norm=NormStats(env_mean=[0.0] * 4, env_std=[1.0] * 4),
        env_from_point=True,
    )
    torch.manual_seed(0)
    members = [SpeciesNet.from_spec(spec).eval() for _ in range(3)]
    ensemble = SpeciesEnsemble(members).eval()
    env = torch.randn(4, 5, 1, 1)
    assert member_of(ensemble, 1) is members[1] and member_of(ensemble, 4) is members[1]
    outputs = [member_of(ensemble, k)(env=env) for k in range(3)]
    assert not torch.allclose(outputs[0], outputs[1])
    torch.testing.assert_close(torch.stack(outputs).mean(0), ensemble(env=env))
    assert member_of(members[0], 2) is members[0]
