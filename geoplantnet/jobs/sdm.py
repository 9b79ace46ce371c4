"""Species distribution modelling job: observations -> training set -> spatial-block CV of the CNN, MaxEnt and a random
forest on the same folds -> Markdown + PNG report.

Inputs are either the virtual region (with its true probabilities, so every model is also scored against the truth) or
a user's observations file and predictor rasters (any CRS), with or without Sentinel-2 from a STAC API.

After the cross-validation, each model is fitted once more on every kept sample, for mapping, into ``<out>/models/``:
``cnn.pt`` (the species network; early stopping on a block-based validation split carved from the samples, as in each
fold), ``maxent.peer`` and ``random_forest.peer`` (:meth:`geoplantnet.models.peers.MaxentPeer.save` files). The
cross-validation does not depend on them: its folds and numbers are those of a run without them. Their specs then get
the calibration and thresholds chosen on the cross-validation's out-of-fold predictions
(:mod:`geoplantnet.validation.calibration`; also ``<out>/models/thresholds.csv``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from distributed import Client

from geoplantnet.core.config import RunConfig
from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import Grid
from geoplantnet.models.peers import MaxentPeer, RandomForestPeer, point_features
from geoplantnet.runs.inputs import Inputs
from geoplantnet.samples.extraction import extract_samples
from geoplantnet.samples.observations import SpeciesVocabulary, build_samples
from geoplantnet.samples.training_set import compute_stats, open_training_set
from geoplantnet.samples.valid_cells import RecordRescue, ValidCells, move_records_to_valid
from geoplantnet.sources import predictors
from geoplantnet.training.train import TrainResult, load_ensemble, predict, save_model, train_on_cluster
from geoplantnet.validation.blocks import blocks_geodataframe, choose_block_size, spatial_blocks, validation_split
from geoplantnet.validation.calibration import (
    CalibrationOutcome,
    calibrate_oof,
    calibration_markdown,
    species_thresholds_table,
    write_into_model_file,
)
from geoplantnet.validation.metrics import cross_validate
from geoplantnet.validation.report import informative_folds, report_warnings, write_report

log = logging.getLogger(__name__)


class CnnPeer:
    """The species network behind the peers' ``fit``/``predict_proba`` interface.

    ``X`` holds sample indices into the training set (one column), so the CNN, MaxEnt and the random forest are
    cross-validated by the same code on the same folds. Each fit trains on the cluster with early stopping on a
    block-based validation split carved out of the training part.
    """

    def __init__(
        self,
        cfg: RunConfig,
        training_set: str,
        client: Client,
        out_dir: Path,
        x: np.ndarray,
        y: np.ndarray,
        block_size: float,
        run_name: str | None = None,
    ) -> None:
        self.cfg, self.path, self.client, self.out_dir = cfg, training_set, client, out_dir
        self.x, self.y, self.block_size = x, y, block_size
        self.run_name = run_name  # the run folder under out_dir: fold-<k> by default
        self.runs: list[TrainResult] = []
        self.n_fits = 0
        self._model: Any = None
        self._spec: Any = None

    def __call__(self) -> CnnPeer:
        return self  # cross_validate asks for a fresh model per fold; state is replaced on each fit

    def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> CnnPeer:
        train = np.zeros(len(self.x), dtype=bool)
        train[X[:, 0].astype(np.int64)] = True
        run_dir = self.out_dir / (self.run_name or f"fold-{self.n_fits}")
        self.n_fits += 1
        n = self.cfg.train.ensemble
        paths = []
        # one normalisation (from all the rows given) for every member, so the members form one model
        stats = (
            compute_stats(open_training_set(self.path), np.flatnonzero(train), scaling=self.cfg.train.scaling)
            if n > 1
            else None
        )
        # Ensemble members differ by their seed (initialisation, batch order) and by the blocks held out for early
        # stopping: each learns from another ~80% of the rows and together they use all of them (the fold average
        # of cross-validation models, which beat single models on independent surveys).
        for k in range(n):
            fit_mask, val_mask = validation_split(
                self.x, self.y, train, self.block_size, seed=self.cfg.validation.seed + k
            )
            seed = {"seed": self.cfg.train.seed + k}
            cfg = self.cfg.model_copy(update={"train": self.cfg.train.model_copy(update=seed)})
            member_dir = run_dir / f"seed-{k}" if n > 1 else run_dir
            result = train_on_cluster(
                self.client, self.path, np.flatnonzero(fit_mask), np.flatnonzero(val_mask), cfg, member_dir, stats
            )
            self.runs.append(result)
            paths.append(result.model_path)
            log.info(
                "CNN %s: %d epochs (best %d), %.1f s/epoch on %s",
                member_dir.relative_to(self.out_dir),
                result.epochs_run,
                result.best_epoch,
                np.mean(result.epoch_seconds),
                result.device,
            )
        self._model, self._spec = load_ensemble(paths)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.predict_at(self.path, X[:, 0].astype(np.int64))

    def predict_at(self, path: str, idx: np.ndarray) -> np.ndarray:
        """Probabilities at samples ``idx`` of any store in the training-set layout (e.g. independent test sites)."""
        return predict(self._model, self._spec, path, idx, self.cfg.train.batch_size)

    def save(self, path: Path) -> str:
        """The fitted network (or ensemble, as one file) written atomically to ``path``."""
        return save_model(path, self._model, self._spec)


def _point_features(ds: xr.Dataset) -> np.ndarray:
    """Predictors at the points for MaxEnt and the forest: environment values, plus the seasonal series if present
    (:func:`~geoplantnet.models.peers.point_features`, which the map tiles use too)."""
    if "env_point" not in ds and "series" not in ds:
        raise ValueError("the training set has neither env_point nor series: no predictors for the peers")
    env_point = ds["env_point"].values if "env_point" in ds else None
    series = ds["series"].values if "series" in ds else None
    return point_features(env_point, series)


def _feature_inputs(ds: xr.Dataset) -> dict[str, Any]:
    """The names of :func:`_point_features`' columns, as a peer file records them (``PeerSpec`` inputs)."""
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


