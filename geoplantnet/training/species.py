"""Species training settings and point predictions: what training reads of a run's configuration
(:class:`SpeciesTraining`, built by :class:`geoplantnet.runs.context.RunContext`; never the whole configuration), the
point predictors of a training set for MaxEnt and the forest, and a species network or a peer file applied at a table
of points exactly as training extracted its samples (``geoplantnet predict``; points on a no-data cell moved as
training moves its records).

The CNN behind the peers' interface, the region's training set and the final, calibrated models are
:mod:`geoplantnet.validation.species`' (they need the spatial blocks and the calibration of ``validation``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import xarray as xr

from geoplantnet.core.config import CubeConfig, GridConfig, ModelConfig, TrainConfig, ValidationConfig
from geoplantnet.core.grid import Grid
from geoplantnet.models.peers import PeerSpec, peer_probabilities, point_features
from geoplantnet.samples.extraction import extract_samples
from geoplantnet.samples.observations import Observations, Samples, SpeciesVocabulary
from geoplantnet.samples.points import Points
from geoplantnet.samples.training_set import open_training_set
from geoplantnet.samples.valid_cells import ValidCells, move_records_to_valid
from geoplantnet.sources import predictors
from geoplantnet.sources.cube import cube_composites
from geoplantnet.storage.workdir import Workdir, scratch
from geoplantnet.training.train import predict

if TYPE_CHECKING:
    from geoplantnet.models.species_net import ModelSpec


@dataclass(frozen=True)
class SpeciesTraining:
    """What species training reads of a run's configuration: its name (names the cluster tasks), the grid, the
    Sentinel-2 cube, the network, the training and validation settings, the provenance attributes written into
    the training set, and the object-store folder through which the driver and workers that share no disk exchange
    training sets and models (``<workdir>/train`` of an object-store workdir; None: a local workdir, shared)."""

    name: str
    grid: GridConfig
    cube: CubeConfig
    model: ModelConfig
    train: TrainConfig
    validation: ValidationConfig
    provenance: Mapping[str, str]
    stage: Workdir | None = None


class SpeciesInputs(Protocol):
    """A run's inputs as training reads them (:class:`geoplantnet.runs.inputs.Inputs` is one)."""

    observations: Observations | None
    env_items: list
    s2_items: list | None
    read_options: dict  # the object store of the items' s3:// assets (empty: local files)


def training_point_features(ds: xr.Dataset) -> np.ndarray:
    """Predictors at the points for MaxEnt and the forest: environment values, plus the seasonal series if present
    (:func:`~geoplantnet.models.peers.point_features`, which the map tiles use too)."""
    if "env_point" not in ds and "series" not in ds:
        raise ValueError("the training set has neither env_point nor series: no predictors for the peers")
    env_point = ds["env_point"].values if "env_point" in ds else None
    series = ds["series"].values if "series" in ds else None
    return point_features(env_point, series)


def feature_inputs(ds: xr.Dataset) -> dict[str, Any]:
    """The names of :func:`training_point_features`' columns, as a peer file records them (``PeerSpec`` inputs)."""
    out: dict[str, Any] = {"variables": None, "bands": None, "seasons": 0}
    if "env_point" in ds:
        names = ds.attrs.get("variables", "").split()
        n = ds.sizes["var"]
        out["variables"] = names if len(names) == n else [f"var{i}" for i in range(n)]
    if "series" in ds:
        names = ds.attrs.get("bands", "").split()
        n = ds.sizes["band"]
        out["bands"] = names if len(names) == n else [f"band{i}" for i in range(n)]
        out["seasons"] = int(ds.sizes["season"])
    return out


def truth_at(truth: xr.DataArray, grid: Grid, x: np.ndarray, y: np.ndarray, species: list[str]) -> np.ndarray:
    """The true probabilities (sample, species) at points ``x``, ``y`` of the map grid (the virtual region's)."""
    rows, cols = grid.index(x, y)
    values = truth.sel(species=species).values  # (species, y, x); the map grid of a virtual region is small
    return values[:, rows, cols].T.astype("float32")


# -- point predictions (``geoplantnet predict``)


@dataclass(frozen=True)
class PointPredictions:
    """What :func:`predict_at_points` gives, one row per point: the probabilities ``(points, species)`` (NaN without
    a prediction), whether the point got one, and how far it was moved (metres in the grid's CRS: 0 when predicted
    at its own place, the distance to the centre of the nearest valid cell when its own cell had no environmental
    data, NaN without a prediction)."""

    probs: np.ndarray
    has_data: np.ndarray
    moved_m: np.ndarray
    radius: int  # cells a point may move (train.nearest_valid_cells; 0 for a model without environmental inputs)

    @property
    def moved(self) -> int:
        """Points predicted at the nearest valid cell instead of their own."""
        return int((self.moved_m > 0).sum())


def _patch_size(spec: ModelSpec | PeerSpec, modality: str) -> int:
    """The patch side the model was trained on (its spec, not this run's model.* settings); 1 where it takes no
    patch of that modality: a peer's point values and a series are the patch's centre pixel, the same at any side."""
    return int(spec.modalities[modality][-1]) if modality in spec.modalities else 1


