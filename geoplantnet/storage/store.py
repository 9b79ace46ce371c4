"""Zarr output stores: layout, CF metadata, and commits that never leave a half-written store reading as valid.

A store is valid only when its root attrs carry ``geoplantnet_complete = "true"``, written last (after every chunk and
after consolidating metadata). :func:`open_store` refuses anything else. On a local filesystem the whole store is also
written beside its final name and renamed into place, so a crash leaves only a ``.tmp-*`` folder (removed on failure).

Nothing is destroyed without consent (:func:`claim`): a path holding anything but a geoplantnet store is refused; a
store of another run (its ``geoplantnet_run`` fingerprint differs) is refused with what differs, unless the caller
passes ``overwrite=True``; and one run at a time writes a store (:mod:`geoplantnet.storage.lease`).

A store with a ``year`` axis (a series, :mod:`geoplantnet.storage.years`) is written year by year and never replaced
whole: :func:`claim` refuses it to a run without a year, and :func:`open_store` shows its complete years only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import numpy as np
import xarray as xr
import zarr

import geoplantnet
from geoplantnet.core.config import ConfigError, StoreConfig, redact_text
from geoplantnet.core.errors import InputError, RefusedError, ServiceError
from geoplantnet.core.hashing import fingerprint
from geoplantnet.runtime.interrupts import deferred
from geoplantnet.storage.lease import Lease, ensure_free, hold
from geoplantnet.storage.selection import index_species

if TYPE_CHECKING:
    from distributed import Client

try:  # the S3 client's own errors: s3fs passes some through untranslated (no credentials, endpoint unreachable)
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    _CLIENT_ERRORS: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
except ImportError:  # no S3 support installed: nothing to translate
    _CLIENT_ERRORS = ()

COMPLETE = "geoplantnet_complete"
RUN_ATTR = "geoplantnet_run"
PARTS_ATTR = "geoplantnet_run_parts"
PRODUCT_ATTR = "geoplantnet_product"
INCOMPLETE = "{url}: store is incomplete (a run was interrupted); rerun the job to rebuild it"
# A series (a store with a ``year`` axis, geoplantnet.storage.years): its identity (product, grid, tiling, variables,
# non-year coordinates) as a fingerprint and its parts, one record per year (JSON: slot, run, parts, attrs,
# completeness), and the complete years (a plain list: what open_store shows).
SERIES_ATTR = "geoplantnet_series"
SERIES_PARTS_ATTR = "geoplantnet_series_parts"
YEARS_ATTR = "geoplantnet_years"
YEARS_COMPLETE_ATTR = "geoplantnet_years_complete"
YEAR = "year"


class StoreError(InputError):
    """A store that is missing, incomplete, or not one of ours."""


def run_id(parts: Mapping[str, Any]) -> str:
    """The run fingerprint of named parts (each a short string: a hash, a size, a setting)."""
    return fingerprint(dict(parts))


def join(root: str, name: str) -> str:
    """``root``/``name`` for local paths and URLs alike."""
    return f"{root.rstrip('/')}/{name}"


def exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether anything is at ``url`` (a file, a folder, a store), with the store's timeouts."""
    with service_errors(url):
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        return bool(fs.exists(path))


def is_local(url: str) -> bool:
    """Whether ``url`` is a path on this machine's filesystem (no scheme, or ``file://``)."""
    return "://" not in url or url.startswith("file://")


def read_options_for(url: str, store: StoreConfig) -> dict[str, Any]:
    """The fsspec options to read an input at ``url`` (a model file): the store's (endpoint, credentials, timeouts)
    when it is an object-store URL, none for a local path (the store's options are never an error there)."""
    return {} if is_local(url) else storage_options_for(url, store)


def storage_options_for(url: str, store: StoreConfig) -> dict[str, Any]:
    """The fsspec options to open ``url`` with: ``store.storage_options`` plus the configured timeouts and retries
    (S3); a local output with storage options set is a configuration mistake (credentials meant for elsewhere)."""
    if is_local(url):
        if store.storage_options:
            raise ConfigError(
                f"store.storage_options is set but the output {url} is a local path: set store.root (or --out) to "
                "an object-store URL such as s3://bucket/path, or remove store.storage_options"
            )
        return {}
    options = dict(store.storage_options)
    if url.split("://", 1)[0] in ("s3", "s3a"):
        # botocore's own defaults wait 60 s per attempt and retry in "legacy" mode; bound both from the config
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", store.timeout)
        config.setdefault("read_timeout", store.timeout)
        config.setdefault("retries", {"max_attempts": store.retries + 1, "mode": "standard"})
        options["config_kwargs"] = config
    return options


