"""The habitat map's model, trained on what it will see and chosen on spatial folds.

A habitat map classifies pixels from their *predicted* assemblage (species.zarr) and their point predictors, never
from a surveyed plot list. So the map model is fitted at the labelled plots on:

- the species model's **cross-fitted** predicted assemblage there (:func:`cross_fitted_assemblages`: the species
  network of the run's recipe fitted on the spatial folds of the species cross-validation, ``validation.*``, each
  presence-absence survey predicted by the network that did not see its block: the out-of-fold predictions ``sdm``
  scores), as a probability vector per species on the pixels' scale (calibrated as ``species.zarr`` is:
  :meth:`PlotAssemblages.calibrated`; a forest's thresholds hold only on the scale it was fitted on);
- the pixel's point predictors (:class:`geoplantnet.inference.map_inputs.PixelPredictors`, the direct forest's rows).

Three candidates on the **same spatial folds** (the plots' folds of the cross-fit): ``assemblage`` (the cascade on
predicted assemblages), ``predictors`` (the direct random forest) and ``joint`` (a stack: the predictors and the
assemblage forest's class probabilities, out of fold on the training folds); the best mean level-``level``
accuracy over the folds is the map's model unless a setting names one (:func:`choose_map_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree

from geoplantnet.core.config import ConfigError
from geoplantnet.models.calibration import Calibration, calibrate
from geoplantnet.models.map_forest import MapForest, MapInputs
from geoplantnet.validation.blocks import spatial_blocks
from geoplantnet.validation.metrics import cross_validate

if TYPE_CHECKING:
    from distributed import Client

    from geoplantnet.training.species import SpeciesTraining

CANDIDATES: tuple[MapInputs, ...] = ("predictors", "joint", "assemblage")  # on a tie the first wins (fewest reads)


@dataclass
class PlotAssemblages:
    """The species model's out-of-fold predictions at the presence-absence surveys of its training set."""

    x: np.ndarray
    y: np.ndarray
    species: list[str]
    prob: np.ndarray  # (surveys, species) out of fold
    folds: np.ndarray  # the spatial fold of each survey

    def at(self, x: np.ndarray, y: np.ndarray, within: float) -> tuple[np.ndarray, np.ndarray]:
        """The assemblage (n, S) and fold (n,) of the survey at each point (nearest, at most ``within`` away); NaN and
        -1 where there is none."""
        prob = np.full((len(x), len(self.species)), np.nan, np.float32)
        folds = np.full(len(x), -1)
        if len(self.x):
            dist, idx = cKDTree(np.c_[self.x, self.y]).query(np.c_[x, y])
            ok = dist <= within
            prob[ok], folds[ok] = self.prob[idx[ok]], self.folds[idx[ok]]
        return prob, folds

    def calibrated(self, calibration: Calibration | None, species: list[str]) -> PlotAssemblages:
        """The assemblages on the scale of the map's pixels: ``species.zarr`` holds the species model's calibrated
        probabilities when its file carries a ``calibration`` (of the model's ``species``, matched by name), so the
        map's model trains on the same; species the model lacks, or no calibration, stay as they are."""
        if calibration is None:
            return self
        at = {s: i for i, s in enumerate(species)}
        mine = [j for j, s in enumerate(self.species) if s in at]
        theirs = [at[self.species[j]] for j in mine]
        full = np.full((len(self.prob), len(species)), 0.5, np.float32)
        full[:, theirs] = self.prob[:, mine]
        prob = np.array(self.prob, np.float32)
        prob[:, mine] = calibrate(full, calibration)[:, theirs]
        return replace(self, prob=prob)


def cross_fitted_assemblages(settings: SpeciesTraining, inputs: Any, out_dir: Path, client: Client) -> PlotAssemblages:
    """Cross-fit the species network of ``settings`` on ``inputs``' observations (the folds of ``sdm``: blocks of
    the training set's block size, ``validation.folds``, ``validation.seed``) and keep its out-of-fold predictions
    at the presence-absence surveys. The networks of each fold train side by side on the cluster."""
    from geoplantnet.validation.species import CnnPeer, prepare_samples

    data = prepare_samples(settings, inputs, out_dir, client)
    v = settings.validation
    folds = spatial_blocks(data.x, data.y, data.block, v.folds, seed=v.seed)
    cnn = CnnPeer(settings, data.path, client, Path(out_dir) / "cnn", data.x_all, data.y_all, data.block)
    result = cross_validate(cnn, data.rows[:, None], data.labels, data.source, folds, cfg=v, species=data.species)
    pa = np.asarray(data.source).astype(str) == "pa"
    return PlotAssemblages(data.x[pa], data.y[pa], list(data.species), result["oof"][pa], folds[pa])


def _accuracy(model: MapForest, A: np.ndarray | None, X: np.ndarray | None, labels: np.ndarray) -> float:
    p = model.predict_rows(A, X)
    return float(np.mean(np.asarray(model.classes)[p.argmax(axis=1)] == labels))


def compare_map_models(
    assemblage: np.ndarray,
    predictors: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    candidates: tuple[MapInputs, ...] = CANDIDATES,
    trees: int = 300,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Each candidate fitted on the other folds and scored (accuracy) on each fold; per candidate the fold scores
    and their mean."""
    out: dict[str, dict[str, Any]] = {}
    ids = [int(k) for k in np.unique(folds)]
    for inputs in candidates:
        scores = []
        for k in ids:
            test = folds == k
            if test.all() or len(np.unique(labels[~test])) < 2:
                continue
            train = ~test
            model = MapForest.fit(
                inputs, assemblage[train], predictors[train], labels[train], folds=folds[train], trees=trees, seed=seed
            )
            scores.append(_accuracy(model, assemblage[test], predictors[test], labels[test]))
        out[inputs] = {"accuracy": round(float(np.mean(scores)), 4) if scores else float("nan"), "folds": scores}
    return out


def choose_map_model(scores: dict[str, dict[str, Any]], setting: str = "auto") -> tuple[MapInputs, dict[str, Any]]:
    """The map's model: the setting's, or (``auto``) the best mean fold accuracy; and what the choice says (the
    winner, its margin over the runner-up and over the direct forest, every candidate's mean)."""
    means = {k: v["accuracy"] for k, v in scores.items()}
    ranked = sorted((k for k in means if np.isfinite(means[k])), key=lambda k: -means[k])  # stable: CANDIDATES order
    if setting == "auto" and not ranked:
        raise ConfigError(
            "no candidate of the habitat map's model could be scored on the spatial folds: too few labelled plots "
            "across folds (every fold held all of them or one habitat only); set habitats.map_model to a candidate"
        )
    chosen: MapInputs = ranked[0] if setting == "auto" else setting  # type: ignore[assignment]
    others = [k for k in ranked if k != chosen]
    return chosen, {
        "chosen": chosen,
        "by": "setting" if setting != "auto" else "best mean accuracy on the spatial folds",
        "fold_accuracy": means,
        "margin_over_next": round(means[chosen] - means[others[0]], 4) if others else None,
        "margin_over_direct_forest": round(means[chosen] - means.get("predictors", np.nan), 4),
        "folds": {k: [round(s, 4) for s in v["folds"]] for k, v in scores.items()},
    }
