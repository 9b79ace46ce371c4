"""Virtual observations drawn from the known truth: vegetation plots, biased presence-only records, value polygons.

* Plots (presence-absence): stratified random locations; every species present with its true probability there;
  covers larger where the species thrives; species listed by cover, descending; habitat by the EUNIS-ESy-like rule.
* Presence-only: locations drawn with weight (observer effort) x (true p of the recorded species), where effort
  decays away from roads and towns; the effort itself is not published, as in real opportunistic data.
* Biodiversity-value polygons: connected areas of the top / bottom quantiles of a value score, polygonised on the map
  grid.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
from scipy import ndimage
from shapely.geometry import shape

from geoplantnet.core.grid import Grid
from geoplantnet.sim.habitats import HabitatSet, mean_cover_if_present
from geoplantnet.sim.species import SpeciesPool

CRS = "EPSG:3035"
SEASON = (91, 273)  # day-of-year window of field work (April to September)


class ObservationError(ValueError):
    """Bad settings for drawing observations (counts, extents, missing environment layers)."""


class PointEnvironment(Protocol):
    """Anything that gives environmental values at points (e.g. :class:`geoplantnet.sim.environment.Environment`)."""

    def at_points(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]: ...


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _dates(rng: np.random.Generator, n: int, start: str, years: int) -> pd.Series:
    """Field-season dates in the run's years."""
    first = dt.date.fromisoformat(start).year
    year = rng.integers(first, first + years, n)
    doy = rng.integers(SEASON[0], SEASON[1], n)
    dates = [dt.date(int(y), 1, 1) + dt.timedelta(days=int(d)) for y, d in zip(year, doy, strict=True)]
    return pd.Series(pd.to_datetime(dates), name="date")


