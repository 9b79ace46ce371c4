"""Peers (MaxEnt, random forest) on a synthetic region whose species depend on two predictors."""

from __future__ import annotations

import numpy as np
import pytest

from geoplantnet.core.config import ClusterConfig
from geoplantnet.models.peers import MaxentPeer, Peer, PeerError, RandomForestPeer, training_rows
from geoplantnet.runtime.cluster import connect
from geoplantnet.validation.blocks import spatial_blocks
from geoplantnet.validation.metrics import cross_validate

pytest.importorskip("elapid")


def _synthetic(seed: int = 0, n: int = 1500, n_species: int = 4):
    """PA surveys, PO records and background on a 300 km square; species respond to predictors 0 and 1 only."""
    rng = np.random.default_rng(seed)
    x = 4_000_000 + rng.uniform(0, 300_000, n)
    y = 2_800_000 + rng.uniform(0, 300_000, n)
    u, v = (x - x.mean()) / 1e5, (y - y.mean()) / 1e5
    env = np.column_stack([np.sin(u) + 0.3 * rng.normal(size=n), v + 0.3 * rng.normal(size=n), rng.normal(size=(n, 3))])
    optima = rng.uniform(-1, 1, size=(n_species, 2))
    logit = 2 - 3 * ((env[:, None, 0] - optima[:, 0]) ** 2 + (env[:, None, 1] - optima[:, 1]) ** 2)
    p = 1 / (1 + np.exp(-logit))
    occ = (rng.random(p.shape) < p).astype("int8")
    source = rng.choice(["pa", "po", "bg"], size=n, p=[0.4, 0.3, 0.3])
    labels = occ.copy()
    labels[source == "bg"] = 0
    po = np.flatnonzero(source == "po")
    labels[po] = -1
    for i in po:  # a presence-only record names one species present at the point
        present = np.flatnonzero(occ[i])
        if len(present):
            labels[i, rng.choice(present)] = 1
    env[rng.random(env.shape) < 0.01] = np.nan  # a few gaps, as on real rasters
    return x, y, env.astype("float32"), labels, source


@pytest.mark.parametrize("make", [lambda: MaxentPeer(n_jobs=2), lambda: RandomForestPeer(n_estimators=60)])
def test_peers_beat_chance_on_spatial_folds(make) -> None:
    x, y, env, labels, source = _synthetic()
    assert isinstance(make(), Peer)
    folds = spatial_blocks(x, y, 50_000.0, 4, seed=0)
    res = cross_validate(make, env, labels, source, folds)
    aucs = np.array([f["auc"] for f in res["folds"]])
    assert np.nanmean(aucs) > 0.75, aucs
    assert res["oof"].shape == labels.shape and np.isfinite(res["oof"]).all()


def test_rare_species_are_flagged_and_get_their_prevalence() -> None:
    *_, env, labels, source = _synthetic(1)
    labels[:, 3] = np.where(labels[:, 3] == 1, 0, labels[:, 3])
    labels[:3, 3] = 1  # three presences: below min_presences=5
    peer = MaxentPeer().fit(env, labels, source)
    assert peer.skipped_ == [3]
    _, target = training_rows(labels, source, 3)
    probs = peer.predict_proba(env[:10])
    assert np.allclose(probs[:, 3], target.mean())
    assert probs.shape == (10, 4) and probs.dtype == np.float32


def test_training_rows_use_background_and_known_absences() -> None:
    labels = np.array([[1], [0], [-1], [0], [-1]], dtype="int8")
    source = np.array(["po", "pa", "po", "bg", "bg"])
    idx, y = training_rows(labels, source, 0)
    assert idx.tolist() == [0, 1, 3, 4] and y.tolist() == [1, 0, 0, 0]


def test_fit_through_a_dask_client_matches_local_fit() -> None:
    *_, env, labels, source = _synthetic(2, n=600, n_species=2)
    local = RandomForestPeer(n_estimators=20).fit(env, labels, source).predict_proba(env)
    with connect(ClusterConfig(n_workers=1, memory_limit="1GiB")) as client:
        remote = RandomForestPeer(n_estimators=20, client=client).fit(env, labels, source)
    assert remote.client is client
    assert np.allclose(remote.predict_proba(env), local)


def test_bad_inputs() -> None:
    _, _, env, labels, source = _synthetic(3, n=200)
    with pytest.raises(PeerError, match="disagree on samples"):
        MaxentPeer().fit(env[:-1], labels, source)
    with pytest.raises(PeerError, match="fit\\(\\) before"):
        MaxentPeer().predict_proba(env)
    peer = RandomForestPeer(n_estimators=5).fit(env, labels, source)
    with pytest.raises(PeerError, match="fitted on 5"):
        peer.predict_proba(env[:, :3])
