"""The tuned MaxEnt peer: feature classes x beta chosen per species on spatial folds by dask-ml's grid search on a real
Dask cluster, the simplest of tied settings, the choices in the peer file, and the nested tuning of the CV wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client

from geoplantnet.core.config import ValidationConfig
from geoplantnet.models.maxent_tuning import choose, feature_types, usable_splits
from geoplantnet.models.peers import PeerError, TunedMaxentPeer, load_peer
from geoplantnet.validation.species import BlockTunedPeer

pytest.importorskip("elapid")
pytest.importorskip("dask_ml")


def _table(n: int = 2400, seed: int = 0):
    """Two species on 2 predictors and coordinates on a 100 x 100 square: species 0 peaks in the middle of
    predictor 0 (a quadratic response: LQ beats L), species 1 rises linearly with predictor 1."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, 2))
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    pres0 = rng.random(n) < 0.2 * np.exp(-3 * X[:, 0] ** 2)
    pres1 = rng.random(n) < 0.04 * (X[:, 1] + 2)
    labels = np.full((n, 2), -1, "int8")
    labels[pres0, 0] = 1
    labels[pres1, 1] = 1
    source = np.where(pres0 | pres1, "po", "bg")
    labels[source == "bg"] = 0
    return X, x, y, labels, source


@pytest.fixture(scope="module")
def client(dask_address):
    with Client(dask_address) as c:
        yield c


def test_choice_rule_prefers_the_simplest_of_tied_settings():
    settings = [("L", 1.0), ("L", 4.0), ("LQ", 1.0), ("LQH", 2.0)]
    assert choose([0.70, 0.70, 0.80, 0.8005], settings, ["L", "LQ", "LQH"]) == 2  # LQH within the tie: LQ
    assert choose([0.70, 0.7004, 0.60, 0.60], settings, ["L", "LQ", "LQH"]) == 1  # L tied: the higher beta
    assert choose([np.nan, 0.5, np.nan, np.nan], settings, ["L", "LQ", "LQH"]) == 1
    assert feature_types("LQH") == ["linear", "quadratic", "hinge"]
    with pytest.raises(ValueError, match="feature classes"):
        feature_types("LX")


def test_folds_without_presences_are_not_used():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert [t.tolist() for _, t in usable_splits(y, groups)] == [[0, 1], [2, 3]]


def test_quadratic_response_gets_quadratic_features_and_the_file_keeps_the_choices(client, tmp_path):
    X, x, _, labels, source = _table()
    groups = (x // 25).astype(int) % 4  # vertical strips of 25: four spatial folds
    peer = TunedMaxentPeer(client=client, feature_classes=["L", "LQ"], betas=[1.0, 4.0]).fit(X, labels, source, groups)
    assert peer.tuning_[0]["features"] == "LQ" and peer.tuning_[0]["folds"] == 4
    assert peer.tuning_[1]["features"] == "L"  # a linear response: LQ adds nothing, the tie goes to L
    assert peer.tuning_[0]["auc"] > 0.75
    path = peer.save(tmp_path / "tuned.peer", species=["quad", "lin"], variables=["a", "b"])
    back, spec = load_peer(path, kind="maxent_tuned")
    assert spec.tuning == peer.tuning_ and spec.params["feature_classes"] == ["L", "LQ"]
    assert back.tuning_ == peer.tuning_ and np.array_equal(back.predict_proba(X), peer.predict_proba(X))
    with pytest.raises(PeerError, match="spatial fold id per row"):
        TunedMaxentPeer().fit(X, labels, source)


def test_nested_tuning_sees_only_the_training_rows(client):
    X, x, y, labels, source = _table(1200, seed=1)
    seen: list[np.ndarray] = []

    class Recording(TunedMaxentPeer):
        def fit(self, X, labels, source, groups=None):
            seen.append(X)
            return super().fit(X, labels, source, groups)

    wrapper = BlockTunedPeer(
        lambda: Recording(client=client, feature_classes=["L"], betas=[1.0]),
        X,
        x,
        y,
        25.0,
        ValidationConfig(folds=3),
    )
    train = np.flatnonzero(x < 60)
    wrapper.fit(train[:, None], labels[train], source[train])
    assert len(seen) == 1 and np.array_equal(seen[0], X[train])  # the outer test rows (x >= 60) never seen
    assert {c["folds"] for c in wrapper.peer.tuning_} <= {2, 3}
    assert wrapper.predict_proba(np.arange(5)[:, None]).shape == (5, 2)
