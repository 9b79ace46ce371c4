"""The value model's folds and cross-validation: polygons labelled high / low onto the value grid with a spatial fold
each (whole polygons, :func:`geoplantnet.validation.blocks.spatial_folds`), then per fold a U-Net
(:mod:`geoplantnet.training.value`) and a class-balanced random forest trained on the other folds' polygons and both
scored on the held-out polygons' sampled pixels (AUC, accuracy at 0.5); then the final U-Net on every polygon. With
``value.score_column`` both learn the polygons' score (the forest a regression forest) and are scored on the same
high / low pixels, their scores rescaled to the value as the fold's network rescales its own.

Nothing is chosen on a test fold: the folds' numbers are reported, never used to pick a model or a setting. A rerun
with the same settings and inputs reuses the saved model and folds (by a training key).

Here rather than in :mod:`geoplantnet.training`: the folds are spatial blocks (:mod:`geoplantnet.validation.blocks`),
which sit above training in the layers. torch is imported by the functions that train (a command refuses bad
polygons without it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoplantnet.core.config import CubeConfig, GridConfig, StoreConfig, ValueConfig
from geoplantnet.core.errors import RefusedError
from geoplantnet.core.grid import Grid
from geoplantnet.core.hashing import fingerprint
from geoplantnet.inference.value import ValueJobError
from geoplantnet.samples.value_labels import LabelRasters, Labels, rasterise_labels, read_value_polygons
from geoplantnet.storage.store import exists, shown, storage_options_for
from geoplantnet.validation.blocks import BlockError, spatial_folds

if TYPE_CHECKING:
    import geopandas as gpd

    from geoplantnet.models.value_net import ValueModel

FOLD_FILES = ("report.json", "report.md", "folds.csv")  # what describes a trained model beside it
MODELS = ("unet", "random_forest", "blend")
VALIDATION_PARTS = 5  # a fifth of a network's training polygons validate it (early stopping)


def polygon_folds(polygons: gpd.GeoDataFrame, settings: ValueConfig) -> tuple[np.ndarray, list[str]]:
    """A fold per polygon: spatial blocks of ``block_size_m`` by centroid dealt to folds with both classes spread
    (``spatial_folds`` stratified by label), so a polygon is never in two folds; blocks are halved while fewer than
    the folds hold polygons (said so). Notes name folds without one of the classes."""
    n = len(polygons)
    if n < settings.folds:
        raise ValueJobError(f"{n} labelled polygons on the grid, fewer than value.folds={settings.folds}")
    centre = polygons.geometry.centroid
    x, y, labels = centre.x.to_numpy(), centre.y.to_numpy(), polygons["label"].to_numpy()
    folds, notes = spatial_folds(
        x, y, settings.block_size_m, settings.folds, seed=settings.seed, stratify=labels, fallback="smaller_blocks",
        what="polygons",
    )  # fmt: skip
    for k in range(settings.folds):
        labels = set(polygons["label"][folds == k].tolist())
        for cls, name in ((1, settings.high), (0, settings.low)):
            if cls not in labels:
                notes.append(f"fold {k} holds no {name!r} polygon: its AUC is undefined")
    return folds, notes


def load_labels(settings: ValueConfig, source: str, grid: Grid) -> Labels:
    """Read and rasterise the polygons of ``source`` onto the value grid, assign folds, and the training window:
    the labelled pixels' bounding box grown by a crop and the model's halo (may leave the grid: NaN there)."""
    s = settings
    polygons = read_value_polygons(
        source, label_column=s.label_column, high=s.high, low=s.low, epsg=grid.epsg, score_column=s.score_column
    )
    full = rasterise_labels(polygons, grid)
    for cls, name in ((1, s.high), (0, s.low)):
        if not (full.label == cls).any():
            raise ValueJobError(f"{source}: no {name!r} polygon covers a pixel centre of the grid {grid.label()}")
    on_grid = np.unique(full.polygon[full.polygon >= 0])
    polygons = polygons[polygons["polygon_id"].isin(on_grid)].reset_index(drop=True)
    folds, notes = polygon_folds(polygons, s)
    polygons["fold"] = folds
    rows, cols = np.nonzero(full.label >= 0)
    from geoplantnet.models.value_net import halo  # torch: imported once the polygons are read and checked

    margin = max(s.crop, halo(s.depth))
    window = (rows.min() - margin, rows.max() + 1 + margin, cols.min() - margin, cols.max() + 1 + margin)
    (ys, xs), ((top, bottom), (left, right)) = grid.clip(window[:2], window[2:])
    pad = ((top, bottom), (left, right))
    rasters = LabelRasters(
        np.pad(full.label[ys, xs], pad, constant_values=-1),
        np.pad(full.polygon[ys, xs], pad, constant_values=-1),
        None if full.score is None else np.pad(full.score[ys, xs], pad, constant_values=np.nan),
    )
    return Labels(polygons, rasters, tuple(int(v) for v in window), source, tuple(notes))


def polygon_summary(labels: Labels) -> dict[str, Any]:
    """The report's account of the polygons: where from, high and low polygons on the grid, labelled pixels."""
    polys = labels.polygons
    return {
        "source": shown(labels.source),
        "high": int((polys["label"] == 1).sum()),
        "low": int((polys["label"] == 0).sum()),
        "pixels": int((labels.rasters.label >= 0).sum()),
    }