def stratified_points(
    rng: np.random.Generator, bounds: tuple[float, float, float, float], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random points, at most one per cell of a k x k partition of ``bounds`` (k = ceil(sqrt(n)))."""
    if n < 0:
        raise ObservationError(f"number of points must be >= 0, got {n}")
    xmin, ymin, xmax, ymax = bounds
    k = max(1, int(np.ceil(np.sqrt(n))))
    cells = rng.permutation(k * k)[:n]
    row, col = np.divmod(cells, k)
    x = xmin + (col + rng.uniform(0, 1, n)) * (xmax - xmin) / k
    y = ymin + (row + rng.uniform(0, 1, n)) * (ymax - ymin) / k
    return x, y


def draw_covers(rng: np.random.Generator, p: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Cover (%) of present species, 0 elsewhere: gamma noise around :func:`mean_cover_if_present`."""
    cover = mean_cover_if_present(p) * rng.gamma(2.0, 0.5, p.shape)
    return np.where(present, np.clip(np.round(cover, 1), 0.1, 100.0), 0.0)


def sample_plots(
    pool: SpeciesPool,
    habitats: HabitatSet,
    env: PointEnvironment,
    bounds: tuple[float, float, float, float],
    n_plots: int,
    *,
    seed: int,
    start: str = "2024-01-01",
    years: int = 1,
) -> tuple[gpd.GeoDataFrame, pd.DataFrame]:
    """Presence-absence plots: (plots with plot_id, habitat, n_species, date, geometry; plot_species long table)."""
    rng = _rng(seed, 0x9107)
    x, y = stratified_points(rng, bounds, n_plots)
    values = env.at_points(x, y)
    p = pool.probability(values, x, y)  # (S, n)
    present = rng.uniform(size=p.shape) < p
    covers = draw_covers(rng, p, present)
    ids, names = np.asarray(pool.ids), np.asarray(pool.names)
    plot_ids = [f"plot{i + 1:05d}" for i in range(n_plots)]
    rows: list[pd.DataFrame] = []
    habitat, richness = [], []
    for j in range(n_plots):
        sp = np.flatnonzero(present[:, j])
        sp = sp[np.argsort(-covers[sp, j], kind="stable")]
        habitat.append(habitats.assign_habitat(ids[sp].tolist(), covers[sp, j].tolist(), int(values["land_cover"][j])))
        richness.append(sp.size)
        rows.append(
            pd.DataFrame(
                {
                    "plot_id": plot_ids[j],
                    "species_id": ids[sp],
                    "species_name": names[sp],
                    "cover": covers[sp, j],
                    "rank": np.arange(1, sp.size + 1, dtype="int32"),
                }
            )
        )
    plots = gpd.GeoDataFrame(
        {
            "plot_id": plot_ids,
            "habitat": habitat,
            "n_species": np.asarray(richness, dtype="int32"),
            "date": _dates(rng, n_plots, start, years),
        },
        geometry=gpd.points_from_xy(x, y),
        crs=CRS,
    )
    columns = ["plot_id", "species_id", "species_name", "cover", "rank"]
    species = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    return plots, species


def observer_effort(
    values: Mapping[str, np.ndarray], road_length: float = 300.0, town_length: float = 1000.0
) -> np.ndarray:
    """Relative observer effort: exp(-road_distance / L1) + exp(-town_distance / L2)."""
    try:
        road, town = np.asarray(values["road_distance"]), np.asarray(values["town_distance"])
    except KeyError as exc:
        raise ObservationError(f"observer effort needs environment layer {exc.args[0]!r}") from None
    return np.exp(-road / road_length) + np.exp(-town / town_length)


def sample_presence_only(
    pool: SpeciesPool,
    env: PointEnvironment,
    bounds: tuple[float, float, float, float],
    n_records: int,
    *,
    seed: int,
    start: str = "2024-01-01",
    years: int = 1,
    road_length: float = 300.0,
    town_length: float = 1000.0,
    n_candidates: int | None = None,
) -> gpd.GeoDataFrame:
    """Opportunistic records: (place, species) pairs drawn with weight effort(place) x p(species, place)."""
    if n_records < 0:
        raise ObservationError(f"n_presence_only must be >= 0, got {n_records}")
    rng = _rng(seed, 0x9050)
    m = n_candidates or max(2000, 2 * n_records)  # places are reused: observers list several species per stop
    xmin, ymin, xmax, ymax = bounds
    x, y = rng.uniform(xmin, xmax, m), rng.uniform(ymin, ymax, m)
    values = env.at_points(x, y)
    weight = pool.probability(values, x, y) * observer_effort(values, road_length, town_length)[None, :]
    total = float(weight.sum())
    if n_records and total <= 0:
        raise ObservationError("presence-only sampling: every candidate place has zero weight")
    flat = rng.choice(weight.size, size=n_records, p=(weight / total).ravel()) if n_records else np.array([], int)
    sp, place = np.divmod(flat, m)
    return gpd.GeoDataFrame(
        {
            "record_id": [f"po{i + 1:06d}" for i in range(n_records)],
            "species_id": np.asarray(pool.ids)[sp],
            "species_name": np.asarray(pool.names)[sp],
            "date": _dates(rng, n_records, start, years),
        },
        geometry=gpd.points_from_xy(x[place], y[place]),
        crs=CRS,
    )


def value_score(richness: np.ndarray, threatened: np.ndarray, threatened_weight: float = 4.0) -> np.ndarray:
    """Biodiversity value: expected richness plus extra weight on expected threatened species."""
    return np.asarray(richness, dtype="float32") + threatened_weight * np.asarray(threatened, dtype="float32")


def value_polygons(
    score: np.ndarray,
    grid: Grid,
    *,
    quantile: float = 0.15,
    min_pixels: int = 4,
    max_per_class: int = 20,
    smooth: int = 3,
    zones: np.ndarray | None = None,
    survey_sd: float = 0.0,
    seed: int = 0,
) -> gpd.GeoDataFrame:
    """Connected areas of the top (``high``) and bottom (``low``) ``quantile`` of a (smoothed) score raster.

    With ``zones`` (e.g. land cover) an area never crosses a zone boundary, as a mapped site would not. Each area
    carries ``mean_score`` (its true mean score) and ``condition``: a simulated field survey's condition score, the
    true mean plus Gaussian noise of ``survey_sd`` (seeded by ``seed``), rounded to 0.1 as a surveyor would note it.
    """
    if score.shape != grid.shape:
        raise ObservationError(f"value score of shape {score.shape} does not match the grid {grid.shape}")
    if zones is not None and np.shape(zones) != grid.shape:
        raise ObservationError(f"value zones of shape {np.shape(zones)} do not match the grid {grid.shape}")
    if not 0 < quantile < 0.5:
        raise ObservationError(f"value quantile must be in (0, 0.5), got {quantile}")
    finite = np.isfinite(score)
    filled = np.where(finite, score, np.nanmedian(score) if finite.any() else 0.0)
    smoothed = ndimage.uniform_filter(filled.astype("float64"), size=smooth, mode="nearest")
    lo, hi = np.quantile(smoothed[finite], [quantile, 1 - quantile]) if finite.any() else (0.0, 0.0)
    records: list[dict[str, object]] = []
    for label, mask in (("high", (smoothed >= hi) & finite), ("low", (smoothed <= lo) & finite)):
        components, n = _label(mask, zones)
        if n == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, n + 1))
        keep = [i + 1 for i in np.argsort(-sizes)[:max_per_class] if sizes[i] >= min_pixels]
        kept = np.where(np.isin(components, keep), components, 0).astype("int32")
        for geom, comp in rasterio.features.shapes(kept, mask=kept > 0, transform=grid.transform):
            sel = kept == int(comp)
            records.append(
                {
                    "value": label,
                    "n_pixels": int(sel.sum()),
                    "mean_score": float(score[sel & finite].mean()),
                    "geometry": shape(geom),
                }
            )
    gdf = gpd.GeoDataFrame(
        records, columns=["value", "n_pixels", "mean_score", "geometry"], geometry="geometry", crs=CRS
    )
    gdf["area_m2"] = gdf.geometry.area
    noise = np.random.default_rng([seed, 24]).normal(0.0, survey_sd, len(gdf)) if survey_sd > 0 else 0.0
    gdf["condition"] = np.round(gdf["mean_score"].to_numpy() + noise, 1)
    return gdf


def _label(mask: np.ndarray, zones: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Connected components of ``mask``, split along zone boundaries."""
    if zones is None:
        return ndimage.label(mask)
    out = np.zeros(mask.shape, dtype="int32")
    n = 0
    for zone in np.unique(zones[mask]):
        comp, k = ndimage.label(mask & (zones == zone))
        out[comp > 0] = comp[comp > 0] + n
        n += k
    return out, n


def write_geoparquet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a (Geo)DataFrame as (Geo)Parquet atomically (a crash leaves no file that reads as complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