def _truth_at(truth: xr.DataArray, grid: Grid, x: np.ndarray, y: np.ndarray, species: list[str]) -> np.ndarray:
    rows, cols = grid.index(x, y)
    values = truth.sel(species=species).values  # (species, y, x); the map grid of a virtual region is small
    return values[:, rows, cols].T.astype("float32")


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


def prepare_samples(cfg: RunConfig, inputs: Inputs, out_dir: Path, client: Client) -> PreparedSamples:
    """Observations -> samples -> training set (extracted on the cluster) -> kept samples and the block size."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = cfg.grid.grid()
    obs = inputs.observations
    vocab = SpeciesVocabulary.from_observations(obs)
    # Sentinel-2 alone is a valid set of predictors: no environmental stack then
    env = predictors.model_stack(inputs.env_items, grid, chunk=cfg.cube.chunk) if inputs.env_items else None
    composite = None
    if inputs.s2_items:
        from geoplantnet.jobs.composites import composites

        composite = composites(inputs.s2_items, cfg)
    # The environmental layers define the study area; without them, the composite does.
    layer = env if env is not None else composite
    study_area = ValidCells(layer, epsg=grid.epsg, client=client) if layer is not None else None
    samples = build_samples(
        obs,
        vocab,
        grid,
        n_background=cfg.train.n_background,
        background=cfg.train.background,
        seed=cfg.train.seed,
        valid=study_area,
    )
    # Records are moved only off the environmental warp's no-data (a cloudy season is no reason to move one).
    rescue = RecordRescue(0, 0, 0)
    if env is not None and study_area is not None:
        samples, rescue = move_records_to_valid(samples, study_area, cfg.train.nearest_valid_cells)
    path = str(out_dir / "training.zarr")
    t1 = time.perf_counter()
    extract_samples(
        samples,
        grid,
        composite=composite,
        env=env,
        patch_size=cfg.model.patch_size,
        env_patch_size=cfg.model.env_patch_size,
        out=path,
        client=client,
        attrs=cfg.to_attrs(),
    )
    extract_s = time.perf_counter() - t1
    ds = open_training_set(path)
    x_all, y_all = ds["x"].values, ds["y"].values
    labels = ds["label"].values
    source = np.array([str(s) for s in ds["source"].values])  # StringDType does not cast to fixed-width str
    species = [str(s) for s in ds["species"].values]
    features = _point_features(ds)
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
    block = cfg.validation.block_size_m or choose_block_size(
        x_all[rows],
        y_all[rows],
        np.nan_to_num(kept[:, : min(features.shape[1], 8)]),
        folds=cfg.validation.folds,
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
        _feature_inputs(ds),
        rescue.moved,
        int((nodata & (source != "bg")).sum()),
    )


def train_map_model(cfg: RunConfig, inputs: Inputs, out_dir: Path, client: Client) -> TrainResult:
    """Train the species network on every kept sample (early stopping on a block-based validation split) for mapping;
    the model (one file, also for an ensemble) is ``<out_dir>/model/map.pt``, the result's ``model_path``."""
    data = prepare_samples(cfg, inputs, out_dir, client)
    cnn = CnnPeer(cfg, data.path, client, Path(out_dir) / "model", data.x_all, data.y_all, data.block)
    cnn.fit(data.rows[:, None], data.labels, data.source)
    return dataclasses.replace(cnn.runs[-1], model_path=cnn.save(Path(out_dir) / "model" / "map.pt"))


