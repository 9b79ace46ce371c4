"""Peer models for the species network: MaxEnt (elapid) and a random forest, behind one small interface.

Both are fitted per species on the same point predictors (``env_point``) the network sees at its patch centres:

* presences: samples where the species is 1 (presence-only records and survey presences);
* absences / background: the "bg" samples plus every sample where the species is 0 (survey absences). Samples where
  the species is unknown (-1: other species' presence-only records) are left out, as MaxEnt's background is.

A species with fewer than ``min_presences`` presences is not fitted: it is flagged in ``skipped_`` and predicted at
its training prevalence. Missing predictor values are filled with the training medians (MaxEnt cannot take NaN).

Point features (:func:`point_features`): the environmental values at the point, then the seasonal Sentinel-2 series
(season-major: every band of season 0, then of season 1, ...). The sdm job builds the rows it fits on, and the map
tile job (:mod:`geoplantnet.inference.points`) builds the rows of every pixel, with this one function.

Peer files (:meth:`save`, :func:`load_peer`): one zip holding ``peer.json`` (a :class:`PeerSpec`: format version,
kind, species, the ordered input names, library versions, the payload's SHA-256) and ``estimators.joblib`` (the fitted
estimators). The header is read and checked before anything is unpickled; still, load only files you trust (a pickle
can run code). A :class:`PeerSpec` answers the questions the map job asks a :class:`~geoplantnet.models.species_net.
ModelSpec` (``modalities``, ``halo``, ``mask_channels``, ``variables``, ``bands``, ``species``, ``species_name``), so
tile geometry, input reading and input checks work unchanged for peers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import warnings
import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal, Protocol, Self, runtime_checkable

import joblib
import numpy as np
from joblib import Parallel, delayed
from pydantic import BaseModel, ConfigDict, ValidationError

from geoplantnet.core.errors import InputError
from geoplantnet.models import maxent_tuning
from geoplantnet.models.calibration import Calibration, Thresholds, calibrate

log = logging.getLogger(__name__)
BG = "bg"
PEER_FORMAT = "geoplantnet.peer"
PEER_FORMAT_VERSION = "1"
HEADER = "peer.json"
PAYLOAD = "estimators.joblib"
_MAX_HEADER = 16 * 2**20  # a header is names and versions: refuse anything larger before parsing it
_LIBRARIES = ("numpy", "scikit-learn", "elapid", "joblib")


class PeerError(ValueError):
    """Inputs a peer cannot be fitted on or applied to (the message is one line)."""


class PeerFileError(InputError):
    """A peer model file that is missing, unreadable, corrupt, of another format, kind or version (names the file)."""


def point_features(env_point: np.ndarray | None, series: np.ndarray | None) -> np.ndarray:
    """Rows of point predictors for the peers: ``env_point (n, var)`` then ``series (n, season, band)`` flattened
    season-major -> ``(n, var + season * band)`` float32. Used at training points and at map pixels alike."""
    parts = [np.asarray(a).reshape(len(a), -1) for a in (env_point, series) if a is not None]
    if not parts:
        raise PeerError("no point predictors: neither environmental values nor a Sentinel-2 series")
    return np.concatenate(parts, axis=1).astype("float32")


def feature_names(variables: Sequence[str] | None, bands: Sequence[str] | None, seasons: int) -> list[str]:
    """Names of the :func:`point_features` columns: the variables, then ``s2:<band>:t<season>`` season-major."""
    names = [str(v) for v in variables or ()]
    return names + [f"s2:{b}:t{t}" for t in range(seasons if bands else 0) for b in bands or ()]


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


class PeerSpec(BaseModel):
    """The JSON header of a peer file: what the peer is, what it predicts, and the inputs it was fitted on, in order."""

    model_config = ConfigDict(frozen=True)

    format: Literal["geoplantnet.peer"] = PEER_FORMAT
    version: str = PEER_FORMAT_VERSION
    kind: Literal["maxent", "maxent_tuned", "random_forest"]
    species: list[str]
    species_name: list[str] | None = None
    variables: list[str] | None = None  # environmental variables (env_point), in order
    bands: list[str] | None = None  # Sentinel-2 bands/indices of the seasonal series, in order
    seasons: int = 0  # composite periods of the series (0: no series)
    features: list[str]  # every column of X, in order (variables, then series season-major)
    params: dict[str, Any] = {}
    skipped: list[int] = []  # species not fitted (too few presences): predicted at their prevalence
    # per species, the setting a tuned peer chose on spatial folds (models.maxent_tuning); None: not tuned
    tuning: list[dict[str, Any] | None] | None = None
    libraries: dict[str, str] = {}
    payload_sha256: str = ""
    # from sdm's cross-validation (geoplantnet.validation.calibration); None in older files, which load unchanged
    calibration: Calibration | None = None
    thresholds: Thresholds | None = None

    # what the map job asks of a model spec (geoplantnet.models.species_net.ModelSpec), for a model of point values
    mask_channels: bool = False

    @property
    def modalities(self) -> dict[str, tuple[int, ...]]:
        """Inputs as the map job reads them: ``env`` (var, 1, 1) on the map grid, ``series`` (band, season)."""
        out: dict[str, tuple[int, ...]] = {}
        if self.variables:
            out["env"] = (len(self.variables), 1, 1)
        if self.bands and self.seasons:
            out["series"] = (len(self.bands), self.seasons)
        return out

    def halo(self, modality: str) -> tuple[int, int]:
        """Point values: no pixels around the tile are needed."""
        return 0, 0


def _header_of(zf: zipfile.ZipFile, where: Any) -> PeerSpec:
    try:
        info = zf.getinfo(HEADER)
    except KeyError:
        raise PeerFileError(f"{where}: not a {PEER_FORMAT} file (no {HEADER}; a CNN model file?)") from None
    if info.file_size > _MAX_HEADER:
        raise PeerFileError(f"{where}: not a {PEER_FORMAT} file ({HEADER} of {info.file_size} bytes)")
    try:
        raw = json.loads(zf.read(info))
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise PeerFileError(f"{where}: unreadable {HEADER} ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != PEER_FORMAT:
        raise PeerFileError(f"{where}: not a {PEER_FORMAT} file")
    if raw.get("version") != PEER_FORMAT_VERSION:
        raise PeerFileError(
            f"{where}: peer file version {raw.get('version')}, this code reads version {PEER_FORMAT_VERSION}"
        )
    try:
        return PeerSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise PeerFileError(f"{where}: invalid {HEADER} ({loc}: {first['msg']})") from None


def _open_zip(path: str | os.PathLike[str] | IO[bytes], where: Any) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise PeerFileError(f"{where}: no such peer model file") from None
    except IsADirectoryError:
        raise PeerFileError(f"{where}: a folder, not a peer model file") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise PeerFileError(f"{where}: not a {PEER_FORMAT} file ({exc.__class__.__name__})") from None


def is_peer_file(path: str | os.PathLike[str] | IO[bytes] | bytes) -> bool:
    """Whether ``path`` (a path, an open binary file or the file's bytes) is a peer file, by its header alone.
    A CNN model file (``torch.save``: also a zip) is not."""
    src = io.BytesIO(path) if isinstance(path, bytes) else path
    try:
        with zipfile.ZipFile(src) as zf:
            return HEADER in zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    finally:
        if hasattr(src, "seek"):
            src.seek(0)


def read_peer_spec(path: str | os.PathLike[str] | IO[bytes], *, name: str | None = None) -> PeerSpec:
    """The header of a peer file, checked (format, version), without unpickling anything."""
    where = name or path
    with _open_zip(path, where) as zf:
        return _header_of(zf, where)


def load_peer(
    path: str | os.PathLike[str] | IO[bytes], *, name: str | None = None, kind: str | None = None
) -> tuple[MaxentPeer | RandomForestPeer, PeerSpec]:
    """A fitted peer and its spec from a file written by :meth:`save`. The header is checked (format, version, the
    payload's SHA-256 and, if given, ``kind``) before the estimators are unpickled. ``name`` is what messages call
    the file when ``path`` is an open file."""
    where = name or path
    with _open_zip(path, where) as zf:
        spec = _header_of(zf, where)
        if kind is not None and spec.kind != kind:
            raise PeerFileError(f"{where}: a {spec.kind} peer file, expected {kind}")
        try:
            payload = zf.read(PAYLOAD)
        except KeyError:
            raise PeerFileError(f"{where}: no {PAYLOAD} in the peer file") from None
        except (zipfile.BadZipFile, OSError) as exc:  # a CRC error: the file was damaged
            raise PeerFileError(f"{where}: damaged peer file ({exc.__class__.__name__})") from None
    if hashlib.sha256(payload).hexdigest() != spec.payload_sha256:
        raise PeerFileError(f"{where}: damaged peer file (the estimators do not match the header's checksum)")
    installed = library_versions()
    differ = {k: (v, installed.get(k)) for k, v in spec.libraries.items() if installed.get(k) != v}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's InconsistentVersionWarning: reported once, below
        try:
            state = joblib.load(io.BytesIO(payload))
        except Exception as exc:
            versions = ", ".join(f"{k} {a} (installed {b})" for k, (a, b) in differ.items())
            hint = f"; saved with {versions}" if differ else ""
            raise PeerFileError(f"{where}: cannot read the estimators ({exc.__class__.__name__}){hint}") from None
    if differ:
        log.warning("%s: saved with %s", where, ", ".join(f"{k} {a} (installed {b})" for k, (a, b) in differ.items()))
    cls = PEER_KINDS[spec.kind]
    peer = cls(**spec.params)
    peer._set_state(state)
    if peer.n_vars_ != len(spec.features) or len(peer.models_) != len(spec.species):
        raise PeerFileError(f"{where}: the estimators do not fit the header (features or species differ)")
    return peer, spec


@runtime_checkable
class Peer(Protocol):
    """What the validation code needs from any model: per-species probabilities at points."""

    def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> Self: ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


def peer_probabilities(peer: Peer, spec: PeerSpec, X: np.ndarray) -> np.ndarray:
    """Probabilities ``(rows, species)`` of a loaded peer file at feature rows ``X`` (:func:`point_features`),
    through the file's calibration when it has one: what a map pixel and a predicted point of a peer both get."""
    p = np.asarray(peer.predict_proba(X), np.float32)
    if p.shape != (len(X), len(spec.species)):
        raise PeerFileError(f"the {spec.kind} model gave {p.shape[1]} species, its file lists {len(spec.species)}")
    return calibrate(p, spec.calibration)


def training_rows(labels: np.ndarray, source: np.ndarray, species: int) -> tuple[np.ndarray, np.ndarray]:
    """(sample indices, 0/1 targets) for one species: its presences, and background + its known absences."""
    col = labels[:, species]
    use = (col == 1) | (col == 0) | (source == BG)
    idx = np.flatnonzero(use)
    return idx, (col[idx] == 1).astype("int8")


def _fit_estimator(estimator: Any, X: np.ndarray, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear convergence chatter on species with few presences
        estimator.fit(X, y)
    return estimator


class _PerSpeciesPeer:
    """Shared fitting loop: validation of inputs, NaN filling, skipping rare species, parallel per-species fits."""

    name = "peer"

    def __init__(self, min_presences: int = 5, n_jobs: int | None = None, client: Any = None, seed: int = 0) -> None:
        self.min_presences = min_presences
        self.n_jobs = n_jobs
        self.client = client
        self.seed = seed

    # subclasses: an unfitted estimator for one species, and the presence probability of a fitted one
    def _estimator(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def _predict_one(model: Any, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_X(self, X: np.ndarray, n_vars: int | None = None) -> np.ndarray:
        X = np.asarray(X, dtype="float64")
        if X.ndim != 2:
            raise PeerError(f"{self.name}: X must be (samples, predictors), got shape {X.shape}")
        if n_vars is not None and X.shape[1] != n_vars:
            raise PeerError(f"{self.name}: X has {X.shape[1]} predictors, the model was fitted on {n_vars}")
        return X

    def _fill(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(X), self.fill_values_, X)

    def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray, groups: np.ndarray | None = None) -> Self:
        """Fit one model per species with at least ``min_presences`` presences. ``groups``: a spatial fold id per
        row, for peers that tune themselves on the training rows (ignored by the others)."""
        X = self._check_X(X)
        labels = np.asarray(labels)
        source = np.asarray(source).astype(str)
        if labels.ndim != 2 or labels.shape[0] != X.shape[0] or source.shape != (X.shape[0],):
            raise PeerError(
                f"{self.name}: X {X.shape}, labels {labels.shape} and source {source.shape} disagree on samples"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: filled with 0 below
            med = np.nanmedian(X, axis=0)
        self.fill_values_ = np.where(np.isfinite(med), med, 0.0)
        X = self._fill(X)
        self.n_vars_ = X.shape[1]
        n_species = labels.shape[1]
        self.prevalence_ = np.zeros(n_species)
        fit_species: list[int] = []
        jobs = []
        job_groups = []
        for s in range(n_species):
            idx, y = training_rows(labels, source, s)
            self.prevalence_[s] = y.mean() if len(y) else 0.0
            if y.sum() >= self.min_presences and (y == 0).any():
                fit_species.append(s)
                jobs.append((X[idx], y))
                job_groups.append(None if groups is None else np.asarray(groups)[idx])
        self.skipped_ = [s for s in range(n_species) if s not in set(fit_species)]
        fitted = self._run(jobs, self._estimators(jobs, job_groups, fit_species, n_species))
        self.models_: list[Any] = [None] * n_species
        for s, model in zip(fit_species, fitted, strict=True):
            self.models_[s] = model
        return self

    def _estimators(
        self, jobs: Sequence[tuple[np.ndarray, np.ndarray]], groups: Sequence[Any], species: list[int], n_species: int
    ) -> list[Any]:
        """One unfitted estimator per job (species ``species``, rows' fold ids ``groups``): the same for every one."""
        return [self._estimator() for _ in jobs]

    def _run(self, jobs: Sequence[tuple[np.ndarray, np.ndarray]], estimators: Sequence[Any]) -> list[Any]:
        if not jobs:
            return []
        # A fresh estimator per job and a module-level function: nothing that holds the client is shipped.
        if self.client is not None:
            futures = self.client.map(
                _fit_estimator, estimators, [X for X, _ in jobs], [y for _, y in jobs], pure=False
            )
            return self.client.gather(futures)
        if self.n_jobs in (None, 1) or len(jobs) == 1:
            return [_fit_estimator(est, X, y) for est, (X, y) in zip(estimators, jobs, strict=True)]
        return Parallel(n_jobs=self.n_jobs)(
            delayed(_fit_estimator)(est, X, y) for est, (X, y) in zip(estimators, jobs, strict=True)
        )

    # files

    def params(self) -> dict[str, Any]:
        """Constructor settings that define the model (not how it was run: no client, no n_jobs)."""
        return {"min_presences": self.min_presences, "seed": self.seed}

    def _state(self) -> dict[str, Any]:
        return {
            "models": self.models_,
            "fill_values": self.fill_values_,
            "prevalence": self.prevalence_,
            "skipped": self.skipped_,
            "n_vars": self.n_vars_,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.models_ = list(state["models"])
        self.fill_values_ = np.asarray(state["fill_values"])
        self.prevalence_ = np.asarray(state["prevalence"])
        self.skipped_ = list(state["skipped"])
        self.n_vars_ = int(state["n_vars"])

    def spec(
        self,
        *,
        species: Sequence[str] | None = None,
        species_name: Sequence[str] | None = None,
        variables: Sequence[str] | None = None,
        bands: Sequence[str] | None = None,
        seasons: int = 0,
    ) -> PeerSpec:
        """The header describing this fitted peer. The inputs must account for every column of ``X``:
        ``len(variables) + seasons * len(bands)`` (without names, the columns are called ``x0, x1, ...``)."""
        if not hasattr(self, "models_"):
            raise PeerError(f"{self.name}: call fit() before saving")
        n_species = len(self.models_)
        species = [str(s) for s in species] if species is not None else [str(s) for s in range(n_species)]
        if len(species) != n_species or (species_name is not None and len(species_name) != n_species):
            raise PeerError(f"{self.name}: fitted on {n_species} species, {len(species)} species ids given")
        if variables is None and not bands:
            variables = [f"x{i}" for i in range(self.n_vars_)]
        names = feature_names(variables, bands, seasons)
        if len(names) != self.n_vars_:
            raise PeerError(
                f"{self.name}: fitted on {self.n_vars_} predictors, the inputs named give {len(names)} "
                f"({len(variables or ())} variables + {seasons if bands else 0} seasons x {len(bands or ())} bands)"
            )
        return PeerSpec(
            kind=self.name,  # type: ignore[arg-type]
            species=species,
            species_name=[str(s) for s in species_name] if species_name is not None else None,
            variables=[str(v) for v in variables] if variables else None,
            bands=[str(b) for b in bands] if bands and seasons else None,
            seasons=seasons if bands else 0,
            features=names,
            params=self.params(),
            skipped=[int(s) for s in self.skipped_],
            tuning=getattr(self, "tuning_", None),
            libraries=library_versions(),
        )

    def save(self, path: str | os.PathLike[str], spec: PeerSpec | None = None, **inputs: Any) -> str:
        """Write the fitted peer to one file, atomically: ``spec`` (or :meth:`spec` of ``inputs``) as ``peer.json``,
        then the estimators (joblib). Returns the path."""
        spec = spec or self.spec(**inputs)
        if spec.kind != self.name or len(spec.features) != self.n_vars_ or len(spec.species) != len(self.models_):
            raise PeerError(f"{self.name}: the spec ({spec.kind}, {len(spec.features)} features) does not fit")
        buf = io.BytesIO()
        joblib.dump(self._state(), buf, compress=3)
        payload = buf.getvalue()
        spec = spec.model_copy(update={"payload_sha256": hashlib.sha256(payload).hexdigest()})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with zipfile.ZipFile(tmp, "w") as zf:
                zf.writestr(HEADER, spec.model_dump_json(indent=1), compress_type=zipfile.ZIP_DEFLATED)
                zf.writestr(PAYLOAD, payload, compress_type=zipfile.ZIP_STORED)  # joblib compressed it
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return str(path)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(samples, species) presence probabilities; skipped species get their training prevalence."""
        if not hasattr(self, "models_"):
            raise PeerError(f"{self.name}: call fit() before predict_proba()")
        X = self._fill(self._check_X(X, self.n_vars_))
        out = np.tile(self.prevalence_, (len(X), 1))
        for s, model in enumerate(self.models_):
            if model is not None:
                out[:, s] = self._predict_one(model, X)
        return np.clip(out, 0.0, 1.0).astype("float32")


class MaxentPeer(_PerSpeciesPeer):
    """One ``elapid.MaxentModel`` per species with elapid's defaults, cloglog output.

    ``maxent_kwargs`` go to ``MaxentModel`` unchanged. elapid fits with glmnet when the ``glmnet`` package is
    installed, else with scikit-learn's liblinear (a single regularisation value instead of a path).
    """

    name = "maxent"

    def __init__(
        self,
        min_presences: int = 5,
        n_jobs: int | None = None,
        client: Any = None,
        seed: int = 0,
        maxent_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(min_presences=min_presences, n_jobs=n_jobs, client=client, seed=seed)
        self.maxent_kwargs = dict(maxent_kwargs or {})

    def _estimator(self, **settings: Any) -> Any:
        from elapid import MaxentModel

        # n_cpus=1: parallelism is across species, not inside one fit. ``settings``: a tuned species' own.
        kwargs = {"transform": "cloglog", "random_state": self.seed, "n_cpus": 1, **self.maxent_kwargs, **settings}
        return MaxentModel(**kwargs)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "maxent_kwargs": self.maxent_kwargs}

    @staticmethod
    def _predict_one(model: Any, X: np.ndarray) -> np.ndarray:
        return model.predict(X)


class RandomForestPeer(_PerSpeciesPeer):
    """One balanced scikit-learn random forest per species (``class_weight="balanced"``), seeded."""

    name = "random_forest"

    def __init__(
        self,
        n_estimators: int = 200,
        min_samples_leaf: int = 2,
        max_features: str | float = "sqrt",
        min_presences: int = 5,
        n_jobs: int | None = None,
        client: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__(min_presences=min_presences, n_jobs=n_jobs, client=client, seed=seed)
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features

    def _estimator(self) -> Any:
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            class_weight="balanced",
            random_state=self.seed,
            n_jobs=1,
        )

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "n_estimators": self.n_estimators,
            "min_samples_leaf": self.min_samples_leaf,
            "max_features": self.max_features,
        }

    @staticmethod
    def _predict_one(model: Any, X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)[:, 1]


class TunedMaxentPeer(MaxentPeer):
    """MaxEnt with feature classes and beta multiplier chosen per species on spatial folds of its training rows
    (:mod:`geoplantnet.models.maxent_tuning`: ENMeval-style, dask-ml's grid search on the cluster), then refitted on
    all of them. :meth:`fit` needs ``groups``, a spatial fold id per row of ``X`` (the caller's, from
    :func:`geoplantnet.validation.blocks.spatial_blocks` of the training rows). The choices are ``tuning_`` and the
    file header's ``tuning``."""

    name = "maxent_tuned"

    def __init__(
        self,
        min_presences: int = 5,
        n_jobs: int | None = None,
        client: Any = None,
        seed: int = 0,
        maxent_kwargs: dict[str, Any] | None = None,
        feature_classes: Sequence[str] | None = None,
        betas: Sequence[float] | None = None,
    ) -> None:
        super().__init__(min_presences, n_jobs, client, seed, maxent_kwargs)
        self.feature_classes = list(feature_classes or maxent_tuning.FEATURE_CLASSES)
        self.betas = [float(b) for b in betas or maxent_tuning.BETAS]

    def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray, groups: np.ndarray | None = None) -> Self:
        if groups is None or np.shape(groups) != (np.shape(X)[0],):
            raise PeerError(f"{self.name}: fit needs a spatial fold id per row (groups) to tune on")
        return super().fit(X, labels, source, groups)

    def _estimators(
        self, jobs: Sequence[tuple[np.ndarray, np.ndarray]], groups: Sequence[Any], species: list[int], n_species: int
    ) -> list[Any]:
        base = {"random_state": self.seed, **self.maxent_kwargs}
        self.tuning_: list[dict[str, Any] | None] = [None] * n_species
        out = []
        for s, (X, y), g in zip(species, jobs, groups, strict=True):
            choice = maxent_tuning.tune_species(
                X, y, g, client=self.client, classes=self.feature_classes, betas=self.betas, maxent_kwargs=base
            )
            self.tuning_[s] = choice or {"features": "default"}
            out.append(self._estimator(**maxent_tuning.chosen_kwargs(choice)))
            log.info("%s: species %d: %s", self.name, s, self.tuning_[s])
        return out

    def params(self) -> dict[str, Any]:
        return {**super().params(), "feature_classes": self.feature_classes, "betas": self.betas}

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "tuning": self.tuning_}

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self.tuning_ = list(state["tuning"])


PEER_KINDS: dict[str, type[MaxentPeer] | type[RandomForestPeer]] = {
    MaxentPeer.name: MaxentPeer,
    TunedMaxentPeer.name: TunedMaxentPeer,
    RandomForestPeer.name: RandomForestPeer,
}
