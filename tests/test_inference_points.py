"""Point-value peers (MaxEnt, random forest) on map tiles: each pixel gets exactly the row training built at a point."""

from __future__ import annotations

import numpy as np
import pytest

from geoplantnet.core.encoding import NODATA, SCALE
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import InferenceError
from geoplantnet.inference.points import peer_geometry, predict_tile_points
from geoplantnet.models.peers import MaxentPeer, RandomForestPeer, load_peer, point_features
from geoplantnet.samples.extraction import _cut

SEASONS, BANDS, SPECIES = 3, 2, 3
VARS = ["t", "p", "h", "s"]
BAND_NAMES = ["B04", "B08"]
MAP = Grid(50.0, 4_321_000.0, 2_981_000.0, 40, 30)
CUBE = Grid(20.0, 4_321_000.0, 2_981_000.0, 100, 75)
P, E = 8, 3  # the extraction's patch sizes: the point values are their centres


def _fields(seed: int = 0):
    rng = np.random.default_rng(seed)
    trend = np.linspace(-2, 2, CUBE.width, dtype="float32")
    composite = (rng.normal(size=(SEASONS, BANDS, CUBE.height, CUBE.width)) + trend).astype("float32")
    composite[rng.random(composite.shape) < 0.05] = np.nan
    env = (rng.normal(size=(len(VARS), MAP.height, MAP.width)) + np.linspace(2, -2, MAP.height)[:, None]).astype(
        "float32"
    )
    env[rng.integers(0, len(VARS), 40), rng.integers(0, MAP.height, 40), rng.integers(0, MAP.width, 40)] = np.nan
    env[:, 13, :] = np.nan  # a whole map row outside the study area
    composite[..., 33, :] = np.nan  # and no imagery under it (map row 13's centres lie in cube row 33)
    return composite, env


def _fit(make, n_features: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, n_features)).astype("float32")
    logit = X[:, :SPECIES] * 2 - 0.5
    labels = (rng.random(logit.shape) < 1 / (1 + np.exp(-logit))).astype("int8")
    source = rng.choice(["pa", "bg"], size=len(X))
    labels[source == "bg"] = 0
    return make().fit(X, labels, source)


INPUTS = {
    "env+series": dict(variables=VARS, bands=BAND_NAMES, seasons=SEASONS),
    "env": dict(variables=VARS),
    "series": dict(variables=None, bands=BAND_NAMES, seasons=SEASONS),
}


@pytest.mark.parametrize("inputs", list(INPUTS))
@pytest.mark.parametrize(
    "make",
    [lambda: RandomForestPeer(n_estimators=10, min_presences=3), lambda: MaxentPeer(min_presences=3)],
    ids=["random_forest", "maxent"],
)
def test_tile_equals_predict_proba_on_the_rows_training_extracts(make, inputs, tmp_path):
    kw = INPUTS[inputs]
    n_features = len(kw["variables"] or ()) + (SEASONS * BANDS if kw.get("bands") else 0)
    fitted = _fit(make, n_features)
    # through a file, as the map job gets it
    path = fitted.save(tmp_path / "m.peer", species=["a", "b", "c"], **kw)
    peer, spec = load_peer(path)
    composite, env_full = _fields()
    tile = Tile(0, 1, 5, 12, 17, 21, "t")
    geom = peer_geometry(spec, tile, MAP, CUBE)
    assert geom.env_window == ((5, 22, 12, 33) if kw["variables"] else None)  # the tile itself: no halo
    patch = env = None
    if geom.cube_window is not None:
        r0, r1, c0, c1 = geom.cube_window
        patch = composite[..., r0:r1, c0:c1]
    if geom.env_window is not None:
        env = env_full[:, tile.y0 : tile.y0 + tile.height, tile.x0 : tile.x0 + tile.width]
    codes = predict_tile_points(peer, spec, geom, patch, env, batch_rows=50)  # several row batches
    assert codes.shape == (SPECIES, tile.height, tile.width) and codes.dtype == np.uint8

    # training: the point's map pixel -> its environmental patch centre; the cube pixel holding it -> patch centre
    jj, ii = np.meshgrid(np.arange(tile.height), np.arange(tile.width), indexing="ij")
    jj, ii = jj.ravel() + tile.y0, ii.ravel() + tile.x0
    rows, cols = CUBE.index(MAP.x[ii], MAP.y[jj])
    env_point = _cut([[env_full]], jj, ii, E)[..., E // 2, E // 2] if kw["variables"] else None
    series = _cut([[composite]], rows, cols, P)[..., P // 2, P // 2] if kw.get("bands") else None
    X = point_features(env_point, series)
    expected = np.rint(fitted.predict_proba(X) * SCALE).astype(np.uint8).T.reshape(codes.shape)
    valid = np.isfinite(env_point).all(axis=1) if env_point is not None else np.isfinite(series).any(axis=(1, 2))
    valid = valid.reshape(tile.height, tile.width)
    assert (~valid).sum() >= tile.width  # the no-data row at least
    assert (codes[:, ~valid] == NODATA).all()
    assert np.array_equal(codes[:, valid], expected[:, valid])  # exact codes
    assert len(np.unique(codes[:, valid])) > 10


def test_windows_that_do_not_fit_are_refused():
    fitted = _fit(lambda: RandomForestPeer(n_estimators=5, min_presences=3), len(VARS) + SEASONS * BANDS)
    spec = fitted.spec(variables=VARS, bands=BAND_NAMES, seasons=SEASONS)
    composite, env_full = _fields()
    tile = Tile(0, 0, 0, 0, 10, 10, "t")
    geom = peer_geometry(spec, tile, MAP, CUBE)
    r0, r1, c0, c1 = geom.cube_window
    patch, env = composite[..., r0:r1, c0:c1], env_full[:, :10, :10]
    assert predict_tile_points(fitted, spec, geom, patch, env).shape == (SPECIES, 10, 10)
    with pytest.raises(InferenceError, match="3 environmental variables, the random_forest model was fitted on 4"):
        predict_tile_points(fitted, spec, geom, patch, env[:-1])
    with pytest.raises(InferenceError, match="no halo"):
        predict_tile_points(fitted, spec, geom, patch, env_full[:, :12, :12])  # a CNN's window
    with pytest.raises(InferenceError, match="2 seasons x 2 bands"):
        predict_tile_points(fitted, spec, geom, patch[:2], env)
    with pytest.raises(InferenceError, match="Sentinel-2 window"):
        predict_tile_points(fitted, spec, geom, None, env)
