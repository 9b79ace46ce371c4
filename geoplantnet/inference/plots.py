"""A saved habitat classifier applied to a table of plots (``geoplantnet habitats classify``): the per-plot table.

One row per plot: its id, the ``top_k`` most probable habitats best first (``habitat_i``, ``probability_i``,
``name_i``: the model's names, empty where unknown), the conformal set where the classifier is calibrated
(``conformal_set``: its codes best first, joined by ``;``, and ``conformal_level``), the fill-mask model's most likely
missing species (``missing_i``, ``missing_probability_i``), then how many species the plot lists (``species``) and
how many of them the classifier's vocabulary does not know (``unknown_species``: counted, never an error). The
numbers come from the models (:func:`geoplantnet.models.plantbert.rank_missing_species`) and the set rule from
:func:`geoplantnet.validation.conformal.class_sets`; here they are only laid out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from geoplantnet.samples.plots import Plots, species_token


def ranked(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes of each row best first (n, classes; ties by class order) and their probabilities, sorted so."""
    order = np.argsort(-np.asarray(proba), axis=1, kind="stable")
    return order, np.take_along_axis(np.asarray(proba), order, axis=1)


def unknown_counts(sentences: Sequence[Sequence[str]], vocabulary: frozenset[str]) -> np.ndarray:
    """Per plot, how many of its species ``vocabulary`` (species tokens) does not hold."""
    return np.asarray([sum(species_token(s) not in vocabulary for s in sentence) for sentence in sentences], "int64")


@dataclass
class Missing:
    """The fill-mask model's most likely missing species per plot: tokens (n, M; ``""`` past the candidates) and
    their probabilities (n, M; NaN there)."""

    species: np.ndarray
    probability: np.ndarray


def plot_table(
    plots: Plots,
    id_column: str,
    classes: Sequence[str],
    names: Sequence[str],
    proba: np.ndarray,
    top_k: int,
    unknown: np.ndarray | None,
    members: np.ndarray | None = None,
    level: float | None = None,
    missing: Missing | None = None,
) -> pd.DataFrame:
    """The classify table of ``plots`` from the classifier's ``proba`` (n, classes); ``members``: the conformal set
    membership of the classes in :func:`ranked` order (None: not calibrated, no set columns); ``missing``: None
    without a fill-mask model (no missing-species columns); ``unknown``: None where the classifier does not say which
    species it knows (an empty column)."""
    order, sorted_p = ranked(proba)
    k = min(top_k, len(classes))
    codes = np.asarray(classes, dtype=object)[order]
    named = np.asarray(list(names) if len(names) == len(classes) else [""] * len(classes), dtype=object)[order]
    columns: dict[str, object] = {id_column: plots.ids}
    for i in range(k):
        columns[f"habitat_{i + 1}"] = codes[:, i]
        columns[f"probability_{i + 1}"] = sorted_p[:, i].astype("float64").round(6)
        columns[f"name_{i + 1}"] = named[:, i]
    if members is not None:
        columns["conformal_set"] = [";".join(row[keep]) for row, keep in zip(codes, members, strict=True)]
        columns["conformal_level"] = np.full(len(plots), level, dtype="float64")
    if missing is not None:
        for i in range(missing.species.shape[1]):
            # species as the table wrote them (tokens join a name's words with "_")
            columns[f"missing_{i + 1}"] = [str(t).replace("_", " ") for t in missing.species[:, i]]
            columns[f"missing_probability_{i + 1}"] = missing.probability[:, i].astype("float64").round(6)
    columns["species"] = np.asarray([len(s) for s in plots.sentences], dtype="int64")
    columns["unknown_species"] = unknown if unknown is not None else pd.array([pd.NA] * len(plots), dtype="Int64")
    return pd.DataFrame(columns)
