"""The species models of a region, trained and cross-validated: observations -> samples -> training set (extracted
on the cluster) -> the species network behind the peers' ``fit``/``predict_proba`` interface (:class:`CnnPeer`, so the
CNN, MaxEnt and the random forest are cross-validated by the same code on the same folds) -> the final models on
every kept sample, calibrated and thresholded from the cross-validation's out-of-fold predictions.

Here rather than in :mod:`geoplantnet.training`: the CNN's early stopping and the block size use the spatial blocks,
and the final models the calibration, of this package. Everything takes
:class:`~geoplantnet.training.species.SpeciesTraining`, never the whole configuration.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from distributed import Client

from geoplantnet.core.config import ValidationConfig
from geoplantnet.core.errors import InputError
from geoplantnet.models.peers import BG, PEER_KINDS, TunedMaxentPeer
from geoplantnet.samples.extraction import extract_samples
from geoplantnet.samples.observations import SpeciesVocabulary, build_samples
from geoplantnet.samples.training_set import compute_stats, open_training_set
from geoplantnet.samples.valid_cells import RecordRescue, ValidCells, move_records_to_valid
from geoplantnet.sources import predictors
from geoplantnet.sources.cube import cube_composites
from geoplantnet.training.species import SpeciesInputs, SpeciesTraining, feature_inputs, training_point_features
from geoplantnet.training.train import (
    TrainJob,
    TrainResult,
    load_ensemble,
    predict,
    save_model,
    train_many_on_cluster,
)
from geoplantnet.validation.blocks import choose_block_size, n_blocks, spatial_blocks, validation_split
from geoplantnet.validation.calibration import (
    CalibrationOutcome,
    calibrate_oof,
    species_thresholds_table,
    write_into_model_file,
)
from geoplantnet.validation.metrics import cross_validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CnnFit:
    """A fitted species network (or ensemble, as one model) behind the peers' ``predict_proba``: what
    :meth:`CnnPeer.fit_many` returns per fit."""

    model: Any
    spec: Any
    training_set: str
    batch_size: int

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.predict_at(self.training_set, X[:, 0].astype(np.int64))

    def predict_at(self, path: str, idx: np.ndarray) -> np.ndarray:
        """Probabilities at samples ``idx`` of any store in the training-set layout (e.g. independent test sites)."""
        return predict(self.model, self.spec, path, idx, self.batch_size)

    def save(self, path: Path) -> str:
        """The network (or ensemble, as one file) written atomically to ``path``."""
        return save_model(path, self.model, self.spec)


class CnnPeer:
    """The species network behind the peers' ``fit``/``predict_proba`` interface.

    ``X`` holds sample indices into the training set (one column), so the CNN, MaxEnt and the random forest are
    cross-validated by the same code on the same folds. Each fit trains on the cluster with early stopping on a
    block-based validation split carved out of the training part. :meth:`fit_many` (which
    :func:`~geoplantnet.validation.metrics.cross_validate` uses for the folds) and :func:`fit_networks` (several
    peers) train every member of every fit side by side on the cluster's workers; ``in_flight`` bounds how many
    train at a time (1: one after another, as a sequential run; None: all).
    """

    def __init__(
        self,
        settings: SpeciesTraining,
        training_set: str,
        client: Client,
        out_dir: Path,
        x: np.ndarray,
        y: np.ndarray,
        block_size: float,
        run_name: str | None = None,
        in_flight: int | None = None,
    ) -> None:
        self.settings, self.path, self.client, self.out_dir = settings, training_set, client, out_dir
        self.x, self.y, self.block_size = x, y, block_size
        self.run_name = run_name  # the run folder under out_dir: fold-<k> by default
        self.in_flight = in_flight
        self.runs: list[TrainResult] = []
        self.n_fits = 0
        self._fitted: CnnFit | None = None
        self._rows_meta: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self) -> CnnPeer:
        return self  # a fresh model per fold, for a fold-by-fold fit: state is replaced on each fit

    def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> CnnPeer:
        self._fitted = fit_networks([(self, X)])[0]
        return self

    def fit_many(self, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[CnnFit]:
        """One network per ``(X, labels, source)`` part (the folds of a cross-validation), in their order; every
        member of every part trained side by side."""
        return fit_networks([(self, X) for X, _, _ in parts])

    def _labels_and_source(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row's labels and source in the training set (read once)."""
        if self._rows_meta is None:
            ds = open_training_set(self.path)
            self._rows_meta = ds["label"].values, np.array([str(v) for v in ds["source"].values])
        return self._rows_meta

    def member_jobs(self, X: np.ndarray) -> list[TrainJob]:
        """The training tasks of one fit on the rows ``X``: one per ensemble member, in the next run folder."""
        rows = X[:, 0].astype(np.int64)
        if self.settings.train.po_sites == "records":
            labels, source = self._labels_and_source()
            keep, one_species = _learning_rows("records", labels[rows], source[rows])
            rows = rows[keep]
            if one_species and self.n_fits == 0:  # said once per model, not per fold and member
                log.warning(
                    "train.po_sites=records needs records of 2 species or more: the network learns from the "
                    "background too"
                )
        train = np.zeros(len(self.x), dtype=bool)
        train[rows] = True
        run_dir = self.out_dir / (self.run_name or f"fold-{self.n_fits}")
        self.n_fits += 1
        n = self.settings.train.ensemble
        # one normalisation (from all the rows given) for every member, so the members form one model
        stats = (
            compute_stats(open_training_set(self.path), np.flatnonzero(train), scaling=self.settings.train.scaling)
            if n > 1
            else None
        )
        # Ensemble members differ by their seed (initialisation, batch order) and by the blocks held out for early
        # stopping: each learns from another ~80% of the rows and together they use all of them (the fold average
        # of cross-validation models, which beat single models on independent surveys).
        jobs = []
        for k in range(n):
            fit_mask, val_mask = validation_split(
                self.x, self.y, train, self.block_size, seed=self.settings.validation.seed + k
            )
            jobs.append(
                TrainJob(
                    self.path,
                    np.flatnonzero(fit_mask),
                    np.flatnonzero(val_mask),
                    self.settings.train.model_copy(update={"seed": self.settings.train.seed + k}),
                    self.settings.model,
                    str(run_dir / f"seed-{k}" if n > 1 else run_dir),
                    stats,
                )
            )
        return jobs

    def fitted(self, results: Sequence[TrainResult]) -> CnnFit:
        """The network of one fit's trained members (their runs kept in :attr:`runs`)."""
        for result in results:
            log.info(
                "CNN %s: %d epochs (best %d), %.1f s/epoch on %s",
                os.path.relpath(Path(result.model_path).parent, self.out_dir),
                result.epochs_run,
                result.best_epoch,
                np.mean(result.epoch_seconds),
                result.device,
            )
        self.runs.extend(results)
        model, spec = load_ensemble([r.model_path for r in results])
        return CnnFit(model, spec, self.path, self.settings.train.batch_size)

    def _fit(self) -> CnnFit:
        if self._fitted is None:
            raise RuntimeError("CnnPeer used before fit")
        return self._fitted

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._fit().predict_proba(X)

    def predict_at(self, path: str, idx: np.ndarray) -> np.ndarray:
        """Probabilities at samples ``idx`` of any store in the training-set layout (e.g. independent test sites)."""
        return self._fit().predict_at(path, idx)

    def save(self, path: Path) -> str:
        """The fitted network (or ensemble, as one file) written atomically to ``path``."""
        return self._fit().save(path)


