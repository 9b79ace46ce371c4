"""Calibration and thresholds: Platt and isotonic maps fitted on one part, checked on held-out data; thresholds on a
toy case worked by hand; calibration and thresholds saved in model files (CNN and peer) and read back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoplantnet.core.config import ModelConfig, ValidationConfig
from geoplantnet.inference.dense import predict_tile, predict_tile_naive, tile_geometry
from geoplantnet.models.calibration import (
    Calibration,
    CalibrationError,
    SpeciesCalibration,
    Thresholds,
    calibrate,
    fit_calibration,
)
from geoplantnet.models.peers import MaxentPeer, RandomForestPeer, load_peer
from geoplantnet.models.species_net import ModelSpec, SpeciesNet
from geoplantnet.samples.training_set import NormStats
from geoplantnet.training.train import load_model, save_model
from geoplantnet.validation.calibration import (
    CALIBRATED,
    RELATIVE_SUITABILITY,
    brier_score,
    calibrate_oof,
    choose_thresholds,
    expected_calibration_error,
    nested_calibration,
    write_into_model_file,
)
from geoplantnet.validation.report import calibration_figure, plot_calibration


def _miscalibrated(n: int, n_species: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True probabilities, labels drawn from them, and over-confident scores (logit x 3, shifted): a model that
    ranks well but whose numbers are wrong."""
    rng = np.random.default_rng(seed)
    true = 1 / (1 + np.exp(-rng.normal(-1.0, 1.2, (n, n_species))))
    labels = (rng.random((n, n_species)) < true).astype(np.int8)
    logit = np.log(true / (1 - true))
    scores = 1 / (1 + np.exp(-(3 * logit + 1.5)))
    return true, labels, scores


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_fitted_on_one_part_reduces_ece_and_brier_on_held_out_data(method):
    _, labels, scores = _miscalibrated(6000)
    fit, test = slice(0, 3000), slice(3000, None)
    cal = fit_calibration(scores[fit], labels[fit], method)
    assert cal.n_calibrated == 3 and cal.method == method
    after = cal.apply(scores[test])
    ece_before, ece_after = (expected_calibration_error(labels[test], p) for p in (scores[test], after))
    assert ece_before > 0.1 and ece_after < 0.03 and ece_after < ece_before / 4, (ece_before, ece_after)
    assert brier_score(labels[test], after) < brier_score(labels[test], scores[test])
    # quantile bins tell the same story
    q_before, q_after = (expected_calibration_error(labels[test], p, bins="quantile") for p in (scores[test], after))
    assert q_after < q_before / 3
    # monotone per species: ranks (AUC) are kept
    for s in range(3):
        order = np.argsort(scores[test][:, s])
        assert np.all(np.diff(after[order, s]) >= -1e-6)


def test_platt_recovers_a_known_logit_map():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 1)))).astype(np.int8)
    p = 1 / (1 + np.exp(-z))
    cal = fit_calibration(p[:, None], y[:, None], "platt").species[0]
    assert cal is not None and abs(cal.slope - 0.5) < 0.05 and abs(cal.intercept + 1) < 0.08


def test_species_with_few_cases_get_the_pooled_map_or_are_passed_through():
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 1]] * 5, dtype=np.int8)  # species 1: 5 presences, 15 absences
    labels[:16, 1] = -1  # only 4 known rows left for species 1
    probs = np.linspace(0.05, 0.95, labels.size).reshape(labels.shape)
    own = fit_calibration(probs, labels, "isotonic", shared=False)
    assert own.species[0] is not None and own.species[1] is None and (own.n_calibrated, own.n_shared) == (1, 0)
    pooled = fit_calibration(probs, labels, "platt")
    assert pooled.species[1] is not None and pooled.species[1].shared and not pooled.species[0].shared
    assert (pooled.n_calibrated, pooled.n_shared) == (1, 1)
    out = own.apply(np.array([[np.nan, 0.3]]))
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx(0.3)
    with pytest.raises(CalibrationError):
        own.apply(np.zeros((2, 3)))
    assert calibrate(probs, None) is probs
    few = fit_calibration(probs[:6], labels[:6], "platt")  # 3 presences in the whole pool: nothing to fit
    assert few.species == [None, None]


