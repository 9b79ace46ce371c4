"""Point-value models (the MaxEnt and random-forest peers) on one map tile, from the same raw windows a CNN tile reads.

A peer was fitted on rows of :func:`geoplantnet.models.peers.point_features` at the training points: the environmental
values at the point's map pixel (``env_point``: the centre of the extraction's environmental patch) and the
Sentinel-2 composite at the cube pixel holding the point (``series``: the centre of its Sentinel-2 patch). A map
pixel gets the same row for its centre: the environmental window on the map grid (no halo: a
:class:`~geoplantnet.models.peers.PeerSpec` asks for none), and the cube pixels holding the map centres
(:func:`geoplantnet.inference.dense.tile_geometry` finds them exactly as for the CNN). Pixels without data are
no data exactly where the CNN's are (every environmental variable finite; for a Sentinel-2-only peer any finite value
in the series), so the two maps can be compared pixel for pixel.

A ``PeerSpec`` answers what :func:`tile_geometry` asks of a model spec, so a tile of a peer is::

    geom = tile_geometry(spec, tile, map_grid, cube_grid)      # windows = the tile (env) / the centres (cube)
    patch, env = sources.read(spec, geom, map_grid, cube_grid)  # inference.reader.MapSources, unchanged
    codes = predict_tile_points(peer, spec, geom, patch, env)
"""

from __future__ import annotations

import numpy as np

from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import InferenceError, TileGeometry, _valid, encode, tile_geometry
from geoplantnet.models.peers import Peer, PeerSpec, peer_probabilities, point_features

__all__ = ["peer_geometry", "pixel_features", "predict_tile_points"]


def peer_geometry(spec: PeerSpec, tile: Tile, map_grid: Grid, cube_grid: Grid | None) -> TileGeometry:
    """The read windows of ``tile`` for a peer: the tile itself on the map grid, and on the cube grid the pixels
    holding the map pixels' centres (same as :func:`tile_geometry`, which this calls)."""
    return tile_geometry(spec, tile, map_grid, cube_grid)  # type: ignore[arg-type]


def _check(spec: PeerSpec, geom: TileGeometry, patch: np.ndarray | None, env: np.ndarray | None) -> None:
    tile = geom.tile
    if spec.variables:
        if env is None or env.ndim != 3:
            raise InferenceError(f"the {spec.kind} model needs an environmental window (var, y, x)")
        if env.shape[0] != len(spec.variables):
            raise InferenceError(
                f"{env.shape[0]} environmental variables, the {spec.kind} model was fitted on {len(spec.variables)}"
            )
        if geom.env_window is None or env.shape[1:] != (tile.height, tile.width):
            raise InferenceError(
                f"environmental window is {env.shape[1:]}, a {spec.kind} tile needs {(tile.height, tile.width)} "
                "(use peer_geometry: point models take no halo)"
            )
    if "series" in spec.modalities:
        if patch is None or patch.ndim != 4 or geom.cube_window is None:
            raise InferenceError(f"the {spec.kind} model needs a Sentinel-2 window (season, band, y, x)")
        r0, r1, c0, c1 = geom.cube_window
        if patch.shape[-2:] != (r1 - r0, c1 - c0):
            raise InferenceError(f"Sentinel-2 window is {patch.shape[-2:]}, the tile needs {(r1 - r0, c1 - c0)}")
        if patch.shape[:2] != (spec.seasons, len(spec.bands or ())):
            raise InferenceError(
                f"Sentinel-2 inputs give {patch.shape[0]} seasons x {patch.shape[1]} bands, the {spec.kind} model "
                f"was fitted on {spec.seasons} x {len(spec.bands or ())}"
            )


def pixel_features(
    spec: PeerSpec, geom: TileGeometry, patch: np.ndarray | None, env: np.ndarray | None, rows: slice = slice(None)
) -> np.ndarray:
    """Feature rows ``(pixels, features)`` of the tile's map rows ``rows`` (row-major), as training built them."""
    env_point = series = None
    if spec.variables:
        block = env[:, rows]  # type: ignore[index]
        env_point = np.moveaxis(block, 0, -1).reshape(-1, block.shape[0])  # (h*w, var)
    if "series" in spec.modalities:
        r0, c0 = geom.cube_window[0], geom.cube_window[2]  # type: ignore[index]
        cr, cc = geom.centre_rows[rows] - r0, geom.centre_cols - c0
        centre = patch[:, :, cr[:, None], cc[None, :]]  # type: ignore[index]  # (season, band, h, w)
        series = np.moveaxis(centre, (0, 1), (2, 3)).reshape(-1, *centre.shape[:2])  # (h*w, season, band)
    return point_features(env_point, series)


def predict_tile_points(
    peer: Peer,
    spec: PeerSpec,
    geom: TileGeometry,
    patch: np.ndarray | None,
    env: np.ndarray | None,
    *,
    batch_rows: int = 16_384,
) -> np.ndarray:
    """uint8 codes (species, height, width) of a point-value model (a loaded peer file) for ``geom.tile``.

    ``patch``: the Sentinel-2 composite (season, band, y, x) over ``geom.cube_window``; ``env``: the environmental
    window (var, y, x) over ``geom.env_window`` (the tile); NaN marks missing input. The peer (through its file's
    calibration: :func:`~geoplantnet.models.peers.peer_probabilities`) runs on at most ``batch_rows`` pixels at a
    time (bounded memory) and only on pixels with data; the others are ``NODATA``.
    """
    _check(spec, geom, patch, env)
    tile = geom.tile
    valid = _valid(spec, geom, patch, env)  # type: ignore[arg-type]
    prob = np.zeros((len(spec.species), tile.height, tile.width), np.float32)
    step = max(1, batch_rows // max(1, tile.width))  # whole map rows per batch
    for a in range(0, tile.height, step):
        b = min(tile.height, a + step)
        ok = valid[a:b].reshape(-1)
        if not ok.any():
            continue
        X = pixel_features(spec, geom, patch, env, slice(a, b))[ok]
        p = peer_probabilities(peer, spec, X)
        block = prob[:, a:b].reshape(len(spec.species), -1)
        block[:, ok] = p.T
        prob[:, a:b] = block.reshape(len(spec.species), b - a, tile.width)
    return encode(prob, valid)
