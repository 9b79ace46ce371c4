"""The habitat map's own model: a random forest from what a map pixel has (kind ``map-forest``).

A map pixel has its predicted assemblage (every species' probability, ``species.zarr``) and its point predictors (the
species model's environmental and Sentinel-2 inputs at the pixel: :func:`geoplantnet.inference.points.pixel_features`).
A :class:`MapForest` classifies a habitat from one or both (``inputs``: ``assemblage``, ``predictors`` or ``joint``),
fitted at the labelled plots on the species model's *cross-fitted* predictions there
(:mod:`geoplantnet.validation.map_models`), so training and mapping inputs agree. ``joint`` is a stack: a first forest
on the assemblage gives class probabilities (out of fold on the training plots, on the plots' spatial folds), a second
forest classifies from the point predictors and those probabilities (a forest on ~200 species columns plus the
predictors spreads its splits over the species and loses to the predictors alone; the stack does not).

It is a classifier folder like any other (:mod:`geoplantnet.models.habitat_classifier`): ``geoplantnet.json``
(kind, classes, names, version, inputs, the species and feature columns) and ``forest.joblib``. Given species lists
(:meth:`MapForest.predict_proba`) an assemblage model reads a listed species as probability 1 and the others as 0;
a model that needs point predictors refuses lists (it maps pixels only).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import fsspec
import joblib
import numpy as np
from sklearn.ensemble import RandomForestClassifier

from geoplantnet.core.hashing import file_digest, fingerprint
from geoplantnet.models.habitat_classifier import META, ClassifierFolderError, publish_folder, read_meta, register

KIND = "map-forest"
FORMAT = "geoplantnet.map-forest/1"
PAYLOAD = "forest.joblib"
MapInputs = Literal["assemblage", "predictors", "joint"]


@dataclass
class MapForest:
    """A fitted random forest over a pixel's predicted assemblage and/or point predictors (see the module)."""

    forest: RandomForestClassifier
    inputs: MapInputs
    classes: tuple[str, ...]
    species: tuple[str, ...]  # the assemblage columns (the species map's species, in its order); () without
    features: tuple[str, ...]  # the point-predictor columns (feature_names); () without
    names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)  # how it was chosen (fold scores), for people
    version: str = ""
    parent: str = ""
    stage: RandomForestClassifier | None = None  # joint: the forest on the assemblage whose probabilities it reads

    @property
    def needs_predictors(self) -> bool:
        return self.inputs != "assemblage"

    @property
    def needs_assemblage(self) -> bool:
        return self.inputs != "predictors"

    @classmethod
    def fit(
        cls,
        inputs: MapInputs,
        assemblage: np.ndarray | None,
        predictors: np.ndarray | None,
        labels: Sequence[str],
        *,
        species: Sequence[str] = (),
        features: Sequence[str] = (),
        names: dict[str, str] | None = None,
        folds: np.ndarray | None = None,
        trees: int = 300,
        seed: int = 0,
    ) -> MapForest:
        """Fit on rows of ``assemblage`` (n, S) and/or ``predictors`` (n, F) (what ``inputs`` names) to ``labels``;
        ``joint`` needs the rows' spatial ``folds`` (its first stage's out-of-fold probabilities)."""
        labels = np.asarray(labels, dtype=str)

        def forest() -> RandomForestClassifier:
            return RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)

        stage = None
        if inputs == "joint":
            if folds is None or assemblage is None:
                raise ClassifierFolderError(f"a joint {KIND} model needs the assemblage and the plots' folds")
            stage = forest().fit(np.asarray(assemblage, np.float32), labels)
            inner = np.zeros((len(labels), len(stage.classes_)), np.float32)
            for k in np.unique(folds):
                test = folds == k
                if test.all():
                    continue
                part = forest().fit(np.asarray(assemblage, np.float32)[~test], labels[~test])
                inner[np.ix_(test, np.searchsorted(stage.classes_, part.classes_))] = part.predict_proba(
                    np.asarray(assemblage, np.float32)[test]
                )
            X = np.concatenate([np.asarray(predictors, np.float32), inner], axis=1)
        else:
            X = design(inputs, assemblage, predictors)
        top = forest().fit(X, labels)
        classes = tuple(str(c) for c in top.classes_)
        return cls(
            top,
            inputs,
            classes,
            tuple(species) if inputs != "predictors" else (),
            tuple(features) if inputs != "assemblage" else (),
            tuple((names or {}).get(c, "") for c in classes),
            stage=stage,
        )

    def predict_rows(self, assemblage: np.ndarray | None, predictors: np.ndarray | None) -> np.ndarray:
        """(n, classes) probabilities of pixels' rows (NaN in a cloudy season's predictors is split on as missing)."""
        X = design(self.inputs, assemblage, predictors, self.stage)
        if len(X) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return self.forest.predict_proba(X).astype(np.float32)

    def predict_proba(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """Habitat probabilities of species lists: a listed species at probability 1 (assemblage models only)."""
        if self.needs_predictors:
            raise ClassifierFolderError(
                f"a {KIND} model on {self.inputs} needs each place's point predictors: it maps pixels "
                "(geoplantnet habitat-map), it does not classify species lists"
            )
        column = {s: i for i, s in enumerate(self.species)}
        A = np.zeros((len(sentences), len(self.species)), np.float32)
        for i, sentence in enumerate(sentences):
            A[i, [column[s] for s in sentence if s in column]] = 1.0
        return self.predict_rows(A, None)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "inputs": self.inputs,
            "classes": len(self.classes),
            "species": len(self.species),
            "features": len(self.features),
            "trees": self.forest.n_estimators,
            "version": self.version,
            **({"chosen": self.info} if self.info else {}),
        }

    def save(self, folder: str | os.PathLike[str]) -> str:
        """Write the folder (forest, then ``geoplantnet.json``); returns and sets :attr:`version`."""
        with tempfile.TemporaryDirectory() as tmp:
            stage = Path(tmp)
            joblib.dump((self.forest, self.stage), stage / PAYLOAD)
            self.version = fingerprint(file_digest(stage / PAYLOAD), self.classes, self.species, self.features)
            meta = {
                "format": FORMAT,
                "kind": KIND,
                "inputs": self.inputs,
                "classes": list(self.classes),
                "names": list(self.names),
                "species": list(self.species),
                "features": list(self.features),
                "info": self.info,
                "version": self.version,
                "parent": self.parent,
            }
            (stage / META).write_text(json.dumps(meta, indent=1))
            publish_folder(stage, folder, what="habitat map model")
        return self.version

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str = "cpu") -> MapForest:
        """The model saved in ``folder`` (``device`` is ignored: a forest runs on the CPU)."""
        url = os.fspath(folder)
        meta = read_meta(url)
        if meta.get("kind") != KIND:
            raise ClassifierFolderError(f"{url}: a model of kind {meta.get('kind')!r}, not {KIND}")
        with fsspec.open(f"{url.rstrip('/')}/{PAYLOAD}", "rb") as f:
            forest, stage = joblib.load(f)
        return cls(
            forest,
            meta["inputs"],
            tuple(meta["classes"]),
            tuple(meta["species"]),
            tuple(meta["features"]),
            tuple(meta.get("names", ())),
            dict(meta.get("info", {})),
            str(meta["version"]),
            str(meta.get("parent", "")),
            stage,
        )


def design(
    inputs: MapInputs,
    assemblage: np.ndarray | None,
    predictors: np.ndarray | None,
    stage: RandomForestClassifier | None = None,
) -> np.ndarray:
    """The forest's rows: the assemblage's columns (joint: the first ``stage``'s class probabilities of them, after
    the predictors), then the predictors' (as ``inputs`` names them)."""
    if inputs == "joint" and stage is not None:
        if assemblage is None or predictors is None:
            raise ClassifierFolderError(f"a joint {KIND} model needs the assemblage and the point predictors")
        probs = stage.predict_proba(np.asarray(assemblage, np.float32)).astype(np.float32)
        return np.concatenate([np.asarray(predictors, np.float32), probs], axis=1)
    parts = []
    if inputs != "predictors":
        if assemblage is None:
            raise ClassifierFolderError(f"a {KIND} model on {inputs} needs the predicted assemblage")
        parts.append(np.asarray(assemblage, np.float32))
    if inputs != "assemblage":
        if predictors is None:
            raise ClassifierFolderError(f"a {KIND} model on {inputs} needs the point predictors")
        parts.append(np.asarray(predictors, np.float32))
    return np.concatenate(parts, axis=1)


register(KIND, MapForest.load)
