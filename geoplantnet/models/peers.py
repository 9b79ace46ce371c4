"""Peer models for the species network: MaxEnt (elapid) and a random forest, behind one small interface.

Both are fitted per species on the same point predictors (``env_point``) the network sees at its patch centres:

* presences: samples where the species is 1 (presence-only records and survey presences);
* absences / background: the "bg" samples plus every sample where the species is 0 (survey absences). Samples where
  the species is unknown (-1: other species' presence-only records) are left out, as MaxEnt's background is.

A species with fewer than ``min_presences`` presences is not fitted: it is flagged in ``skipped_`` and predicted at
its training prevalence. Missing predictor values are filled with the training medians (MaxEnt cannot take NaN).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
from joblib import Parallel, delayed

BG = "bg"


class PeerError(ValueError):
    """Inputs a peer cannot be fitted on or applied to (the message is one line)."""


@runtime_checkable
class Peer(Protocol):
    """What the validation code needs from any model: per-species probabilities at points."""

    def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> Self: ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


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

    def fit(self, X: np.ndarray, labels: np.ndarray, source: np.ndarray) -> Self:
        """Fit one model per species with at least ``min_presences`` presences."""
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
        for s in range(n_species):
            idx, y = training_rows(labels, source, s)
            self.prevalence_[s] = y.mean() if len(y) else 0.0
            if y.sum() >= self.min_presences and (y == 0).any():
                fit_species.append(s)
                jobs.append((X[idx], y))
        self.skipped_ = [s for s in range(n_species) if s not in set(fit_species)]
        fitted = self._run(jobs)
        self.models_: list[Any] = [None] * n_species
        for s, model in zip(fit_species, fitted, strict=True):
            self.models_[s] = model
        return self

    def _run(self, jobs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Any]:
        if not jobs:
            return []
        # A fresh estimator per job and a module-level function: nothing that holds the client is shipped.
        estimators = [self._estimator() for _ in jobs]
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

    def _estimator(self) -> Any:
        from elapid import MaxentModel

        # n_cpus=1: parallelism is across species, not inside one fit.
        kwargs = {"transform": "cloglog", "random_state": self.seed, "n_cpus": 1, **self.maxent_kwargs}
        return MaxentModel(**kwargs)

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

    @staticmethod
    def _predict_one(model: Any, X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)[:, 1]
