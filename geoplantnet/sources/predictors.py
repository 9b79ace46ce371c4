"""Environmental predictors (climate, soil, terrain, land cover) warped lazily onto the grid as ``(var, y, x)``.

Layers come as STAC items whose assets are single-band COGs in any CRS (asset key = variable name); user GeoTIFFs
become such items on the fly (:func:`from_geotiffs`), so every raster goes through the same stackstac path as the
Sentinel-2 cube. Continuous variables are resampled bilinearly, categorical ones (land cover) by mode (the majority
class under a cell), so class codes are never averaged. A layer is categorical when its item declares its classes
(the STAC classification extension, ``classification:classes`` on the asset or the item) or when the caller names
it; the species models take it as one indicator layer per declared class.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import stackstac
import xarray as xr
from rasterio.errors import RasterioError

from geoplantnet.core.grid import Grid
from geoplantnet.core.hashing import file_digest
from geoplantnet.sources.cog import write_cog
from geoplantnet.sources.cube import CubeError, stack_items
from geoplantnet.sources.stac_items import AssetSpec, item_from_cogs

CLASSES_KEY = "classification:classes"
# Fallback units where an asset's raster:bands has no "unit".
DEFAULT_UNITS: dict[str, str] = {
    "elevation": "m",
    "temperature": "degC",
    "precipitation": "mm",
    "seasonality": "1",
    "soil_ph": "pH",
    "land_cover": "class",
}
# Static layers have no acquisition date; STAC still needs one.
STATIC_DATETIME = datetime(2000, 1, 1, tzinfo=UTC)


class PredictorError(CubeError):
    """Predictor layers that cannot be stacked (one line naming the variable, item or file)."""


def _assets(item: pystac.Item) -> dict[str, pystac.Asset]:
    return {k: a for k, a in item.assets.items() if "data" in (a.roles or ["data"])}


def _unit(items: Sequence[pystac.Item], var: str) -> str:
    for item in items:
        bands = item.assets[var].extra_fields.get("raster:bands") or [{}]
        if bands[0].get("unit"):
            return str(bands[0]["unit"])
    return DEFAULT_UNITS.get(var, "")


def environment_stack(
    items: Iterable[pystac.Item],
    grid: Grid,
    *,
    variables: Sequence[str] | None = None,
    resampling: Mapping[str, str] | None = None,
    chunk: int = 512,
    categorical: Collection[str] = (),
    check_assets: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Lazy float32 ``(var, y, x)`` of environmental layers on ``grid``; nodata -> NaN, chunks (1, c, c).

    ``variables`` defaults to every data asset key in ``items`` (first-seen order). ``resampling`` overrides the
    per-variable default ("mode" for categorical variables: those in ``categorical`` or with declared classes, the
    majority class under each grid cell, which is the source class itself when the grid is finer; else
    "bilinear"). Where several items hold one variable (tiles of a layer), the first item with data wins per pixel.
    Coords ``units`` and ``resampling`` run along ``var``. ``storage_options``: the object store of ``s3://``
    assets (:func:`geoplantnet.sources.gdal.gdal_env`).
    """
    items = list(items)
    if not items:
        raise PredictorError(f"search returned no items for environment_stack on grid bounds {grid.bounds}")
    available: dict[str, list[pystac.Item]] = {}
    for item in items:
        for key in _assets(item):
            available.setdefault(key, []).append(item)
    names = list(variables) if variables is not None else list(available)
    overrides = dict(resampling or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise PredictorError(f"resampling given for {unknown}, which are not among the variables {names}")

    layers, units, methods = [], [], []
    for var in names:
        holders = available.get(var)
        if not holders:
            raise PredictorError(f"no item has an asset for variable {var!r} (assets: {', '.join(available)})")
        is_class = var in categorical or declared_classes(holders, var) is not None
        method = overrides.get(var, "mode" if is_class else "bilinear")
        stack = stack_items(
            holders,
            grid,
            [var],
            resampling=method,
            chunk=chunk,
            check_assets=check_assets,
            what=f"environment_stack variable {var!r}",
            storage_options=storage_options,
        ).isel(band=0, drop=True)
        layer = stack.isel(time=0) if stack.sizes["time"] == 1 else stackstac.mosaic(stack, dim="time", reverse=True)
        layers.append(layer.drop_vars([c for c in layer.coords if c not in ("y", "x", "spatial_ref")]))
        units.append(_unit(holders, var))
        methods.append(method)
    out = xr.concat(layers, dim="var", coords="minimal", compat="override", join="exact")
    out = out.assign_coords(var=names, units=("var", units), resampling=("var", methods))
    out.name = "predictors"
    out.attrs = {"long_name": "environmental predictors", "grid_mapping": "spatial_ref", "crs": f"EPSG:{grid.epsg}"}
    return out


def split_bands(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """A multi-band raster as one single-band COG per band, named by the band descriptions (else ``<stem>_b<i>``).

    Users often ship bioclim stacks as one file; STAC assets (and stackstac) are one band each. The COGs are cached
    under ``out_dir/<sha256 of the file>/``: another raster under the same name never reuses them, and each COG is
    written beside its final name and renamed, so an interrupted split is never taken for a finished one.
    """
    path, out_dir = Path(path), Path(out_dir)
    try:
        folder = out_dir / file_digest(path)
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise PredictorError(f"{path}: the raster has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:4326)")
            names = [d or f"{path.stem}_b{i}" for i, d in enumerate(ds.descriptions, start=1)]
            if len(set(names)) != len(names):
                names = [f"{path.stem}_b{i}" for i in range(1, ds.count + 1)]
            out = {}
            for i, name in enumerate(names, start=1):
                target = folder / f"{name}.tif"
                if not target.exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    temp = folder / f".{name}.tmp-{uuid.uuid4().hex[:8]}.tif"
                    crs = ds.crs.to_epsg() or ds.crs.to_wkt()
                    try:
                        write_cog(temp, ds.read(i), ds.transform, crs, nodata=ds.nodata, band_names=[name])
                        os.replace(temp, target)
                    finally:
                        temp.unlink(missing_ok=True)
                out[name] = target
    except RasterioError as e:
        raise PredictorError(f"{path}: cannot open as a raster: {' '.join(str(e).split())}") from e
    except FileNotFoundError:
        raise PredictorError(f"{path}: no such raster file") from None
    return out


def from_geotiffs(
    paths: Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]],
    *,
    when: datetime = STATIC_DATETIME,
    collection: str = "user-predictors",
    units: Mapping[str, str] | None = None,
    categorical: Collection[str] = (),
) -> list[pystac.Item]:
    """One STAC item per single-band GeoTIFF (any EPSG CRS); the asset key is the mapping key or the file stem.

    The files are only opened for their headers, except the ``categorical`` ones (land cover, soil classes): their
    class values are read once and declared on the asset (``classification:classes``), so they are resampled by
    mode (the majority class under a cell) and given to the models as one indicator layer per class. Pass the items to
    :func:`environment_stack` or :func:`model_stack`.
    """
    named = dict(paths) if isinstance(paths, Mapping) else {Path(p).stem: p for p in paths}
    if not named:
        raise PredictorError("from_geotiffs: no paths given")
    if not isinstance(paths, Mapping) and len(named) != len(paths):
        raise PredictorError(f"from_geotiffs: file stems collide in {[str(p) for p in paths]}; pass a mapping")
    items = []
    for var, path in named.items():
        href = str(Path(path).resolve())
        try:
            with rasterio.open(href) as ds:
                if ds.count != 1:
                    raise PredictorError(f"{href}: {ds.count} bands; predictors must be single-band GeoTIFFs")
            item = item_from_cogs(f"{collection}-{var}", when, [AssetSpec(var, href)], collection=collection)
        except (RasterioError, OSError) as e:
            raise PredictorError(f"{href}: cannot open as a raster: {' '.join(str(e).split())}") from e
        except PredictorError:
            raise
        except ValueError as e:  # item_from_cogs: no EPSG code
            raise PredictorError(str(e)) from e
        unit = (units or {}).get(var) or DEFAULT_UNITS.get(var)
        if unit:
            item.assets[var].extra_fields["raster:bands"][0]["unit"] = unit
        if var in categorical:
            item.assets[var].extra_fields[CLASSES_KEY] = [{"value": v, "name": str(v)} for v in raster_classes(href)]
        items.append(item)
    unknown = sorted(set(categorical) - set(named))
    if unknown:
        raise PredictorError(f"categorical layers {unknown} are not among the rasters {sorted(named)}")
    return items


