"""STAC items -> lazy Sentinel-2 cubes ``(time, band, y, x)`` exactly on a :class:`~geoplantnet.core.grid.Grid`.

stackstac builds the Dask graph from item metadata only; no pixel is read until a task runs. Every asset is warped
onto the grid's EPSG:3035 pixels (items in other CRSs, e.g. UTM tiles, are reprojected by GDAL inside the read task).
On top of that graph this module applies ``raster:bands`` scale/offset per item and band (so the L2A baseline-04.00
offset of -0.1 is honoured item by item), builds the SCL cloud mask, seasonal composites and spectral indices.

Failure modes are ``CubeError`` (a ``ValueError``) with one line naming the item, band or href: at build time for
empty searches, grids outside every footprint, missing bands and (``check_assets=True``) missing or truncated COGs;
at compute time, inside the Dask task, for a COG that cannot be read (the message names its href) unless
``errors_as_nodata=True``, which turns unreadable assets into NaN (documented fill) with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import dask.array as da
import numpy as np
import pandas as pd
import pystac
import rasterio
import stackstac
import xarray as xr
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from stackstac.rio_reader import AutoParallelRioReader

from geoplantnet.core.config import CubeConfig
from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import LONLAT, Grid, overlaps, transform_bounds
from geoplantnet.sources.catalog import band_assets
from geoplantnet.sources.gdal import gdal_env

# SCL classes treated as "not a clear land/water observation": no data, saturated, cloud shadow, cloud medium and
# high probability, thin cirrus. Snow (11) is kept: it is a real surface state for alpine plant habitats.
DEFAULT_CLOUD_CLASSES = (0, 1, 3, 8, 9, 10)

# Normalised differences (a - b) / (a + b) by canonical band name.
INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("B08", "B04"),
    "ndwi": ("B03", "B08"),  # McFeeters: open water
    "ndmi": ("B08", "B11"),  # moisture
}

_SEASONS = {12: "DJF", 3: "MAM", 6: "JJA", 9: "SON"}


class CubeError(InputError):
    """Items, bands, grid or files that cannot make a cube (one line naming the item, band or href)."""


class _HrefReader(AutoParallelRioReader):
    """stackstac's reader, but a failed read raises a one-line ``CubeError`` naming the href (inside the task)."""

    def read(self, window: Any, **kwargs: Any) -> np.ndarray:
        try:
            return super().read(window, **kwargs)
        except RuntimeError as e:
            cause = e.__cause__ or e
            failure = f"cannot read asset {self.url}: {type(cause).__name__}: {' '.join(str(cause).split())}"
        # Raised outside the except block, so no exception chain: rasterio's errors do not unpickle, and distributed
        # would then hand the client a bare Exception instead of a CubeError. The message names href and cause.
        raise CubeError(failure)


@dataclass(frozen=True)
class _Entry:
    """One item as stackstac sees it, plus the per-band scale/offset we apply ourselves."""

    id: str
    plain: dict[str, Any]
    scale_offset: tuple[tuple[float, float], ...]
    cloud_cover: float


# --- item normalisation ----------------------------------------------------------------------------------------------
def _epsg_of(fields: Mapping[str, Any]) -> int | None:
    if fields.get("proj:epsg") is not None:
        return int(fields["proj:epsg"])
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    return None


def _to_dict(item: pystac.Item | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, pystac.Item):
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        for key, asset in item.assets.items():
            # Relative hrefs (items read from a static catalog) must be absolute for GDAL.
            d["assets"][key]["href"] = asset.get_absolute_href() or asset.href
        return d
    return dict(item)


def _asset_key(item: Mapping[str, Any], band: str) -> str:
    """The asset holding ``band``: the key itself, else an asset whose ``eo:bands`` name or common name matches."""
    assets = item["assets"]
    if band in assets:
        return band
    for key, asset in assets.items():
        for eo in asset.get("eo:bands") or []:
            if band in (eo.get("name"), eo.get("common_name")):
                return key
    raise CubeError(f"item {item['id']}: no asset for band {band!r} (assets: {', '.join(sorted(assets))})")


