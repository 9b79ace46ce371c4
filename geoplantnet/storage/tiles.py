"""Tiled Zarr stores written tile by tile by many workers, resumable, never reading as valid while incomplete.

Protocol (local paths and object storage alike):

0. The job holds the store's lease and has decided, with :func:`geoplantnet.storage.store.writing`, whether the run
   is new, resumes its own store, or replaces another run's (only with the user's ``--overwrite``).
1. :func:`prepare` writes the layout (coordinates, CF metadata, empty arrays whose fill value is the no-data code)
   with ``geoplantnet_complete = "false"`` and the run's fingerprint, or, resuming, returns the tiles the store
   already holds.
2. Each task writes exactly its tile's region (tiles align with the chunks/shards, so writes never overlap; every
   chunk object is written whole: an atomic rename locally, one PUT on S3), then a marker
   ``_tiles/<run>/<tile id>.json``.
   A tile without its marker is recomputed by the next run, whatever its chunks hold.
3. :func:`finalise` consolidates the metadata and sets the completion flag, after every tile has its marker.

A chunk never written reads as the fill value (no data), so an interrupted store reads as "unknown", never as a
probability; :func:`geoplantnet.storage.store.open_store` refuses it anyway until step 3.

:func:`writing_tiles` is steps 0-1 in one call. With a ``year`` the store is a series
(:mod:`geoplantnet.storage.years`): the run's parts name the year, steps 1-3 concern that year's slot alone, and a
tile finds its slot from its run.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr

from geoplantnet.core.encoding import NODATA, SCALE
from geoplantnet.core.grid import Tile
from geoplantnet.storage import overviews, years
from geoplantnet.storage.lease import Lease
from geoplantnet.storage.store import (
    PARTS_ATTR,
    PRODUCT_ATTR,
    RUN_ATTR,
    Target,
    default_encoding,
    mark_complete,
    remove_store,
    run_id,
    service_errors,
    stamp,
    write_layout,
    writing,
    zarr_store,
)

log = logging.getLogger(__name__)

MANIFEST = "_tiles"


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def species_chunks(n_species: int, tile: int, species_chunk: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(chunks, shards) of ``probability``: chunks of a few species (one species' map reads little besides it), and
    one shard per tile holding every species (a place's whole assemblage is one object; objects stay few on S3)."""
    inner = (min(species_chunk, n_species), tile, tile)
    shard_species = -(-n_species // inner[0]) * inner[0]
    return inner, (shard_species, tile, tile)


PROBABILITY_COMMENT = (
    f"stored as uint8 round(p * {SCALE}); {NODATA} = no data (outside the study area or not yet computed); xarray "
    "decodes to float with NaN for no data, mask_and_scale=False gives the codes"
)


def probability_attrs(long_name: str) -> dict[str, Any]:
    """CF attrs of a uint8 probability variable (:mod:`geoplantnet.core.encoding`)."""
    return {"long_name": long_name, "units": "1", "valid_range": [0, SCALE], "comment": PROBABILITY_COMMENT}


def tiled_variable(
    dims: Sequence[str],
    shape: Sequence[int],
    *,
    dtype: str,
    fill: int,
    chunks: Sequence[int],
    shards: Sequence[int] | None = None,
    scale: float | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> tuple[xr.DataArray, dict[str, Any]]:
    """A lazy, never computed variable of a tiled store and its encoding: integer codes whose Zarr fill value is the
    no-data code ``fill`` (what unwritten chunks read as: never a valid value), ``scale`` for probability codes."""
    import dask.array as da

    data = da.zeros(tuple(shape), dtype="float32" if scale else dtype, chunks=tuple(shards or chunks))
    var = xr.DataArray(data, dims=tuple(dims), attrs=dict(attrs or {}))
    enc = default_encoding(var.to_dataset(name="v"))["v"]
    enc.update({"dtype": dtype, "_FillValue": fill, "fill_value": fill, "chunks": tuple(chunks)})
    if shards is not None:
        enc["shards"] = tuple(shards)
    if scale:
        enc.update({"scale_factor": 1.0 / scale, "add_offset": 0.0})
    return var, enc


def _manifest(path: str, run: str) -> str:
    return f"{path.rstrip('/')}/{MANIFEST}/{run}"


def clear_markers(url: str, run: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove the markers of run ``run`` (its tiles then count as never written)."""
    fs, path = _fs(url, storage_options)
    with service_errors(url), contextlib.suppress(FileNotFoundError):
        fs.rm(_manifest(path, run), recursive=True)


def finished_tiles(url: str, run: str, storage_options: Mapping[str, Any] | None = None) -> set[str]:
    """Ids of tiles with a marker from run ``run``: one listing, no marker read (a marker exists only after its
    tile's chunks were written, so its name is the proof; the contents are for people)."""
    fs, path = _fs(url, storage_options)
    folder = _manifest(path, run)
    if not fs.exists(folder):
        return set()
    names = (entry.rsplit("/", 1)[-1] for entry in fs.ls(folder, detail=False))
    return {name.removesuffix(".json") for name in names if name.endswith(".json")}


@dataclass(frozen=True)
class TileOutput:
    """Where a tile goes: the store, the run whose markers it writes, the store's options."""

    url: str
    run: str
    storage_options: dict[str, Any]

    @classmethod
    def of(
        cls, url: str, parts: Mapping[str, Any], storage_options: dict[str, Any], year: int | None = None
    ) -> TileOutput:
        """The output of the run of ``parts`` (of ``year`` of a series, when given: its parts then name the year)."""
        return cls(url, run_id(parts if year is None else years.year_parts(parts, year)), storage_options)


@contextlib.contextmanager
def writing_tiles(
    url: str,
    template: xr.Dataset,
    encoding: Mapping[str, Mapping[str, Any]],
    *,
    product: str,
    parts: Mapping[str, Any],
    run: str,
    overwrite: bool,
    provenance: Mapping[str, Any] | None,
    attrs: Mapping[str, Any] | None,
    storage_options: Mapping[str, Any] | None,
    lease_ttl: float,
    year: int | None = None,
) -> Iterator[tuple[set[str], Lease]]:
    """Hold the store's lease, claim ``url`` for the run of ``parts`` and make it ready (:func:`prepare`); yields the
    tiles already written and the lease. With ``year``, the run writes that year of a series: ``parts`` are
    completed with the year (:func:`geoplantnet.storage.years.year_parts`) and ``run``, the id its tiles write
    markers under, must be theirs."""
    if year is not None:
        parts = years.year_parts(parts, year)
    if run != run_id(parts):
        raise ValueError(f"tiles would write markers of run {run}, the store is claimed for run {run_id(parts)}")
    if year is None:
        claimed = writing(
            url,
            product=product,
            parts=parts,
            overwrite=overwrite,
            storage_options=storage_options,
            lease_ttl=lease_ttl,
        )
    else:
        claimed = years.writing_year(
            url,
            product=product,
            series=years.series_parts(template, encoding, product),
            parts=parts,
            year=year,
            overwrite=overwrite,
            storage_options=storage_options,
            lease_ttl=lease_ttl,
        )
    with claimed as (decision, target, lease):
        done = prepare(
            url,
            template,
            encoding,
            decision=decision,
            target=target,
            product=product,
            parts=parts,
            provenance=provenance,
            attrs=attrs,
            storage_options=storage_options,
            year=year,
        )
        yield done, lease


def prepare(
    url: str,
    template: xr.Dataset,
    encoding: Mapping[str, Mapping[str, Any]],
    *,
    decision: str,
    target: Target,
    product: str,
    parts: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    year: int | None = None,
) -> set[str]:
    """Make ``url`` ready for the run of ``parts`` after :func:`geoplantnet.storage.store.claim` decided ``decision``:
    resume (returns the finished tiles), or lay out a fresh store (replacing ``target`` if agreed; returns an
    empty set). With ``year`` (``parts`` naming it, ``decision`` from
    :func:`geoplantnet.storage.years.claim_year`): the same for that year's slot of a series."""
    run = run_id(parts)
    if year is not None:
        if decision in ("replace", "append", "new"):
            # markers first, before any chunk is cleared: a stale marker of this run (an earlier replacement of the
            # year, interrupted) or of the run being replaced must never vouch for a cleared tile
            for stale in {run, str(years.year_records(target.attrs).get(int(year), {}).get("run", run))}:
                clear_markers(url, stale, storage_options)
        replaced = years.prepare_year(
            url,
            template,
            encoding,
            decision=decision,
            target=target,
            product=product,
            parts=parts,
            year=year,
            provenance=provenance,
            attrs=attrs,
            storage_options=storage_options,
        )
        if replaced is not None:
            clear_markers(url, replaced, storage_options)
        if decision == "new":
            overviews.add_layout(url, storage_options)
        return finished_tiles(url, run, storage_options) if decision == "resume" else set()
    if decision == "resume":
        done = finished_tiles(url, run, storage_options)
        log.info("%s: resuming run %s, %d tiles already written", url, run, len(done))
        return done
    if decision == "replace":
        log.info("%s: replacing the store of run %s (--overwrite)", url, target.attrs.get(RUN_ATTR, "unknown"))
        remove_store(target, storage_options)
    ds = stamp(
        template,
        provenance,
        {**(attrs or {}), PRODUCT_ATTR: product, RUN_ATTR: run, PARTS_ATTR: json.dumps(dict(parts), sort_keys=True)},
    )
    write_layout(url, ds, encoding, storage_options)
    overviews.add_layout(url, storage_options)
    return set()


def write_tile(
    url: str,
    variable: str,
    tile: Tile,
    block: np.ndarray,
    *,
    run: str,
    info: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``block`` (..., tile.height, tile.width) into the tile's region, then the tile's marker."""
    write_tile_blocks(url, {variable: block}, tile, run=run, info=info, storage_options=storage_options)


def write_tile_blocks(
    url: str,
    blocks: Mapping[str, np.ndarray],
    tile: Tile,
    *,
    run: str,
    info: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write each variable's block (..., tile.height, tile.width) into the tile's region, then the tile's marker:
    the marker is written only after every variable, so a tile interrupted between two is recomputed. In a series
    (a store with a ``year`` axis) the region is in the slot of the year that ``run`` writes, and blocks have no
    ``year`` axis."""
    # not through consolidated metadata: in a series it holds the earlier years' state, not the year being written
    group = zarr.open_group(zarr_store(url, storage_options), mode="r+", use_consolidated=False)
    where = years.slot(group.attrs, run)  # None without a year axis
    lead = () if where is None else (where[0],)
    arrays = {name: group[name] for name in blocks}
    for name, block in blocks.items():  # every shape checked before the first write
        shape = arrays[name].shape[len(lead) :]
        if block.shape[-2:] != (tile.height, tile.width) or block.shape[:-2] != shape[:-2]:
            raise ValueError(f"tile {tile.id}: {name} block {block.shape} does not fit {shape[:-2]} x tile")
    ys, xs = tile.slices
    for name, block in blocks.items():
        arrays[name][(*lead, ..., ys, xs)] = block
    # before the marker: a tile whose marker exists has its overview cells written too
    overviews.write_tile_levels(group, blocks, tile.y0, tile.x0, lead)
    fs, path = _fs(url, storage_options)
    folder = _manifest(path, run)
    fs.makedirs(folder, exist_ok=True)  # a no-op on object storage
    marker = {"tile": tile.id, "run": run, "y0": tile.y0, "x0": tile.x0, "height": tile.height, "width": tile.width}
    if where is not None:
        marker["year"] = where[1]
    fs.pipe_file(f"{folder}/{tile.id}.json", json.dumps({**marker, **(info or {})}).encode())


def finalise(url: str, *, n_tiles: int, run: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Mark the store complete (in a series: the year that ``run`` writes), after checking every tile of the run
    has its marker and building the overview levels coarser than a tile."""
    done = finished_tiles(url, run, storage_options)
    if len(done) < n_tiles:
        raise RuntimeError(f"{url}: only {len(done)} of {n_tiles} tiles written; not marking the store complete")
    with service_errors(url):
        attrs = zarr.open_group(zarr_store(url, storage_options), mode="r", use_consolidated=False).attrs
        where = years.slot(dict(attrs), run)
        overviews.build_coarse(url, storage_options, slot=None if where is None else where[0])
        if not years.finish_year(url, run, storage_options):
            mark_complete(url, storage_options)