def sample_pixels(rasters: LabelRasters, per_polygon: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_polygon`` labelled pixels (rows, cols) of each polygon, drawn once (seeded): the forest's
    training rows and both models' test pixels."""
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero((rasters.label >= 0) & (rasters.polygon >= 0))
    owner = rasters.polygon[rows, cols]
    order = np.argsort(owner, kind="stable")
    rows, cols, owner = rows[order], cols[order], owner[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    keep = []
    for start, stop in zip(starts, [*starts[1:], len(owner)], strict=True):
        idx = np.arange(start, stop)
        keep.append(idx if len(idx) <= per_polygon else rng.choice(idx, per_polygon, replace=False))
    chosen = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return rows[chosen], cols[chosen]


def auc_accuracy(label: np.ndarray, prob: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    both = len(np.unique(label)) == 2
    return {
        "auc": round(float(roc_auc_score(label, prob)), 4) if both else None,
        "accuracy": round(float(((prob >= 0.5) == (label == 1)).mean()), 4) if len(label) else None,
    }


def fit_forest(settings: ValueConfig, rows: np.ndarray, label: np.ndarray, score: np.ndarray | None) -> Any:
    """The class-balanced forest of ``rows``: a classifier of ``label``, or with ``score`` a regression forest of it
    (each class weighted to half the total, as the classifier's ``balanced``)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    common = {"n_estimators": settings.forest_trees, "random_state": settings.seed, "n_jobs": 1}
    if score is None:  # NaN in rows: scikit-learn's trees route missing values themselves
        return RandomForestClassifier(class_weight="balanced", **common).fit(rows, label)
    counts = np.bincount(label, minlength=2).astype(float)
    weight = (len(label) / (2 * np.maximum(counts, 1)))[label]
    return RandomForestRegressor(**common).fit(rows, score, sample_weight=weight)


def fold_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per model, the mean AUC and accuracy of its folds (those with a number)."""

    def mean(model: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["model"] == model and r[key] is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    present = [m for m in MODELS if any(r["model"] == m for r in rows)]
    return {m: {"auc": mean(m, "auc"), "accuracy": mean(m, "accuracy")} for m in present}


# -- training and cross-validation


@dataclass(frozen=True)
class ValueTraining:
    """How the value networks of a run are trained: the value section, the training device, and what the saved
    model records of them (the training key)."""

    settings: ValueConfig
    device: str
    key: str


@dataclass
class Trained:
    """The cross-validation's rows and the final model's path, sha256 and training info."""

    folds: list[dict[str, Any]]
    model: str
    sha256: str
    training: dict[str, Any]
    reused: bool


def inner_split(labels: Labels, label: np.ndarray, settings: ValueConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """``label`` split into the labels a network fits and those of its validation polygons (early stopping): about a
    fifth of the polygons ``label`` holds, by whole spatial blocks of their centroids (``spatial_folds``, blocks
    halved while too few), never a test fold's. No validation (None) when the polygons are too few to split."""
    polygon = labels.rasters.polygon
    ids = np.unique(polygon[(label >= 0) & (polygon >= 0)])
    part = labels.polygons[labels.polygons["polygon_id"].isin(ids)]
    if len(part) < VALIDATION_PARTS:
        return label, None
    centre = part.geometry.centroid
    try:
        parts, _ = spatial_folds(
            centre.x.to_numpy(), centre.y.to_numpy(), settings.block_size_m, VALIDATION_PARTS, seed=settings.seed,
            fallback="smaller_blocks", what="validation polygons",
        )  # fmt: skip
    except BlockError:  # too few blocks even under a metre
        return label, None
    held = np.isin(polygon, part["polygon_id"].to_numpy()[parts == 0]) & (label >= 0)
    return np.where(held, -1, label).astype(np.int8), np.where(held, label, -1).astype(np.int8)


def fit(
    training: ValueTraining,
    features: np.ndarray,
    label: np.ndarray,
    labels: Labels,
    names: list[str],
    one_hot: list[str],
) -> tuple[ValueModel, float]:
    """A U-Net on the polygons of ``label`` (with early stopping on an inner split of them when ``value.patience``
    is set), and its training seconds."""
    from geoplantnet.training.value import train_labelled

    s = training.settings
    fit_label, val = inner_split(labels, label, s) if s.patience is not None else (label, None)
    return train_labelled(
        features, fit_label, val, labels.rasters.polygon, names, s, training.device, unscaled=one_hot, key=training.key,
        score=labels.rasters.score if s.score_column is not None else None,
    )  # fmt: skip


@dataclass(frozen=True)
class Pixels:
    """The sampled labelled pixels (:func:`sample_pixels`): where, their forest rows (:func:`pixel_rows`), label and
    score (a score target's, else None)."""

    rows: np.ndarray
    cols: np.ndarray
    x: np.ndarray
    y: np.ndarray
    score: np.ndarray | None

    @classmethod
    def sample(cls, features: np.ndarray, labels: Labels, settings: ValueConfig) -> Pixels:
        from geoplantnet.models.value_forest import pixel_rows

        r = labels.rasters
        rows, cols = sample_pixels(r, settings.pixels_per_polygon, settings.seed)
        score = None if r.score is None or settings.score_column is None else r.score[rows, cols].astype(np.float64)
        return cls(rows, cols, pixel_rows(features[:, rows, cols]), r.label[rows, cols].astype(np.int64), score)

    def forest(self, settings: ValueConfig, keep: np.ndarray) -> Any:
        """The class-balanced forest of the pixels ``keep`` (:func:`fit_forest`); None without both classes."""
        if len(np.unique(self.y[keep])) < 2:
            return None
        return fit_forest(settings, self.x[keep], self.y[keep], None if self.score is None else self.score[keep])


def _rescale(net: ValueModel) -> Callable[[np.ndarray], np.ndarray] | None:
    return net.spec.score_value if net.spec.target == "score" else None


def choose_weight(
    training: ValueTraining,
    features: np.ndarray,
    label: np.ndarray,
    labels: Labels,
    pixels: Pixels,
    names: list[str],
    one_hot: list[str],
    net: ValueModel,
) -> tuple[float, dict[str, Any]]:
    """The U-Net's weight in the blend, from ``value.blend_weights``: the best AUC of ``w x U-Net + (1 - w) x
    forest`` on the inner validation polygons of ``label`` (:func:`inner_split`; ``label`` holds the training
    polygons only, so a test fold never reaches the choice), both models fitted on the rest of ``label``'s polygons
    (``net`` itself when ``value.patience`` already trained it so, else a U-Net trained here). Ties go to the weight
    nearest 0.5 (the plain average); without a split or with one class in it: 0.5, said so."""
    from geoplantnet.models.value_forest import forest_value

    s = training.settings
    fit_label, val = inner_split(labels, label, s)
    default = min(s.blend_weights, key=lambda w: abs(w - 0.5))
    if val is None:
        return default, {"note": "too few polygons for an inner split: the weight nearest 0.5"}
    held = val[pixels.rows, pixels.cols] >= 0
    forest = pixels.forest(s, fit_label[pixels.rows, pixels.cols] >= 0)
    if forest is None or len(np.unique(pixels.y[held])) < 2:
        return default, {"note": "the inner split lacks a class: the weight nearest 0.5"}
    inner = net if s.patience is not None else fit(training, features, fit_label, labels, names, one_hot)[0]
    p_net = inner.predict(features)[0][pixels.rows[held], pixels.cols[held]]
    p_forest = forest_value(forest, pixels.x[held], _rescale(inner))
    aucs = {w: auc_accuracy(pixels.y[held], w * p_net + (1 - w) * p_forest)["auc"] for w in s.blend_weights}
    best = max(aucs.values())
    weight = min((w for w, a in aucs.items() if a >= best - 1e-9), key=lambda w: abs(w - 0.5))
    return weight, {"inner_auc": {f"{w:g}": a for w, a in aucs.items()}, "inner_pixels": int(held.sum())}


def cross_validate(
    training: ValueTraining, features: np.ndarray, labels: Labels, names: list[str], one_hot: list[str]
) -> list[dict[str, Any]]:
    """Per fold: the U-Net and the forest trained on the other folds' polygons, scored on this fold's sampled
    pixels (AUC, accuracy at 0.5); with ``value.model: blend`` also their blend, its weight chosen on the training
    polygons' inner split (:func:`choose_weight`); one row per fold and model."""
    from geoplantnet.models.value_forest import forest_value

    s = training.settings
    r = labels.rasters
    pixels = Pixels.sample(features, labels, s)
    rows, cols, x, y = pixels.rows, pixels.cols, pixels.x, pixels.y
    fold_of = dict(zip(labels.polygons["polygon_id"], labels.polygons["fold"], strict=True))
    pixel_fold = np.array([fold_of[p] for p in r.polygon[rows, cols]], dtype=np.int64)
    out = []
    for k in range(s.folds):
        test = pixel_fold == k
        held = labels.polygons["polygon_id"][labels.polygons["fold"] == k].to_numpy()
        train_label = np.where(np.isin(r.polygon, held), -1, r.label).astype(np.int8)
        if not (test.any() and (train_label >= 0).any()):
            continue
        polys = labels.polygons[labels.polygons["fold"] == k]
        common = {
            "fold": k,
            "test_pixels": int(test.sum()),
            "test_polygons_high": int((polys["label"] == 1).sum()),
            "test_polygons_low": int((polys["label"] == 0).sum()),
            "train_polygons": int((labels.polygons["fold"] != k).sum()),
        }
        t0 = time.perf_counter()
        net, _ = fit(training, features, train_label, labels, names, one_hot)
        p_net = net.predict(features)[0][rows[test], cols[test]]
        out.append(
            {"model": "unet", **common, **auc_accuracy(y[test], p_net), "seconds": round(time.perf_counter() - t0, 1)}
        )
        t0 = time.perf_counter()
        forest = pixels.forest(s, ~test)
        # a score target's forest scores as values, rescaled as this fold's network rescales its own
        p_forest = None if forest is None else forest_value(forest, x[test], _rescale(net))
        row = (
            {**common, "auc": None, "accuracy": None}
            if p_forest is None
            else {**common, **auc_accuracy(y[test], p_forest)}
        )
        out.append({"model": "random_forest", **row, "seconds": round(time.perf_counter() - t0, 1)})
        if s.model == "blend" and p_forest is not None:
            t0 = time.perf_counter()
            w, chosen = choose_weight(training, features, train_label, labels, pixels, names, one_hot, net)
            blend = {**common, **auc_accuracy(y[test], w * p_net + (1 - w) * p_forest)}
            seconds = round(time.perf_counter() - t0, 1)
            out.append({"model": "blend", **blend, "seconds": seconds, "unet_weight": w, **chosen})
    return out


def training_key(
    settings: ValueConfig, grid: GridConfig, cube: CubeConfig, labels: Labels, items: list[str], names: list[str]
) -> str:
    """What a trained model depends on: the value settings that train it, the grids, the cube settings, the
    polygons (by content), the input items (ids) and feature names."""
    trains = settings.model_dump(mode="json", exclude={"tile", "draws", "polygons"})
    polys = labels.polygons
    shapes = [polys["polygon_id"].tolist(), polys["label"].tolist(), [g.wkb_hex for g in polys.geometry]]
    return fingerprint(trains, grid.model_dump(mode="json"), cube.model_dump(mode="json"), shapes, items, names)


def _previous(folder: Path, model_url: str, key: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The report and model sha256 of an earlier run with the same training key, when both are there."""
    from geoplantnet.models.value_net import ValueModel, ValueModelError

    try:
        report = json.loads((folder / "report.json").read_text())
        model, raw = ValueModel.load(model_url, storage_options=dict(options))
    except (OSError, ValueError, ValueModelError):
        return None
    if report.get("training_key") != key or model.spec.training_key != key:
        return None
    return report, hashlib.sha256(raw).hexdigest()


def train_or_reuse(
    training: ValueTraining,
    features: Callable[[], np.ndarray],
    labels: Labels,
    names: list[str],
    one_hot: list[str],
    *,
    folder: Path,
    model_url: str,
    store: StoreConfig,
    overwrite: bool = False,
) -> Trained:
    """Cross-validate and train the final model (on ``features()``, the training window's stack, read only then),
    or reuse those of an earlier run with the same training key (its report in ``folder``)."""
    options = storage_options_for(model_url, store)  # the store's: the model is written under store.root
    previous = _previous(folder, model_url, training.key, options)
    if previous is not None and training.settings.model != "unet":
        from geoplantnet.models.value_forest import ValueForest, ValueForestError, forest_url

        try:  # the shipped forest must be there too (its training is checked where the model is read)
            previous = previous if ValueForest.load(forest_url(model_url), options) is not None else None
        except ValueForestError:
            previous = None
    if previous is not None:
        report, sha = previous
        return Trained(report["folds"], model_url, sha, report["final_model"], True)
    if exists(model_url, options) and not overwrite:
        raise RefusedError(
            f"{shown(model_url)} is a value model of other polygons, inputs or settings; pass --overwrite to replace it"
        )
    for name in FOLD_FILES:  # they describe the model about to be replaced
        (folder / name).unlink(missing_ok=True)
    from geoplantnet.models.value_forest import remove_forest

    remove_forest(model_url, options)  # a forest beside the model being replaced is of another training
    stack = features()
    folds = cross_validate(training, stack, labels, names, one_hot)
    final, seconds = fit(training, stack, labels.rasters.label, labels, names, one_hot)
    sha = final.save(model_url, options)
    trained = {**final.spec.trained, "seconds": round(seconds, 1), "version": final.version[:12]}
    trained["shipped"] = {"model": "unet", "unet_weight": 1.0}
    if training.settings.model != "unet":
        trained["shipped"] = ship_forest(training, stack, labels, names, one_hot, final, model_url, options)
    return Trained(folds, model_url, sha, trained, False)


def ship_forest(
    training: ValueTraining,
    stack: np.ndarray,
    labels: Labels,
    names: list[str],
    one_hot: list[str],
    final: ValueModel,
    model_url: str,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The final forest on every polygon's sampled pixels, saved beside the final U-Net with the shipped choice:
    ``forest`` (U-Net weight 0) or ``blend`` (the weight chosen on the inner split of all polygons,
    :func:`choose_weight`); what the report says of it."""
    from geoplantnet.models.value_forest import ValueForest, forest_url

    s = training.settings
    pixels = Pixels.sample(stack, labels, s)
    forest = pixels.forest(s, np.ones(len(pixels.y), bool))
    weight, chosen = 0.0, {}
    if s.model == "blend":
        weight, chosen = choose_weight(
            training, stack, labels.rasters.label, labels, pixels, names, one_hot, final
        )  # fmt: skip
    shipped = ValueForest(forest, tuple(names), final.spec.training_key, s.model, weight, chosen)
    sha = shipped.save(model_url, options)
    return {
        "model": s.model,
        "unet_weight": weight,
        **chosen,
        "forest": shown(forest_url(model_url)),
        "forest_sha256": sha,
    }