def raster_classes(path: str | os.PathLike[str], limit: int = 256) -> list[int]:
    """The distinct values of a single-band class raster (its nodata left out), read block by block."""
    found: set[int] = set()
    with rasterio.open(path) as ds:
        if ds.dtypes[0].startswith("float"):
            raise PredictorError(f"{path}: float values; a categorical layer holds integer class codes")
        for _, window in ds.block_windows(1):
            block = ds.read(1, window=window)
            found.update(int(v) for v in np.unique(block) if ds.nodata is None or v != ds.nodata)
            if len(found) > limit:
                raise PredictorError(f"{path}: more than {limit} distinct values; is it really a class raster?")
    return sorted(found)


def one_hot(land_cover: xr.DataArray, classes: Sequence[int], *, name: str | None = None) -> xr.DataArray:
    """Float32 ``(var, y, x)`` indicator layers ``{name}_{class}`` (1/0, NaN where the input is NaN); lazy.

    ``land_cover`` is a ``(y, x)`` layer, e.g. ``stack.sel(var="land_cover")``; concatenate the result with the
    stack along ``var``.
    """
    if not classes:
        raise PredictorError("one_hot: no classes given")
    base = name or str(land_cover.coords["var"].item() if "var" in land_cover.coords else land_cover.name or "class")
    lc = land_cover.drop_vars([c for c in land_cover.coords if c not in ("y", "x", "spatial_ref")])
    valid = lc.notnull()
    layers = [(lc == c).astype("float32").where(valid) for c in classes]
    out = xr.concat(layers, dim="var").assign_coords(var=[f"{base}_{int(c)}" for c in classes])
    out = out.assign_coords(units=("var", ["1"] * len(classes)), resampling=("var", ["mode"] * len(classes)))
    out.attrs = {"long_name": f"one-hot {base}", "grid_mapping": "spatial_ref"}
    return out


