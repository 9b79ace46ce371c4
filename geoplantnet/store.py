"""Zarr output stores: layout, CF metadata, and commits that never leave a half-written store reading as valid.

A store is valid only when its root attrs carry ``geoplantnet_complete = "true"``, written last (after every chunk and
after consolidating metadata). :func:`open_store` refuses anything else. On a local filesystem the whole store is also
written beside its final name and renamed into place, so a crash leaves only a ``.tmp-*`` folder.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr
from distributed import Client, progress

import geoplantnet
from geoplantnet.config import RunConfig
from geoplantnet.errors import InputError

COMPLETE = "geoplantnet_complete"
INCOMPLETE = "{url}: store is incomplete (a run was interrupted); rerun the job to rebuild it"


class StoreError(InputError):
    """A store that is missing, incomplete, or not one of ours."""


def join(root: str, name: str) -> str:
    """``root``/``name`` for local paths and URLs alike."""
    return f"{root.rstrip('/')}/{name}"


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def default_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    compressor = zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {"compressors": [compressor]}
        if np.issubdtype(var.dtype, np.floating):
            enc["fill_value"] = np.nan
        encoding[str(name)] = enc
    return encoding


def stamp(ds: xr.Dataset, cfg: RunConfig | None, extra: Mapping[str, Any] | None) -> xr.Dataset:
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
    if cfg is not None:
        attrs.update(cfg.to_attrs())
    attrs.update(extra or {})
    ds.attrs = attrs
    for name, coord in ds.coords.items():
        # Fixed-width numpy strings have no Zarr v3 spec (other readers may fail); variable-length UTF-8 does.
        if coord.dtype.kind == "U":
            ds = ds.assign_coords({name: coord.astype(object)})
    for name in ds.data_vars:
        if "spatial_ref" in ds.coords and {"y", "x"} <= set(ds[name].dims):
            ds[name].attrs["grid_mapping"] = "spatial_ref"
    return ds


def zarr_store(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A zarr-python store for a local path or an fsspec URL (``s3://...``)."""
    if is_local(url):
        return str(_local_path(url))
    return zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options or {}))


def mark_complete(url: str, storage_options: Mapping[str, Any] | None) -> None:
    """Consolidate the metadata and set the completion flag: the last write of a store."""
    store = zarr_store(url, storage_options)
    root = zarr.open_group(store, mode="r+")
    root.attrs[COMPLETE] = "true"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        # tiled stores keep their tile manifest (plain JSON files) beside the arrays
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        zarr.consolidate_metadata(store)


def write_store(
    ds: xr.Dataset,
    url: str,
    *,
    cfg: RunConfig | None = None,
    attrs: Mapping[str, Any] | None = None,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    client: Client | None = None,
    show_progress: bool = False,
) -> str:
    """Write ``ds`` (Dask-backed or not) as a complete store at ``url``, replacing any store there.

    With a ``client`` the chunks are written by the cluster's workers (each task writes its own chunks); the
    completion flag is set only after every task succeeded.
    """
    ds = stamp(ds, cfg, attrs)
    enc = default_encoding(ds)
    for name, extra in (encoding or {}).items():
        enc.setdefault(name, {}).update(extra)
    target = url
    if is_local(url):
        final = _local_path(url)
        final.parent.mkdir(parents=True, exist_ok=True)
        target = str(final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"))
    else:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        if fs.exists(path):
            fs.rm(path, recursive=True)
    with warnings.catch_warnings():
        # Consolidated metadata is not (yet) in the Zarr v3 spec; zarr-python, xarray and GDAL read it all the same.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        delayed = ds.to_zarr(
            target,
            mode="w",
            encoding=enc,
            consolidated=True,
            compute=False,
            storage_options=None if is_local(url) else dict(storage_options or {}),
        )
    if client is not None:
        future = client.compute(delayed)
        if show_progress:
            progress(future)
        future.result()
    else:
        delayed.compute()
    mark_complete(target, storage_options)
    if is_local(url):
        final = _local_path(url)
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        if final.exists():
            os.replace(final, trash)
        os.replace(target, final)
        shutil.rmtree(trash, ignore_errors=True)
    return url


def open_store(url: str, *, storage_options: Mapping[str, Any] | None = None, **kwargs: Any) -> xr.Dataset:
    """Open a store written by :func:`write_store`; raise :class:`StoreError` if it is missing or incomplete."""
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
    return ds
