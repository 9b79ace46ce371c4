"""Spatial block cross-validation: grid-aligned square blocks, whole blocks per fold, block size from autocorrelation.

Random K-fold on spatially autocorrelated samples puts near-duplicates of every test point in the training set and
rewards over-fitting (Roberts et al. 2017, Ecography 40:913). Here the map is cut into squares whose edges lie on
multiples of ``block_size`` from the CRS origin (EPSG:3035 for the project, so blocks nest with the EEA reference grid),
and every block goes whole into one fold. The block size defaults to the range of spatial autocorrelation of the
predictors (or residuals), read from an empirical semivariogram.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from geoplantnet.core.errors import InputError

KM = 1000.0
_MAX_VARIOGRAM_POINTS = 2000  # 2e6 pairs: enough for a stable semivariogram, bounded memory and time
_ID_OFFSET = 2**30  # shifts signed block indices into [0, 2**31) so (col, row) pack into one int64


class BlockError(InputError):
    """Coordinates, block sizes or fold requests that cannot make a spatial split (the message is one line)."""


def _xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    if x.shape != y.shape or x.ndim != 1:
        raise BlockError(f"x and y must be 1-D arrays of the same length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise BlockError(f"x/y hold {int((~np.isfinite(x)).sum() + (~np.isfinite(y)).sum())} non-finite coordinates")
    return x, y


def _check_size(block_size: float) -> float:
    if not (np.isfinite(block_size) and block_size > 0):
        raise BlockError(f"block_size must be a positive number of metres, got {block_size}")
    return float(block_size)


def block_index(x: np.ndarray, y: np.ndarray, block_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(column, row) of the grid-aligned block holding each point: ``floor(x / size)``, ``floor(y / size)``."""
    x, y = _xy(x, y)
    size = _check_size(block_size)
    # Rounding before floor keeps a point exactly on an edge in the block to its upper right, despite float noise.
    col = np.floor(np.round(x / size, 9)).astype("int64")
    row = np.floor(np.round(y / size, 9)).astype("int64")
    return col, row


def block_ids(x: np.ndarray, y: np.ndarray, block_size: float) -> np.ndarray:
    """One int64 id per point, equal for points in the same aligned block (``(col + 2**30) << 31 | (row + 2**30)``)."""
    col, row = block_index(x, y, block_size)
    if len(col) and max(np.abs(col).max(), np.abs(row).max()) >= _ID_OFFSET:
        raise BlockError(f"block_size={block_size:g} is too small for coordinates this far from the origin")
    return ((col + _ID_OFFSET) << 31) | (row + _ID_OFFSET)