def _inside(settings: SpeciesTraining, takes_s2: bool, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points inside the map grid and, for a model of Sentinel-2, the cube grid (which may end a few metres before)."""
    inside = settings.grid.grid().contains(x, y)
    if takes_s2:
        inside &= settings.grid.grid(settings.cube.resolution).contains(x, y)
    return inside


def predict_at_points(
    spec_model: tuple[Any, ModelSpec | PeerSpec],
    settings: SpeciesTraining,
    inputs: SpeciesInputs,
    points: Points,
    client: Any,
    workdir: Workdir,
) -> PointPredictions:
    """A species network or a peer (a loaded ``.peer`` file) at ``points``: the model's inputs extracted at the points
    exactly as training extracted them (into a temporary training set under ``workdir``, or this process's scratch
    for an object-store workdir), then the network through :func:`geoplantnet.training.train.predict` with its own
    normalisation, or the peer on the rows of :func:`training_point_features`
    (:func:`~geoplantnet.models.peers.peer_probabilities`); both calibrated as their file says, as the map is. A
    point whose cell has no environmental data (a coastal cell the warp emptied) is moved to the nearest valid cell
    within ``train.nearest_valid_cells`` cells, as training moves its records
    (:func:`~geoplantnet.samples.valid_cells.move_records_to_valid`)."""
    model, spec = spec_model
    grid = settings.grid.grid()
    takes_s2 = "patch" in spec.modalities or "series" in spec.modalities
    takes_env = "env" in spec.modalities
    radius = settings.train.nearest_valid_cells if takes_env else 0  # training moves only off the env warp's no-data
    inside = _inside(settings, takes_s2, points.x, points.y)
    probs = np.full((len(points.x), len(spec.species)), np.nan, np.float32)
    moved_m = np.full(len(points.x), np.nan)
    rows = np.flatnonzero(inside)
    if not len(rows):
        return PointPredictions(probs, inside, moved_m, radius)
    n_species = len(spec.species)
    vocab = SpeciesVocabulary(tuple(spec.species), tuple(spec.species_name or spec.species))
    x0, y0 = points.x[rows], points.y[rows]
    samples = Samples(x0, y0, np.full((len(rows), n_species), -1, np.int8), np.full(len(rows), "pa"), vocab)
    # the same lazy sources as training (prepare_samples): only the chunks holding points are read
    options = inputs.read_options
    env = None
    if takes_env:
        env = predictors.model_stack(inputs.env_items, grid, chunk=settings.cube.chunk, storage_options=options)
    composite = (
        cube_composites(inputs.s2_items, settings.cube, settings.grid.grid(settings.cube.resolution), options)
        if takes_s2
        else None
    )
    if env is not None and radius:
        # validity read at the points and their neighbours only (mask_cells=0), never the whole grid
        valid_cells = ValidCells(env, epsg=grid.epsg, client=client, mask_cells=0)
        samples, _ = move_records_to_valid(samples, valid_cells, radius, what="points")
        back = ~_inside(settings, takes_s2, samples.x, samples.y)  # a map cell centre past the cube grid's end
        samples.x[back], samples.y[back] = x0[back], y0[back]
    # extracted on the driver and read there: a local folder (the workdir's, or this process's scratch for a URL)
    where = workdir.path() if workdir.local else scratch("predict")
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="predict-", dir=where) as tmp:
        path = extract_samples(
            samples,
            grid,
            composite=composite,
            env=env,
            patch_size=_patch_size(spec, "patch"),
            env_patch_size=_patch_size(spec, "env"),
            out=str(Path(tmp) / "points.zarr"),
            client=client,
        )
        valid = _has_data(path, takes_env)
        if valid.any():
            probs[rows[valid]] = _probabilities(model, spec, path, np.flatnonzero(valid), settings.train.batch_size)
    moved_m[rows[valid]] = np.hypot(samples.x - x0, samples.y - y0)[valid]
    inside[rows[~valid]] = False
    return PointPredictions(probs, inside, moved_m, radius)


def _probabilities(model: Any, spec: ModelSpec | PeerSpec, path: str, idx: np.ndarray, batch_size: int) -> np.ndarray:
    """The model at the samples ``idx`` of the training set at ``path``, calibrated as its file says."""
    if isinstance(spec, PeerSpec):
        return peer_probabilities(model, spec, training_point_features(open_training_set(path))[idx])
    return predict(model, spec, path, idx, batch_size)


def _has_data(path: str, takes_env: bool) -> np.ndarray:
    """The map's no-data rule at points (:func:`geoplantnet.inference.dense._valid`): every environmental variable
    finite at the point, or for a Sentinel-2-only model any finite value in the point's seasonal series."""
    ds = open_training_set(path)
    if takes_env:
        return np.isfinite(ds["env_point"].values).all(axis=1)
    return np.isfinite(ds["series"].values).any(axis=(1, 2))
