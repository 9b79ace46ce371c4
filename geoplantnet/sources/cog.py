"""Writing Cloud-Optimized GeoTIFFs: the one place raster files are created (simulation, ingestion, tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.windows
from affine import Affine
from rasterio.enums import Resampling


def write_cog(
    path: str | os.PathLike[str],
    data: np.ndarray,
    transform: Affine,
    crs: str | int,
    *,
    nodata: float | int | None = None,
    blocksize: int = 256,
    overview_resampling: str = "average",
    band_names: list[str] | None = None,
) -> Path:
    """Write a 2-D (or band-first 3-D) array as a COG with internal tiles and overviews.

    Written to a temporary name and renamed, so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = data[np.newaxis] if data.ndim == 2 else data
    count, height, width = arr.shape
    tmp = path.with_name(f".{path.name}.tmp")
    crs_obj = rasterio.crs.CRS.from_epsg(crs) if isinstance(crs, int) else rasterio.crs.CRS.from_user_input(crs)
    profile = {
        "driver": "MEM",
        "count": count,
        "height": height,
        "width": width,
        "dtype": arr.dtype.name,
        "crs": crs_obj,
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.MemoryFile() as mem, mem.open(**profile) as ds:
        ds.write(arr)
        if band_names:
            for i, name in enumerate(band_names, start=1):
                ds.set_band_description(i, name)
        # Overviews only where they help: a COG reader asking for a coarse resolution reads far fewer bytes.
        factors = [f for f in (2, 4, 8, 16, 32) if min(height, width) // f >= 64]
        if factors:
            ds.build_overviews(factors, Resampling[overview_resampling])
        rasterio.shutil.copy(
            ds,
            tmp,
            driver="COG",
            compress="DEFLATE",
            predictor=2 if np.issubdtype(arr.dtype, np.integer) else 3,
            blocksize=blocksize,
            overviews="FORCE_USE_EXISTING" if factors else "NONE",
        )
    os.replace(tmp, path)
    return path


class CogWriter:
    """A COG written window by window: windows go into a temporary tiled GeoTIFF, converted to a COG on close.

    Memory is bounded by one window (plus GDAL's block cache), not the raster, so regions of any size can be
    generated. Use as a context manager; on an exception the temporary files are removed and no COG appears.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        transform: Affine,
        crs: str | int,
        dtype: str,
        nodata: float | int | None = None,
        blocksize: int = 256,
        overview_resampling: str = "average",
        band_name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tiled.tif")
        self._dtype = np.dtype(dtype)
        self._resampling = overview_resampling
        self._blocksize = blocksize
        crs_obj = rasterio.crs.CRS.from_epsg(crs) if isinstance(crs, int) else rasterio.crs.CRS.from_user_input(crs)
        self._ds = rasterio.open(
            self._tmp,
            "w",
            driver="GTiff",
            count=1,
            width=width,
            height=height,
            dtype=self._dtype.name,
            crs=crs_obj,
            transform=transform,
            nodata=nodata,
            tiled=True,  # tiles larger than a small raster are padded; GDAL allows that
            blockxsize=blocksize,
            blockysize=blocksize,
            compress="NONE",
        )
        if band_name:
            self._ds.set_band_description(1, band_name)

    def write(self, data: np.ndarray, window: tuple[slice, slice]) -> None:
        """Write a 2-D array into the (row, col) pixel window given as slices."""
        ys, xs = window
        win = rasterio.windows.Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        self._ds.write(np.asarray(data, dtype=self._dtype), 1, window=win)

    def close(self) -> Path:
        """Convert to a COG (tiled, DEFLATE, overviews) under the final name, atomically; returns the path."""
        self._ds.close()
        out_tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            rasterio.shutil.copy(
                self._tmp,
                out_tmp,
                driver="COG",
                compress="DEFLATE",
                predictor=2 if np.issubdtype(self._dtype, np.integer) else 3,
                blocksize=self._blocksize,
                overviews="AUTO",
                overview_resampling=self._resampling.upper(),
                num_threads="ALL_CPUS",
            )
            os.replace(out_tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
            out_tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file without writing a COG."""
        if not self._ds.closed:
            self._ds.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> CogWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