def fit_networks(fits: Sequence[tuple[CnnPeer, np.ndarray]]) -> list[CnnFit]:
    """Each ``(peer, X)`` fitted on the rows ``X``: the members of every fit submitted to the cluster at once (bounded
    by the first peer's ``in_flight``), the networks in the order of ``fits``. The numbers are those of fitting them
    one after another: each member's seed, validation blocks and normalisation are fixed before any is trained."""
    if not fits:
        return []
    jobs = [peer.member_jobs(X) for peer, X in fits]
    first = fits[0][0]
    results = iter(
        train_many_on_cluster(
            first.client,
            [job for each in jobs for job in each],
            name=first.settings.name,
            in_flight=first.in_flight,
            stage=first.settings.stage,
        )
    )
    return [peer.fitted([next(results) for _ in each]) for (peer, _), each in zip(fits, jobs, strict=True)]


def _learning_rows(po_sites: str, labels: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, bool]:
    """The rows the network learns from: all, or (``train.po_sites=records``) all but the background points; and
    whether records of a single species made it keep the background (the records alone hold no contrast: every site
    is a presence)."""
    source = np.asarray(source).astype(str)
    keep = np.ones(len(source), dtype=bool)
    if po_sites != "records" or not (source == BG).any():
        return keep, False
    if (np.asarray(labels)[source != BG] == 1).any(axis=0).sum() < 2:
        return keep, True
    return source != BG, False