def test_nested_calibration_scores_each_fold_with_a_map_that_never_saw_it():
    _, labels, scores = _miscalibrated(4000, seed=2)
    folds = np.repeat(np.arange(4), 1000)
    held_out = nested_calibration(scores, labels, folds, "platt")
    assert np.isfinite(held_out).all()
    assert expected_calibration_error(labels, held_out) < expected_calibration_error(labels, scores) / 3
    # not the in-sample fit: fold 0 calibrated by a map fitted on folds 1-3 only
    other = fit_calibration(scores[1000:], labels[1000:], "platt")
    np.testing.assert_allclose(held_out[:1000], other.apply(scores[:1000]), atol=1e-6)


def test_thresholds_on_a_toy_case():
    y = np.array([[0], [0], [0], [1], [1]])
    p = np.array([[0.1], [0.2], [0.6], [0.5], [0.9]])
    th = choose_thresholds(y, p, basis="presence-absence", calibrated=False)
    # 0.5: sensitivity 1, specificity 2/3 (TSS 0.67) beats 0.6 (0.17) and 0.9 (0.5)
    assert th.max_tss == [pytest.approx(0.5)]
    # observed prevalence 2/5: the two highest predictions (0.9, 0.6) are the predicted presences
    assert th.prevalence == [pytest.approx(0.6)]
    one_class = choose_thresholds(np.zeros((3, 1)), np.ones((3, 1)) / 2, basis="presence-background", calibrated=False)
    assert one_class.max_tss == [None] and one_class.as_arrays()["prevalence"].dtype == np.float32
    assert np.isnan(one_class.as_arrays()["prevalence"][0])


def test_presence_only_data_are_not_calibrated_and_are_called_relative_suitability():
    rng = np.random.default_rng(3)
    n = 400
    source = np.where(np.arange(n) < 100, "po", "bg")
    labels = np.full((n, 2), -1, np.int8)
    labels[:100, 0], labels[100:] = 1, 0
    labels[:50, 1], labels[:50, 0] = 1, -1
    oof = rng.random((n, 2)).astype(np.float32)
    out = calibrate_oof(oof, labels, source, np.arange(n) % 4, "platt")
    assert out.calibration is None and out.scale == RELATIVE_SUITABILITY
    assert out.thresholds.basis == "presence-background" and not out.thresholds.calibrated
    assert all(v is not None for v in out.thresholds.max_tss)
    assert out.table["method"] == "none" and np.isnan(out.table["ece_after"])


def test_presence_absence_rows_alone_are_calibrated_and_scored_nested():
    _, labels, scores = _miscalibrated(3000, seed=4)
    source = np.array(["pa"] * 2000 + ["po"] * 1000)
    labels[2000:] = np.where(labels[2000:] == 1, 1, -1)  # presence-only rows: presences of their species only
    scores[2000:] = 0.99  # would wreck a calibration that used them
    out = calibrate_oof(scores, labels, source, np.arange(3000) % 5, "isotonic")
    assert out.scale == CALIBRATED and out.calibration is not None and out.calibration.n_rows == 2000
    t = out.table
    assert t["basis"] == "presence-absence" and t["n_rows"] == 2000 and t["n_species_calibrated"] == 3
    assert t["ece_after"] < t["ece_before"] / 2 and t["brier_after"] < t["brier_before"]
    assert out.thresholds.calibrated and out.thresholds.basis == "presence-absence"
    none = calibrate_oof(scores, labels, source, np.arange(3000) % 5, "none")
    assert none.calibration is None and np.isnan(none.table["ece_after"]) and not none.thresholds.calibrated


def _tiny_spec(**update) -> ModelSpec:
    cfg = ModelConfig(patch_size=8, env_patch_size=1, width=4, series_hidden=4, env_hidden=4, fusion_hidden=8)
    norm = NormStats(env_mean=[0.0], env_std=[1.0])
    spec = ModelSpec(model=cfg, modalities={"env": (2, 1, 1)}, species=["a", "b"], norm=norm, variables=["t"])
    return spec.model_copy(update=update)


def _calibration_and_thresholds() -> tuple[Calibration, Thresholds]:
    cal = Calibration(
        method="platt",
        species=[SpeciesCalibration(slope=0.5, intercept=-1.0), None],
        n_rows=10,
    )
    th = Thresholds(basis="presence-absence", calibrated=True, max_tss=[0.3, None], prevalence=[0.25, 0.5])
    return cal, th


