"""Dense inference on one tile: one fully convolutional pass gives every map pixel's species probabilities.

Geometry. The map grid (e.g. 50 m) and the Sentinel-2 cube grid (e.g. 20 m) need not match. The sample of a map
pixel is what training saw at a point (:mod:`geoplantnet.samples.extraction`): the ``P x P`` cube patch whose
index ``P // 2``
is the cube pixel holding the map pixel's centre, that cube pixel's seasonal series, and the ``E x E`` environmental
patch around the map pixel (environmental layers lie on the map grid). So the patch encoder runs once over the cube
window under the tile and its feature map is *sampled* at the cube pixels holding the map centres; the environmental
encoder runs once over the map window; the fusion head runs per map pixel. Neighbouring pixels share every
convolution. :func:`predict_tile_naive` (one patch per pixel) is kept only as the reference the dense path is tested
and benchmarked against.

Probabilities are stored as ``uint8``: ``round(p * 254)``, 255 where the pixel has no data (outside the environmental
layers, which define the study area, as in training). A model whose spec carries a calibration (sdm's final models)
has it applied per species before encoding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from geoplantnet.core.encoding import NODATA, SCALE
from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.models.calibration import calibrate
from geoplantnet.samples.kinds import Modality

# torch is imported by the functions running a model: the geometry, codes and errors here are used by commands
# checking their inputs, which refuse bad ones without paying for torch (tests/test_refusal_times.py)
if TYPE_CHECKING:
    import torch

    from geoplantnet.models.species_net import ModelSpec, SpeciesNet


class InferenceError(InputError):
    """Inputs that do not fit the model or the tile (one line)."""


@dataclass(frozen=True)
class TileGeometry:
    """Where a tile's inputs lie: the read windows (unclipped pixel ranges, may leave the grid) and the cube pixels
    that hold the map pixels' centres."""

    tile: Tile
    cube_window: tuple[int, int, int, int] | None  # row0, row1, col0, col1 on the cube grid
    env_window: tuple[int, int, int, int] | None  # row0, row1, col0, col1 on the map grid
    centre_rows: np.ndarray  # cube row of each map row's centre
    centre_cols: np.ndarray

    def read_window(
        self, grid: Grid, which: str, reader: Callable[[Grid], np.ndarray], lead: tuple[int, ...]
    ) -> np.ndarray:
        """The ``which`` (``"cube"``/``"env"``) window ``(*lead, y, x)`` on ``grid`` (the run's cube or map grid):
        ``reader(g)`` reads the part of the window that lies on the grid, and the rest is NaN (``lead``: the leading
        axes when nothing of the window lies on the grid).

        A tile never reads past the grid's edge, however far the imagery or the rasters extend: training and
        ``predict`` cut a point's patches from arrays on the grid, NaN where a patch leaves it
        (:func:`geoplantnet.samples.extraction.cut_patches`), and a map pixel is the prediction at its centre, so a
        pixel near the grid edge must see NaN there too (a map is then also the same whatever lies outside the grid).
        """
        window = self.cube_window if which == "cube" else self.env_window
        if window is None:
            raise InferenceError(f"the model takes no {which} input")
        r0, r1, c0, c1 = window
        (ys, xs), ((top, _), (left, _)) = grid.clip((r0, r1), (c0, c1))
        if ys.stop == ys.start or xs.stop == xs.start:  # nothing of the window on the grid
            return np.full((*lead, r1 - r0, c1 - c0), np.nan, np.float32)
        values = reader(grid.subgrid(ys, xs))
        height, width = ys.stop - ys.start, xs.stop - xs.start
        if values.shape[-2:] != (height, width):
            raise InferenceError(f"{which} read gave {values.shape[-2:]} pixels, the window needs {(height, width)}")
        out = np.full((*values.shape[:-2], r1 - r0, c1 - c0), np.nan, np.float32)
        out[..., top : top + height, left : left + width] = values
        return out


