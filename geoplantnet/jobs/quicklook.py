"""PNG quick-looks of composites: a true-colour panel and an NDVI panel per season."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr


def _stretch(rgb: np.ndarray) -> np.ndarray:
    """2-98 % stretch over valid pixels, so hazy or dark scenes still show structure."""
    valid = np.isfinite(rgb).all(axis=-1)
    if not valid.any():
        return np.zeros_like(rgb)
    lo, hi = np.nanpercentile(rgb[valid], [2, 98])
    return np.clip((np.nan_to_num(rgb, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1)


def composite_quicklook(composite: xr.DataArray, path: str | Path, *, title: str = "") -> Path:
    """Plot every season of a (time, band, y, x) composite: RGB from B04/B03/B02 and NDVI when present."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seasons = composite["time"].values
    has_ndvi = "ndvi" in composite["band"].values
    rows = 2 if has_ndvi else 1
    fig, axes = plt.subplots(
        rows, len(seasons), figsize=(3.2 * len(seasons) + 1, 3.0 * rows + 0.6), squeeze=False, layout="constrained"
    )
    extent = (
        float(composite.x.min()),
        float(composite.x.max()),
        float(composite.y.min()),
        float(composite.y.max()),
    )
    for i, when in enumerate(seasons):
        scene = composite.sel(time=when)
        rgb = np.stack([scene.sel(band=b).values for b in ("B04", "B03", "B02")], axis=-1)
        label = str(np.datetime_as_string(when, unit="M"))
        axes[0, i].imshow(_stretch(rgb), extent=extent)
        axes[0, i].set_title(f"{label} RGB", fontsize=9)
        if has_ndvi:
            im = axes[1, i].imshow(scene.sel(band="ndvi").values, vmin=-0.2, vmax=1.0, cmap="YlGn", extent=extent)
            axes[1, i].set_title(f"{label} NDVI", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if has_ndvi:
        fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="NDVI")
    fig.suptitle(title or "Seasonal median composites (EPSG:3035)", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def species_quicklook(maps: dict[str, xr.DataArray], path: str | Path, *, title: str = "", vmax: float = 1.0) -> Path:
    """One species' probability from several stores side by side (e.g. the CNN's map and MaxEnt's), on one colour
    scale; no-data pixels left blank. ``maps`` is label -> (y, x) probability."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps) + 0.8, 4.6), squeeze=False, layout="constrained")
    im = None
    for ax, (label, prob) in zip(axes[0], maps.items(), strict=True):
        extent = (float(prob.x.min()), float(prob.x.max()), float(prob.y.min()), float(prob.y.max()))
        im = ax.imshow(prob.values, vmin=0.0, vmax=vmax, cmap="viridis", extent=extent)
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.8, label="probability of occurrence")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
