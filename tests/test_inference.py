"""Dense tile inference against the per-pixel reference and against how training cuts samples."""

import numpy as np
import pytest
import torch

from geoplantnet.core.config import ModelConfig
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import (
    NODATA,
    InferenceError,
    decode,
    encode,
    predict_tile,
    predict_tile_naive,
    rows_per_strip,
    tile_geometry,
)
from geoplantnet.models.species_net import ModelSpec, SpeciesNet
from geoplantnet.samples.extraction import _cut
from geoplantnet.samples.training_set import NormStats

SEASONS, BANDS, VARS, SPECIES = 3, 4, 5, 7


def _spec(patch: int = 8, env: int = 3, modalities: tuple[str, ...] = ("patch", "series", "env")) -> ModelSpec:
    rng = np.random.default_rng(0)
    shapes = {
        "patch": (SEASONS * BANDS + SEASONS, patch, patch),
        "series": (BANDS + 1, SEASONS),
        "env": (VARS + 1, env, env),
    }
    norm = NormStats(
        patch_mean=rng.normal(size=BANDS).tolist(),
        patch_std=rng.uniform(0.5, 2, BANDS).tolist(),
        series_mean=rng.normal(size=BANDS).tolist(),
        series_std=rng.uniform(0.5, 2, BANDS).tolist(),
        env_mean=rng.normal(size=VARS).tolist(),
        env_std=rng.uniform(0.5, 2, VARS).tolist(),
    )
    cfg = ModelConfig(
        patch_size=patch, env_patch_size=env, width=8, depth=2, series_hidden=8, env_hidden=8, fusion_hidden=16
    )
    return ModelSpec(
        model=cfg, modalities={m: shapes[m] for m in modalities}, species=[f"sp{i}" for i in range(SPECIES)], norm=norm
    )


def _model(spec: ModelSpec) -> SpeciesNet:
    torch.manual_seed(1)
    model = SpeciesNet.from_spec(spec)
    for module in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model.head[-1].weight.mul_(40.0)  # a freshly built head gives p ~ 0.5 everywhere; spread it over (0, 1)
    return model.eval()


MAP = Grid(50.0, 4_321_000.0, 2_981_000.0, 40, 30)
CUBE = Grid(20.0, 4_321_000.0, 2_981_000.0, 100, 75)


def _windows(spec, geom, seed=0, nan_frac=0.05):
    rng = np.random.default_rng(seed)
    patch = env = None
    if geom.cube_window is not None:
        r0, r1, c0, c1 = geom.cube_window
        # noise on a west-east trend: pooled features must still vary across the tile
        trend = np.linspace(-3, 3, c1 - c0, dtype="float32")
        patch = (rng.normal(size=(SEASONS, BANDS, r1 - r0, c1 - c0)) + trend).astype("float32")
        patch[rng.random(patch.shape) < nan_frac] = np.nan
    if geom.env_window is not None:
        r0, r1, c0, c1 = geom.env_window
        env = (rng.normal(size=(VARS, r1 - r0, c1 - c0)) + np.linspace(3, -3, r1 - r0)[:, None]).astype("float32")
        env[:, rng.random(env.shape[1:]) < nan_frac] = np.nan
    return patch, env


@pytest.mark.parametrize("cube", [CUBE, MAP], ids=["20m-cube-under-50m-map", "same-grid"])
@pytest.mark.parametrize("modalities", [("patch", "series", "env"), ("patch",), ("series", "env"), ("env",)])
def test_dense_equals_per_pixel_reference(cube, modalities):
    spec = _spec(modalities=modalities)
    model = _model(spec)
    tile = Tile(0, 1, 5, 12, 17, 21, "t")
    geom = tile_geometry(spec, tile, MAP, cube)
    patch, env = _windows(spec, geom)
    dense = predict_tile(model, spec, geom, patch, env)
    naive = predict_tile_naive(model, spec, geom, patch, env)
    assert dense.shape == naive.shape == (SPECIES, 17, 21)
    diff = np.abs(dense.astype(int) - naive.astype(int))
    assert diff.max() <= 1  # float summation order only
    assert (diff == 0).mean() > 0.98
    assert ((dense == NODATA) == (naive == NODATA)).all()
    assert len(np.unique(dense)) > 20  # a real spread of probabilities, not a constant


def test_strips_sized_to_memory_give_the_same_tile():
    spec = _spec()
    model = _model(spec)
    tile = Tile(0, 0, 0, 0, 30, 40, "t")
    geom = tile_geometry(spec, tile, MAP, CUBE)
    patch, env = _windows(spec, geom, seed=3)
    assert rows_per_strip(spec, geom, 40_000) < 5
    one = predict_tile(model, spec, geom, patch, env)
    strips = predict_tile(model, spec, geom, patch, env, budget_bytes=40_000)
    assert np.abs(one.astype(int) - strips.astype(int)).max() <= 1


def _reader(grid: Grid, full: np.ndarray):
    """A reader of ``full`` (..., y, x) on ``grid`` for :meth:`TileGeometry.read_window`, refusing to read past it."""

    def read(window: Grid) -> np.ndarray:
        r = round((grid.top - window.top) / grid.resolution)
        c = round((window.left - grid.left) / grid.resolution)
        assert window.resolution == grid.resolution and r >= 0 and c >= 0, "read before the grid"
        assert r + window.height <= grid.height and c + window.width <= grid.width, "read past the grid"
        return full[..., r : r + window.height, c : c + window.width]

    return read


