"""Overviews: coarser copies of a tiled store's maps inside the store, for viewers and figures that never need full
resolution.

Layout (the ``multiscales`` convention of GeoZarr, zarr-conventions/multiscales v1): groups ``overviews/<k>`` (level
``k``, factor ``2**k``) hold every map variable of the root (``(..., y, x)``; a ``year`` axis included) at the coarser
resolution, with the same dtype, fill value, CF attrs and compression (uint8 probability codes stay uint8 with the same
``scale_factor``; float indicators stay float with NaN), ``x``/``y`` of the coarse cells, ``spatial_ref`` with the
coarse ``GeoTransform``, and the root's other coordinates (``species``, ``rank``...; not ``year``, whose values are
the root's). The root's ``multiscales`` attribute lists the levels; ``xr.open_zarr(store)`` shows only the root's
variables (it never opens sub-groups) and :func:`geoplantnet.storage.store.open_store` is unchanged.

Resampling: ``mean`` of the valid cells (no-data ignored; a coarse cell without a valid fine cell is no-data;
integer codes rounded back to codes), or ``mode`` for class variables (``geoplantnet_resampling: "mode"`` on the
variable, set by the products; no-data ignored, ties to the smaller class).

Who writes what: :func:`write_tile_levels` (called by :func:`geoplantnet.storage.tiles.write_tile_blocks` before the
tile's marker) writes a tile's own coarse cells for the levels whose factor divides the tile size, exactly (from
the full-resolution block); their chunks are the tile's, so tiles never write the same object. :func:`build_coarse`
(called by :func:`geoplantnet.storage.tiles.finalise` before the completion flag) builds each coarser level from the
previous one (mean of means, mode of modes), streaming one chunk at a time. Levels go on until one cell covers the
map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import xarray as xr
import zarr

from geoplantnet.core.errors import InputError
from geoplantnet.runtime.interrupts import deferred
from geoplantnet.storage.selection import index_species
from geoplantnet.storage.store import (
    YEAR,
    YEARS_ATTR,
    StoreError,
    beside_the_arrays,
    complete_years,
    open_store,
    service_errors,
    shown,
    years_in,
    zarr_store,
)

GROUP = "overviews"
RESAMPLING_ATTR = "geoplantnet_resampling"
MODE = "mode"
MEAN = "mean"
CLASS_ATTRS = {RESAMPLING_ATTR: MODE}  # what a product puts on its class variables (codes, flags, bitmasks)
FACTOR_ATTR = "geoplantnet_factor"
MULTISCALES = "multiscales"
CONVENTION = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "name": "multiscales",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
    "description": "multiscale layout of zarr datasets",
}
COARSE_CHUNK = 512  # spatial chunk of the levels built by build_coarse (one process writes them: no tile alignment)


def level_path(k: int) -> str:
    """The group of level ``k`` (factor ``2**k``) inside a store."""
    return f"{GROUP}/{k}"


def plan(height: int, width: int) -> list[int]:
    """The levels of a ``height`` x ``width`` map: 1, 2, ... until one cell covers it (none for one pixel)."""
    return list(range(1, math.ceil(math.log2(max(height, width, 1))) + 1))


def _dims(array: zarr.Array) -> tuple[str, ...]:
    return tuple(array.metadata.dimension_names or ())


def map_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The root's map variables: arrays whose last dimensions are (y, x), coordinates left out."""
    with beside_the_arrays():
        arrays = dict(group.arrays())
    coords = {c for a in arrays.values() for c in str(a.attrs.get("coordinates", "")).split()}
    return {name: a for name, a in arrays.items() if _dims(a)[-2:] == ("y", "x") and name not in coords | {"x", "y"}}


def _tile_shape(array: zarr.Array) -> tuple[int, int]:
    """The (y, x) size of the tiles that write ``array``: its shards', else its chunks'."""
    grid = array.metadata.chunk_grid.chunk_shape  # the shard shape when sharded
    return int(grid[-2]), int(grid[-1])


def tile_levels(array: zarr.Array, levels: list[int]) -> list[int]:
    """The levels of ``levels`` a tile of ``array`` writes itself: those whose factor divides the tile size."""
    ty, tx = _tile_shape(array)
    return [k for k in levels if ty % 2**k == 0 and tx % 2**k == 0]


