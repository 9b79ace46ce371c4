"""PNG quick-looks of stores: seasonal composites (a true-colour panel and an NDVI panel per season) and one species'
probability from several maps side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from geoplantnet.reports.figures import bare, figure


def _stretch(rgb: np.ndarray) -> np.ndarray:
    """2-98 % stretch over valid pixels, so hazy or dark scenes still show structure."""
    valid = np.isfinite(rgb).all(axis=-1)
    if not valid.any():
        return np.zeros_like(rgb)
    lo, hi = np.nanpercentile(rgb[valid], [2, 98])
    return np.clip((np.nan_to_num(rgb, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1)


def _extent(da: xr.DataArray) -> tuple[float, float, float, float]:
    return float(da.x.min()), float(da.x.max()), float(da.y.min()), float(da.y.max())


def composite_quicklook(composite: xr.DataArray, path: str | Path, *, title: str = "") -> Path:
    """Plot every season of a (time, band, y, x) composite: RGB from B04/B03/B02 and NDVI when present."""
    path = Path(path)
    seasons = composite["time"].values
    has_ndvi = "ndvi" in composite["band"].values
    rows = 2 if has_ndvi else 1
    size = (3.2 * len(seasons) + 1, 3.0 * rows + 0.6)
    with figure(path, rows, len(seasons), size=size) as (fig, axes):
        extent = _extent(composite)
        for i, when in enumerate(seasons):
            scene = composite.sel(time=when)
            rgb = np.stack([scene.sel(band=b).values for b in ("B04", "B03", "B02")], axis=-1)
            label = str(np.datetime_as_string(when, unit="M"))
            axes[0, i].imshow(_stretch(rgb), extent=extent)
            axes[0, i].set_title(f"{label} RGB", fontsize=9)
            if has_ndvi:
                im = axes[1, i].imshow(scene.sel(band="ndvi").values, vmin=-0.2, vmax=1.0, cmap="YlGn", extent=extent)
                axes[1, i].set_title(f"{label} NDVI", fontsize=9)
        bare(axes)
        if has_ndvi:
            fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="NDVI")
        fig.suptitle(title or "Seasonal median composites (EPSG:3035)", fontsize=11)
    return path


def species_quicklook(maps: dict[str, xr.DataArray], path: str | Path, *, title: str = "", vmax: float = 1.0) -> Path:
    """One species' probability from several stores side by side (e.g. the CNN's map and MaxEnt's), on one colour
    scale; no-data pixels left blank. ``maps`` is label -> (y, x) probability."""
    path = Path(path)
    with figure(path, 1, len(maps), size=(4.2 * len(maps) + 0.8, 4.6)) as (fig, axes):
        im = None
        for ax, (label, prob) in zip(axes[0], maps.items(), strict=True):
            im = ax.imshow(prob.values, vmin=0.0, vmax=vmax, cmap="viridis", extent=_extent(prob))
            ax.set_title(label, fontsize=10)
        bare(axes)
        fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.8, label="probability of occurrence")
        if title:
            fig.suptitle(title, fontsize=11)
    return path