class BlockTunedPeer:
    """A peer that tunes itself on spatial folds of the rows it is fitted on (the tuned MaxEnt), behind the peers'
    interface with ``X`` = row indices into ``features`` / ``x`` / ``y`` (as :class:`CnnPeer`). The fold ids are
    spatial blocks (``validation.folds`` of them, the run's blocks) of exactly the rows given: inside a
    cross-validation fold the tuning sees that fold's training rows only (nested: never the outer test fold)."""

    def __init__(
        self,
        make: Callable[[], Any],
        features: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        block_size: float,
        validation: ValidationConfig,
    ) -> None:
        self.make, self.features, self.x, self.y = make, features, x, y
        self.block_size, self.validation = block_size, validation
        self.peer: Any = None

    def __call__(self) -> BlockTunedPeer:
        return self  # cross_validate asks for a fresh model per fold; the peer is replaced on each fit

    def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> BlockTunedPeer:
        rows = X[:, 0].astype(np.int64)
        x, y = self.x[rows], self.y[rows]
        folds = min(self.validation.folds, n_blocks(x, y, self.block_size))
        # fewer than two blocks: one fold, nothing to tune on (the peer falls back to its defaults)
        groups = spatial_blocks(x, y, self.block_size, folds, seed=self.validation.seed) if folds > 1 else 0 * rows
        self.peer = self.make().fit(self.features[rows], labels, source, groups)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.peer.predict_proba(self.features[X[:, 0].astype(np.int64)])


def point_peer(name: str, validation: ValidationConfig, client: Client | None, seed: int, **kwargs: Any) -> Any:
    """A fresh point peer (``maxent``, ``maxent_tuned``, ``random_forest``), the tuned MaxEnt with the run's grid
    (``validation.maxent_features`` x ``validation.maxent_betas``)."""
    if name == TunedMaxentPeer.name:
        kwargs = {**kwargs, "feature_classes": validation.maxent_features, "betas": validation.maxent_betas}
    return PEER_KINDS[name](client=client, seed=seed, **kwargs)


def point_model(
    name: str,
    make: Callable[[], Any],
    features: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    block_size: float,
    validation: ValidationConfig,
) -> tuple[Callable[[], Any], np.ndarray]:
    """(a fresh model, its ``X``) of the point peer ``name`` made by ``make``, for :func:`cross_validate_models`
    and :func:`fit_point_model`: the tuned MaxEnt behind :class:`BlockTunedPeer` (``X``: row indices), the
    others on the feature rows."""
    if name == TunedMaxentPeer.name:
        return BlockTunedPeer(make, features, x, y, block_size, validation), np.arange(len(features))[:, None]
    return make, features


def fit_point_model(model: tuple[Callable[[], Any], np.ndarray], labels: np.ndarray, source: np.ndarray) -> Any:
    """A :func:`point_model` fitted on all its rows (the tuned MaxEnt tuned on their spatial blocks first)."""
    make, X = model
    fitted = make().fit(X, labels, source)
    return fitted.peer if isinstance(fitted, BlockTunedPeer) else fitted


@dataclass
class PreparedSamples:
    """The training set of a run and the samples every model is fitted on (samples without predictor data dropped)."""

    path: str
    rows: np.ndarray  # kept samples, as indices into the training set
    x_all: np.ndarray
    y_all: np.ndarray
    labels: np.ndarray
    source: np.ndarray
    features: np.ndarray  # point predictors for MaxEnt and the forest
    species: list[str]
    n_dropped: int
    extract_seconds: float
    block: float  # spatial block size (metres)
    species_name: list[str] | None = None
    feature_inputs: dict[str, Any] | None = None  # names of the feature columns (variables, bands, seasons)
    records_moved: int = 0  # records moved to the nearest valid cell (train.nearest_valid_cells)
    records_dropped: int = 0  # records dropped: no predictor value at their cell, even after the move

    @property
    def x(self) -> np.ndarray:
        return self.x_all[self.rows]

    @property
    def y(self) -> np.ndarray:
        return self.y_all[self.rows]


class NoPredictorDataError(InputError):
    """The predictors have no data at the samples (empty rasters, rasters that miss the records, a wrong CRS)."""


