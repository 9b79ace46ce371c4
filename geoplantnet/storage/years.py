"""The ``year`` axis of a tiled store: a series that annual refreshes extend year by year, never rewriting other years.

A refresh is a run whose parts name the year (:func:`year_parts`): its run id is that year's, so its tile markers
(``_tiles/<run>/<tile>.json``) belong to that year alone, and a tile task finds its year's slot from its run
(:func:`slot`) without being told.

Layout. Every data variable of a product's layout gets a leading ``year`` dimension with chunks (and shards) of 1
along it; ``year`` (int32) is a coordinate in the order the years were added. The first year creates the store
(``year`` of length 1); a later year grows every array along ``year`` (a metadata change: no chunk of another year is
read or written), writes its ``year`` value and the layout's plain arrays (e.g. per-species thresholds) in its slot,
and its tiles write only their region of that slot. A chunk never written reads as the fill value (no data).

Identity. A series is one product on one grid, tiling and set of variables with the same non-year coordinates (the
species axis, say): ``geoplantnet_series`` fingerprints them (:func:`series_parts`). A year joins only a series of the
same identity; anything else is refused in one line, whatever ``overwrite`` says.

Completion is per year. ``geoplantnet_years`` (JSON) records each year's slot, run, parts and provenance (the job's
attrs: model versions, the configuration); ``geoplantnet_years_complete`` lists the complete years, the only ones
:func:`geoplantnet.storage.store.open_store` shows. A year is added to that list, and the metadata consolidated, when
every tile of its run has a marker; ``geoplantnet_complete`` is "true" while at least one year is complete. The root's
run and provenance attrs are those of the last run that wrote the store.

What a yearly run may do (:func:`claim_year`, under the store's lease):

- nothing there -> ``new`` series holding this year; a series without this year -> ``append`` it (years come in any
  order, so a missed year can be filled in later; the on-disk axis is in the order added, ``open_store`` sorts);
- this year, same run -> ``resume`` (the tiles without a marker are computed: none once the year is complete,
  ``overwrite`` or not, as for a store without a year axis);
- this year, another run -> ``replace`` it, only with ``overwrite``: the year is hidden first, then its chunks and its
  old markers are removed and its tiles rewritten; other years are never touched;
- a store without a year axis, another product, grid, tiling or variables -> refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import fsspec
import numpy as np
import xarray as xr
import zarr

from geoplantnet.core.errors import RefusedError
from geoplantnet.storage.lease import Lease
from geoplantnet.storage.store import (
    COMPLETE,
    PARTS_ATTR,
    PRODUCT_ATTR,
    RUN_ATTR,
    SERIES_ATTR,
    SERIES_PARTS_ATTR,
    YEAR,
    YEARS_ATTR,
    YEARS_COMPLETE_ATTR,
    StoreError,
    Target,
    beside_the_arrays,
    differences,
    exists,
    leased,
    parts_of,
    run_id,
    service_errors,
    shown,
    stamp,
    update_attrs,
    write_layout,
    years_in,
    zarr_store,
)

log = logging.getLogger(__name__)

YearDecision = Literal["new", "append", "resume", "replace"]
YEAR_ATTRS = {"long_name": "year the maps describe (one slot per yearly run)"}


def year_parts(parts: Mapping[str, Any], year: int) -> dict[str, Any]:
    """The fingerprint parts of the run that writes ``year``: ``parts`` and the year (its run id is the year's)."""
    if isinstance(year, bool) or not isinstance(year, int | np.integer) or not 1 <= year <= 9999:
        raise ValueError(f"year must be an integer year such as 2025, not {year!r}")
    if YEAR in parts and str(parts[YEAR]) != str(year):
        raise ValueError(f"the run's parts name year {parts[YEAR]}, not {year}")
    return {**parts, YEAR: str(int(year))}


def series_parts(template: xr.Dataset, encoding: Mapping[str, Mapping[str, Any]], product: str) -> dict[str, str]:
    """The identity of a series whose years have the layout ``template``/``encoding`` (without a ``year`` axis): the
    product, each coordinate (size and a hash of its values; the CRS of ``spatial_ref``), each variable (dims,
    shape, stored dtype, chunks, shards, fill value). Short strings, so a refusal can say what differs."""
    parts = {"product": product}
    for name, coord in sorted(template.coords.items(), key=lambda kv: str(kv[0])):
        values = np.asarray(coord.values)
        digest = run_id({"values": values.tolist(), "crs": coord.attrs.get("crs_wkt")})[:8]
        parts[str(name)] = f"{','.join(map(str, coord.dims)) or 'scalar'} n={values.size} {digest}"
    for name, var in sorted(template.data_vars.items(), key=lambda kv: str(kv[0])):
        enc = encoding.get(str(name), {})
        layout = [f"({','.join(map(str, var.dims))})", "x".join(map(str, var.shape)), str(enc.get("dtype", var.dtype))]
        layout += [f"{key}={'x'.join(map(str, enc[key]))}" for key in ("chunks", "shards") if key in enc]
        if "fill_value" in enc:
            layout.append(f"fill={enc['fill_value']}")
        parts[str(name)] = " ".join(layout)
    return parts


def with_year(
    template: xr.Dataset, encoding: Mapping[str, Mapping[str, Any]], year: int
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """A product's layout with a leading ``year`` axis holding ``year``, chunks (and shards) of 1 along it."""
    ds = template.expand_dims({YEAR: np.asarray([year], dtype="int32")})  # data variables only; Dask ones stay lazy
    ds[YEAR].attrs.update(YEAR_ATTRS)
    enc: dict[str, dict[str, Any]] = {YEAR: {"chunks": (1,)}}
    for name, var in ds.data_vars.items():
        e = dict(encoding.get(str(name), {}))
        for key in ("chunks", "shards"):
            if key in e:
                e[key] = (1, *e[key])
        if var.chunks is None:  # a plain array: one chunk per year, so a year's values are its own objects
            e.setdefault("chunks", (1, *var.shape[1:]))
        enc[str(name)] = e
    return ds, enc


def year_records(attrs: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Each year of a series (empty for a store without a year axis): its ``slot`` on the ``year`` axis, ``run``,
    ``parts``, ``attrs`` (provenance), ``started`` and ``completed`` (ISO times; None until complete)."""
    return {int(year): record for year, record in parts_of(attrs, YEARS_ATTR).items()}


def slot(attrs: Mapping[str, Any], run: str) -> tuple[int, int] | None:
    """(slot, year) that run ``run`` writes in a series with root ``attrs``; None for a store without a year axis."""
    if YEARS_ATTR not in attrs:
        return None
    for year, record in year_records(attrs).items():
        if record.get("run") == run:
            return int(record["slot"]), year
    raise ValueError(f"run {run} writes no year of this series (years {sorted(year_records(attrs))})")


def claim_year(
    target: Target,
    *,
    product: str,
    series: Mapping[str, str],
    parts: Mapping[str, Any],
    year: int,
    overwrite: bool,
) -> YearDecision:
    """Decide what the run of ``parts`` (naming ``year``) may do at ``target``; :class:`RefusedError` in one line for
    a store without a year axis, a series of another identity (``series``), or ``year`` of another run without
    ``overwrite``. ``overwrite`` only ever replaces ``year``."""
    if target.state != "store":
        return "new"
    attrs = target.attrs
    kind = attrs.get(PRODUCT_ATTR, "geoplantnet")
    if SERIES_ATTR not in attrs:
        raise RefusedError(
            f"{shown(target.url)} holds a {kind} store without a year axis; a yearly run adds years only to a series "
            "and never replaces another store (not even with --overwrite): write the series elsewhere"
        )
    if attrs.get(PRODUCT_ATTR) != product or attrs[SERIES_ATTR] != run_id(series):
        raise RefusedError(
            f"{shown(target.url)} holds a {kind} series of another layout "
            f"({differences(parts_of(attrs, SERIES_PARTS_ATTR), series)}); a year joins a series of the same product, "
            "grid, tiling and variables only (--overwrite replaces a year, never the series): write elsewhere"
        )
    record = year_records(attrs).get(int(year))
    if record is None:
        return "append"
    if record.get("run") == run_id(parts):
        return "resume"
    if overwrite:
        return "replace"
    state = "complete" if int(year) in set(attrs.get(YEARS_COMPLETE_ATTR) or []) else "incomplete"
    raise RefusedError(
        f"{shown(target.url)}: year {year} holds a {state} run of other inputs "
        f"({differences(record.get('parts') or {}, parts)}); pass --overwrite to replace year {year} (the other "
        "years are kept), or write elsewhere"
    )


@contextlib.contextmanager
def writing_year(
    url: str,
    *,
    product: str,
    series: Mapping[str, str],
    parts: Mapping[str, Any],
    year: int,
    overwrite: bool,
    storage_options: Mapping[str, Any] | None,
    lease_ttl: float,
) -> Iterator[tuple[YearDecision, Target, Lease]]:
    """Hold the store's lease, then decide (:func:`claim_year`) what the run of ``year`` may do there."""
    with leased(url, run=run_id(parts), storage_options=storage_options, lease_ttl=lease_ttl) as (target, lease):
        decision = claim_year(target, product=product, series=series, parts=parts, year=year, overwrite=overwrite)
        yield decision, target, lease


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def prepare_year(
    url: str,
    template: xr.Dataset,
    encoding: Mapping[str, Mapping[str, Any]],
    *,
    decision: str,
    target: Target,
    product: str,
    parts: Mapping[str, Any],
    year: int,
    provenance: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str | None:
    """Make ``year``'s slot ready for the run of ``parts`` after :func:`claim_year` decided ``decision``: a new series,
    a slot appended, a year hidden and emptied for its replacement, or (resume) its plain arrays written again.
    Returns the run whose year was replaced (its markers are the caller's to clear), else None."""
    run = run_id(parts)
    ds, enc = with_year(template, encoding, year)
    provenance = {**template.attrs, **(provenance or {}), **(attrs or {})}
    record = {"run": run, "parts": dict(parts), "attrs": provenance, "started": _now(), "completed": None}
    root = {**provenance, RUN_ATTR: run, PARTS_ATTR: json.dumps(dict(parts), sort_keys=True)}
    if decision == "new":
        series = series_parts(template, encoding, product)
        extra = {
            **root,
            PRODUCT_ATTR: product,
            SERIES_ATTR: run_id(series),
            SERIES_PARTS_ATTR: json.dumps(series, sort_keys=True),
            YEARS_ATTR: _dumps({year: {**record, "slot": 0}}),
            YEARS_COMPLETE_ATTR: [],
        }
        write_layout(url, stamp(ds, provenance, extra), enc, storage_options)
        return None
    records = year_records(target.attrs)
    complete = [y for y in target.attrs.get(YEARS_COMPLETE_ATTR) or [] if y != year]
    with service_errors(url):
        if decision == "resume":
            # idempotent, and it repairs a replacement interrupted before its plain arrays were written
            _write_slot(url, ds, records[year]["slot"], storage_options)
            log.info("%s: resuming year %d (run %s)", url, year, run)
            return None
        if decision == "append":
            index = max((int(r["slot"]) for r in records.values()), default=-1) + 1
            _grow(url, index + 1, storage_options)
            _write_slot(url, ds, index, storage_options)
            # registered last: a run interrupted before this appends the same slot again (nothing is left dangling)
            records[year] = {**record, "slot": index}
            update_attrs(url, storage_options, {**root, YEARS_ATTR: _dumps(records)})
            log.info("%s: year %d appended at slot %d", url, year, index)
            return None
        # replace: hidden first (out of the complete years), so no reader sees the old year half overwritten
        old = records[year]
        records[year] = {**record, "slot": int(old["slot"])}
        update_attrs(
            url,
            storage_options,
            {
                **root,
                YEARS_ATTR: _dumps(records),
                YEARS_COMPLETE_ATTR: complete,
                COMPLETE: "true" if complete else "false",
            },
        )
        log.info("%s: replacing year %d of run %s (--overwrite); other years untouched", url, year, old.get("run"))
        _clear_slot(url, int(old["slot"]), storage_options)
        _write_slot(url, ds, int(old["slot"]), storage_options)
    return str(old.get("run"))


def finish_year(url: str, run: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Mark the year written by ``run`` complete and consolidate the metadata; False (nothing done) for a store
    without a year axis. The caller has checked every tile of the run has its marker."""
    with service_errors(url):
        attrs = dict(zarr.open_group(zarr_store(url, storage_options), mode="r").attrs)
        where = slot(attrs, run)
        if where is None:
            return False
        year = where[1]
        records = year_records(attrs)
        records[year]["completed"] = _now()
        complete = sorted({*(int(y) for y in attrs.get(YEARS_COMPLETE_ATTR) or []), year})
        update_attrs(
            url,
            storage_options,
            {
                YEARS_ATTR: _dumps(records),
                YEARS_COMPLETE_ATTR: complete,
                COMPLETE: "true",
            },
        )
    return True


def _dumps(records: Mapping[int, Any]) -> str:
    """``geoplantnet_years`` of ``records`` (JSON keys are strings)."""
    return json.dumps({str(year): record for year, record in records.items()}, sort_keys=True, default=str)


def _year_arrays(url: str, storage_options: Mapping[str, Any] | None) -> Iterator[tuple[str, zarr.Array]]:
    """The arrays of the store, overview levels included, whose first dimension is ``year`` (the ``year`` coordinate
    included), by path."""
    # not through the consolidated metadata: it lags behind a resize until the next consolidation
    group = zarr.open_group(zarr_store(url, storage_options), mode="r+", use_consolidated=False)
    with beside_the_arrays():  # every depth: the overview levels' arrays have the year axis too
        arrays = [(name, node) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
    for name, array in arrays:
        dims = array.metadata.dimension_names or ()
        if dims and dims[0] == YEAR:
            yield name, array


def _grow(url: str, n: int, storage_options: Mapping[str, Any] | None) -> None:
    """Every year array to ``n`` slots: metadata only (zarr deletes chunks when an array shrinks, never here)."""
    for _, array in _year_arrays(url, storage_options):
        if array.shape[0] < n:
            array.resize((n, *array.shape[1:]))


def _write_slot(url: str, ds: xr.Dataset, index: int, storage_options: Mapping[str, Any] | None) -> None:
    """The ``year`` value and the plain (non-Dask) variables of ``ds`` (one year) at ``index`` on the ``year`` axis."""
    group = zarr.open_group(zarr_store(url, storage_options), mode="r+", use_consolidated=False)
    # directly: xarray leaves index coordinates out of region writes
    group[YEAR][index] = int(ds[YEAR].values[0])
    plain = [name for name, var in ds.data_vars.items() if var.chunks is None]
    if not plain:
        return
    part = ds[plain].drop_vars(list(ds[plain].coords))
    with beside_the_arrays():  # through xarray: its CF encoding (fill values, scales) as when the layout was written
        part.to_zarr(
            url,
            mode="r+",
            region={YEAR: slice(index, index + 1)},
            consolidated=False,
            storage_options=dict(storage_options or {}) or None,
        )


def _clear_slot(url: str, index: int, storage_options: Mapping[str, Any] | None) -> None:
    """Remove every chunk object of slot ``index`` (it reads as no data again): with chunks of 1 along ``year`` and
    ``/``-separated chunk keys, they are exactly the objects under ``<array>/c/<index>/``."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    for name, array in _year_arrays(url, storage_options):
        if name == YEAR:
            continue
        encoding = array.metadata.chunk_key_encoding
        per_year = array.metadata.chunk_grid.chunk_shape[0] == 1
        if not per_year or getattr(encoding, "name", None) != "default" or getattr(encoding, "separator", None) != "/":
            raise ValueError(f"{name}: not the year layout of this module (chunk keys {encoding}); not clearing it")
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{path.rstrip('/')}/{name}/c/{index}", recursive=True)


def complete_slot(url: str, attrs: Mapping[str, Any], year: int | None) -> int | None:
    """The slot of ``year`` in the series with root ``attrs`` at ``url``, refused (one line) unless that year is
    complete; None for ``year`` None on a store without a year axis (the single-year layout)."""
    if year is None:
        if YEARS_ATTR in attrs:
            raise StoreError(
                f"{shown(url)} is a series of years ({years_in(attrs)}) written by geoplantnet refresh: refresh maps "
                "each year's products; to read one year, open_store(...).sel(year=YYYY)"
            )
        return None
    if YEARS_ATTR not in attrs:
        raise StoreError(f"{shown(url)} has no year axis: it is not a series a yearly run can read year {year} of")
    record = year_records(attrs).get(int(year))
    if record is None or int(year) not in {int(y) for y in attrs.get(YEARS_COMPLETE_ATTR) or []}:
        raise StoreError(f"{shown(url)} has no complete year {year} (years: {years_in(attrs)})")
    return int(record["slot"])


def year_view(ds: xr.Dataset, year: int | None) -> xr.Dataset:
    """One year of a series opened by :func:`geoplantnet.storage.store.open_store` (the dataset itself without a
    year axis or ``year``)."""
    return ds.sel({YEAR: int(year)}) if year is not None and YEAR in ds.dims else ds


def complete_years(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """The complete years of the series at ``url`` and their records, by year (empty: nothing there yet). Read raw:
    a series whose first year was interrupted has no complete year, and the run completing it must still run."""
    if not exists(url, dict(storage_options or {})):
        return {}
    attrs = zarr.open_group(zarr_store(url, storage_options), mode="r").attrs
    return {y: r for y, r in sorted(year_records(dict(attrs)).items()) if r.get("completed")}


def previous_year(url: str, year: int, storage_options: Mapping[str, Any] | None = None) -> int | None:
    """The latest complete year before ``year`` of the series at ``url`` (None: nothing earlier)."""
    earlier = [y for y in complete_years(url, storage_options) if y < year]
    return max(earlier) if earlier else None
