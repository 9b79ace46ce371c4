"""Peer model files (MaxEnt, random forest): round trip, self-description, refusal of damaged or foreign files."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_peers import _synthetic

from geoplantnet.core.errors import InputError
from geoplantnet.models.peers import (
    PEER_FORMAT_VERSION,
    MaxentPeer,
    PeerError,
    PeerFileError,
    RandomForestPeer,
    feature_names,
    is_peer_file,
    load_peer,
    read_peer_spec,
)

pytest.importorskip("elapid")

VARS = ["bio1", "bio12", "slope", "soil", "ndvi_mean"]


@pytest.fixture(scope="module")
def data():
    *_, env, labels, source = _synthetic(4, n=500, n_species=3)
    return env, labels, source


@pytest.fixture(scope="module")
def fitted(data):
    env, labels, source = data
    return {
        "maxent": MaxentPeer().fit(env, labels, source),
        "random_forest": RandomForestPeer(n_estimators=15, seed=3).fit(env, labels, source),
    }


@pytest.mark.parametrize("kind", ["maxent", "random_forest"])
def test_round_trip_gives_identical_predictions(kind, fitted, data, tmp_path):
    env = data[0]
    peer = fitted[kind]
    path = peer.save(
        tmp_path / f"{kind}.peer", species=["a", "b", "c"], species_name=["A a", "B b", "C c"], variables=VARS
    )
    back, spec = load_peer(path)
    assert type(back) is type(peer) and back.client is None
    assert np.array_equal(back.predict_proba(env), peer.predict_proba(env))  # NaN rows included (median fill)
    assert spec.kind == kind and spec.version == PEER_FORMAT_VERSION
    assert spec.species == ["a", "b", "c"] and spec.species_name == ["A a", "B b", "C c"]
    assert spec.features == VARS and spec.variables == VARS and spec.modalities == {"env": (5, 1, 1)}
    assert {"numpy", "scikit-learn", "elapid", "python"} <= set(spec.libraries)
    assert spec.params["seed"] == peer.seed and len(spec.payload_sha256) == 64
    assert read_peer_spec(path) == spec and is_peer_file(path)
    # loadable from bytes (a map job reads any fsspec URL into memory), and no temporary file left behind
    again, _ = load_peer(io.BytesIO(Path(path).read_bytes()), name="s3://bucket/x.peer")
    assert np.array_equal(again.predict_proba(env[:20]), peer.predict_proba(env[:20]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.peer"]


def test_series_feature_names_are_season_major(fitted, tmp_path):
    assert feature_names(["e"], ["B04", "B08"], 2) == ["e", "s2:B04:t0", "s2:B08:t0", "s2:B04:t1", "s2:B08:t1"]
    peer = fitted["random_forest"]
    spec = peer.spec(variables=["e"], bands=["B04", "B08"], seasons=2)
    assert spec.modalities == {"env": (1, 1, 1), "series": (2, 2)} and spec.halo("env") == (0, 0)
    with pytest.raises(PeerError, match=r"fitted on 5 predictors.*give 3"):
        peer.spec(variables=["e"], bands=["B04"], seasons=2)
    with pytest.raises(PeerError, match="3 species"):
        peer.save(tmp_path / "x.peer", species=["a"], variables=VARS)
    with pytest.raises(PeerError, match="before saving"):
        MaxentPeer().save(tmp_path / "y.peer")


def _rewrite(src, dst, header=None, payload=None):
    with zipfile.ZipFile(src) as zf:
        h, p = json.loads(zf.read("peer.json")), zf.read("estimators.joblib")
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("peer.json", json.dumps({**h, **(header or {})}))
        zf.writestr("estimators.joblib", p if payload is None else payload)
    return dst


def test_damaged_and_foreign_files_are_one_line_errors_naming_the_file(fitted, tmp_path, monkeypatch):
    good = fitted["maxent"].save(tmp_path / "good.peer", variables=VARS)
    cases = {
        "missing": (tmp_path / "nope.peer", "no such peer model file"),
        "folder": (tmp_path, "a folder"),
        "text": (tmp_path / "t.peer", "not a geoplantnet.peer file"),
        "truncated": (tmp_path / "cut.peer", "not a geoplantnet.peer file"),
        "cnn": (tmp_path / "cnn.pt", "no peer.json; a CNN model file"),
        "version": (_rewrite(good, tmp_path / "v.peer", {"version": "0"}), "peer file version 0, this code reads"),
        "format": (_rewrite(good, tmp_path / "f.peer", {"format": "other"}), "not a geoplantnet.peer file"),
        "kind": (_rewrite(good, tmp_path / "k.peer", {"kind": "gam"}), "invalid peer.json \\(kind"),
        "payload": (_rewrite(good, tmp_path / "p.peer", payload=b"\x80\x04junk"), "checksum"),
    }
    (tmp_path / "t.peer").write_text("hello")
    raw = Path(good).read_bytes()
    (tmp_path / "cut.peer").write_bytes(raw[: len(raw) // 2])
    with zipfile.ZipFile(tmp_path / "cnn.pt", "w") as zf:  # torch.save writes a zip too
        zf.writestr("archive/data.pkl", b"\x80\x04N.")
    # a payload is never unpickled before the header checks pass
    monkeypatch.setattr("joblib.load", lambda *a, **k: pytest.fail("unpickled a refused file"))
    for name, (path, message) in cases.items():
        with pytest.raises(PeerFileError, match=message) as err:
            load_peer(path)
        assert isinstance(err.value, InputError), name
        text = str(err.value)
        assert "\n" not in text and text.startswith(str(path)), (name, text)
    assert not is_peer_file(tmp_path / "cnn.pt") and not is_peer_file(tmp_path / "t.peer")
    monkeypatch.undo()
    with pytest.raises(PeerFileError, match="a maxent peer file, expected random_forest"):
        load_peer(good, kind="random_forest")