def _check_predictor_data(labels: np.ndarray, rows: np.ndarray, env: xr.DataArray | None) -> None:
    """Refuse a training set where no sample, or no presence, has predictor data, naming the predictors: the spatial
    blocks would otherwise fail further down with "use smaller blocks", which sends the user the wrong way."""
    names = [str(v) for v in env["var"].values] if env is not None and "var" in env.coords else []
    listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    what = f"the predictors [{listed}]" if names else "the predictors"
    if not len(rows):
        raise NoPredictorDataError(
            f"no sample has predictor data: {what} are no-data at all {len(labels)} observation and background "
            "points (empty rasters, or rasters that do not overlap grid.*)"
        )
    has_presence = (labels == 1).any(axis=1)
    if has_presence.any() and not has_presence[rows].any():
        raise NoPredictorDataError(
            f"none of the {int(has_presence.sum())} samples with a presence has predictor data in {what}: do the "
            "rasters cover the observations (check --crs)?"
        )


def prepare_samples(settings: SpeciesTraining, inputs: SpeciesInputs, out_dir: Path, client: Client) -> PreparedSamples:
    """Observations -> samples -> training set (extracted on the cluster) -> kept samples and the block size."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = settings.grid.grid()
    obs = inputs.observations
    vocab = SpeciesVocabulary.from_observations(obs)
    # Sentinel-2 alone is a valid set of predictors: no environmental stack then
    options = inputs.read_options  # the object store of s3:// assets, read on the workers
    env = None
    if inputs.env_items:
        env = predictors.model_stack(inputs.env_items, grid, chunk=settings.cube.chunk, storage_options=options)
    composite = None
    if inputs.s2_items:
        s2_grid = settings.grid.grid(settings.cube.resolution)
        composite = cube_composites(inputs.s2_items, settings.cube, s2_grid, options)
    # The environmental layers define the study area; without them, the composite does.
    layer = env if env is not None else composite
    study_area = ValidCells(layer, epsg=grid.epsg, client=client) if layer is not None else None
    samples = build_samples(
        obs,
        vocab,
        grid,
        n_background=settings.train.n_background,
        background=settings.train.background,
        seed=settings.train.seed,
        valid=study_area,
    )
    # Records are moved only off the environmental warp's no-data (a cloudy season is no reason to move one).
    rescue = RecordRescue(0, 0, 0)
    if env is not None and study_area is not None:
        samples, rescue = move_records_to_valid(samples, study_area, settings.train.nearest_valid_cells)
    path = str(out_dir / "training.zarr")
    t1 = time.perf_counter()
    extract_samples(
        samples,
        grid,
        composite=composite,
        env=env,
        patch_size=settings.model.patch_size,
        env_patch_size=settings.model.env_patch_size,
        out=path,
        client=client,
        attrs=dict(settings.provenance),
    )
    extract_s = time.perf_counter() - t1
    ds = open_training_set(path)
    x_all, y_all = ds["x"].values, ds["y"].values
    labels = ds["label"].values
    source = np.array([str(s) for s in ds["source"].values])  # StringDType does not cast to fixed-width str
    species = [str(s) for s in ds["species"].values]
    features = training_point_features(ds)
    # Background is drawn on cells with predictor data (samples.valid_cells); a background point without data here
    # would be trivially separable from presences and inflate every model's AUC, so the rule is kept as a guard, and
    # any sample without any predictor value is dropped. Sentinel-2 gaps (a cloudy season) are not "no data" here.
    env_point = ds["env_point"].values if "env_point" in ds else features
    nodata = np.isnan(features).all(axis=1) | ((source == "bg") & np.isnan(env_point).any(axis=1))
    keep = ~nodata
    rows = np.flatnonzero(keep)
    _check_predictor_data(labels, rows, env)
    kept = features[rows]
    # Candidate block sizes step by 10 map pixels: 500 m at 50 m, so small regions still get enough blocks.
    block = settings.validation.block_size_m or choose_block_size(
        x_all[rows],
        y_all[rows],
        np.nan_to_num(kept[:, : min(features.shape[1], 8)]),
        folds=settings.validation.folds,
        step=10 * grid.resolution,
    )
    species_name = [str(s) for s in ds["species_name"].values] if "species_name" in ds else None
    return PreparedSamples(
        path,
        rows,
        x_all,
        y_all,
        labels[rows],
        source[rows],
        kept,
        species,
        int(nodata.sum()),
        extract_s,
        float(block),
        species_name,
        feature_inputs(ds),
        rescue.moved,
        int((nodata & (source != "bg")).sum()),
    )


def train_map_model(settings: SpeciesTraining, inputs: SpeciesInputs, out_dir: Path, client: Client) -> TrainResult:
    """Train the species network on every kept sample (early stopping on a block-based validation split) for mapping;
    the model (one file, also for an ensemble) is ``<out_dir>/model/map.pt``, the result's ``model_path``."""
    data = prepare_samples(settings, inputs, out_dir, client)
    cnn = CnnPeer(settings, data.path, client, Path(out_dir) / "model", data.x_all, data.y_all, data.block)
    cnn.fit(data.rows[:, None], data.labels, data.source)
    return dataclasses.replace(cnn.runs[-1], model_path=cnn.save(Path(out_dir) / "model" / "map.pt"))