def test_model_file_round_trip_keeps_calibration_and_thresholds_and_old_files_load(tmp_path):
    spec = _tiny_spec()
    torch.manual_seed(0)
    model = SpeciesNet.from_spec(spec).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(40.0)  # spread the probabilities of a fresh head over (0, 1)
    old = save_model(tmp_path / "old.pt", model, spec)
    assert load_model(old)[1].calibration is None  # a file without the fields (as written before them)
    cal, th = _calibration_and_thresholds()
    path = save_model(tmp_path / "cnn.pt", model, spec.model_copy(update={"calibration": cal, "thresholds": th}))
    _, back = load_model(path)
    assert back.calibration == cal and back.thresholds == th and back.version == "2"
    # applied by the dense map path and the naive reference alike, before encoding
    from geoplantnet.core.grid import Grid, Tile

    grid = Grid(50.0, 4_321_000.0, 2_981_000.0, 8, 8)
    tile = Tile(0, 0, 0, 0, 8, 8, "t")
    geom = tile_geometry(back, tile, grid, None)
    env = np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32)
    raw_model, raw_spec = load_model(old)
    raw = predict_tile(raw_model, raw_spec, geom, None, env, mixed_precision=False).astype(float) / 254
    calibrated = predict_tile(raw_model, back, geom, None, env, mixed_precision=False)
    expected = np.rint(cal.apply(raw, axis=0) * 254)
    assert np.abs(calibrated.astype(float) - expected).max() <= 1  # raw was itself rounded to a code
    np.testing.assert_array_equal(calibrated[1], np.rint(raw[1] * 254))  # species b: no map, passed through
    naive = predict_tile_naive(raw_model, back, geom, None, env)
    assert np.abs(naive.astype(int) - calibrated.astype(int)).max() <= 1


@pytest.mark.parametrize("peer_class", [MaxentPeer, RandomForestPeer])
def test_peer_file_gets_calibration_and_thresholds(tmp_path, peer_class):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 2)).astype(np.float32)
    labels = np.stack([(X[:, 0] > 0.3), (X[:, 1] > 0.0)], axis=1).astype(np.int8)
    peer = peer_class(n_estimators=20, n_jobs=1) if peer_class is RandomForestPeer else peer_class()
    peer.fit(X, labels, np.array(["pa"] * 200))
    path = peer.save(tmp_path / "m.peer", species=["a", "b"], variables=["t", "u"])
    cal, th = _calibration_and_thresholds()
    from geoplantnet.validation.calibration import CalibrationOutcome

    write_into_model_file(path, CalibrationOutcome(cal, th, CALIBRATED, {}))
    again, spec = load_peer(path)
    assert spec.calibration == cal and spec.thresholds == th
    np.testing.assert_allclose(again.predict_proba(X), peer.predict_proba(X))  # the estimators are unchanged
    with pytest.raises(CalibrationError):
        bad = Thresholds(basis="presence-absence", calibrated=False, max_tss=[0.1], prevalence=[0.1])
        write_into_model_file(path, CalibrationOutcome(None, bad, CALIBRATED, {}))


def test_calibration_plot_says_relative_suitability_on_presence_background_data(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"n": [5, 5], "mean_predicted": [0.2, 0.7], "observed_frequency": [0.3, 0.6]})
    labels = {}
    for basis in ("presence-absence", "presence-background"):
        fig = calibration_figure({"m": {"reliability": table, "reliability_basis": basis}})
        assert fig is not None
        ax = fig.axes[0]
        labels[basis] = (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
    assert "presence-absence" in labels["presence-absence"][0]
    assert labels["presence-absence"][1] == "mean predicted probability"
    assert "not a probability of presence" in labels["presence-background"][0]
    assert "suitability" in labels["presence-background"][1] and "background" in labels["presence-background"][2]
    assert plot_calibration({"m": {"reliability": table}}, tmp_path / "c.png")  # older results: presence-absence
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_config_option():
    assert ValidationConfig().calibration == "platt"
    assert ValidationConfig(calibration="isotonic").calibration == "isotonic"
    with pytest.raises(ValueError):
        ValidationConfig(calibration="beta")