def _coarse_axis(values: np.ndarray, factor: int) -> np.ndarray:
    """Centres of the coarse cells along an axis of cell centres ``values`` (the last cell may reach past the map)."""
    step = float(values[1] - values[0]) if values.size > 1 else 1.0
    n = -(-values.size // factor)
    return float(values[0]) - step / 2 + (np.arange(n) + 0.5) * step * factor


def _geotransform(text: str, factor: int) -> str:
    c, a, b, f, d, e = (float(v) for v in str(text).split())
    return " ".join(str(v) for v in (c, a * factor, b * factor, f, d * factor, e * factor))


def add_layout(url: str, storage_options: Mapping[str, Any] | None = None, *, tiled: bool = True) -> list[int]:
    """Write the empty overview levels of the store at ``url`` (its layout just written) and its ``multiscales``
    attribute; returns the levels (none for a store without map variables). ``tiled``: tiles will write the levels
    whose factor divides their size (else :func:`build_coarse` builds every level, e.g. a store written whole)."""
    # whole or not at all (the run stops after it): the multiscales attr, written last, vouches for every array
    with service_errors(url), deferred():
        root = zarr.open_group(zarr_store(url, storage_options), mode="r+", use_consolidated=False)
        maps = map_arrays(root)
        if not maps or "x" not in root or "y" not in root:
            return []
        x, y = np.asarray(root["x"][...]), np.asarray(root["y"][...])
        levels = plan(y.size, x.size)
        with beside_the_arrays():
            others = {n: a for n, a in root.arrays() if n not in maps and n not in ("x", "y") and YEAR not in _dims(a)}
        for k in levels:
            factor = 2**k
            group = root.require_group(level_path(k))
            group.attrs.update({FACTOR_ATTR: factor})
            for name, values in (("x", _coarse_axis(x, factor)), ("y", _coarse_axis(y, factor))):
                arr = group.create_array(
                    name,
                    shape=values.shape,
                    dtype="float64",
                    dimension_names=[name],
                    overwrite=True,
                    attributes=dict(root[name].attrs),
                )
                arr[...] = values
            for name, src in others.items():
                attrs = dict(src.attrs)
                if "GeoTransform" in attrs:
                    attrs["GeoTransform"] = _geotransform(attrs["GeoTransform"], factor)
                arr = group.create_array(
                    name,
                    shape=src.shape,
                    dtype=src.dtype,
                    fill_value=src.fill_value,
                    overwrite=True,
                    dimension_names=src.metadata.dimension_names,
                    attributes=attrs,
                )
                arr[...] = src[...]
            for name, src in maps.items():
                _level_array(group, name, src, k, in_tiles=tiled and k in tile_levels(src, levels))
        root.attrs.update(multiscales(levels))
    return levels


def _level_array(group: zarr.Group, name: str, src: zarr.Array, k: int, *, in_tiles: bool) -> zarr.Array:
    """The empty array of ``src`` at level ``k``: one chunk (shard) per tile for a level the tiles write, chunks of
    :data:`COARSE_CHUNK` cells otherwise; the leading axes chunked as ``src``'s."""
    factor = 2**k
    shape = (*src.shape[:-2], -(-src.shape[-2] // factor), -(-src.shape[-1] // factor))
    lead_chunks = tuple(src.chunks[:-2])
    shards = None
    if in_tiles:
        ty, tx = _tile_shape(src)
        chunks = (*lead_chunks, ty // factor, tx // factor)
        if src.shards is not None:
            shards = (*tuple(src.shards[:-2]), ty // factor, tx // factor)
    else:
        chunks = (*lead_chunks, min(shape[-2], COARSE_CHUNK), min(shape[-1], COARSE_CHUNK))
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=src.dtype,
        fill_value=src.fill_value,
        compressors=src.compressors,
        dimension_names=src.metadata.dimension_names,
        attributes=dict(src.attrs),
        overwrite=True,
    )


def multiscales(levels: list[int]) -> dict[str, Any]:
    """The root attrs of a store with overview ``levels`` (zarr-conventions/multiscales v1, as GeoZarr uses it)."""
    layout: list[dict[str, Any]] = [{"asset": ".", "transform": {"scale": [1.0, 1.0], "translation": [0.0, 0.0]}}]
    for k in levels:
        layout.append(
            {
                "asset": level_path(k),
                "derived_from": "." if k == 1 else level_path(k - 1),
                "transform": {"scale": [float(2**k), float(2**k)], "translation": [0.0, 0.0]},
                "resampling_method": "mean (mode for class variables, see geoplantnet_resampling)",
            }
        )
    return {"zarr_conventions": [CONVENTION], MULTISCALES: {"layout": layout, "resampling_method": MEAN}}


def _levels_of(attrs: Mapping[str, Any]) -> list[int]:
    layout = (attrs.get(MULTISCALES) or {}).get("layout") or []
    return [int(str(item["asset"]).rsplit("/", 1)[-1]) for item in layout if str(item.get("asset", ".")) != "."]


def levels(url: str, storage_options: Mapping[str, Any] | None = None) -> list[int]:
    """The factors of the overview levels of the store at ``url`` (e.g. ``[2, 4, 8]``; empty without overviews)."""
    with service_errors(url):
        attrs = zarr.open_group(zarr_store(url, storage_options), mode="r").attrs
    return [2**k for k in _levels_of(dict(attrs))]


# -- resampling --------------------------------------------------------------------------------------------------


def _invalid(block: np.ndarray, fill: Any) -> np.ndarray:
    if np.issubdtype(block.dtype, np.floating):
        return np.isnan(block) if fill is None or np.isnan(fill) else np.isnan(block) | (block == fill)
    return block == fill


def _pad(block: np.ndarray, factor: int, value: Any) -> np.ndarray:
    """``block`` padded at its bottom/right to multiples of ``factor`` (a tile at the grid's ragged edge)."""
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, -h % factor), (0, -w % factor)]
    return np.pad(block, pad, constant_values=value) if any(p for _, p in pad[-2:]) else block


def _blocks(block: np.ndarray, factor: int) -> np.ndarray:
    """(..., h, w) -> (..., h/f, w/f, f*f): the fine cells of each coarse cell on the last axis."""
    *lead, h, w = block.shape
    b = block.reshape(*lead, h // factor, factor, w // factor, factor)
    return np.moveaxis(b, -3, -2).reshape(*lead, h // factor, w // factor, factor * factor)


def _sums(block: np.ndarray, fill: Any, *, whole: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The valid values (0 elsewhere) and the valid mask, as sums and counts of one cell: exact integers for integer
    codes (uint16 for bytes, whose 2 x 2 sums fit it; int32 for up to 16 bits: a tile of 2**15 cells a side of
    uint8 fits it), float64 otherwise. Counts None when every cell is valid and ``whole`` (no ragged edge): then a
    level-k cell counts 4**k (the common case of an interior tile, at half the work)."""
    invalid = _invalid(block, fill)
    if np.issubdtype(block.dtype, np.floating):
        kind = "float64"
    else:
        kind = "uint16" if block.dtype == np.uint8 else "int32" if block.itemsize <= 2 else "int64"
    sums = block.astype(kind)
    if not invalid.any():
        return sums, None if whole else np.ones(block.shape, "int32")
    sums[invalid] = 0
    return sums, (~invalid).astype("int32")


def _sum2(a: np.ndarray) -> np.ndarray:
    p = _pad(a, 2, 0)
    rows = p[..., 0::2, :] + p[..., 1::2, :]  # two strided adds: several times faster than a reduce over 2 axes
    return rows[..., 0::2] + rows[..., 1::2]


def _encode_mean(sums: np.ndarray, counts: np.ndarray | int, dtype: np.dtype, fill: Any) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    if np.issubdtype(dtype, np.floating):
        return np.where(counts > 0, mean, np.nan if fill is None else fill).astype(dtype)
    return np.where(counts > 0, np.round(mean), fill).astype(dtype)


def mode(block: np.ndarray, factor: int, fill: Any) -> np.ndarray:
    """The most frequent valid value of each ``factor`` x ``factor`` block of ``block`` (..., h, w) (ties: the
    smaller value); ``fill`` where a block has no valid value."""
    cells = np.sort(_blocks(_pad(block, factor, fill), factor), axis=-1)
    n = cells.shape[-1]
    starts = np.ones(cells.shape, dtype=bool)
    starts[..., 1:] = cells[..., 1:] != cells[..., :-1]
    index = np.arange(n)
    run = index - np.maximum.accumulate(np.where(starts, index, 0), axis=-1) + 1  # length of each run so far
    run = np.where(_invalid(cells, fill), 0, run)
    best = np.argmax(run, axis=-1)[..., None]
    value = np.take_along_axis(cells, best, axis=-1)[..., 0]
    return np.where(run.max(axis=-1) > 0, value, fill).astype(block.dtype)


def method_of(array: zarr.Array) -> str:
    """How ``array`` is resampled: its ``geoplantnet_resampling`` attr, else the mode for CF flags (a class variable
    whose product did not say), else the mean."""
    flags = "flag_values" in array.attrs or "flag_masks" in array.attrs
    return str(array.attrs.get(RESAMPLING_ATTR, MODE if flags else MEAN))


def pyramid(block: np.ndarray, ks: list[int], method: str, fill: Any) -> Iterator[tuple[int, np.ndarray]]:
    """(k, the coarse block of level k) for consecutive levels ``ks`` from 1: exact means (sums and counts of the
    fine cells, halved level by level) or modes (of the fine cells)."""
    if method == MODE:
        for k in ks:
            yield k, mode(block, 2**k, fill)
        return
    h, w = block.shape[-2:]
    sums, counts = _sums(block, fill, whole=bool(ks) and h % 2 ** ks[-1] == 0 and w % 2 ** ks[-1] == 0)
    for k in ks:
        sums = _sum2(sums)
        if sums.dtype == np.uint16:  # 2 x 2 sums of bytes; 4 x 4 ones may not fit
            sums = sums.astype("int32")
        counts = None if counts is None else _sum2(counts)
        yield k, _encode_mean(sums, 4**k if counts is None else counts, block.dtype, fill)


def _pieces(n_lead: int, step: int) -> Iterator[slice]:
    for start in range(0, max(n_lead, 1), max(step, 1)):
        yield slice(start, start + step)


def write_tile_levels(
    root: zarr.Group, blocks: Mapping[str, np.ndarray], y0: int, x0: int, lead: tuple[int, ...]
) -> None:
    """Write the overview cells of a tile at pixel (``y0``, ``x0``) whose blocks ``blocks`` were just written in
    ``root`` (at ``lead`` on the leading axes: a series' year slot), for every level a tile writes (nothing in a
    store without overviews). Leading axes are done a chunk at a time (bounded memory for many species)."""
    ks = _levels_of(dict(root.attrs))
    if not ks:
        return
    for name, block in blocks.items():
        src = root[name]
        mine = tile_levels(src, ks)
        if not mine:
            continue
        h, w = block.shape[-2:]
        outs = {k: np.empty((*block.shape[:-2], -(-h // 2**k), -(-w // 2**k)), block.dtype) for k in mine}
        step = int(src.chunks[len(lead)]) if block.ndim > 2 else 1
        for piece in _pieces(block.shape[0] if block.ndim > 2 else 1, step):
            at = (piece,) if block.ndim > 2 else ()
            for k, coarse in pyramid(block[at] if at else block, mine, method_of(src), src.fill_value):
                outs[k][at] = coarse
        for k, coarse in outs.items():  # one write per level: a shard is written whole, once
            f = 2**k
            ys, xs = slice(y0 // f, y0 // f + coarse.shape[-2]), slice(x0 // f, x0 // f + coarse.shape[-1])
            root[f"{level_path(k)}/{name}"][(*lead, ..., ys, xs)] = coarse


def build_coarse(
    url: str, storage_options: Mapping[str, Any] | None = None, *, slot: int | None = None, tiled: bool = True
) -> None:
    """Build the levels the tiles do not write (every level unless ``tiled``), each from the previous one (mean of
    its means, mode of its modes; level 1 from the full resolution), one output chunk at a time; with ``slot``, that
    slot of the ``year`` axis only. A no-op without overviews."""
    with service_errors(url):
        root = zarr.open_group(zarr_store(url, storage_options), mode="r+", use_consolidated=False)
        ks = _levels_of(dict(root.attrs))
        for name, src in map_arrays(root).items():
            mine = set(tile_levels(src, ks)) if tiled else set()
            for k in ks:
                if k in mine:
                    continue
                source = src if k == 1 else root[f"{level_path(k - 1)}/{name}"]
                _halve_array(source, root[f"{level_path(k)}/{name}"], method_of(src), slot)


def _halve_array(source: zarr.Array, target: zarr.Array, method: str, slot: int | None) -> None:
    """``target`` = ``source`` resampled by 2, one chunk of ``target`` at a time (``slot`` of a year axis only)."""
    fill = source.fill_value
    lead_shape, chunk = target.shape[:-2], target.chunks
    year = _dims(target)[:1] == (YEAR,)
    ranges = [
        [slice(slot, slot + 1)] if (i == 0 and year and slot is not None) else list(_pieces(n, chunk[i]))
        for i, n in enumerate(lead_shape)
    ]
    for lead in _product(ranges):
        for ys in _pieces(target.shape[-2], chunk[-2]):
            for xs in _pieces(target.shape[-1], chunk[-1]):
                fine = np.asarray(source[(*lead, slice(2 * ys.start, 2 * ys.stop), slice(2 * xs.start, 2 * xs.stop))])
                if method == MODE:
                    coarse = mode(fine, 2, fill)
                else:
                    sums, counts = _sums(fine, fill)
                    coarse = _encode_mean(_sum2(sums), _sum2(counts), fine.dtype, fill)
                target[(*lead, ys, xs)] = coarse


def _product(ranges: list[list[slice]]) -> Iterator[tuple[slice, ...]]:
    if not ranges:
        yield ()
        return
    for first in ranges[0]:
        for rest in _product(ranges[1:]):
            yield (first, *rest)


# -- reading -----------------------------------------------------------------------------------------------------


def _choose(url: str, sizes: tuple[int, int], have: list[int], max_pixels: int | None, factor: int | None) -> int:
    if factor is not None:
        if factor != 1 and factor not in have:
            raise InputError(f"{shown(url)}: no overview of factor {factor} (factors: {[1, *have]})")
        return factor
    if max_pixels is None:
        return 1
    for f in [1, *have]:
        if max(-(-sizes[0] // f), -(-sizes[1] // f)) <= max_pixels:
            return f
    return ([1, *have])[-1]


def open_overview(
    url: str,
    *,
    max_pixels: int | None = None,
    factor: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    year: int | None = None,
) -> xr.Dataset:
    """The store at ``url`` at the finest level with at most ``max_pixels`` cells on each side (the coarsest when
    none is that small), or at ``factor`` (1: full resolution); full resolution without either or without
    overviews. Decoded and lazy like :func:`geoplantnet.storage.store.open_store` (complete stores, complete years
    of a series; ``year`` selects one)."""
    full = open_store(url, storage_options=storage_options)
    have = [2**k for k in _levels_of(full.attrs)]
    chosen = _choose(url, (full.sizes["y"], full.sizes["x"]), have, max_pixels, factor)
    if year is not None and YEAR in full.dims and int(year) not in {int(y) for y in full[YEAR].values}:
        raise StoreError(f"{shown(url)} has no complete year {year} (years: {years_in(full.attrs)})")
    ds = full if chosen == 1 else _open_level(url, int(math.log2(chosen)), full.attrs, storage_options)
    return ds.sel({YEAR: int(year)}) if year is not None and YEAR in ds.dims else ds


def _open_level(url: str, k: int, attrs: Mapping[str, Any], storage_options: Mapping[str, Any] | None) -> xr.Dataset:
    options = dict(storage_options or {}) or None
    with service_errors(url), beside_the_arrays():
        ds = xr.open_zarr(url, group=level_path(k), consolidated=False, storage_options=options)
        if YEARS_ATTR in attrs:  # the raw year axis (in the order added), then the complete years as open_store does
            raw = zarr.open_group(zarr_store(url, storage_options), mode="r")[YEAR]
            ds = ds.assign_coords({YEAR: (YEAR, np.asarray(raw[...]), dict(raw.attrs))})
    ds.attrs = {**attrs, FACTOR_ATTR: 2**k}
    if YEARS_ATTR in attrs:
        ds = complete_years(ds)
    return index_species(ds)
