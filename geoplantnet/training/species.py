"""Species training settings and point predictions: what training reads of a run's configuration
(:class:`SpeciesTraining`, built by :class:`geoplantnet.runs.context.RunContext`; never the whole configuration), the
point predictors of a training set for MaxEnt and the forest, and a species network applied at a table of points
exactly as training extracted its samples (``geoplantnet predict``).

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
from geoplantnet.models.peers import point_features
from geoplantnet.samples.extraction import extract_samples
from geoplantnet.samples.observations import Observations, Samples, SpeciesVocabulary
from geoplantnet.samples.points import Points
from geoplantnet.samples.training_set import open_training_set
from geoplantnet.sources import predictors
from geoplantnet.sources.cube import cube_composites
from geoplantnet.training.train import predict

if TYPE_CHECKING:
    from geoplantnet.models.species_net import ModelSpec


@dataclass(frozen=True)
class SpeciesTraining:
    """What species training reads of a run's configuration: its name (names the cluster tasks), the grid, the
    Sentinel-2 cube, the network, the training and validation settings, and the provenance attributes written into
    the training set."""

    name: str
    grid: GridConfig
    cube: CubeConfig
    model: ModelConfig
    train: TrainConfig
    validation: ValidationConfig
    provenance: Mapping[str, str]


class SpeciesInputs(Protocol):
    """A run's inputs as training reads them (:class:`geoplantnet.runs.inputs.Inputs` is one)."""

    observations: Observations | None
    env_items: list
    s2_items: list | None


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


def _patch_size(spec: ModelSpec, modality: str, default: int) -> int:
    """The patch side the model was trained on (its spec, not this run's model.* settings)."""
    return int(spec.modalities[modality][-1]) if modality in spec.modalities else default


def predict_at_points(
    spec_model: tuple[Any, ModelSpec],
    settings: SpeciesTraining,
    inputs: SpeciesInputs,
    points: Points,
    client: Any,
    workdir: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(points, species)`` (NaN where there is no data) and the mask of points with data: the
    model's inputs extracted at the points exactly as training extracted them (into a temporary training set under
    ``workdir``), then :func:`geoplantnet.training.train.predict` with the model's own normalisation."""
    model, spec = spec_model
    grid = settings.grid.grid()
    takes_s2 = "patch" in spec.modalities or "series" in spec.modalities
    takes_env = "env" in spec.modalities
    inside = grid.contains(points.x, points.y)
    if takes_s2:  # the cube grid may end a few metres before the map grid
        inside &= settings.grid.grid(settings.cube.resolution).contains(points.x, points.y)
    probs = np.full((len(points.x), len(spec.species)), np.nan, np.float32)
    rows = np.flatnonzero(inside)
    if not len(rows):
        return probs, inside
    n_species = len(spec.species)
    vocab = SpeciesVocabulary(tuple(spec.species), tuple(spec.species_name or spec.species))
    samples = Samples(
        points.x[rows], points.y[rows], np.full((len(rows), n_species), -1, np.int8), np.full(len(rows), "pa"), vocab
    )
    # the same lazy sources as training (prepare_samples): only the chunks holding points are read
    env = predictors.model_stack(inputs.env_items, grid, chunk=settings.cube.chunk) if takes_env else None
    composite = (
        cube_composites(inputs.s2_items, settings.cube, settings.grid.grid(settings.cube.resolution))
        if takes_s2
        else None
    )
    with tempfile.TemporaryDirectory(prefix="predict-", dir=workdir) as tmp:
        path = extract_samples(
            samples,
            grid,
            composite=composite,
            env=env,
            patch_size=_patch_size(spec, "patch", settings.model.patch_size),
            env_patch_size=_patch_size(spec, "env", settings.model.env_patch_size),
            out=str(Path(tmp) / "points.zarr"),
            client=client,
        )
        values = predict(model, spec, path, np.arange(len(rows)), settings.train.batch_size)
        valid = _has_data(path, takes_env)
    probs[rows[valid]] = values[valid]
    inside[rows[~valid]] = False
    return probs, inside


def _has_data(path: str, takes_env: bool) -> np.ndarray:
    """The map's no-data rule at points (:func:`geoplantnet.inference.dense._valid`): every environmental variable
    finite at the point, or for a Sentinel-2-only model any finite value in the point's seasonal series."""
    ds = open_training_set(path)
    if takes_env:
        return np.isfinite(ds["env_point"].values).all(axis=1)
    return np.isfinite(ds["series"].values).any(axis=(1, 2))