def fit_final_models(
    cfg: RunConfig, data: PreparedSamples, out_dir: Path, client: Client, names: list[str] | None = None
) -> tuple[dict[str, str], dict[str, float]]:
    """Fit each model on every kept sample and write it to ``<out_dir>/models/`` (``cnn.pt``, ``maxent.peer``,
    ``random_forest.peer``); returns {name: path} and {name: seconds}. The CNN stops early on a block-based
    validation split carved from the samples (``<out_dir>/cnn/final/`` keeps its run); the peers are fitted as in
    each fold, on all the samples."""
    models_dir = Path(out_dir) / "models"
    files: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names if names is not None else list(cfg.validation.models):
        t = time.perf_counter()
        if name == "cnn":
            cnn = CnnPeer(cfg, data.path, client, Path(out_dir) / "cnn", data.x_all, data.y_all, data.block, "final")
            cnn.fit(data.rows[:, None], data.labels, data.source)
            files[name] = cnn.save(models_dir / "cnn.pt")
        else:
            peer = (MaxentPeer if name == "maxent" else RandomForestPeer)(client=client, seed=cfg.train.seed)
            peer.fit(data.features, data.labels, data.source)
            files[name] = peer.save(
                models_dir / f"{name}.peer",
                species=data.species,
                species_name=data.species_name,
                **(data.feature_inputs or {}),
            )
        seconds[name] = round(time.perf_counter() - t, 1)
        log.info("%s fitted on all %d samples in %.0f s: %s", name, len(data.rows), seconds[name], files[name])
    return files, seconds