def _centres_on(map_grid: Grid, cube_grid: Grid, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    ys = map_grid.top - (tile.y0 + np.arange(tile.height) + 0.5) * map_grid.resolution
    xs = map_grid.left + (tile.x0 + np.arange(tile.width) + 0.5) * map_grid.resolution
    rows = np.floor((cube_grid.top - ys) / cube_grid.resolution).astype(np.int64)
    cols = np.floor((xs - cube_grid.left) / cube_grid.resolution).astype(np.int64)
    return rows, cols


def tile_geometry(spec: ModelSpec, tile: Tile, map_grid: Grid, cube_grid: Grid | None) -> TileGeometry:
    """Read windows of ``tile`` for the model ``spec``: the tile grown by each modality's receptive field."""
    cube_window = None
    rows = cols = np.zeros(0, np.int64)
    if Modality.PATCH in spec.modalities or Modality.SERIES in spec.modalities:
        if cube_grid is None:
            raise InferenceError("the model takes Sentinel-2 inputs but no cube grid was given")
        rows, cols = _centres_on(map_grid, cube_grid, tile)
        before, after = spec.halo(Modality.PATCH) if Modality.PATCH in spec.modalities else (0, 0)
        cube_window = (
            int(rows[0]) - before,
            int(rows[-1]) + after + 1,
            int(cols[0]) - before,
            int(cols[-1]) + after + 1,
        )
    env_window = None
    if Modality.ENV in spec.modalities:
        before, after = spec.halo(Modality.ENV)
        env_window = (tile.y0 - before, tile.y0 + tile.height + after, tile.x0 - before, tile.x0 + tile.width + after)
    return TileGeometry(tile, cube_window, env_window, rows, cols)


def _check_inputs(spec: ModelSpec, geom: TileGeometry, patch: np.ndarray | None, env: np.ndarray | None) -> None:
    needs_cube = geom.cube_window is not None
    if needs_cube:
        if patch is None or patch.ndim != 4:
            raise InferenceError("the model needs a Sentinel-2 window (season, band, y, x)")
        r0, r1, c0, c1 = geom.cube_window
        if patch.shape[-2:] != (r1 - r0, c1 - c0):
            raise InferenceError(f"Sentinel-2 window is {patch.shape[-2:]}, the tile needs {(r1 - r0, c1 - c0)}")
        want = spec.modalities[Modality.PATCH][0] if Modality.PATCH in spec.modalities else None
        got = patch.shape[0] * patch.shape[1] + (patch.shape[0] if spec.mask_channels else 0)
        if want is not None and got != want:
            raise InferenceError(
                f"Sentinel-2 inputs give {patch.shape[0]} seasons x {patch.shape[1]} bands ({got} channels), "
                f"the model was trained on {want} channels"
            )
    if geom.env_window is not None:
        if env is None or env.ndim != 3:
            raise InferenceError("the model needs an environmental window (var, y, x)")
        r0, r1, c0, c1 = geom.env_window
        if env.shape[-2:] != (r1 - r0, c1 - c0):
            raise InferenceError(f"environmental window is {env.shape[-2:]}, the tile needs {(r1 - r0, c1 - c0)}")
        want = spec.modalities[Modality.ENV][0] - (1 if spec.mask_channels else 0)
        if env.shape[0] != want:
            raise InferenceError(f"{env.shape[0]} environmental variables, the model was trained on {want}")


def _valid(spec: ModelSpec, geom: TileGeometry, patch: np.ndarray | None, env: np.ndarray | None) -> np.ndarray:
    """Pixels with data: every environmental variable finite at the pixel (the study area, as in training), or, for a
    Sentinel-2-only model, any finite value in the centre pixel's series."""
    tile = geom.tile
    if env is not None and geom.env_window is not None:
        before, _ = spec.halo(Modality.ENV)
        point = env[:, before : before + tile.height, before : before + tile.width]
        return np.isfinite(point).all(axis=0)
    r0, _, c0, _ = geom.cube_window  # type: ignore[misc]
    series = patch[:, :, geom.centre_rows[:, None] - r0, geom.centre_cols[None, :] - c0]  # type: ignore[index]
    return np.isfinite(series).any(axis=(0, 1))


def encode(prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Probabilities (species, y, x) in [0, 1] -> uint8 ``round(p * 254)``, 255 where ``valid`` is False."""
    out = np.rint(np.clip(prob, 0.0, 1.0) * SCALE).astype(np.uint8)
    out[:, ~valid] = NODATA
    return out


def decode(codes: np.ndarray) -> np.ndarray:
    """uint8 codes -> float32 probabilities, NaN for no data."""
    out = codes.astype(np.float32) / SCALE
    out[codes == NODATA] = np.nan
    return out


def _autocast(device: torch.device, mixed_precision: bool) -> contextlib.AbstractContextManager[object]:
    import torch

    if device.type == "cuda" and mixed_precision:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def _strips(n_rows: int, rows_per_strip: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n_rows, rows_per_strip):
        yield a, min(n_rows, a + rows_per_strip)


def rows_per_strip(spec: ModelSpec, geom: TileGeometry, budget_bytes: int) -> int:
    """Map rows per forward pass so activations stay within ``budget_bytes`` (batches sized to memory)."""
    tile = geom.tile
    per_row = 4 * len(spec.species) * tile.width * 3  # logits, probabilities, codes
    model = spec.model
    if geom.cube_window is not None:
        c0, c1 = geom.cube_window[2], geom.cube_window[3]
        cube_rows_per_map_row = max(1.0, (geom.centre_rows[-1] - geom.centre_rows[0] + 1) / tile.height)
        # the widest patch layers, a few alive at once
        per_row += int(4 * 3 * model.width * (c1 - c0) * cube_rows_per_map_row)
    if geom.env_window is not None:
        per_row += 4 * 3 * model.env_hidden * (geom.env_window[3] - geom.env_window[2])
    per_row += 4 * (model.fusion_hidden + model.width + model.series_hidden + model.env_hidden) * tile.width
    return max(1, min(tile.height, budget_bytes // max(1, per_row)))


def predict_tile(
    model: SpeciesNet,
    spec: ModelSpec,
    geom: TileGeometry,
    patch: np.ndarray | None,
    env: np.ndarray | None,
    *,
    budget_bytes: int = 64 * 2**20,
    mixed_precision: bool = True,
) -> np.ndarray:
    """uint8 codes (species, height, width) for ``geom.tile`` from its raw input windows.

    ``patch``: the Sentinel-2 composite window (season, band, y, x) over ``geom.cube_window``; ``env``: the
    environmental window (var, y, x) over ``geom.env_window``. NaN marks missing input, as in training.
    """
    import torch

    from geoplantnet.samples.training_set import prepare_env, prepare_patch, prepare_series

    _check_inputs(spec, geom, patch, env)
    device = next(model.parameters()).device
    tile = geom.tile
    out = np.empty((len(spec.species), tile.height, tile.width), np.uint8)
    valid = _valid(spec, geom, patch, env)
    step = rows_per_strip(spec, geom, budget_bytes)
    for a, b in _strips(tile.height, step):
        inputs: dict[str, torch.Tensor] = {}
        sample_rows = sample_cols = None
        if geom.cube_window is not None:
            r0, c0 = geom.cube_window[0], geom.cube_window[2]
            rows = geom.centre_rows[a:b]
            before, after = spec.halo(Modality.PATCH) if Modality.PATCH in spec.modalities else (0, 0)
            lo, hi = int(rows[0]) - before - r0, int(rows[-1]) + after + 1 - r0
            window = patch[:, :, lo:hi]  # type: ignore[index]
            # cube pixels of this strip's map centres, in the dense output's (and the window's centre) coordinates
            sample_rows, sample_cols = rows - rows[0], geom.centre_cols - geom.centre_cols[0]
            if Modality.PATCH in spec.modalities:
                inputs[Modality.PATCH] = torch.from_numpy(prepare_patch(window, spec.norm, spec.mask_channels))
            if Modality.SERIES in spec.modalities:
                centre = window[:, :, sample_rows + before][:, :, :, geom.centre_cols - c0]  # (season, band, h, w)
                series = prepare_series(np.moveaxis(centre, (0, 1), (2, 3)), spec.norm, spec.mask_channels)
                inputs[Modality.SERIES] = torch.from_numpy(np.ascontiguousarray(np.moveaxis(series, (2, 3), (0, 1))))
        if geom.env_window is not None:
            before, after = spec.halo(Modality.ENV)
            env_rows = env[:, a : b + before + after]  # type: ignore[index]
            inputs[Modality.ENV] = torch.from_numpy(prepare_env(env_rows, spec.norm, spec.mask_channels))
        with torch.no_grad(), _autocast(device, mixed_precision):
            tiles = {f"{k}_tile": v.to(device) for k, v in inputs.items()}
            sample = None
            if sample_rows is not None and Modality.PATCH in inputs:
                sample = (torch.from_numpy(sample_rows).to(device), torch.from_numpy(sample_cols).to(device))
            logits = model.dense_forward(**tiles, patch_sample=sample)
            prob = torch.sigmoid(logits.float()).cpu().numpy()
        out[:, a:b] = encode(calibrate(prob, spec.calibration, axis=0), valid[a:b])
    return out


def predict_tile_naive(
    model: SpeciesNet,
    spec: ModelSpec,
    geom: TileGeometry,
    patch: np.ndarray | None,
    env: np.ndarray | None,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Reference path: cut one patch per map pixel, exactly as training cuts samples, and run :meth:`SpeciesNet.forward`
    in batches. Same output as :func:`predict_tile`; used by tests and the benchmark only."""
    import torch

    from geoplantnet.samples.extraction import cut_patches
    from geoplantnet.samples.training_set import prepare_env, prepare_patch, prepare_series

    _check_inputs(spec, geom, patch, env)
    tile = geom.tile
    device = next(model.parameters()).device
    jj, ii = np.meshgrid(np.arange(tile.height), np.arange(tile.width), indexing="ij")
    jj, ii = jj.ravel(), ii.ravel()
    probs = np.empty((len(jj), len(spec.species)), np.float32)
    for start in range(0, len(jj), batch_size):
        j, i = jj[start : start + batch_size], ii[start : start + batch_size]
        batch: dict[str, torch.Tensor] = {}
        if geom.cube_window is not None:
            r0, c0 = geom.cube_window[0], geom.cube_window[2]
            rows, cols = geom.centre_rows[j] - r0, geom.centre_cols[i] - c0
            if Modality.PATCH in spec.modalities:
                size = spec.modalities[Modality.PATCH][-1]
                cut = cut_patches(patch, rows, cols, size)  # type: ignore[arg-type]
                batch[Modality.PATCH] = torch.from_numpy(prepare_patch(cut, spec.norm, spec.mask_channels))
            if Modality.SERIES in spec.modalities:
                series = np.moveaxis(patch[:, :, rows, cols], -1, 0)  # type: ignore[index]
                batch[Modality.SERIES] = torch.from_numpy(prepare_series(series, spec.norm, spec.mask_channels))
        if geom.env_window is not None:
            size = spec.modalities[Modality.ENV][-1]
            before, _ = spec.halo(Modality.ENV)
            cut = cut_patches(env, j + before, i + before, size)  # type: ignore[arg-type]
            batch[Modality.ENV] = torch.from_numpy(prepare_env(cut, spec.norm, spec.mask_channels))
        with torch.no_grad():
            logits = model(**{k: v.to(device) for k, v in batch.items()})
        probs[start : start + len(j)] = torch.sigmoid(logits.float()).cpu().numpy()
    prob = calibrate(probs.T.reshape(len(spec.species), tile.height, tile.width), spec.calibration, axis=0)
    return encode(prob, _valid(spec, geom, patch, env))


def default_budget(device: torch.device, gpu_mb: int, cpu_mb: int = 64) -> int:
    """Activation budget per forward pass: ``gpu_mb`` on CUDA (capped at a quarter of free memory), ``cpu_mb`` on CPU
    (small strips stay in cache; larger ones are slower, not faster)."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(gpu_mb * 2**20, free // 4))
    return int(cpu_mb * 2**20)
