"""Writing Cloud-Optimized GeoTIFFs: the one place raster files are created (simulation, ingestion, tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
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