def _scale_offset(asset: Mapping[str, Any]) -> tuple[float, float]:
    bands = asset.get("raster:bands") or [{}]
    return float(bands[0].get("scale", 1.0)), float(bands[0].get("offset", 0.0))


def _entry(item: pystac.Item | Mapping[str, Any], bands: Sequence[str]) -> _Entry:
    d = _to_dict(item)
    props = dict(d.get("properties") or {})
    item_epsg = _epsg_of(props)
    if item_epsg is not None:
        props["proj:epsg"] = item_epsg  # stackstac 0.5 reads only proj:epsg
    assets: dict[str, Any] = {}
    for band in bands:
        asset = dict(d["assets"][_asset_key(d, band)])
        epsg = _epsg_of(asset)
        if epsg is not None:
            asset["proj:epsg"] = epsg
        assets[band] = asset
    cloud = props.get("eo:cloud_cover")
    plain = {
        "type": "Feature",
        "id": d["id"],
        "bbox": d.get("bbox"),
        "geometry": d.get("geometry"),
        "properties": {k: v for k, v in props.items() if k == "datetime" or k.startswith("proj:")},
        "assets": assets,
    }
    if not plain["properties"].get("datetime"):
        # Static layers (start/end only) still need a sortable time for stackstac.
        plain["properties"]["datetime"] = props.get("start_datetime") or "1970-01-01T00:00:00Z"
    return _Entry(
        d["id"],
        plain,
        tuple(_scale_offset(assets[b]) for b in bands),
        float("nan") if cloud is None else float(cloud),
    )


def item_footprint(item: Mapping[str, Any], epsg: int) -> tuple[float, float, float, float] | None:
    """The item's lon/lat bbox in the grid's CRS (edges densified), or None when the item has no bbox."""
    bbox = item.get("bbox")
    if not bbox:
        return None
    lon0, lat0, lon1, lat1 = (bbox[0], bbox[1], bbox[3], bbox[4]) if len(bbox) == 6 else bbox  # 3-D bbox: drop z
    return transform_bounds((lon0, lat0, lon1, lat1), LONLAT, epsg)


