"""MaxEnt tuned per species as careful MaxEnt users tune it (ENMeval: Muscarella et al. 2014; Radosavljevic &
Anderson 2014): feature classes x regularisation (beta) multiplier, chosen on spatial blocks of the training rows.

For one species, every setting of the grid is fitted on all but one spatial fold of its training rows (presences vs
background + known absences, :func:`geoplantnet.models.peers.training_rows`) and scored by AUC on the held-out fold;
the setting with the best mean AUC over the held-out folds wins. Settings within ``tie`` (0.001) of the best count as
tied, and the simplest of them wins: the earliest feature classes of the grid (listed simplest first), then the
highest beta (the smoother model). Folds whose held-out part has no presence (or no absence), or whose fitting part
has no presence, are not used; a species with fewer than two usable folds is not tuned and gets elapid's defaults
(the untuned peer's setting), recorded as ``"default"``.

The search is dask-ml's :class:`dask_ml.model_selection.GridSearchCV` (``cv=`` the predefined spatial folds,
``scoring="roc_auc"``, ``scheduler=`` the run's Dask client): its fits are tasks on the cluster's workers. The
refit on all the training rows with the chosen setting is the peer's (:class:`~geoplantnet.models.peers.
TunedMaxentPeer`), one task per species like the other peers.

The grid (``validation.maxent_features`` x ``validation.maxent_betas``; defaults :data:`FEATURE_CLASSES` x
:data:`BETAS`): ENMeval's usual feature classes L, LQ, H, LQH, LQHP with betas 1, 2, 4 (ENMeval steps by 0.5 from 0.5
to 4: 8 betas instead of 3; two AWT species tuned on 0.5, 1, 2, 4 both chose 4). The cost, measured on the
NCEAS AWT tables (10,074 training rows of a species, 13 predictors, liblinear, one idle core): one fit takes 0.12 s
(L), 0.35 s (LQ), 1.1 s (H), 0.7-1.1 s (LQH), 0.8-1.2 s (LQHP), so 15 settings x 5 folds are about a minute of one
core per species. On 2 shared cores (load ~10), 6 AWT species took 712 s against 28 s for the default MaxEnt (test
AUC 0.685 vs 0.687); Bradypus (1 species, 1,100 rows, 9 layers) 49 s for its 5-fold cross-validation, nested.
Elith-style benchmarks of dozens of species with many folds: use a smaller grid (e.g. ``maxent_features=[L,LQ,LQH]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from geoplantnet.core.config import MAXENT_BETAS as BETAS
from geoplantnet.core.config import MAXENT_FEATURE_CLASSES as FEATURE_CLASSES  # simplest first: ties to the earliest

FEATURE_CLASS = {"L": "linear", "Q": "quadratic", "H": "hinge", "P": "product", "T": "threshold"}
TIE = 0.001  # mean AUCs closer than this to the best count as tied


def feature_types(code: str) -> list[str]:
    """elapid's feature types of a feature-class code such as ``"LQH"``."""
    unknown = sorted(set(code) - set(FEATURE_CLASS))
    if unknown or not code:
        raise ValueError(f"feature classes {code!r}: use letters of {''.join(FEATURE_CLASS)}")
    return [FEATURE_CLASS[c] for c in code]


def usable_splits(y: np.ndarray, groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fitting rows, held-out rows) per fold of ``groups`` where both parts can be fitted and scored."""
    splits = []
    for k in np.unique(groups):
        test = groups == k
        if y[test].any() and not y[test].all() and y[~test].any() and not y[~test].all():
            splits.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return splits


def choose(
    scores: Sequence[float], settings: Sequence[tuple[str, float]], classes: Sequence[str], tie: float = TIE
) -> int:
    """Index of the chosen setting: best mean AUC, ties (within ``tie``) to the earliest feature classes of
    ``classes``, then the highest beta."""
    s = np.asarray(scores, dtype=float)
    if not np.isfinite(s).any():
        raise ValueError("no setting could be scored")
    best = np.nanmax(s)
    tied = [i for i in range(len(s)) if np.isfinite(s[i]) and s[i] >= best - tie]
    return min(tied, key=lambda i: (classes.index(settings[i][0]), -settings[i][1]))


def tune_species(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    client: Any,
    classes: Sequence[str] = FEATURE_CLASSES,
    betas: Sequence[float] = BETAS,
    maxent_kwargs: dict[str, Any] | None = None,
    tie: float = TIE,
) -> dict[str, Any] | None:
    """The chosen setting of one species, ``{"features": code, "beta": b, "auc": mean held-out AUC, "folds": n}``,
    from dask-ml's grid search on ``client`` (``None``: the local threaded scheduler) over the spatial ``groups``;
    None when fewer than two folds are usable."""
    from dask_ml.model_selection import GridSearchCV
    from elapid import MaxentModel

    splits = usable_splits(y, groups)
    if len(splits) < 2:
        return None
    base = MaxentModel(**{"transform": "cloglog", "n_cpus": 1, **(maxent_kwargs or {})})
    grid = {"feature_types": [feature_types(c) for c in classes], "beta_multiplier": [float(b) for b in betas]}
    search = GridSearchCV(
        base,
        grid,
        cv=splits,
        scoring="roc_auc",
        refit=False,
        error_score=np.nan,  # a fold where a setting cannot be fitted counts as missing, not as a crash
        scheduler=client if client is not None else "threading",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear convergence chatter, as in the peers' own fits
        search.fit(X, y)
    res = search.cv_results_
    per_fold = np.array([res[f"split{k}_test_score"] for k in range(len(splits))], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a setting with no scored fold: NaN, never chosen
        mean = np.nanmean(per_fold, axis=0)
    code = {tuple(feature_types(c)): c for c in classes}
    settings = [(code[tuple(p["feature_types"])], float(p["beta_multiplier"])) for p in res["params"]]
    i = choose(mean, settings, list(classes), tie)
    return {"features": settings[i][0], "beta": settings[i][1], "auc": round(float(mean[i]), 4), "folds": len(splits)}


def chosen_kwargs(choice: dict[str, Any] | None) -> dict[str, Any]:
    """``MaxentModel`` settings of a choice (none for an untuned species: elapid's defaults)."""
    if choice is None:
        return {}
    return {"feature_types": feature_types(choice["features"]), "beta_multiplier": choice["beta"]}