def block_origin(ids: np.ndarray, block_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower-left corners (metres) of the blocks named by :func:`block_ids`."""
    ids = np.asarray(ids, dtype="int64")
    col = (ids >> 31) - _ID_OFFSET
    row = (ids & (2**31 - 1)) - _ID_OFFSET
    return col * float(block_size), row * float(block_size)


def spatial_blocks(
    x: np.ndarray,
    y: np.ndarray,
    block_size: float,
    folds: int,
    seed: int = 0,
    stratify: np.ndarray | None = None,
) -> np.ndarray:
    """Fold id (0..folds-1) per sample; whole blocks go to one fold, folds balanced by sample count.

    Blocks are dealt largest first to the least loaded fold (ties broken by a seeded shuffle), which keeps fold sizes
    within about one block of each other. With ``stratify`` (one class per sample, e.g. 1 where a sample holds a
    presence) the load is the largest share of any class, so rare classes (presences) are spread over the folds too.
    """
    if folds < 2:
        raise BlockError(f"folds must be >= 2, got {folds}")
    ids = block_ids(x, y, block_size)
    if len(ids) == 0:
        # Not a block-size problem: nothing survived upstream (e.g. no sample has predictor data).
        raise BlockError(f"no samples to split into {folds} folds")
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if len(uniq) < folds:
        raise BlockError(
            f"only {len(uniq)} blocks of {block_size:g} m hold samples, fewer than folds={folds}: use smaller blocks"
        )
    if stratify is None:
        per_class = counts[:, None].astype("float64")
    else:
        stratify = np.asarray(stratify)
        if stratify.shape != ids.shape:
            raise BlockError(f"stratify must have one entry per sample ({ids.shape}), got {stratify.shape}")
        _, cls = np.unique(stratify, return_inverse=True)
        per_class = np.zeros((len(uniq), cls.max() + 1))
        np.add.at(per_class, (inverse, cls), 1.0)
    share = per_class / per_class.sum(axis=0)  # each class sums to 1 over blocks
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(uniq))
    order = shuffled[np.argsort(-counts[shuffled], kind="stable")]
    fold_of_block = np.empty(len(uniq), dtype="int64")
    load = np.zeros((folds, share.shape[1]))
    fold_order = rng.permutation(folds)  # which fold wins a tie
    for b in order:
        after = (load[fold_order] + share[b]).max(axis=1)
        f = fold_order[np.argmin(after + 1e-9 * load[fold_order].sum(axis=1))]
        fold_of_block[b] = f
        load[f] += share[b]
    return fold_of_block[inverse]


def spatial_folds(
    x: np.ndarray,
    y: np.ndarray,
    block_size: float,
    folds: int,
    *,
    seed: int = 0,
    stratify: np.ndarray | None = None,
    fallback: Literal["refuse", "smaller_blocks", "random"] = "refuse",
    what: str = "samples",
) -> tuple[np.ndarray, list[str]]:
    """:func:`spatial_blocks` for every caller that splits samples into folds, with its fallback said, not hidden:
    fold ids and notes. Samples without coordinates (NaN) are dealt to folds at random. When the located samples fill
    fewer blocks than ``folds``: ``refuse`` raises :class:`BlockError`; ``smaller_blocks`` halves the block size until
    they fill enough (spatial separation kept, at a shorter range); ``random`` deals random folds (neighbours end up
    on both sides, so scores read optimistic)."""
    x, y = np.asarray(x, "float64"), np.asarray(y, "float64")
    out = np.full(len(x), -1, dtype="int64")
    located = np.isfinite(x) & np.isfinite(y)
    few = located.sum() < folds
    if few:  # too few placed samples to split by place: every sample is dealt at random
        located[:] = False
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    size = float(block_size)
    strat = None if stratify is None else np.asarray(stratify)[located]
    while located.any():
        try:
            out[located] = spatial_blocks(x[located], y[located], size, folds, seed, strat)
            break
        except BlockError:
            if fallback == "smaller_blocks" and size >= 1.0 and located.sum() >= folds:
                size /= 2
            elif fallback == "random":
                out[located] = rng.integers(0, folds, int(located.sum()))
                notes.append(
                    f"{what} fill fewer than {folds} blocks of {block_size:g} m: random folds (neighbours on both "
                    "sides: scores read optimistic)"
                )
                break
            else:
                raise
    if size != block_size:
        notes.append(f"{what} in blocks of {size:g} m (not {block_size:g} m: fewer blocks than folds)")
    if (~located).any():
        out[~located] = rng.integers(0, folds, int((~located).sum()))
        why = "fewer than the folds have coordinates" if few else "without coordinates"
        notes.append(f"{int((~located).sum())} {what} dealt to folds at random ({why})")
    return out, notes


def fold_masks(folds_array: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_mask, test_mask) for fold ``k``: test is fold ``k``, train is everything else."""
    folds_array = np.asarray(folds_array)
    if k not in set(np.unique(folds_array).tolist()):
        raise BlockError(f"fold {k} not in the folds array (folds present: {sorted(np.unique(folds_array).tolist())})")
    test = folds_array == k
    return ~test, test


def validation_split(
    x: np.ndarray,
    y: np.ndarray,
    train_mask: np.ndarray,
    block_size: float,
    fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split the training part into (fit_mask, val_mask) by whole blocks, for early stopping.

    About ``fraction`` of the training samples go to validation; no block is shared between the two, so the
    validation loss is as spatially honest as the test metrics.
    """
    if not 0 < fraction < 1:
        raise BlockError(f"validation fraction must be in (0, 1), got {fraction}")
    train_mask = np.asarray(train_mask, dtype=bool)
    x, y = _xy(x, y)
    if train_mask.shape != x.shape:
        raise BlockError(f"train_mask has shape {train_mask.shape}, expected {x.shape}")
    idx = np.flatnonzero(train_mask)
    # A fold's training part may hold fewer blocks than 1 / fraction parts (large blocks, few folds): then fewer,
    # larger parts, and below 2 blocks, halved blocks, rather than a failed run
    size = float(block_size)
    while n_blocks(x[idx], y[idx], size) < 2 and size > 1.0:
        size /= 2
    n_parts = max(2, min(round(1 / fraction), n_blocks(x[idx], y[idx], size)))
    parts = spatial_blocks(x[idx], y[idx], size, n_parts, seed=seed)
    val = np.zeros_like(train_mask)
    val[idx[parts == 0]] = True
    return train_mask & ~val, val


# --- block size from spatial autocorrelation -----------------------------------------------------------------------


def _spherical(h: np.ndarray, nugget: float, psill: float, a: float) -> np.ndarray:
    r = np.minimum(h / a, 1.0)
    return nugget + psill * (1.5 * r - 0.5 * r**3)


def _exponential(h: np.ndarray, nugget: float, psill: float, a: float) -> np.ndarray:
    return nugget + psill * (1.0 - np.exp(-h / a))


# model -> (function, practical range as a multiple of its range parameter)
_VARIOGRAM_MODELS = {"spherical": (_spherical, 1.0), "exponential": (_exponential, 3.0)}


def empirical_semivariogram(
    x: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    max_distance: float | None = None,
    n_bins: int = 30,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres, semivariance, pair counts) of one standardised variable, from at most 2,000 random points."""
    from scipy.spatial.distance import pdist

    x, y = _xy(x, y)
    v = np.asarray(values, dtype="float64")
    if v.shape != x.shape:
        raise BlockError(f"values must have one entry per point ({x.shape}), got {v.shape}")
    ok = np.isfinite(v)
    x, y, v = x[ok], y[ok], v[ok]
    if len(v) < 10:
        raise BlockError(f"a semivariogram needs at least 10 finite values, got {len(v)}")
    if len(v) > _MAX_VARIOGRAM_POINTS:
        keep = np.random.default_rng(seed).choice(len(v), _MAX_VARIOGRAM_POINTS, replace=False)
        x, y, v = x[keep], y[keep], v[keep]
    sd = v.std()
    v = (v - v.mean()) / (sd if sd > 0 else 1.0)
    xy = np.column_stack([x, y])
    d = pdist(xy)
    g = 0.5 * pdist(v[:, None], metric="sqeuclidean")
    if max_distance is None:
        # Half the largest separation: beyond it pairs come only from the edges and the estimate is noisy.
        max_distance = 0.5 * float(d.max())
    if not max_distance > 0:
        raise BlockError(f"max_distance must be positive, got {max_distance} (are all points at one place?)")
    edges = np.linspace(0.0, max_distance, n_bins + 1)
    counts, _ = np.histogram(d, bins=edges)
    sums, _ = np.histogram(d, bins=edges, weights=g)
    with np.errstate(invalid="ignore", divide="ignore"):
        gamma = sums / counts
    return 0.5 * (edges[1:] + edges[:-1]), gamma, counts


def _fit_range(h: np.ndarray, gamma: np.ndarray, counts: np.ndarray, model: str) -> float:
    from scipy.optimize import curve_fit

    edge = float(h[-1] + (h[-1] - h[-2]) / 2) if len(h) > 1 else float(h[-1])
    func, practical = _VARIOGRAM_MODELS[model]
    ok = counts > 0
    h, gamma, w = h[ok], gamma[ok], counts[ok]
    if len(h) < 3:
        return float("nan")
    h_max = float(h.max())
    sill0 = float(np.nanmax(gamma))
    p0 = [0.0, max(sill0, 1e-6), h_max / (2 * practical)]
    bounds = ([0.0, 0.0, h_max * 1e-3], [sill0 * 2 + 1e-6, sill0 * 4 + 1e-6, h_max * 10])
    try:
        # Weighted by pair counts (sigma ~ 1/sqrt(n)): short lags with few pairs should not dominate the fit.
        params, _ = curve_fit(func, h, gamma, p0=p0, bounds=bounds, sigma=1 / np.sqrt(w), maxfev=10_000)
    except (RuntimeError, ValueError):
        return float("nan")
    # A range beyond the largest lag means no sill was seen (a trend, e.g. a continental gradient): cap it there.
    return float(min(params[2] * practical, edge))


def autocorrelation_range(
    x: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    max_distance: float | None = None,
    model: Literal["spherical", "exponential"] = "spherical",
    seed: int = 0,
) -> float:
    """Practical range (metres) of spatial autocorrelation of ``values`` (predictors or residuals).

    Fits a spherical (range = the range parameter) or exponential (practical range = 3 x the range parameter) model
    to the binned empirical semivariogram of each standardised column; with several columns returns the median.
    A range past the largest lag (no sill: a trend) is capped at that lag. NaN when no column gives a fit.
    """
    if model not in _VARIOGRAM_MODELS:
        raise BlockError(f"variogram model must be one of {sorted(_VARIOGRAM_MODELS)}, got {model!r}")
    v = np.asarray(values, dtype="float64")
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise BlockError(f"values must be (n,) or (n, columns), got shape {v.shape}")
    ranges = []
    for j in range(v.shape[1]):
        col = v[:, j]
        if np.nanstd(col) == 0:
            continue  # a constant column carries no spatial structure
        h, gamma, counts = empirical_semivariogram(x, y, col, max_distance=max_distance, seed=seed)
        ranges.append(_fit_range(h, gamma, counts, model))
    finite = [r for r in ranges if np.isfinite(r)]
    return float(np.median(finite)) if finite else float("nan")


def n_blocks(x: np.ndarray, y: np.ndarray, block_size: float) -> int:
    """Number of aligned blocks of ``block_size`` that hold at least one sample."""
    return len(np.unique(block_ids(x, y, block_size)))


def choose_block_size(
    x: np.ndarray,
    y: np.ndarray,
    predictors: np.ndarray,
    folds: int = 5,
    step: float = KM,
    max_distance: float | None = None,
) -> float:
    """Default block size: the autocorrelation range rounded up to a multiple of ``step`` (1 km), then shrunk (in
    ``step`` increments) until at least ``2 * folds`` blocks hold samples.

    Falls back to the largest size giving enough blocks when the semivariogram cannot be fitted.
    """
    x, y = _xy(x, y)
    if len(x) == 0:
        raise BlockError("no samples to choose a block size from")
    need = 2 * folds
    rng_m = autocorrelation_range(x, y, predictors, max_distance=max_distance)
    extent = max(float(np.ptp(x)), float(np.ptp(y)), step)
    k_max = int(np.ceil(extent / step))
    k = int(np.ceil(rng_m / step)) if np.isfinite(rng_m) else k_max
    k = max(1, min(k, k_max))
    if n_blocks(x, y, k * step) >= need:
        return k * step
    # Bisection on the multiple of ``step``: block counts fall (almost) monotonically with size.
    lo, hi = 1, k
    if n_blocks(x, y, lo * step) < need:
        raise BlockError(
            f"even {step:g} m blocks give fewer than {need} occupied blocks for folds={folds}: too few or too "
            "clustered samples for spatial block CV"
        )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_blocks(x, y, mid * step) >= need:
            lo = mid
        else:
            hi = mid
    return lo * step


def blocks_geodataframe(
    x: np.ndarray, y: np.ndarray, block_size: float, folds: np.ndarray, crs: int | str = 3035
):  # -> geopandas.GeoDataFrame (imported lazily: geopandas is slow to import)
    """One square polygon per occupied block with its ``fold``, ``n_samples`` and ``block_id`` (for maps)."""
    import geopandas as gpd
    import pandas as pd
    from shapely import box

    ids = block_ids(x, y, block_size)
    folds = np.asarray(folds)
    if folds.shape != ids.shape:
        raise BlockError(f"folds must have one entry per sample ({ids.shape}), got {folds.shape}")
    table = pd.DataFrame({"block_id": ids, "fold": folds})
    per_block = table.groupby("block_id")["fold"].agg(["min", "max", "size"])
    split = per_block[per_block["min"] != per_block["max"]]
    if len(split):
        raise BlockError(f"{len(split)} blocks of {block_size:g} m hold samples of more than one fold")
    x0, y0 = block_origin(per_block.index.to_numpy(), block_size)
    return gpd.GeoDataFrame(
        {
            "block_id": per_block.index.to_numpy(),
            "fold": per_block["min"].to_numpy(),
            "n_samples": per_block["size"].to_numpy(),
        },
        geometry=box(x0, y0, x0 + block_size, y0 + block_size),
        crs=crs,
    )
