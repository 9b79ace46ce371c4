"""The one tile reader: what a tile task reads of a run's inputs (Sentinel-2 composites, environmental predictors) on
exactly its window, NaN where the window leaves the run's grids, and the refusal of inputs a model was not trained on.

:class:`MapSources` is built once on the driver (items as dicts, footprints in the grid's CRS) and shipped with every
tile task of the species map, the fused indicators, the value map and the impact scenarios; it reads lazily, only
the items touching the window asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pystac

from geoplantnet.core.config import CubeConfig
from geoplantnet.core.grid import Grid, overlaps
from geoplantnet.inference.dense import InferenceError, TileGeometry

if TYPE_CHECKING:
    from geoplantnet.models.species_net import ModelSpec


def _touching(items: Sequence[Mapping[str, Any]], footprints: Sequence[Any], grid: Grid) -> list[pystac.Item]:
    return [
        pystac.Item.from_dict(dict(item))
        for item, fp in zip(items, footprints, strict=True)
        if fp is None or overlaps(fp, grid.bounds)
    ]


@dataclass(frozen=True)
class ReadSettings:
    """The settings a tile read needs (not the whole run configuration: tasks carry what they use)."""

    cube: CubeConfig  # Sentinel-2 bands, masking, compositing, indices, chunking


@dataclass(frozen=True)
class MapSources:
    """What tile tasks read; picklable (items as dicts). ``seasons`` is the run's composite time axis: a tile whose
    items miss a season still gets that season, as NaN, like a cloudy season in training."""

    settings: ReadSettings
    s2_items: tuple[dict, ...] | None
    env_items: tuple[dict, ...] | None
    seasons: tuple[np.datetime64, ...] | None
    # item footprints in the grid's CRS, once per run rather than once per tile and item
    s2_footprints: tuple[Any, ...]
    env_footprints: tuple[Any, ...]
    # the object store the items' s3:// assets were published to (the workdir's), read through GDAL's /vsis3/ on
    # the workers; None: local files or public URLs
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)  # a credential, maybe: never shown

    @classmethod
    def from_items(
        cls,
        cube: CubeConfig,
        epsg: int,
        s2_items: Sequence[pystac.Item] | None,
        env_items: Sequence[pystac.Item],
        seasons: Sequence[np.datetime64] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> MapSources:
        """Sources for a run with the cube settings ``cube`` on a grid of CRS ``epsg`` (``storage_options``: the
        object store of the items' ``s3://`` assets). The season axis is
        ``seasons`` when given (a refresh: the first year's periods shifted to its year), else the region-wide
        composite's: every period between the first and the last acquisition
        (:func:`geoplantnet.sources.cube.seasonal_composite` resamples the same way)."""
        from geoplantnet.sources.cube import item_footprint

        if seasons is not None:
            seasons = tuple(np.asarray(seasons, dtype="datetime64[ns]"))
        elif s2_items:
            times = pd.DatetimeIndex([pd.Timestamp(item.datetime).tz_convert(None) for item in s2_items])
            bins = pd.Series(1, index=times.sort_values()).resample(cube.composite).count()
            seasons = tuple(bins.index.values.astype("datetime64[ns]"))
        s2 = tuple(i.to_dict() for i in s2_items) if s2_items else None
        env = tuple(i.to_dict() for i in env_items)
        return cls(
            ReadSettings(cube),
            s2,
            env,
            seasons,
            tuple(item_footprint(i, epsg) for i in s2 or ()),
            tuple(item_footprint(i, epsg) for i in env),
            dict(storage_options) if storage_options else None,
        )

    def read(
        self, spec: ModelSpec, geom: TileGeometry, map_grid: Grid, cube_grid: Grid | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The raw input windows of one tile: Sentinel-2 composite (season, band, y, x), environment (var, y, x);
        read on the run's grids only, NaN where a window leaves them (:meth:`TileGeometry.read_window`)."""
        patch = env = None
        if geom.cube_window is not None:
            if not self.s2_items or cube_grid is None:
                raise InferenceError("the model takes Sentinel-2 inputs but the run has no Sentinel-2 items")
            bands = self.band_names(spec.bands)
            lead = (len(self.seasons or ()), len(bands))
            patch = geom.read_window(cube_grid, "cube", lambda window: self.composite(window, bands), lead)
        if geom.env_window is not None:
            n_vars = spec.modalities["env"][0] - (1 if spec.mask_channels else 0)
            names = list(spec.variables) if spec.variables else [f"var{i}" for i in range(n_vars)]
            check = spec.variables is not None
            env = geom.read_window(
                map_grid, "env", lambda window: self.environment(window, names, check=check), (n_vars,)
            )
        return patch, env

    def band_names(self, trained: Sequence[str] | None = None) -> list[str]:
        """The composite's channels: a model's (``trained``) or the run's bands then indices."""
        cube = self.settings.cube
        return list(trained) if trained else [*cube.bands, *cube.indices]

    def environment(self, window: Grid, names: Sequence[str], *, check: bool = True) -> np.ndarray:
        """The environmental predictors ``names`` (var, y, x) on ``window`` as models take them
        (:func:`geoplantnet.sources.predictors.model_stack`; NaN where no raster covers it). ``check``: refuse
        rasters whose variables are not ``names`` in that order."""
        from geoplantnet.sources import predictors

        items = _touching(self.env_items or (), self.env_footprints, window)
        if not items:
            return np.full((len(names), window.height, window.width), np.nan, np.float32)
        chunk = max(window.height, window.width)
        stack = predictors.model_stack(items, window, chunk=chunk, storage_options=self.storage_options)
        if check:
            check_names("environmental variables", names, stack["var"].values, "rasters")
        return stack.compute(scheduler="sync").values.astype(np.float32)

    def composite(self, window: Grid, bands: Sequence[str]) -> np.ndarray:
        """The seasonal composite (season, band, y, x) on ``window``, channels ``bands`` (checked against the
        imagery), seasons the run's (NaN where a season or the imagery is missing)."""
        from geoplantnet.sources.cube import cube_composites

        shape = (len(self.seasons or ()), len(bands), window.height, window.width)
        items = _touching(self.s2_items or (), self.s2_footprints, window)
        if not items:
            return np.full(shape, np.nan, np.float32)
        comp = cube_composites(items, self.settings.cube, window, self.storage_options)
        check_names("Sentinel-2 bands", bands, comp["band"].values, "imagery")
        comp = comp.reindex(time=list(self.seasons or ()))
        return comp.compute(scheduler="sync").values.astype(np.float32)


def listed(names: Sequence[str], limit: int = 12) -> str:
    """``names`` for a message: the first ``limit``, then how many more."""
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... {len(names) - limit} more' if len(names) > limit else ''}]"


def check_names(what: str, trained: Sequence[str] | None, given: Sequence[Any], source: str) -> None:
    """Refuse inputs whose channel names are not the model's, in its order; the message says what differs."""
    given = [str(g) for g in given]
    if trained is None or list(trained) == given:
        return
    missing = [n for n in trained if n not in given]
    extra = [n for n in given if n not in trained]
    diff = [f"missing {listed(missing)}"] if missing else []
    diff += [f"not in the model {listed(extra)}"] if extra else []
    raise InferenceError(
        f"the model was trained on {what} {listed(list(trained))}, the run's {source} give {listed(given)} "
        f"({'; '.join(diff) or 'the same names in another order'})"
    )


def check_inputs(spec: ModelSpec, sources: MapSources, grid: Grid) -> None:
    """On the driver, before anything is written: the run's inputs are the ones the model was trained on (the same
    Sentinel-2 bands and indices, the same seasons, the same environmental variables in the same order) on the map
    grid ``grid``."""
    from geoplantnet.sources import predictors

    cube = sources.settings.cube
    takes_s2 = "patch" in spec.modalities or "series" in spec.modalities
    if takes_s2 and not sources.s2_items:
        raise InferenceError(
            f"the model was trained on Sentinel-2 bands {listed(spec.bands or [])} but the run has no Sentinel-2 "
            "items (--with-s2 / inputs.sentinel2 with stac.url, or a search that found nothing)"
        )
    if takes_s2:
        bands = [*cube.bands, *cube.indices]
        check_names("Sentinel-2 bands", spec.bands, bands, "settings (cube.bands + cube.indices)")
        seasons = spec.modalities["series"][-1] if "series" in spec.modalities else None
        if seasons is not None and seasons != len(sources.seasons or ()):
            raise InferenceError(
                f"the model was trained on {seasons} composite periods, the run's imagery spans "
                f"{len(sources.seasons or ())} (cube.composite={cube.composite}, cube.datetime={cube.datetime})"
            )
    if "env" in spec.modalities:
        if not sources.env_items:
            raise InferenceError(
                f"the model was trained on environmental variables {listed(spec.variables or [])} but the run has "
                "no rasters (--rasters / inputs.rasters)"
            )
        probe = Grid(grid.resolution, grid.left, grid.top, 1, 1, grid.epsg)  # metadata only: nothing is read
        names = predictors.model_stack([pystac.Item.from_dict(dict(i)) for i in sources.env_items], probe)["var"]
        check_names("environmental variables", spec.variables, names.values, "rasters")
