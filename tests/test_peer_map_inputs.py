"""A peer's spec through the map job's own input code (check_inputs, MapSources.read): the rows its tiles see are the
region's predictors at the map pixels and the composite at the cube pixels holding their centres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoplantnet.core.config import load_config
from geoplantnet.inference.dense import InferenceError
from geoplantnet.inference.points import peer_geometry, pixel_features, predict_tile_points
from geoplantnet.models.peers import RandomForestPeer
from geoplantnet.testing.fixtures import copy_region
from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]


def test_peer_tiles_read_through_map_sources(tmp_path, small_region):
    from geoplantnet.inference.reader import MapSources, check_inputs
    from geoplantnet.jobs.composites import composites
    from geoplantnet.runs.inputs import virtual_inputs
    from geoplantnet.sources import predictors

    work = copy_region(small_region, tmp_path / "work")  # the session's small region
    cfg = load_config(ROOT / "pipelines" / "default.yaml", [*SMALL_REGION, f"workdir={work}"])
    inputs = virtual_inputs(cfg)
    sources = MapSources.from_items(cfg.cube, cfg.grid.epsg, inputs.s2_items, inputs.env_items)
    grid, cube_grid = cfg.grid.grid(), cfg.grid.grid(cfg.cube.resolution)
    env_full = predictors.model_stack(inputs.env_items, grid, chunk=cfg.cube.chunk)
    comp = composites(inputs.s2_items, cfg)
    variables, bands = [str(v) for v in env_full["var"].values], [str(b) for b in comp["band"].values]
    seasons = comp.sizes["time"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, len(variables) + seasons * len(bands)))
    labels = (rng.random((200, 2)) < 0.4).astype("int8")
    peer = RandomForestPeer(n_estimators=5, min_presences=2).fit(X, labels, np.array(["pa"] * 200))
    spec = peer.spec(variables=variables, bands=bands, seasons=seasons)

    # the map job's driver-side checks take a PeerSpec as they take a ModelSpec
    check_inputs(spec, sources, cfg.grid.grid())
    tile = list(grid.tiles(16))[4]
    geom = peer_geometry(spec, tile, grid, cube_grid)
    patch, env = sources.read(spec, geom, grid, cube_grid)
    codes = predict_tile_points(peer, spec, geom, patch, env)
    assert codes.shape == (2, tile.height, tile.width)

    ys, xs = tile.slices
    jj, ii = (a.ravel() for a in np.meshgrid(np.arange(ys.start, ys.stop), np.arange(xs.start, xs.stop), indexing="ij"))
    rows, cols = cube_grid.index(grid.x[ii], grid.y[jj])
    series = np.moveaxis(comp.values[:, :, rows, cols], -1, 0)
    expected = np.concatenate([env_full.values[:, jj, ii].T, series.reshape(len(series), -1)], axis=1)
    got = pixel_features(spec, geom, patch, env)
    assert (np.isnan(got) == np.isnan(expected)).all()
    # a window is resampled on its own grid: float32 noise (~1e-4 relative) against the region-wide stack
    scale = np.nanstd(expected, axis=0) + 1e-6
    assert np.nanmax(np.abs(got - expected) / scale) < 1e-3

    bad = peer.spec(variables=variables[::-1], bands=bands, seasons=seasons)
    with pytest.raises(InferenceError, match="environmental variables"):
        check_inputs(bad, sources, cfg.grid.grid())