def run_sdm(cfg: RunConfig, inputs: Inputs, out_dir: Path, client: Client) -> dict[str, Any]:
    """Build the training set, cross-validate every model on spatial blocks, write the report; return the summary."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    grid = cfg.grid.grid()
    obs = inputs.observations
    data = prepare_samples(cfg, inputs, out_dir, client)
    path, rows, block, species = data.path, data.rows, data.block, data.species
    x, y, labels, source, features = data.x, data.y, data.labels, data.source, data.features
    x_all, y_all, extract_s = data.x_all, data.y_all, data.extract_seconds
    folds = spatial_blocks(x, y, block, cfg.validation.folds, seed=cfg.validation.seed)
    truth = _truth_at(inputs.truth, grid, x, y, species) if inputs.truth is not None else None
    log.info("%d samples, %d species, %g m blocks, %d folds", len(x), len(species), block, cfg.validation.folds)

    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    cnn = CnnPeer(cfg, path, client, out_dir / "cnn", x_all, y_all, block)
    peers: dict[str, tuple[Any, np.ndarray]] = {
        "cnn": (cnn, rows[:, None]),
        "maxent": (lambda: MaxentPeer(client=client, seed=cfg.train.seed), features),
        "random_forest": (lambda: RandomForestPeer(client=client, seed=cfg.train.seed), features),
    }
    for name, (make, X) in peers.items():
        if name not in cfg.validation.models:
            continue
        t = time.perf_counter()
        results[name] = cross_validate(
            make, X, labels, source, folds, cfg=cfg.validation, species=species, true_probs=truth
        )
        timings[name] = round(time.perf_counter() - t, 1)
        log.info("%s cross-validated in %.0f s", name, timings[name])

    epoch_s = [s for run in cnn.runs for s in run.epoch_seconds] or [float("nan")]
    # after the folds (whose numbers must not depend on it): every model once more on all kept samples, for maps
    model_files, final_s = fit_final_models(cfg, data, out_dir, client, [n for n in peers if n in results])
    finals = ", ".join(f"{k}: {os.path.relpath(v, out_dir)} ({final_s[k]:g} s)" for k, v in model_files.items())
    calibration, thresholds_csv = calibrate_models(cfg, results, labels, source, folds, species, model_files, out_dir)
    device = cnn.runs[0].device if cnn.runs else "-"
    n_params = cnn.runs[0].n_parameters if cnn.runs else 0
    notes = [
        f"{len(x)} samples ({', '.join(f'{k}: {int((source == k).sum())}' for k in ('pa', 'po', 'bg'))}), "
        f"{len(species)} species, blocks of {block:g} m, {cfg.validation.folds} folds "
        f"({informative_folds(next(iter(results.values()))) if results else 0} informative); "
        f"{data.n_dropped} samples without predictor data dropped",
        f"{data.records_moved} records moved to the nearest valid cell (<= {cfg.train.nearest_valid_cells} cells), "
        f"{data.records_dropped} dropped",
        f"observations: {obs.summary()}",
        f"CNN: {np.mean(epoch_s):.2f} s per epoch on {device} ({n_params} parameters); extraction {extract_s:.1f} s",
        f"wall time per model (all folds): {json.dumps(timings)}",
        f"final models on all kept samples, for maps: {finals or 'none'}",
        *_calibration_notes(calibration, thresholds_csv, out_dir),
        *inputs.notes,
    ]
    warnings = report_warnings(results) if results else []
    for line in warnings:
        log.warning("%s", line)
    report = write_report(
        results,
        out_dir / "report",
        blocks_gdf=blocks_geodataframe(x, y, block, folds, crs=grid.epsg),
        points=(x, y),
        title=f"{cfg.name}: CNN vs MaxEnt vs random forest on spatial blocks",
        notes=notes,
        warnings=warnings,
        sections=calibration_markdown(calibration, model_files),
    )
    out = {
        "report": str(report),
        "training_set": path,
        "block_size_m": block,
        "n_samples": len(x),
        "n_species": len(species),
        "cnn_seconds_per_epoch": float(np.mean(epoch_s)),
        "seconds": round(time.perf_counter() - t0, 1),
        "warnings": warnings,
        "models": {name: _model_summary(r) for name, r in results.items()},
        "model_files": model_files,
        "calibration": {name: {**o.table, "outputs": o.scale} for name, o in calibration.items()},
        "thresholds_file": thresholds_csv,
    }
    out = _json_safe(out)
    (out_dir / "summary.json").write_text(json.dumps(out, indent=2, allow_nan=False))
    return out


def calibrate_models(
    cfg: RunConfig,
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
        outcomes[name] = calibrate_oof(result["oof"], labels, source, folds, cfg.validation.calibration)
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


def _calibration_notes(outcomes: dict[str, CalibrationOutcome], csv: str | None, out_dir: Path) -> list[str]:
    if not outcomes:
        return []
    scales = "; ".join(sorted({o.scale for o in outcomes.values()}))
    where = os.path.relpath(csv, out_dir) if csv else "-"
    return [f"outputs: {scales}; per-species thresholds (max TSS, observed prevalence) in the model files and {where}"]


def _model_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Per metric, the mean over the folds that could score it (None where none could); counts (``n_*``) summed
    over folds (samples, test presences, (species, fold) pairs); the number of folds and of informative folds, so a
    mean over 2 of 5 folds cannot pass for a 5-fold estimate."""
    folds = result["folds"]
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for f in folds for k in f if k != "fold"):
        vals = np.array([f.get(key, np.nan) for f in folds], dtype="float64")
        vals = vals[np.isfinite(vals)]
        if key.startswith("n_"):
            out[key] = int(vals.sum())
        else:
            out[key] = float(vals.mean()) if len(vals) else None
    out["folds"] = len(folds)
    out["informative_folds"] = informative_folds(result)
    return out


def _json_safe(value: Any) -> Any:
    """``value`` with NaN/inf (Python or NumPy) replaced by None, so it can be written as strict JSON (no ``NaN``)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