# --- asset checks ----------------------------------------------------------------------------------------------------
def _is_local(href: str) -> bool:
    scheme = urlparse(href).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def check_href(href: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Open a raster's header (no pixels) and, for local files, check that every tile lies inside the file.

    Catches missing, unreadable, multi-band and truncated COGs before a Dask task does; raises ``CubeError``.
    ``storage_options``: the object store of ``s3://`` hrefs (:func:`geoplantnet.sources.gdal.gdal_env`).
    """
    try:
        with gdal_env(storage_options).open, rasterio.open(href) as ds:
            if ds.count != 1:
                raise CubeError(f"asset {href} has {ds.count} bands; each STAC asset must be a single-band raster")
            if not _is_local(href):
                return
            path = urlparse(href).path if href.startswith("file:") else href
            size = os.path.getsize(path)
            rows = -(-ds.height // ds.block_shapes[0][0])
            cols = -(-ds.width // ds.block_shapes[0][1])
            end = 0
            for i in range(rows):
                for j in range(cols):
                    off = ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1)
                    nbytes = ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=1)
                    if off is not None and nbytes is not None:
                        end = max(end, int(off) + int(nbytes))
            if end > size:
                raise CubeError(f"asset {href} is truncated: tiles reach byte {end} but the file has {size} bytes")
    except (RasterioError, OSError) as e:
        raise CubeError(f"asset {href} cannot be opened: {' '.join(str(e).split())}") from e


# --- the stack -------------------------------------------------------------------------------------------------------
def _resampling(name: str) -> Resampling:
    try:
        return Resampling[name]
    except KeyError:
        raise CubeError(f"unknown resampling {name!r}; use one of {', '.join(r.name for r in Resampling)}") from None


def stack_items(
    items: Iterable[pystac.Item | Mapping[str, Any]],
    grid: Grid,
    bands: Sequence[str],
    *,
    dtype: str = "float32",
    fill_value: float | int = np.nan,
    resampling: str = "nearest",
    chunk: int = 512,
    rescale: bool = True,
    check_assets: bool = False,
    errors_as_nodata: bool = False,
    what: str = "cube",
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Lazy ``(time, band, y, x)`` of ``bands`` from ``items`` warped onto ``grid``; coords exactly the grid's.

    ``rescale`` applies each asset's ``raster:bands`` scale/offset (float dtypes only). Items whose footprint misses
    the grid are dropped; time is sorted ascending. ``what`` names the caller in error messages.
    ``storage_options``: the object store the ``s3://`` assets live in, read through GDAL's ``/vsis3/`` with its
    settings (:func:`geoplantnet.sources.gdal.gdal_env`); None for local files and public URLs. One store per
    read: its endpoint applies to every ``s3://`` asset of ``items`` (an asset on another S3 service is not read
    through it; ``https`` assets are unaffected).
    """
    bands = list(bands)
    if not bands:
        raise CubeError(f"{what}: no bands requested")
    if len(set(bands)) != len(bands):
        raise CubeError(f"{what}: duplicate bands in {bands}")
    if chunk <= 0:
        raise CubeError(f"{what}: chunk must be positive, got {chunk}")
    method = _resampling(resampling)
    items = list(items)
    where = f"{what} bands {bands} on grid bounds {grid.bounds} (EPSG:{grid.epsg}, {grid.resolution:g} m)"
    if not items:
        raise CubeError(f"search returned no items for {where}")

    entries = [_entry(it, bands) for it in items]
    hits = [e for e in entries if (fp := item_footprint(e.plain, grid.epsg)) is None or overlaps(fp, grid.bounds)]
    if not hits:
        lon0, lat0, lon1, lat1 = grid.lonlat_bounds()
        raise CubeError(
            f"grid lon/lat bounds ({lon0:.4f}, {lat0:.4f}, {lon1:.4f}, {lat1:.4f}) overlap none of the "
            f"{len(entries)} item footprints (e.g. {entries[0].id} bbox {entries[0].plain.get('bbox')}) for {where}"
        )
    hits.sort(key=lambda e: pd.Timestamp(e.plain["properties"]["datetime"]))
    ids = [e.id for e in hits]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CubeError(f"duplicate item id {dup!r} in the items for {where}")
    if check_assets:
        for e in hits:
            for band in bands:
                try:
                    check_href(e.plain["assets"][band]["href"], storage_options)
                except CubeError as err:
                    raise CubeError(f"item {e.id} band {band}: {err}") from err

    errors = (RasterioError(".*"),) if errors_as_nodata else ()  # RasterioIOError is a subclass
    try:
        arr = stackstac.stack(
            [e.plain for e in hits],
            assets=bands,
            epsg=grid.epsg,
            resolution=grid.resolution,
            bounds=grid.bounds,
            snap_bounds=False,  # the grid is already aligned; snapping again only adds float noise
            resampling=method,
            chunksize=(1, 1, chunk, chunk),
            dtype=np.dtype(dtype),
            fill_value=np.dtype(dtype).type(fill_value),  # stackstac checks the scalar's own dtype
            rescale=False,  # applied below per item and band: stackstac cannot rescale into float32
            sortby_date=False,
            xy_coords="center",
            properties=False,
            band_coords=False,
            errors_as_nodata=errors,
            reader=_HrefReader,
            gdal_env=gdal_env(storage_options),
        )
    except (ValueError, NotImplementedError) as e:
        raise CubeError(f"stackstac cannot stack {where}: {' '.join(str(e).split())}") from e

    kept = {e.id: e for e in hits}
    hits = [kept[i] for i in arr["id"].values.tolist()]
    if list(arr["band"].values) != bands:
        missing = sorted(set(bands) - set(arr["band"].values.tolist()))
        raise CubeError(f"bands {missing} of {where} overlap the grid in no item")
    if arr.shape[2:] != grid.shape or not (
        np.allclose(arr["x"].values, grid.x, rtol=0, atol=grid.resolution * 1e-6)
        and np.allclose(arr["y"].values, grid.y, rtol=0, atol=grid.resolution * 1e-6)
    ):
        raise CubeError(f"stackstac produced a {arr.shape[2:]} raster that is not the grid {grid.shape} for {where}")

    data = arr.data
    if rescale:
        table = np.array([e.scale_offset for e in hits], dtype="float64")  # (time, band, 2)
        if not np.all(table == (1.0, 0.0)):
            # One (1, 1, 1, 1) chunk per asset, so the product lines up with the read chunks without a rechunk.
            scale, offset = (
                da.from_array(table[..., k].astype(dtype)[:, :, None, None], chunks=(1, 1, 1, 1)) for k in (0, 1)
            )
            data = data * scale + offset
    coords: dict[str, Any] = {
        "time": arr["time"].values,
        "id": ("time", np.array([e.id for e in hits], dtype=object)),
        "band": np.array(bands, dtype=object),
        **grid.coords(),
    }
    cloud = np.array([e.cloud_cover for e in hits], dtype="float32")
    if not np.isnan(cloud).all():
        coords["eo:cloud_cover"] = ("time", cloud)
    return xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords=coords,
        attrs={"grid_mapping": "spatial_ref", "resampling": method.name, "crs": f"EPSG:{grid.epsg}"},
    )


