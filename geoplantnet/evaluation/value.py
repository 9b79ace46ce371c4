"""The value maps against the virtual region's truth: the 50 m aggregate (``value_50m.zarr``) against the true value
score (expected richness + 4 x expected threatened species), inside and outside the training polygons."""

from __future__ import annotations

from typing import Any

import numpy as np

from geoplantnet.core.grid import Grid
from geoplantnet.samples.value_labels import Labels
from geoplantnet.storage.store import open_store


def training_cells(labels: Labels, map_grid: Grid, ratio: int) -> np.ndarray:
    """(y, x) bool on the map grid: the cells any of whose value pixels (``ratio`` per cell side) lies in a
    training polygon."""
    inside = np.zeros(map_grid.shape, bool)
    ids = labels.rasters.polygon >= 0
    r0, _, c0, _ = labels.window
    rows, cols = np.nonzero(ids)
    rows, cols = (rows + r0) // ratio, (cols + c0) // ratio
    ok = (rows >= 0) & (rows < map_grid.height) & (cols >= 0) & (cols < map_grid.width)
    inside[rows[ok], cols[ok]] = True
    return inside


def _rounded(r: float) -> float | None:
    """A correlation to 4 places, None where undefined (a constant map has no rank correlation)."""
    return round(float(r), 4) if np.isfinite(r) else None


def evaluate_value(
    truth: np.ndarray,
    aggregate_url: str,
    labels: Labels,
    map_grid: Grid,
    value_resolution: float,
    quantile: float = 0.15,
) -> dict[str, Any]:
    """The 50 m map at ``aggregate_url`` against the true value score ``truth`` (y, x on ``map_grid``): Spearman r
    over every pixel with both and over those outside the training polygons, and the AUC of separating the true top
    from the bottom ``quantile`` of pixels outside the training polygons; Pearson r outside them (linearity)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import roc_auc_score

    truth = truth.astype(np.float64)
    mapped = open_store(aggregate_url)["biodiversity_value"].values.astype(np.float64)
    both = np.isfinite(truth) & np.isfinite(mapped)
    rho = spearmanr(truth[both], mapped[both]).statistic if both.sum() > 2 else float("nan")
    inside = training_cells(labels, map_grid, round(map_grid.resolution / value_resolution))
    lo, hi = np.quantile(truth[np.isfinite(truth)], [quantile, 1 - quantile])
    outside = both & ~inside
    top, bottom = outside & (truth >= hi), outside & (truth <= lo)
    y = np.r_[np.ones(top.sum()), np.zeros(bottom.sum())]
    auc = roc_auc_score(y, np.r_[mapped[top], mapped[bottom]]) if top.any() and bottom.any() else float("nan")
    rho_out = spearmanr(truth[outside], mapped[outside]).statistic if outside.sum() > 2 else float("nan")
    r_out = pearsonr(truth[outside], mapped[outside]).statistic if outside.sum() > 2 else float("nan")
    return {
        "spearman_r": _rounded(rho),
        "spearman_r_outside_training": _rounded(rho_out),  # the training cells are easy: both are reported
        # a value linear in the truth's units (offsets sum value x area) shows as Pearson r close to Spearman's
        "pearson_r_outside_training": _rounded(r_out),
        "pixels": int(both.sum()),
        "top_bottom_auc": round(float(auc), 4),
        "top_bottom_quantile": quantile,
        "top_pixels": int(top.sum()),
        "bottom_pixels": int(bottom.sum()),
        "excluded_training_pixels": int((both & inside).sum()),
    }