def fit_final_models(
    settings: SpeciesTraining, data: PreparedSamples, out_dir: Path, client: Client, names: list[str] | None = None
) -> tuple[dict[str, str], dict[str, float]]:
    """Fit each model on every kept sample and write it to ``<out_dir>/models/`` (``cnn.pt``, ``maxent.peer``,
    ``maxent_tuned.peer``, ``random_forest.peer``); returns {name: path} and {name: seconds}. The CNN stops early on
    a block-based validation split carved from the samples (``<out_dir>/cnn/final/`` keeps its run); the peers are
    fitted as in each fold, on all the samples (the tuned MaxEnt tuned on their spatial blocks)."""
    models_dir = Path(out_dir) / "models"
    files: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names if names is not None else list(settings.validation.models):
        t = time.perf_counter()
        if name == "cnn":
            cnn = CnnPeer(
                settings, data.path, client, Path(out_dir) / "cnn", data.x_all, data.y_all, data.block, "final"
            )
            cnn.fit(data.rows[:, None], data.labels, data.source)
            files[name] = cnn.save(models_dir / "cnn.pt")
        else:
            make = partial(point_peer, name, settings.validation, client, settings.train.seed)
            model = point_model(name, make, data.features, data.x, data.y, data.block, settings.validation)
            peer = fit_point_model(model, data.labels, data.source)
            files[name] = peer.save(
                models_dir / f"{name}.peer",
                species=data.species,
                species_name=data.species_name,
                **(data.feature_inputs or {}),
            )
        seconds[name] = round(time.perf_counter() - t, 1)
        log.info("%s fitted on all %d samples in %.0f s: %s", name, len(data.rows), seconds[name], files[name])
    return files, seconds


def calibrate_models(
    settings: SpeciesTraining,
    results: dict[str, Any],
    labels: np.ndarray,
    source: np.ndarray,
    folds: np.ndarray,
    species: list[str],
    model_files: dict[str, str],
    out_dir: Path,
) -> tuple[dict[str, CalibrationOutcome], str | None]:
    """Per model: calibration (``validation.calibration``) and thresholds from its out-of-fold predictions, written
    into its final model file's spec; every threshold also into ``<out_dir>/models/thresholds.csv``. Returns the
    outcomes and the CSV's path (None without models)."""
    outcomes: dict[str, CalibrationOutcome] = {}
    for name, result in results.items():
        outcomes[name] = calibrate_oof(result["oof"], labels, source, folds, settings.validation.calibration)
        if name in model_files:
            write_into_model_file(model_files[name], outcomes[name])
        t = outcomes[name].table
        log.info(
            "%s: calibration %s on %d PA rows, ECE %s -> %s",
            name,
            t["method"],
            t["n_rows"],
            t["ece_before"],
            t["ece_after"],
        )
    if not outcomes:
        return outcomes, None
    path = Path(out_dir) / "models" / "thresholds.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pd.DataFrame(species_thresholds_table(species, outcomes)).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return outcomes, str(path)


def cross_validate_models(
    peers: Mapping[str, tuple[Callable[[], Any], np.ndarray]],
    labels: np.ndarray,
    source: np.ndarray,
    folds: np.ndarray,
    validation: ValidationConfig,
    species: list[str],
    true_probs: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Each model of ``peers`` (name -> (a fresh model, its feature rows)) cross-validated on ``folds``
    (:func:`geoplantnet.validation.metrics.cross_validate`); the results and the wall time of each, by name."""
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name, (make, X) in peers.items():
        t = time.perf_counter()
        results[name] = cross_validate(
            make, X, labels, source, folds, cfg=validation, species=species, true_probs=true_probs
        )
        timings[name] = round(time.perf_counter() - t, 1)
        log.info("%s cross-validated in %.0f s", name, timings[name])
    return results, timings
