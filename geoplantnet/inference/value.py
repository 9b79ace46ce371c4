"""The biodiversity-value model applied to a tile (worker side): its feature stack read through the run's
``MapSources`` (tile + halo, NaN past the grid), the model kept per worker process (pinned by the sha256 the driver
read) and the prediction, deterministic or with Monte-Carlo dropout draws.

The network (torch) is imported where a model is read or run: commands refuse bad polygons or a bad value model file
without it (tests/test_refusal_times.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pystac

from geoplantnet.core.config import StoreConfig
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import TileGeometry
from geoplantnet.inference.species import ModelRef
from geoplantnet.storage.store import read_options_for, shown

if TYPE_CHECKING:
    from geoplantnet.inference.reader import MapSources
    from geoplantnet.models.value_forest import ValueForest
    from geoplantnet.models.value_net import ValueModel


class ValueJobError(GeoplantnetError):
    """A value run that cannot start or a tile that failed (one line)."""


def feature_layout(sources: MapSources, grid: Grid) -> tuple[list[str], list[str], list[str]]:
    """The run's inputs as the value model takes them: Sentinel-2 channels (bands then indices), environmental
    variables (``model_stack``'s names, from the rasters' metadata only) and those of them that are one-hot classes."""
    from geoplantnet.sources import predictors

    bands = sources.band_names() if sources.s2_items else []
    variables: list[str] = []
    one_hot: list[str] = []
    if sources.env_items:
        items = [pystac.Item.from_dict(dict(i)) for i in sources.env_items]
        probe = Grid(grid.resolution, grid.left, grid.top, 1, 1, grid.epsg)  # metadata only: nothing is read
        variables = [str(v) for v in predictors.model_stack(items, probe)["var"].values]
        plain = {str(v) for v in predictors.environment_stack(items, probe)["var"].values}
        one_hot = [v for v in variables if v not in plain]
    return bands, variables, one_hot


def feature_names(bands: list[str], variables: list[str], n_seasons: int) -> list[str]:
    """Channel names of the feature stack: ``s2:<band>:t<season>`` (season-major, as the composite flattens), then
    the environmental variables."""
    return [f"s2:{b}:t{s}" for s in range(n_seasons) for b in bands] + list(variables)


def run_features(sources: MapSources, grid: Grid) -> tuple[list[str], list[str], list[str], list[str]]:
    """:func:`feature_layout` of the run and its :func:`feature_names`: bands, variables, one-hot variables, names."""
    bands, variables, one_hot = feature_layout(sources, grid)
    names = feature_names(bands, variables, len(sources.seasons or ()) if bands else 0)
    return bands, variables, one_hot, names


def read_features(
    sources: MapSources,
    grid: Grid,
    tile: Tile,
    window: tuple[int, int, int, int],
    bands: list[str],
    variables: list[str],
) -> np.ndarray:
    """The feature stack (C, y, x) of the pixel ``window`` (row0, row1, col0, col1; it may leave ``grid``, NaN
    there) through ``sources.composite`` and ``sources.environment`` only."""
    geom = TileGeometry(tile, window, window, np.zeros(0, np.int64), np.zeros(0, np.int64))
    h, w = window[1] - window[0], window[3] - window[2]
    parts = []
    if bands:
        lead = (len(sources.seasons or ()), len(bands))
        parts.append(geom.read_window(grid, "cube", lambda g: sources.composite(g, bands), lead).reshape(-1, h, w))
    if variables:
        parts.append(geom.read_window(grid, "env", lambda g: sources.environment(g, variables), (len(variables),)))
    if not parts:
        raise ValueJobError("the run has neither Sentinel-2 imagery nor environmental rasters to map value from")
    return np.concatenate(parts).astype(np.float32)


def cached_value_model(
    ref: ModelRef, device: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[ValueModel, int]:
    """The value model of ``ref`` (read with ``storage_options``) kept by this worker process, and its loads; a file
    changed since the driver read it is refused rather than mixed into a map."""
    from geoplantnet.models.value_net import ValueModel
    from geoplantnet.runtime.devices import resolve_device
    from geoplantnet.runtime.worker_cache import pinned

    dev = resolve_device(device)

    def load() -> tuple[ValueModel, str]:
        model, raw = ValueModel.load(ref.url, dev, dict(storage_options or {}))
        return model, hashlib.sha256(raw).hexdigest()

    return pinned("value-model", ref.url, ref.sha256, str(dev), load, "value model file")


def cached_value_forest(ref: ModelRef, storage_options: Mapping[str, Any] | None = None) -> ValueForest:
    """The value forest folder of ``ref`` kept by this worker process (pinned by its payload's sha256)."""
    from geoplantnet.models.value_forest import ValueForest, ValueForestError
    from geoplantnet.runtime.worker_cache import pinned

    def load() -> tuple[ValueForest, str]:
        forest = ValueForest.load(ref.url, dict(storage_options or {}))
        if forest is None:
            raise ValueForestError(f"{shown(ref.url)}: the value forest is gone")
        return forest, forest.sha256

    return pinned("value-forest", ref.url, ref.sha256, "cpu", load, "value forest")[0]


@dataclass(frozen=True)
class ValuePredictor:
    """How a tile's biodiversity value is predicted (picklable, sent to workers): the model file, the inputs (every
    read goes through ``sources.composite`` / ``sources.environment``), the value grid, the channels and halo."""

    model: ModelRef
    sources: MapSources
    grid: Grid
    bands: tuple[str, ...]
    variables: tuple[str, ...]
    halo: int
    device: str = "cpu"
    model_options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # fsspec options of the model file
    meaning: Mapping[str, Any] = field(default_factory=dict, hash=False)  # the value's units (ValueSpec.meaning)
    forest: ModelRef | None = None  # value.model forest / blend: the forest folder beside the U-Net
    unet_weight: float = 1.0  # the U-Net's share of the value; the forest's is 1 - unet_weight

    @property
    def shipped(self) -> str:
        """Which model maps: ``unet``, ``forest`` or ``blend``."""
        return "unet" if self.forest is None else "forest" if self.unet_weight == 0 else "blend"

    def window(self, tile: Tile) -> tuple[int, int, int, int]:
        """The read window of ``tile``: the tile grown by the halo (rows, then columns; may leave the grid)."""
        h = self.halo
        return tile.y0 - h, tile.y0 + tile.height + h, tile.x0 - h, tile.x0 + tile.width + h

    def read(self, tile: Tile) -> np.ndarray:
        """The features (C, y, x) of ``tile``'s window (tile + halo, NaN past the grid)."""
        return read_features(self.sources, self.grid, tile, self.window(tile), list(self.bands), list(self.variables))

    def loaded(self) -> tuple[ValueModel, int]:
        """The model as this worker process keeps it, and the loads it took (:func:`cached_value_model`)."""
        return cached_value_model(self.model, self.device, self.model_options)

    def predict_window(self, features: np.ndarray, tile: Tile, *, draws: int = 0, seed: int = 0) -> np.ndarray:
        """:meth:`predict` from features already read by :meth:`read`."""
        h = self.halo
        inner = (slice(h, h + tile.height), slice(h, h + tile.width))
        w = self.unet_weight
        out = np.zeros((max(draws, 1), tile.height, tile.width), np.float32)
        if w > 0:
            model, _ = self.loaded()
            # the same seed in every tile: Dropout2d draws one mask per channel whatever the window's size, so draw
            # k is the same thinned network everywhere and the draws (and their spread) have no tile seams either
            out += w * model.predict(features, draws=draws, seed=seed)[(slice(None), *inner)].astype(np.float32)
        if self.forest is not None and w < 1:
            from geoplantnet.models.value_forest import forest_value, pixel_rows

            forest = cached_value_forest(self.forest, self.model_options)
            model, _ = self.loaded()  # its score rescaling puts a regression forest on the U-Net's scale
            rescale = model.spec.score_value if model.spec.target == "score" else None
            value = forest_value(forest.forest, pixel_rows(features[(slice(None), *inner)]), rescale)
            # the forest is one deterministic value: a blend's draws are w x the U-Net's draws + (1 - w) x it, so
            # its sd is w x the U-Net's MC-dropout sd (the forest alone: sd 0)
            out += (1 - w) * value.reshape(tile.height, tile.width)
        nodata = ~np.isfinite(features[(slice(None), *inner)]).any(axis=0)  # no input at all: no value
        out[:, nodata] = np.nan
        return out

    def predict(self, tile: Tile, *, draws: int = 0, seed: int = 0) -> np.ndarray:
        """(max(draws,1), tile.height, tile.width) float32 value (:attr:`meaning`; a score target's may leave
        [0, 1]), NaN = no data; reads tile+halo."""
        return self.predict_window(self.read(tile), tile, draws=draws, seed=seed)


@dataclass(frozen=True)
class ValueModelFile:
    """A value model file read and checked on the driver, with the sha256 of its bytes: read before a job's inputs
    are made or a cluster starts, so a missing or corrupt file fails first."""

    url: str
    model: ValueModel
    sha256: str
    options: dict[str, Any]  # the storage options it is read with (the store's, for a model under store.root)
    forest: ValueForest | None = None  # the forest folder beside it (value.model forest / blend), checked

    @classmethod
    def read(cls, url: str, store: StoreConfig) -> ValueModelFile:
        """Read ``url`` with the options ``store`` gives it, and the forest beside it if any (``ValueModelError`` /
        ``ValueForestError``, one line, when unusable or of another training)."""
        from geoplantnet.models.value_forest import ValueForest, ValueForestError, forest_url
        from geoplantnet.models.value_net import ValueModel

        options = read_options_for(url, store)
        model, raw = ValueModel.load(url, storage_options=options)
        forest = ValueForest.load(forest_url(url), options)
        if forest is not None and (
            forest.training_key != model.spec.training_key or list(forest.features) != model.spec.features
        ):
            raise ValueForestError(
                f"{shown(forest_url(url))}: a value forest of another training than {shown(url)}; retrain with "
                "geoplantnet value --overwrite"
            )
        return cls(url, model, hashlib.sha256(raw).hexdigest(), options, forest)


def plan_predictor(read: ValueModelFile, sources: MapSources, grid: Grid, device: str) -> ValuePredictor:
    """The predictor tile tasks carry (pinned by the file's sha256), once the run's inputs (``sources``) are checked
    to give the model's features in its order on the value ``grid``."""
    from geoplantnet.models.value_net import ValueModelError

    spec = read.model.spec
    bands, variables, _, names = run_features(sources, grid)
    if names != spec.features:
        missing = [n for n in spec.features if n not in names]
        extra = [n for n in names if n not in spec.features]
        raise ValueModelError(
            f"{shown(read.url)}: the value model was trained on {len(spec.features)} features, the run's "
            f"inputs give {len(names)} (missing {missing[:6]}, not in the model {extra[:6]})"
        )
    from geoplantnet.models.value_forest import forest_url

    ref = ModelRef(read.url, read.sha256)
    forest, weight = None, 1.0
    if read.forest is not None:
        forest, weight = ModelRef(forest_url(read.url), read.forest.sha256), read.forest.unet_weight
    return ValuePredictor(
        ref, sources, grid, tuple(bands), tuple(variables), spec.halo, device, read.options, spec.meaning(), forest,
        weight,
    )  # fmt: skip