@pytest.mark.parametrize("where", ["corner", "interior", "clipped-edge"])
def test_tile_windows_are_read_on_the_grid_and_nan_beyond(where):
    """A tile's halo past the grid's edge is NaN, whatever the sources hold there: training cuts NaN there too."""
    spec = _spec(patch=8, env=5)
    tile = {
        "corner": Tile(0, 0, 0, 0, 16, 16, "c"),
        "interior": Tile(1, 1, 10, 12, 8, 8, "i"),
        "clipped-edge": Tile(1, 2, 16, 32, 14, 8, "e"),
    }[where]
    geom = tile_geometry(spec, tile, MAP, CUBE)
    rng = np.random.default_rng(2)
    for grid, which, lead in ((CUBE, "cube", (SEASONS, BANDS)), (MAP, "env", (VARS,))):
        full = rng.normal(size=(*lead, grid.height, grid.width)).astype("float32")
        window = geom.read_window(grid, which, _reader(grid, full), lead)
        r0, r1, c0, c1 = geom.cube_window if which == "cube" else geom.env_window
        assert window.shape == (*lead, r1 - r0, c1 - c0)
        rows, cols = np.arange(r0, r1), np.arange(c0, c1)
        on = ((rows >= 0) & (rows < grid.height))[:, None] & ((cols >= 0) & (cols < grid.width))[None, :]
        assert np.isnan(window[..., ~on]).all()
        inner = full[..., rows.clip(0, grid.height - 1)[:, None], cols.clip(0, grid.width - 1)[None, :]]
        np.testing.assert_array_equal(window[..., on], inner[..., on])
        assert on.all() == (where == "interior")
    # a window wholly off the grid reads nothing
    off = tile_geometry(spec, Tile(0, 0, 0, 0, 4, 4, "o"), MAP, CUBE)
    off = type(off)(off.tile, (-20, -10, 0, 8), off.env_window, off.centre_rows, off.centre_cols)
    window = off.read_window(CUBE, "cube", lambda g: pytest.fail(f"read {g}"), (SEASONS, BANDS))
    assert window.shape == (SEASONS, BANDS, 10, 8) and np.isnan(window).all()


def test_tile_pixels_see_exactly_the_samples_training_cuts():
    """A whole-grid tile, windows padded with NaN beyond the grid, against patches cut by the extraction code."""
    spec = _spec()
    model = _model(spec)
    rng = np.random.default_rng(5)
    composite = rng.normal(size=(SEASONS, BANDS, CUBE.height, CUBE.width)).astype("float32")
    env_full = rng.normal(size=(VARS, MAP.height, MAP.width)).astype("float32")
    tile = Tile(0, 0, 0, 0, MAP.height, MAP.width, "all")
    geom = tile_geometry(spec, tile, MAP, CUBE)

    # the windows as a map tile reads them: the part on the grid, NaN beyond (TileGeometry.read_window)
    patch = geom.read_window(CUBE, "cube", _reader(CUBE, composite), composite.shape[:2])
    env = geom.read_window(MAP, "env", _reader(MAP, env_full), env_full.shape[:1])
    codes = predict_tile(model, spec, geom, patch, env)
    # training: map pixel centres -> cube row/col -> patch cut around it; series = patch centre; env patch on the map
    jj, ii = np.array([0, 3, 29, 17]), np.array([0, 39, 7, 22])
    x, y = MAP.x[ii], MAP.y[jj]
    rows, cols = CUBE.index(x, y)
    patches = _cut([[composite]], rows, cols, spec.model.patch_size)
    env_patches = _cut([[env_full]], jj, ii, spec.model.env_patch_size)
    from geoplantnet.samples.training_set import prepare_env, prepare_patch, prepare_series

    half = spec.model.patch_size // 2
    with torch.no_grad():
        logits = model(
            patch=torch.from_numpy(prepare_patch(patches, spec.norm)),
            series=torch.from_numpy(prepare_series(patches[..., half, half], spec.norm)),
            env=torch.from_numpy(prepare_env(env_patches, spec.norm)),
        )
    expected = encode(torch.sigmoid(logits).numpy().T[:, :, None], np.ones((len(jj), 1), bool))[:, :, 0]
    assert np.abs(codes[:, jj, ii].astype(int) - expected.astype(int)).max() <= 1


def test_no_data_where_the_environment_has_none():
    spec = _spec()
    model = _model(spec)
    tile = Tile(0, 0, 0, 0, 10, 10, "t")
    geom = tile_geometry(spec, tile, MAP, CUBE)
    patch, env = _windows(spec, geom, nan_frac=0.0)
    env[2, 1 + 4, 1 + 6] = np.nan  # env window starts one pixel before the tile (3x3 patches)
    codes = predict_tile(model, spec, geom, patch, env)
    assert (codes[:, 4, 6] == NODATA).all()
    assert (codes[:, 4, 5] != NODATA).all()
    assert (codes != NODATA).sum() == SPECIES * 99


def test_encode_decode_round_trip():
    p = np.array([[[0.0, 0.5, 1.0, 0.123]]], np.float32)
    codes = encode(p, np.array([[True, True, True, False]]))
    assert codes.tolist() == [[[0, 127, 254, NODATA]]]
    back = decode(codes)
    assert np.allclose(back[0, 0, :3], [0.0, 0.5, 1.0], atol=0.5 / 254) and np.isnan(back[0, 0, 3])


def test_inputs_that_do_not_fit_the_model_are_refused():
    spec = _spec()
    model = _model(spec)
    tile = Tile(0, 0, 0, 0, 10, 10, "t")
    geom = tile_geometry(spec, tile, MAP, CUBE)
    patch, env = _windows(spec, geom)
    with pytest.raises(InferenceError, match="environmental variables"):
        predict_tile(model, spec, geom, patch, env[:-1])
    with pytest.raises(InferenceError, match="channels"):
        predict_tile(model, spec, geom, patch[:, :-1], env)
    with pytest.raises(InferenceError, match="window"):
        predict_tile(model, spec, geom, patch[..., 1:], env)
