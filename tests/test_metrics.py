"""Metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from geoplantnet.core.config import ValidationConfig
from geoplantnet.validation.metrics import (
    MetricsError,
    auc_per_species,
    cross_validate,
    evaluate,
    expected_calibration_error,
    f1_threshold,
    f1_top_k,
    per_species,
    reliability_table,
    top_k_mask,
    truth_correlation,
    tss_max_per_species,
    tss_per_species,
)


def _random_case(seed: int = 0, n: int = 300, s: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.random((n, s))
    labels = (rng.random((n, s)) < probs).astype("int8")
    labels[rng.random((n, s)) < 0.2] = -1
    return labels, probs


def test_auc_matches_sklearn_and_ignores_unknowns() -> None:
    labels, probs = _random_case()
    labels[:, 5] = np.where(labels[:, 5] == -1, -1, 1)  # one class only -> NaN
    auc = auc_per_species(labels, probs)
    for s in range(5):
        known = labels[:, s] >= 0
        assert auc[s] == pytest.approx(roc_auc_score(labels[known, s], probs[known, s]))
    assert np.isnan(auc[5])


def test_tss_toy_case() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, -1])
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.05, 0.99])
    # Threshold 0.5: sensitivity 2/3, specificity 3/4 -> 5/12.
    assert tss_per_species(y, p, 0.5)[0] == pytest.approx(2 / 3 + 3 / 4 - 1)
    # Best threshold 0.3: sensitivity 1, specificity 3/4 -> 0.75.
    assert tss_max_per_species(y, p)[0] == pytest.approx(0.75)


def test_f1_top_k_hand_computed() -> None:
    labels = np.array([[1, 1, 0, 0], [0, 0, 0, 1]])
    probs = np.array([[0.9, 0.1, 0.8, 0.0], [0.1, 0.2, 0.3, 0.4]])
    # top-2: row 0 predicts {0, 2} (tp 1, |T| 2, |P| 2 -> F1 1/2); row 1 predicts {3, 2} (tp 1, 1, 2 -> 2/3).
    micro, samples = f1_top_k(labels, probs, 2)
    assert micro == pytest.approx(2 * 2 / (3 + 4))
    assert samples == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert top_k_mask(probs, 2).sum(axis=1).tolist() == [2, 2]


def test_f1_matches_sklearn() -> None:
    labels, probs = _random_case(1)
    labels = np.where(labels < 0, 0, labels)
    pred = probs >= 0.5
    micro, samples = f1_threshold(labels, probs, 0.5)
    assert micro == pytest.approx(f1_score(labels, pred, average="micro"))
    assert samples == pytest.approx(f1_score(labels, pred, average="samples", zero_division=1.0))
    micro_k, samples_k = f1_top_k(labels, probs, 3)
    top = top_k_mask(probs, 3)
    assert micro_k == pytest.approx(f1_score(labels, top, average="micro"))
    assert samples_k == pytest.approx(f1_score(labels, top, average="samples", zero_division=1.0))


def test_calibration_perfect_and_biased() -> None:
    rng = np.random.default_rng(2)
    p = rng.random((20_000, 1))
    y = (rng.random(p.shape) < p).astype("int8")
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, p**3) > 0.15
    table = reliability_table(y, p, n_bins=5)
    assert table["n"].sum() == 20_000 and len(table) == 5
    assert np.allclose(table["observed_frequency"], table["mean_predicted"], atol=0.03)


def test_truth_correlation() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random((500, 4))
    out = truth_correlation(truth**2, truth)
    assert out["spearman"] == pytest.approx(1.0)
    assert 0.9 < out["pearson"] < 1.0 and 0.9 < out["pearson_species_mean"] < 1.0
    with pytest.raises(MetricsError, match="same shape"):
        truth_correlation(truth, truth[:, :2])


def test_evaluate_and_per_species() -> None:
    labels, probs = _random_case(4)
    source = np.array(["pa", "po", "bg"] * 100)
    labels[source == "pa"] = np.where(labels[source == "pa"] < 0, 0, labels[source == "pa"])
    cfg = ValidationConfig(top_k=2, threshold=0.5)
    out = evaluate(labels, probs, source, cfg, true_probs=probs)
    assert 0.6 < out["auc"] < 1.0 and 0.6 < out["auc_pa"] < 1.0
    assert out["f1_micro_topk"] == pytest.approx(f1_top_k(labels[source == "pa"], probs[source == "pa"], 2)[0])
    assert out["pearson"] == pytest.approx(1.0)
    no_pa = evaluate(labels, probs, np.array(["po"] * 300), cfg)
    assert np.isnan(no_pa["f1_micro_topk"]) and np.isnan(no_pa["ece"])
    table = per_species(labels, probs, species=list("abcdef"), threshold=0.5, true_probs=probs)
    assert list(table["species"]) == list("abcdef") and np.allclose(table["pearson"], 1.0)
    assert table["auc"].to_numpy() == pytest.approx(auc_per_species(labels, probs))


def test_cross_validate_structure() -> None:
    labels, probs = _random_case(5)

    class Oracle:  # predicts the stored probabilities back: a real model without training
        def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> Oracle:
            return self

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            return probs[X[:, 0].astype(int)]

    X = np.arange(len(labels), dtype=float)[:, None]
    res = cross_validate(Oracle, X, labels, np.array(["pa"] * len(labels)), np.arange(len(labels)) % 3)
    assert len(res["folds"]) == 3 and set(res["per_species"]["fold"]) == {0, 1, 2}
    assert np.allclose(res["oof"], probs)


def test_bad_input_errors() -> None:
    with pytest.raises(MetricsError, match="same"):
        auc_per_species(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(MetricsError, match="-1/0/1"):
        auc_per_species(np.full((3, 2), 2), np.zeros((3, 2)))
    with pytest.raises(MetricsError, match="one entry per sample"):
        evaluate(np.zeros((3, 2)), np.zeros((3, 2)), np.array(["pa"]))


def test_per_species_flags_small_and_constant_cases() -> None:
    # a: 2 presences, 8 absences (few cases); b: no presence (not informative); c: 6 presences but 2 absences (few
    # cases); d: 5 and 5, but a constant prediction (AUC 0.5 by construction).
    labels = np.array(
        [
            [1, 0, 1, 1],
            [1, 0, 1, 0],
            [0, 0, 1, 1],
            [0, 0, 1, 0],
            [0, 0, 1, 1],
            [0, 0, 1, 0],
            [0, 0, 0, 1],
            [0, 0, 0, 0],
            [0, -1, -1, 1],
            [0, -1, -1, 0],
        ]
    )
    probs = np.linspace(0.05, 0.95, labels.size).reshape(labels.shape)
    probs[:, 3] = 0.2
    table = per_species(labels, probs, list("abcd"), train_presences=np.array([9, 0, 7, 3]), min_cases=5)
    assert table["informative"].tolist() == [True, False, True, True]
    assert table["few_cases"].tolist() == [True, False, True, False]
    assert table["constant"].tolist() == [False, False, False, True]
    assert table["few_train"].tolist() == [False, True, False, True]
    assert np.isnan(table.loc[1, "auc"]) and table.loc[3, "auc"] == 0.5


def test_cross_validate_counts_informative_species_per_fold() -> None:
    labels = np.zeros((12, 1), dtype="int8")
    labels[[0, 1, 4], 0] = 1  # 3 presences: folds 0 and 1 hold them, fold 2 has none
    folds = np.arange(12) % 3

    class Prevalence:  # what a peer does with too few presences: predicts its training prevalence everywhere
        def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> Prevalence:
            self.p = float((labels == 1).mean())
            return self

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            return np.full((len(X), 1), self.p)

    res = cross_validate(Prevalence, np.zeros((12, 1)), labels, np.array(["po"] * 12), folds)
    assert [f["n_test_presences"] for f in res["folds"]] == [1.0, 2.0, 0.0]
    assert [f["n_species_informative"] for f in res["folds"]] == [1.0, 1.0, 0.0]
    assert [f["n_species_constant"] for f in res["folds"]] == [1.0, 1.0, 0.0]
    assert [f["n_species_few_train"] for f in res["folds"]] == [1.0, 1.0, 0.0]
    assert np.isnan(res["folds"][2]["auc"]) and res["folds"][0]["auc"] == 0.5
    assert res["per_species"]["n_train_presence"].tolist() == [2, 1, 3]


def test_target_group_auc_scores_records_against_other_species_records_only() -> None:
    """``auc_tg``: a species' record sites against the other species' record sites; background points, which a
    model that learns where people record ranks low, do not enter it."""
    # rows: 3 records of species 0, 3 of species 1, then 4 background points (labels 0 for both)
    labels = np.array([[1, -1]] * 3 + [[-1, 1]] * 3 + [[0, 0]] * 4)
    source = np.array(["po"] * 6 + ["bg"] * 4)
    # the model ranks every record above every background point (observer bias), and does not tell the species apart
    biased = np.array([[0.9, 0.9]] * 6 + [[0.1, 0.1]] * 4)
    out = evaluate(labels, biased, source)
    assert out["auc"] == pytest.approx(1.0)  # against background: perfect
    assert out["auc_tg"] == pytest.approx(0.5)  # against the target group: no skill
    # a model that separates the species' records scores 1 against the target group
    niche = np.array([[0.8, 0.2]] * 3 + [[0.3, 0.7]] * 3 + [[0.5, 0.5]] * 4)
    assert evaluate(labels, niche, source)["auc_tg"] == pytest.approx(1.0)
    # without presence-only rows there is no target group
    assert np.isnan(evaluate(labels[6:], biased[6:], source[6:])["auc_tg"])


def test_a_model_with_fit_many_fits_every_fold_in_one_call_with_the_same_results() -> None:
    """The species network's way (CnnPeer.fit_many: all folds trained side by side on the cluster) scores exactly
    what fitting fold by fold scores."""
    labels, probs = _random_case(5)
    source = np.array(["pa", "po", "bg"] * (len(labels) // 3))
    folds = np.arange(len(labels)) % 4

    class Mean:  # each species' mean training label plus a ranking from the stored probabilities
        def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> Mean:
            self.bias = (labels == 1).mean(axis=0)
            return self

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            return (probs[X[:, 0].astype(int)] + self.bias) / 2

    class Together:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def __call__(self) -> Mean:
            raise AssertionError("fit_many is there: no model is made fold by fold")

        def fit_many(self, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[Mean]:
            self.calls.append(len(parts))
            return [Mean().fit(*part) for part in parts]

    X = np.arange(len(labels), dtype=float)[:, None]
    maker = Together()
    together = cross_validate(maker, X, labels, source, folds)
    apart = cross_validate(Mean, X, labels, source, folds)
    assert maker.calls == [4]
    pd.testing.assert_frame_equal(pd.DataFrame(together["folds"]), pd.DataFrame(apart["folds"]))
    pd.testing.assert_frame_equal(together["per_species"], apart["per_species"])
    assert np.array_equal(together["oof"], apart["oof"], equal_nan=True)