def shown(url: str) -> str:
    """``url`` without credentials, for messages."""
    from geoplantnet.core.config import redact

    return str(redact({"url": url})["url"])


@contextlib.contextmanager
def service_errors(url: str) -> Iterator[None]:
    """Object-store and filesystem failures as one-line errors naming the store (never its credentials)."""
    try:
        yield
    except (RefusedError, InputError, ServiceError):
        raise
    except PermissionError:
        raise ServiceError(f"{shown(url)}: access denied (check the storage credentials)") from None
    except FileNotFoundError as exc:
        raise StoreError(f"{shown(url)}: not found ({exc})") from None
    except (OSError, TimeoutError) as exc:
        detail = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        where = shown(url)
        if is_local(url):
            raise StoreError(f"{where}: cannot write ({detail})") from None
        raise ServiceError(f"object store for {where} failed: {redact_text(detail)}") from None
    except _CLIENT_ERRORS as exc:
        raise ServiceError(f"object store for {shown(url)}: {_client_problem(exc)}") from None


def _client_problem(exc: Exception) -> str:
    """What an S3 client error means for the user, in a few words (never a credential: URLs are redacted)."""
    if isinstance(exc, NoCredentialsError):
        return (
            "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, an AWS profile, or key and secret "
            "in store.storage_options)"
        )
    detail = redact_text((str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200])
    if isinstance(exc, BotoConnectionError):
        return f"cannot reach the endpoint ({detail}); check store.storage_options' endpoint_url and the network"
    return f"failed ({detail})"


@dataclass(frozen=True)
class Target:
    """What is at an output path before a run writes it."""

    url: str
    state: Literal["absent", "empty", "store"]
    attrs: Mapping[str, Any]


