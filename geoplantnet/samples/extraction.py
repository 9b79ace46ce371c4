"""Training samples cut from lazy cubes at observation points, grouped by chunk so each source chunk is read once.

For every (y, x) chunk of a source array, one task receives that chunk plus a halo of half a patch and cuts the
patches of every point whose centre pixel falls in the chunk. All tasks live in one graph computed once, so the read
tasks they share (a chunk is also its neighbours' halo) run once. Memory per task is a chunk plus its halo.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
import numpy as np
import xarray as xr

from geoplantnet.core.grid import Grid
from geoplantnet.samples.kinds import ENV_POINT, Modality
from geoplantnet.samples.observations import Samples

log = logging.getLogger(__name__)


class ExtractionError(ValueError):
    """Samples or sources that cannot be extracted (one line)."""


def grid_of(arr: xr.DataArray, epsg: int) -> Grid:
    """The :class:`Grid` an array with cell-centre ``x``/``y`` coordinates lies on."""
    return Grid.from_coords(arr["x"].values, arr["y"].values, epsg)


def cut_patches(a: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Patches ``(n, ..., size, size)`` of ``a (..., y, x)`` centred on the pixels (rows, cols): each pixel lands at
    index ``size // 2`` on both axes (the training-set contract); NaN where a window leaves ``a``. One vectorised
    gather, no Python loop: training extraction and the dense reference cut the same way."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    half = size // 2
    h, w = a.shape[-2:]
    lead = a.shape[:-2]
    if rows.size == 0:
        return np.empty((0, *lead, size, size), dtype=a.dtype)
    r0, c0 = rows - half, cols - half
    if r0.min() < 0 or c0.min() < 0 or r0.max() + size > h or c0.max() + size > w:
        # a window leaves the array: pad with NaN so every window lies inside (same top-left in padded coordinates)
        a = np.pad(a, [(0, 0)] * len(lead) + [(half, size - 1 - half)] * 2, constant_values=np.nan)
        r0, c0 = rows, cols
    windows = np.lib.stride_tricks.sliding_window_view(a, (size, size), axis=(-2, -1))
    return np.moveaxis(windows[..., r0, c0, :, :], -3, 0)


def _cut(blocks: list, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """:func:`cut_patches` in the region that the nested ``blocks`` (source chunks, as ``np.block`` takes them) tile."""
    return cut_patches(np.block(blocks), rows, cols, size).astype("float32", copy=False)


def patch_tasks(arr: xr.DataArray, grid: Grid, x: np.ndarray, y: np.ndarray, size: int) -> tuple[list, list]:
    """One delayed patch-cutting task per source chunk holding points; returns (tasks, point indices per task)."""
    rows, cols = grid.index(x, y)
    if (rows < 0).any():
        raise ExtractionError(f"{int((rows < 0).sum())} points lie outside the source grid {grid.bounds}")
    data = arr.data
    ychunks, xchunks = data.chunks[-2], data.chunks[-1]
    yedges, xedges = np.cumsum((0, *ychunks)), np.cumsum((0, *xchunks))
    cy = np.searchsorted(yedges, rows, side="right") - 1
    cx = np.searchsorted(xedges, cols, side="right") - 1
    half = size // 2
    tasks, members = [], []
    order = np.lexsort((cx, cy))
    keys = np.stack([cy[order], cx[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, (np.diff(keys, axis=0) != 0).any(axis=1)])
    # The source's own chunk tasks, not slices of it: a slice of a lazy array may be pushed down into its producer
    # and re-run it per slice, while these keys are shared, so each chunk is read once however many tasks use it.
    chunks = data.to_delayed(optimize_graph=False)

    def _span(edges: np.ndarray, start: int, stop: int) -> tuple[int, int]:
        first = int(np.searchsorted(edges, max(start, 0), side="right") - 1)
        last = int(np.searchsorted(edges, min(stop, edges[-1]) - 1, side="right") - 1)
        return first, last

    for start, stop in zip(starts, [*starts[1:], len(order)], strict=True):
        idx = order[start:stop]
        j, i = int(cy[idx[0]]), int(cx[idx[0]])
        j0, j1 = _span(yedges, int(yedges[j]) - half, int(yedges[j + 1]) + size - half)
        i0, i1 = _span(xedges, int(xedges[i]) - half, int(xedges[i + 1]) + size - half)
        nested = chunks[..., j0 : j1 + 1, i0 : i1 + 1].tolist()
        tasks.append(dask.delayed(_cut)(nested, rows[idx] - yedges[j0], cols[idx] - xedges[i0], size))
        members.append(idx)
    return tasks, members


def _assemble(n: int, results: list[np.ndarray], members: list[np.ndarray]) -> np.ndarray:
    out = np.empty((n, *results[0].shape[1:]), dtype="float32")
    for part, idx in zip(results, members, strict=True):
        out[idx] = part
    return out


def extract_samples(
    samples: Samples,
    grid_map: Grid,
    *,
    composite: xr.DataArray | None,
    env: xr.DataArray | None,
    patch_size: int,
    env_patch_size: int,
    out: str,
    client: Any = None,
    attrs: dict[str, Any] | None = None,
) -> str:
    """Cut every sample's Sentinel-2 patch, seasonal series, environmental patch and point values; write the set.

    ``composite`` (time, band, y, x) and ``env`` (var, y, x) are lazy; either may be None. One graph, one compute, on
    the cluster of ``client`` when given.
    """
    from geoplantnet.samples.training_set import write_training_set

    if composite is None and env is None:
        raise ExtractionError("nothing to extract: neither a Sentinel-2 composite nor environmental rasters")
    n = len(samples)
    sources: dict[str, tuple[xr.DataArray, Grid, int]] = {}
    if composite is not None:
        sources[Modality.PATCH] = (composite.astype("float32"), grid_of(composite, grid_map.epsg), patch_size)
    if env is not None:
        sources[Modality.ENV] = (env.astype("float32"), grid_of(env, grid_map.epsg), env_patch_size)
    graphs = {name: patch_tasks(arr, g, samples.x, samples.y, size) for name, (arr, g, size) in sources.items()}
    everything = {name: tasks for name, (tasks, _) in graphs.items()}
    # optimize_graph=False: low-level fusion would inline each chunk's read into every task whose halo touches it,
    # reading a chunk up to 9 times; unoptimised, the shared read tasks run once.
    (computed,) = dask.compute(everything, scheduler=client.get if client is not None else None, optimize_graph=False)
    arrays: dict[str, np.ndarray] = {}
    for name, (_, members) in graphs.items():
        arrays[name] = _assemble(n, computed[name], members)
    kwargs: dict[str, Any] = {}
    if Modality.PATCH in arrays:
        patch = arrays[Modality.PATCH]
        kwargs[Modality.PATCH] = patch
        kwargs[Modality.SERIES] = patch[:, :, :, patch_size // 2, patch_size // 2]
    if Modality.ENV in arrays:
        kwargs[Modality.ENV] = arrays[Modality.ENV]
        kwargs[ENV_POINT] = arrays[Modality.ENV][:, :, env_patch_size // 2, env_patch_size // 2]
    names = {}
    if composite is not None:
        names["bands"] = [str(b) for b in composite["band"].values]
    if env is not None:
        names["variables"] = [str(v) for v in env["var"].values]
    log.info("extracted %d samples (%s)", n, ", ".join(f"{k} {v.shape[1:]}" for k, v in kwargs.items()))
    return write_training_set(
        out,
        x=samples.x,
        y=samples.y,
        label=samples.label,
        source=samples.source,
        species=list(samples.vocab.ids),
        species_name=list(samples.vocab.names),
        attrs={**(attrs or {}), **{k: " ".join(v) for k, v in names.items()}},
        **kwargs,
    )
