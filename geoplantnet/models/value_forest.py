"""The value model's forest (``value.model: forest | blend``): the class-balanced random forest of the fold peer,
fitted on every polygon's sampled pixels, and the shipped model's choice (``unet_weight``: the U-Net's share of a
blend; 0 for the forest alone).

Saved beside the U-Net's file in the house's model-folder convention (as :mod:`geoplantnet.models.map_forest`): a
folder ``forest/`` next to ``model.pt`` with ``geoplantnet.json`` (format, the U-Net's training key, features, the
choice, the payload's sha256), written last, and ``forest.joblib``. **The payload is a pickle**: it is unpickled only
after its header is read and its bytes match the header's sha256 — load only files you trust.

Per pixel the forest reads the same rows as the fold peer: the feature stack's channels at that pixel
(:func:`pixel_rows`), NaN (a cloudy season) routed by scikit-learn's trees as missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import joblib
import numpy as np

from geoplantnet.core.errors import InputError
from geoplantnet.storage.store import service_errors

FORMAT = "geoplantnet.value-forest/1"
META = "geoplantnet.json"
PAYLOAD = "forest.joblib"
FOLDER = "forest"  # beside the U-Net's file


class ValueForestError(InputError):
    """A value forest folder that cannot be read or does not belong to its U-Net (one line naming it)."""


def forest_url(model_url: str) -> str:
    """The forest folder beside the U-Net's file at ``model_url`` (``.../value/model.pt`` -> ``.../value/forest``)."""
    head, _, _ = model_url.rstrip("/").rpartition("/")
    return f"{head}/{FOLDER}" if head else FOLDER


def pixel_rows(stack: np.ndarray) -> np.ndarray:
    """A feature stack (C, ...) as the forest's rows (n, C): one row per pixel, the channels in the stack's order
    (the U-Net's features). The one way pixels become forest rows, in the folds and on the map."""
    return np.asarray(stack, np.float32).reshape(stack.shape[0], -1).T


def forest_value(
    estimator: Any, rows: np.ndarray, score_value: Callable[[np.ndarray], np.ndarray] | None
) -> np.ndarray:
    """The value of forest rows: a classifier's probability of high, or a regression forest's score rescaled by
    ``score_value`` (the U-Net's own rescaling, so both are on one scale)."""
    if len(rows) == 0:
        return np.zeros(0, np.float32)
    if score_value is None:
        return estimator.predict_proba(rows)[:, 1].astype(np.float32)
    return np.asarray(score_value(estimator.predict(rows)), np.float32)


@dataclass
class ValueForest:
    """A fitted value forest and the shipped model's choice (see the module)."""

    forest: Any  # RandomForestClassifier, or RandomForestRegressor for a score target
    features: tuple[str, ...]
    training_key: str  # the U-Net's: a forest of another training is refused beside it
    shipped: str  # "forest" or "blend"
    unet_weight: float  # the U-Net's share of the value (0: the forest alone)
    info: dict[str, Any] = field(default_factory=dict)  # how the weight was chosen (inner-split AUCs)
    sha256: str = ""  # the payload's (set by save and load): pins it on the workers

    def save(self, model_url: str, storage_options: Mapping[str, Any] | None = None) -> str:
        """Write the folder beside ``model_url`` (payload, then the header); returns the payload's sha256."""
        buf = io.BytesIO()
        joblib.dump(self.forest, buf)
        raw = buf.getvalue()
        sha = hashlib.sha256(raw).hexdigest()
        meta = {
            "format": FORMAT,
            "training_key": self.training_key,
            "features": list(self.features),
            "shipped": self.shipped,
            "unet_weight": self.unet_weight,
            "info": self.info,
            "payload_sha256": sha,
        }
        url = forest_url(model_url)
        for name, data in ((PAYLOAD, raw), (META, json.dumps(meta, indent=1).encode())):
            _write(f"{url}/{name}", data, storage_options)
        self.sha256 = sha
        return sha

    @classmethod
    def load(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> ValueForest | None:
        """The forest folder at ``url`` (:func:`forest_url`), or None where there is none (the U-Net alone); the
        header is checked and the payload's bytes matched to its sha256 before they are unpickled."""
        options = dict(storage_options or {})
        with service_errors(url):
            try:
                with fsspec.open(f"{url}/{META}", "rb", **options) as f:
                    meta = json.loads(f.read())
            except FileNotFoundError:
                return None
            except ValueError:
                raise ValueForestError(f"{url}/{META}: not a value forest header") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueForestError(f"{url}: not a {FORMAT} folder")
            try:
                with fsspec.open(f"{url}/{PAYLOAD}", "rb", **options) as f:
                    raw = f.read()
            except FileNotFoundError:
                raise ValueForestError(f"{url}: the header names a forest but {PAYLOAD} is missing") from None
        if hashlib.sha256(raw).hexdigest() != meta.get("payload_sha256"):
            raise ValueForestError(f"{url}/{PAYLOAD}: its bytes do not match the header's sha256; refusing to load it")
        return cls(
            joblib.load(io.BytesIO(raw)),
            tuple(meta["features"]),
            str(meta["training_key"]),
            str(meta["shipped"]),
            float(meta["unet_weight"]),
            dict(meta.get("info", {})),
            str(meta["payload_sha256"]),
        )


def remove_forest(model_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove the forest folder beside ``model_url`` (header first: a half-removed folder never reads as one)."""
    url = forest_url(model_url)
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    with service_errors(url):
        for name in (META, PAYLOAD):
            if fs.exists(f"{path}/{name}"):
                fs.rm(f"{path}/{name}")


def _write(url: str, data: bytes, storage_options: Mapping[str, Any] | None) -> None:
    if "://" not in url:  # local: beside its name, then renamed
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    with service_errors(url), fsspec.open(url, "wb", **dict(storage_options or {})) as f:
        f.write(data)