def _read_attrs(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    try:
        return dict(zarr.open_group(zarr_store(url, storage_options), mode="r").attrs)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None


def inspect_target(url: str, storage_options: Mapping[str, Any] | None = None) -> Target:
    """What is at ``url``: nothing, an empty folder, or a geoplantnet store; :class:`RefusedError` for anything else
    (a user's folder or file is never written into, let alone replaced)."""
    with service_errors(url):
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        if not fs.exists(path):
            return Target(url, "absent", {})
        if fs.isfile(path):
            raise RefusedError(f"{shown(url)} is a file, not a geoplantnet store; refusing to replace it")
        attrs = _read_attrs(url, storage_options)
        if attrs is not None and (COMPLETE in attrs or RUN_ATTR in attrs):
            return Target(url, "store", attrs)
        entries = fs.ls(path, detail=False)
    if not entries:
        return Target(url, "empty", {})
    raise RefusedError(
        f"{shown(url)} exists and is not a geoplantnet store ({len(entries)} entries); refusing to write there: "
        "choose another output path"
    )


# The first contact with an object store: an endpoint that refuses connections or a store without credentials is
# told in a second or two, not after the configured retries' backoff (half a minute and more).
FIRST_CONTACT = {"max_attempts": 2, "connect_timeout": 5.0}


def check_reachable(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """A quick look at ``url`` on its object store (two attempts, short connect timeout): :class:`ServiceError`
    naming the store when it cannot be reached or refuses the credentials; nothing for a local path."""
    if is_local(url) or url.split("://", 1)[0] not in ("s3", "s3a"):
        return
    options = dict(storage_options or {})
    config = dict(options.get("config_kwargs") or {})
    config["retries"] = {"max_attempts": FIRST_CONTACT["max_attempts"], "mode": "standard"}
    config["connect_timeout"] = min(float(config.get("connect_timeout", 60.0)), FIRST_CONTACT["connect_timeout"])
    options["config_kwargs"] = config
    with service_errors(url):
        fs, path = fsspec.core.url_to_fs(url, **options)
        fs.exists(path)


def preflight(url: str, storage_options: Mapping[str, Any] | None, *, product: str, overwrite: bool) -> Target:
    """The checks a job makes before any work (minutes of region generation or training): the object store answers
    (:func:`check_reachable`), the output is not a user's folder or file, no live run is writing it, and it is not
    another product's store (unless ``overwrite``). The same checks run again, under the lease, just before writing
    (:func:`writing`)."""
    check_reachable(url, storage_options)
    target = inspect_target(url, storage_options)
    with service_errors(url):
        ensure_free(url, storage_options=storage_options)
    if target.state == "store" and not overwrite and target.attrs.get(PRODUCT_ATTR, product) != product:
        claim(target, product=product, parts={}, overwrite=False)
    return target


def parts_of(attrs: Mapping[str, Any], key: str = PARTS_ATTR) -> dict[str, Any]:
    """The fingerprint parts a store's attrs record under ``key`` (a JSON object; empty when absent or unreadable)."""
    try:
        parts = json.loads(attrs.get(key) or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return parts if isinstance(parts, dict) else {}


def differences(before: Mapping[str, Any], parts: Mapping[str, Any]) -> str:
    """What differs between the parts a store records and a run's, for a one-line refusal."""
    if not before:
        return "made by another version of geoplantnet"
    changed = [
        f"{k} {before.get(k, '-')} -> {parts.get(k, '-')}"
        for k in sorted(set(before) | set(parts))
        if before.get(k) != parts.get(k)
    ]
    return "; ".join(changed) or "same inputs, other run"


def claim(
    target: Target, *, product: str, parts: Mapping[str, Any], overwrite: bool
) -> Literal["new", "resume", "replace"]:
    """Decide what a run with fingerprint ``parts`` may do at ``target``: write a new store, resume its own, or
    replace another run's (only with ``overwrite``; otherwise :class:`RefusedError` naming what differs)."""
    if target.state != "store":
        return "new"
    if SERIES_ATTR in target.attrs:  # years of work: replaced year by year, by runs naming their year
        kind = target.attrs.get(PRODUCT_ATTR, "geoplantnet")
        raise RefusedError(
            f"{shown(target.url)} holds a {kind} series with a year axis (years {years_in(target.attrs)}); a run "
            "without a year never writes or replaces it, not even with --overwrite: write elsewhere"
        )
    if target.attrs.get(RUN_ATTR) == run_id(parts) and target.attrs.get(PRODUCT_ATTR, product) == product:
        return "resume"
    if overwrite:
        return "replace"
    kind = target.attrs.get(PRODUCT_ATTR, "geoplantnet")
    state = "complete" if target.attrs.get(COMPLETE) == "true" else "incomplete"
    raise RefusedError(
        f"{shown(target.url)} holds a {state} {kind} store of another run "
        f"({differences(parts_of(target.attrs), parts)}); pass --overwrite to replace it, or write elsewhere"
    )


def remove_store(target: Target, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete a geoplantnet store the user agreed to replace (never anything else)."""
    if target.state != "store":
        raise RefusedError(f"{shown(target.url)}: not a geoplantnet store; not removing it")
    with service_errors(target.url):
        fs, path = fsspec.core.url_to_fs(target.url, **dict(storage_options or {}))
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def leased(
    url: str, *, run: str, storage_options: Mapping[str, Any] | None, lease_ttl: float
) -> Iterator[tuple[Target, Lease]]:
    """Hold the store's lease for run ``run`` and yield what is at ``url`` as seen under it (a run that finished
    meanwhile is seen); a user's folder or file is refused before a lease is even placed beside it."""
    inspect_target(url, storage_options)
    with service_errors(url), hold(url, run, ttl=lease_ttl, storage_options=storage_options) as lease:
        yield inspect_target(url, storage_options), lease


@contextlib.contextmanager
def writing(
    url: str,
    *,
    product: str,
    parts: Mapping[str, Any],
    overwrite: bool,
    storage_options: Mapping[str, Any] | None,
    lease_ttl: float,
) -> Iterator[tuple[Literal["new", "resume", "replace"], Target, Lease]]:
    """Hold the store's lease, then decide (:func:`claim`) what the run may do there."""
    with leased(url, run=run_id(parts), storage_options=storage_options, lease_ttl=lease_ttl) as (target, lease):
        yield claim(target, product=product, parts=parts, overwrite=overwrite), target, lease


def _local_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def default_encoding(ds: xr.Dataset, *, clevel: int = 5) -> dict[str, dict[str, Any]]:
    """Zstd-compressed chunks of every data variable, NaN as the fill value of floating ones."""
    compressor = zarr.codecs.BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {"compressors": [compressor]}
        if np.issubdtype(var.dtype, np.floating):
            enc["fill_value"] = np.nan
        encoding[str(name)] = enc
    return encoding


def stamp(ds: xr.Dataset, provenance: Mapping[str, Any] | None, extra: Mapping[str, Any] | None) -> xr.Dataset:
    """``ds`` with CF and provenance attrs (version, time, the run's redacted configuration as
    ``RunConfig.to_attrs`` gives it) and an incomplete flag."""
    ds = ds.copy()
    attrs = dict(ds.attrs)
    attrs.update(
        {
            "Conventions": "CF-1.10",
            "geoplantnet_version": geoplantnet.__version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            COMPLETE: "false",
        }
    )
    attrs.update(provenance or {})
    attrs.update(extra or {})
    ds.attrs = attrs
    # Fixed-width numpy strings have no Zarr v3 spec (other readers may fail); variable-length UTF-8 does. All at once,
    # as bare variables: a coordinate DataArray would carry its index back in (species_name brings back species).
    strings = {name: coord.variable.astype(object) for name, coord in ds.coords.items() if coord.dtype.kind == "U"}
    ds = ds.assign_coords(strings)
    for name in ds.data_vars:
        if "spatial_ref" in ds.coords and {"y", "x"} <= set(ds[name].dims):
            ds[name].attrs["grid_mapping"] = "spatial_ref"
    return ds


def write_layout(
    url: str, ds: xr.Dataset, encoding: Mapping[str, Mapping[str, Any]], storage_options: Mapping[str, Any] | None
) -> None:
    """Write a store's layout: metadata of every array, and the values of its plain (non-Dask) arrays and coordinates;
    Dask-backed variables are never computed (their chunks stay unwritten, reading as the fill value)."""
    with service_errors(url), deferred():  # the layout is written whole or the run stops before it
        ds.to_zarr(
            url,
            mode="w",
            compute=False,
            encoding={k: dict(v) for k, v in encoding.items()},
            consolidated=False,
            storage_options=dict(storage_options or {}) or None,
        )


def zarr_store(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A zarr-python store for a local path or an fsspec URL (``s3://...``)."""
    if is_local(url):
        return str(_local_path(url))
    return zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options or {}))


def mark_complete(url: str, storage_options: Mapping[str, Any] | None) -> None:
    """Consolidate the metadata and set the completion flag: the last write of a store."""
    update_attrs(url, storage_options, {COMPLETE: "true"})


def update_attrs(url: str, storage_options: Mapping[str, Any] | None, attrs: Mapping[str, Any]) -> None:
    """Set root ``attrs`` and consolidate the metadata (so readers see the arrays' current shapes)."""
    store = zarr_store(url, storage_options)
    # opened through its consolidated metadata, if any: until re-consolidated just below, readers see the new attrs
    # beside the arrays' previous metadata, never a store without consolidated metadata (which reads as incomplete)
    root = zarr.open_group(store, mode="r+")
    root.attrs.update(dict(attrs))
    with beside_the_arrays():
        zarr.consolidate_metadata(store)


@contextlib.contextmanager
def beside_the_arrays() -> Iterator[None]:
    """Silence zarr's warnings about what geoplantnet stores keep beside their arrays: consolidated metadata (not in
    the Zarr v3 spec; zarr-python, xarray and GDAL read it all the same), the tile manifest (plain JSON files)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        yield


def write_store(
    ds: xr.Dataset,
    url: str,
    *,
    product: str,
    parts: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    client: Client | None = None,
    show_progress: bool = False,
    overwrite: bool = False,
    lease_ttl: float = 120.0,
) -> str:
    """Write ``ds`` (Dask-backed or not) as a complete ``product`` store at ``url``.

    ``parts`` name what the output is made of (:func:`run_id`); a store of the same run there is rewritten, one of
    another run only with ``overwrite``, anything else never (:func:`claim`). With a ``client`` the chunks are
    written by the cluster's workers; the completion flag is set only after every task succeeded.
    """
    ds = stamp(
        ds,
        provenance,
        {
            **(attrs or {}),
            PRODUCT_ATTR: product,
            RUN_ATTR: run_id(parts),
            PARTS_ATTR: json.dumps(dict(parts), sort_keys=True),
        },
    )
    enc = default_encoding(ds)
    for name, extra in (encoding or {}).items():
        enc.setdefault(name, {}).update(extra)
    with writing(
        url, product=product, parts=parts, overwrite=overwrite, storage_options=storage_options, lease_ttl=lease_ttl
    ) as (decision, target, lease):
        if is_local(url):
            final = _local_path(url)
            final.parent.mkdir(parents=True, exist_ok=True)
            temp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                _write(ds, str(temp), enc, None, client, show_progress)
                lease.check()
                trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
                if final.exists():  # a store claim() allowed us to replace, or an empty folder
                    os.replace(final, trash)
                os.replace(temp, final)
                shutil.rmtree(trash, ignore_errors=True)
            finally:
                shutil.rmtree(temp, ignore_errors=True)  # only left when the write failed or was interrupted
        else:
            with service_errors(url):
                if decision != "new":
                    remove_store(target, storage_options)
                _write(ds, url, enc, storage_options, client, show_progress)
                lease.check()
                mark_complete(url, storage_options)
    return url


def _write(
    ds: xr.Dataset,
    target: str,
    encoding: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None,
    client: Client | None,
    show_progress: bool,
) -> None:
    with warnings.catch_warnings(), deferred():
        # Consolidated metadata is not (yet) in the Zarr v3 spec; zarr-python, xarray and GDAL read it all the same.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        delayed = ds.to_zarr(
            target,
            mode="w",
            encoding=dict(encoding),
            consolidated=True,
            compute=False,
            storage_options=dict(storage_options or {}) or None,
        )
    if client is not None:
        from distributed import progress

        future = client.compute(delayed)
        try:
            if show_progress:
                progress(future)
            future.result()
        except BaseException:
            # tasks already running keep writing chunks: let them end before the caller removes the temporary store
            future.cancel()
            _drain(client)
            raise
    else:
        delayed.compute()
    # imported here: overviews builds on this module (the one place a store written whole gets its levels)
    from geoplantnet.storage import overviews

    if overviews.add_layout(target, storage_options, tiled=False):  # streamed from the chunks just written
        overviews.build_coarse(target, storage_options, tiled=False)
    if is_local(target):
        mark_complete(target, None)


def _drain(client: Client, timeout: float = 30.0) -> None:
    """Wait (bounded) until the cluster runs no task: a cancelled write's running chunks are done, none starts."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(Exception):  # the cluster may already be going down: nothing then writes either
        while time.monotonic() < deadline and any(client.processing().values()):
            time.sleep(0.1)


def open_store(url: str, *, storage_options: Mapping[str, Any] | None = None, **kwargs: Any) -> xr.Dataset:
    """Open a complete geoplantnet store (:class:`StoreError` if it is missing or incomplete). A series (a store with
    a ``year`` axis) shows its complete years only, by increasing year: a year being written, interrupted or being
    replaced is left out (unwritten tiles of its slot read as no data). The ``species`` axis, where there is one,
    selects by id (``sel(species="sp0001")``) or by name (``sel(species_name="Quercus robur")``); use
    :func:`geoplantnet.storage.selection.unindex_species` before ``reindex`` along ``species``."""
    try:
        ds = xr.open_zarr(url, consolidated=True, storage_options=dict(storage_options or {}) or None, **kwargs)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{url}: no Zarr store here ({exc.__class__.__name__})") from None
    except PermissionError:
        raise StoreError(f"{url}: access denied (check the storage credentials, store.storage_options)") from None
    except ValueError as exc:
        # metadata is consolidated by the last step of a write: a store without it was never finished
        if "onsolidated" not in str(exc):
            raise
        raise StoreError(INCOMPLETE.format(url=url)) from None
    if ds.attrs.get(COMPLETE) != "true":
        raise StoreError(INCOMPLETE.format(url=url))
    if YEARS_COMPLETE_ATTR in ds.attrs:
        ds = complete_years(ds)
    # species by id or scientific name, and an unknown one is one clear error with close matches
    return index_species(ds)


def years_in(attrs: Mapping[str, Any]) -> str:
    """The years a series' attrs record, for messages (``2024, 2025 (incomplete)``)."""
    records = parts_of(attrs, YEARS_ATTR)
    complete = set(attrs.get(YEARS_COMPLETE_ATTR) or [])
    return ", ".join(f"{y}{'' if int(y) in complete else ' (incomplete)'}" for y in sorted(records, key=int)) or "none"


def complete_years(ds: xr.Dataset) -> xr.Dataset:
    """A series' complete years (``geoplantnet_years_complete``), by increasing year: the on-disk ``year`` axis is in
    the order years were added, and holds years still being written."""
    complete = {int(y) for y in ds.attrs.get(YEARS_COMPLETE_ATTR) or []}
    years = [int(y) for y in ds[YEAR].values]
    keep = sorted((y, i) for i, y in enumerate(years) if y in complete)
    return ds.isel({YEAR: [i for _, i in keep]})