def s2_cube(
    items: Iterable[pystac.Item | Mapping[str, Any]],
    grid: Grid,
    bands: Sequence[str],
    *,
    chunk: int = 512,
    resampling: str = "auto",
    check_assets: bool = False,
    errors_as_nodata: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Lazy float32 surface reflectance ``(time, band, y, x)`` on ``grid``; nodata -> NaN, chunks (1, 1, c, c).

    Bands are canonical names ("B04") or common names ("red"), found per item by asset key or ``eo:bands``. Items in
    another CRS are reprojected onto the grid. ``resampling="auto"`` averages the bands that are finer than the grid
    and reads the others with nearest neighbour (up-sampling gains nothing from averaging, and a nearest warp reads
    about 25 % faster). ``check_assets`` opens every asset's header up front (one open per asset);
    ``errors_as_nodata`` reads unreadable assets as NaN instead of failing the task.
    """
    items = list(items)
    groups = _resampling_groups(items, grid, bands) if resampling == "auto" else {resampling: list(bands)}
    parts = [
        stack_items(
            items,
            grid,
            group,
            dtype="float32",
            fill_value=np.nan,
            resampling=method,
            chunk=chunk,
            check_assets=check_assets,
            errors_as_nodata=errors_as_nodata,
            what="s2_cube",
            storage_options=storage_options,
        )
        for method, group in groups.items()
    ]
    if len(parts) == 1:
        cube = parts[0]
    else:
        cube = xr.concat(parts, dim="band", coords="minimal", compat="override").sel(band=list(bands))
        cube.attrs = dict(parts[0].attrs, resampling=" ".join(f"{b}:{m}" for b, m in _method_of(groups)))
    cube.name = "reflectance"
    cube.attrs.update(long_name="Sentinel-2 L2A surface reflectance", units="1")
    return cube


def _native_resolution(item: pystac.Item | Mapping[str, Any], band: str) -> float | None:
    d = _to_dict(item)
    asset = d["assets"].get(_asset_key(d, band), {})
    transform = asset.get("proj:transform") or d.get("properties", {}).get("proj:transform")
    if transform:
        return abs(float(transform[0]))
    res = [b.get("spatial_resolution") for b in asset.get("raster:bands") or [] if b.get("spatial_resolution")]
    return float(res[0]) if res else None


def _resampling_groups(items: list, grid: Grid, bands: Sequence[str]) -> dict[str, list[str]]:
    """{"average": bands finer than the grid, "nearest": the rest}, judged on the first item (native metres).

    Bands in a projected CRS other than metres, or without proj/raster metadata, are averaged (the safe choice).
    """
    if not items:
        return {"average": list(bands)}
    groups: dict[str, list[str]] = {}
    for band in bands:
        try:
            res = _native_resolution(items[0], band)
        except CubeError:
            res = None  # stack_items reports the missing band with its context
        method = "nearest" if res is not None and res >= grid.resolution - 1e-9 else "average"
        groups.setdefault(method, []).append(band)
    return groups


def _method_of(groups: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(band, method) for method, group in groups.items() for band in group]


def scl_cube(
    items: Iterable[pystac.Item | Mapping[str, Any]],
    grid: Grid,
    *,
    chunk: int = 512,
    asset: str = "SCL",
    check_assets: bool = False,
    errors_as_nodata: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Lazy uint8 scene classification ``(time, y, x)``, nearest resampling (class codes are never averaged).

    Pixels without data read as 0 (SCL "no data"), which :func:`cloud_mask` flags by default.
    """
    cube = stack_items(
        items,
        grid,
        [asset],
        dtype="uint8",
        fill_value=np.uint8(0),
        resampling="nearest",
        chunk=chunk,
        rescale=False,
        check_assets=check_assets,
        errors_as_nodata=errors_as_nodata,
        what="scl_cube",
        storage_options=storage_options,
    )
    scl = cube.isel(band=0, drop=True)
    scl.name = "scl"
    scl.attrs.update(long_name="Sentinel-2 scene classification", flag_values=list(range(12)))
    return scl


def cloud_mask(scl: xr.DataArray, classes: Sequence[int] = DEFAULT_CLOUD_CLASSES) -> xr.DataArray:
    """Boolean ``(time, y, x)``: True where the SCL class is in ``classes`` (pixel to drop)."""
    mask = scl.isin(list(classes))
    mask.name = "cloud_mask"
    mask.attrs = {"long_name": "masked SCL classes", "classes": [int(c) for c in classes]}
    return mask


def mask_clouds(cube: xr.DataArray, mask: xr.DataArray) -> xr.DataArray:
    """``cube`` with NaN where ``mask`` is True; the mask must come from the same items (same ids, times, grid)."""
    for dim in ("time", "y", "x"):
        if cube.sizes.get(dim) != mask.sizes.get(dim):
            raise CubeError(f"mask_clouds: {dim} has {mask.sizes.get(dim)} in the mask but {cube.sizes.get(dim)}")
    for name in ("id", "x", "y"):
        if name in cube.coords and name in mask.coords and not np.array_equal(cube[name].values, mask[name].values):
            raise CubeError(f"mask_clouds: coordinate {name!r} differs between cube and mask (built from other items?)")
    # Positional, not label alignment: two items may share a timestamp.
    bare = xr.DataArray(mask.data, dims=mask.dims)
    out = cube.where(~bare)
    out.attrs = {**cube.attrs, "cloud_masked": 1}
    return out


def _quiet_nanreduce(arr: np.ndarray, how: str) -> np.ndarray:
    # An all-NaN pixel (no clear observation in a period) is expected and stays NaN. Filled before reducing so numpy
    # does not warn (warnings.catch_warnings is not thread-safe under Dask's threaded scheduler).
    empty = np.isnan(arr).all(axis=-1)
    if empty.any():
        arr = arr.copy()
        arr[empty] = 0
    out = getattr(np, f"nan{how}")(arr, axis=-1)
    return np.where(empty, np.nan, out).astype(arr.dtype, copy=False)


def seasonal_composite(cube: xr.DataArray, freq: str = "QS-DEC", how: str = "median") -> xr.DataArray:
    """Per-period (default meteorological seasons DJF/MAM/JJA/SON) reduction over time, skipping NaN; lazy.

    The ``time`` dim holds period starts (every period between the first and last observation); a ``season`` coord
    names them for quarterly frequencies. Pixels with no clear observation in a period are NaN.
    """
    if how not in ("median", "mean", "min", "max"):
        raise CubeError(f"seasonal_composite: how={how!r}; use median, mean, min or max")
    if "time" not in cube.dims:
        raise CubeError(f"seasonal_composite needs a 'time' dim, got {cube.dims}")
    drop = [c for c in cube.coords if c != "time" and "time" in cube[c].dims]
    try:
        resampled = cube.drop_vars(drop).resample(time=freq)
    except ValueError as e:
        raise CubeError(f"seasonal_composite: bad freq {freq!r}: {e}") from e

    def reduce_period(group: xr.DataArray) -> xr.DataArray:
        # One chunk along time per period only: task memory is (dates in a season) x chunk, never the whole series.
        return xr.apply_ufunc(
            _quiet_nanreduce,
            group.chunk(time=-1) if group.chunks else group,
            input_core_dims=[["time"]],
            kwargs={"how": how},
            dask="parallelized",
            output_dtypes=[cube.dtype],
            keep_attrs=True,
        )

    out = resampled.map(reduce_period)
    out = out.transpose(*cube.dims).astype(cube.dtype)
    months = pd.DatetimeIndex(out["time"].values).month
    if freq.upper().startswith("QS"):
        out = out.assign_coords(season=("time", [_SEASONS.get(m, f"Q{m:02d}") for m in months]))
    out.attrs.update(composite=how, composite_freq=freq)
    return out


def add_indices(cube: xr.DataArray, indices: Sequence[str] = ("ndvi",)) -> xr.DataArray:
    """``cube`` with normalised-difference index bands appended along ``band`` (e.g. NDVI = (B08-B04)/(B08+B04))."""
    bands = cube["band"].values.tolist()
    extra = []
    for name in indices:
        key = name.lower()
        if key not in INDICES:
            raise CubeError(f"unknown index {name!r}; known: {', '.join(INDICES)}")
        a, b = INDICES[key]
        for band in (a, b):
            if band not in bands:
                raise CubeError(f"index {key} needs band {band!r}, cube has {bands}")
        va, vb = cube.sel(band=a, drop=True), cube.sel(band=b, drop=True)
        den = va + vb
        idx = (va - vb) / den.where(den != 0)
        extra.append(idx.expand_dims(band=[key]).transpose(*cube.dims).astype(cube.dtype))
    if not extra:
        return cube
    out = xr.concat([cube, *extra], dim="band", coords="minimal", compat="override", join="exact")
    out.attrs = dict(cube.attrs)
    out.name = cube.name
    return out


__all__ = [
    "DEFAULT_CLOUD_CLASSES",
    "INDICES",
    "CubeError",
    "add_indices",
    "check_href",
    "cloud_mask",
    "mask_clouds",
    "s2_cube",
    "scl_cube",
    "seasonal_composite",
    "stack_items",
]


def cube_composites(
    items: list, settings: CubeConfig, grid: Grid, storage_options: Mapping[str, Any] | None = None
) -> xr.DataArray:
    """Lazy cloud-masked seasonal median composites (time, band, y, x) of ``items`` on ``grid``, with the configured
    indices appended: what training, map tiles and the composites job all read (``storage_options``: the object
    store of ``s3://`` assets)."""
    reflectance = s2_cube(items, grid, settings.bands, chunk=settings.chunk, storage_options=storage_options)
    if any("SCL" in band_assets(item) for item in items):
        scl = scl_cube(items, grid, chunk=settings.chunk, storage_options=storage_options)
        clear = mask_clouds(reflectance, cloud_mask(scl, settings.mask_scl))
    else:
        # archives such as BigEarthNet ship L2A bands without the scene classification: nothing to mask with
        # (a warning, not a log line: shown once per process, not once per map tile)
        warnings.warn("no item has an SCL (scene classification) band: composites are not cloud-masked", stacklevel=2)
        clear = reflectance
    seasonal = seasonal_composite(clear, freq=settings.composite)
    return add_indices(seasonal, settings.indices) if settings.indices else seasonal