def declared_classes(items: Sequence[pystac.Item], var: str) -> list[int] | None:
    """The class values a layer declares (``classification:classes`` on its asset, else on its item), or None."""
    return sorted(class_names(items, var)) or None


def class_names(items: Sequence[pystac.Item], var: str) -> dict[int, str]:
    """Code -> name of the classes a layer declares (the code itself where a class has no name); empty if none."""
    for item in items:
        asset = item.assets.get(var)
        for where in (asset.extra_fields if asset is not None else {}, item.properties):
            classes = where.get(CLASSES_KEY)
            if classes:
                return {int(c["value"]): str(c.get("name", c["value"])) for c in classes}
    return {}


def model_stack(
    items: Iterable[pystac.Item],
    grid: Grid,
    *,
    chunk: int = 512,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """The environmental predictors as the species models take them: :func:`environment_stack` with each layer that
    declares classes as one indicator layer per class (class codes are not magnitudes). Training and map production
    both use this (``storage_options``: the object store of ``s3://`` assets)."""
    items = list(items)
    env = environment_stack(items, grid, chunk=chunk, storage_options=storage_options)
    layers, plain = [], []
    for var in env["var"].values:
        classes = declared_classes([i for i in items if var in i.assets], str(var))
        if classes is None:
            plain.append(var)
        else:
            layers.append(one_hot(env.sel(var=var), classes))
    if not layers:
        return env
    return xr.concat([env.sel(var=plain), *layers], dim="var")
