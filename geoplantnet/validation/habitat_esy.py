"""EUNIS-ESy (:mod:`geoplantnet.models.esy`, Chytrý et al. 2020) as the expert-system peer of the habitat classifiers.

The expert system is not trained: it classifies every labelled plot once, from the plot's species covers
(:attr:`Plots.covers`) and header fields (``habitats.esy_header`` columns, ``habitats.esy_constants``), and each
fold's test plots are scored as the models' are (:func:`esy_fold_rows`, one ``eunis_esy`` row per fold). Its answer
is one code, so it has no top-3. A code above the trained level (``R`` where level 3 is scored), ``?`` (no formula
holds) and ``+`` (a tie) count as wrong at top-1 unless the truth is that very code; the three are reported as shares
of the test plots (``esy_above_level``, ``esy_undecided``, ``esy_tie``). Level-2/level-1 accuracy cuts the codes.

Everything here is checked when the plots are read (:func:`expert_system`, :func:`esy_codes`), before any model
trains: a bad definition file, an unknown header field or a table without covers is one line.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from geoplantnet.core.config import HabitatsConfig
from geoplantnet.core.errors import ConfigError
from geoplantnet.models.esy import NO_MATCH, TIE, ExpertSystem, normalize_taxon_name
from geoplantnet.samples.plots import Plots, PlotTableError, eunis_ancestor, eunis_level
from geoplantnet.training.habitats import HabitatData, habitat_classes
from geoplantnet.validation.habitat_folds import inner_split

MODEL = "eunis_esy"


def expert_system(h: HabitatsConfig) -> ExpertSystem:
    """Parse ``habitats.esy`` and check that every field named in ``esy_header`` / ``esy_constants`` is one its
    formulas read."""
    system = ExpertSystem.from_file(str(h.esy))
    for setting, fields in (("esy_header", h.esy_header), ("esy_constants", h.esy_constants)):
        for name in fields:
            if system.header_field(name) is None:
                raise ConfigError(
                    f"habitats.{setting}: {name!r} is not a header field of {h.esy} "
                    f"(its formulas read {', '.join(system.header_fields)})"
                )
    return system


def esy_codes(system: ExpertSystem, plots: Plots, h: HabitatsConfig, where: str) -> tuple[np.ndarray, list[str]]:
    """EUNIS-ESy's code for every plot of ``plots`` (``?``/``+`` where undecided) and notes for the report."""
    if plots.covers is None:
        raise PlotTableError(
            f"{where}: habitats.esy needs species covers, and this table lists species without them; give a long "
            "table (one row per plot x species) with habitats.cover"
        )
    n = len(plots)
    long = pd.DataFrame(
        {
            "plot": np.repeat(np.arange(n), [len(s) for s in plots.sentences]),
            "taxon": [t for s in plots.sentences for t in s],
            "cover": np.concatenate([*plots.covers, np.zeros(0)]),
        }
    )
    header = pd.DataFrame(index=pd.RangeIndex(n))
    if plots.header is not None:
        for name, column in h.esy_header.items():
            header[system.header_field(name)] = plots.header[column].to_numpy()
    for name, value in h.esy_constants.items():
        header[system.header_field(name)] = value
    synonyms = {normalize_taxon_name(k): v for k, v in h.esy_synonyms.items()}
    codes = system.classify(long, header, synonyms=synonyms)
    unmatched = codes.attrs.get("unmatched_taxa", [])
    known = {normalize_taxon_name(t) for t in long["taxon"]}
    notes = [
        f"EUNIS-ESy ({h.esy}): {len(unmatched)} of {len(known)} taxa of the labelled plots are not named by the "
        "system (they count in total covers only; habitats.esy_synonyms renames them)"
    ]
    missing = [f for f in system.header_fields if f not in header.columns]
    if missing:
        notes.append(
            f"EUNIS-ESy header fields not given (a number reads as 0, a category matches nothing): {', '.join(missing)}"
        )
    return codes.reindex(pd.RangeIndex(n)).to_numpy(dtype=object), notes


def load_esy(data: HabitatData, system: ExpertSystem, h: HabitatsConfig, where: str, named: bool) -> None:
    """Classify ``data.labelled`` with ``system`` (:func:`expert_system`) into ``data.esy``, its notes into
    ``data.notes``; plots whose species carry no names (``named=False``: the virtual region's) get no ESy row, and
    the notes say so."""
    if not named:
        data.notes.append(f"EUNIS-ESy (habitats.esy) not scored: the species of {where} have no names")
        return
    data.esy, notes = esy_codes(system, data.labelled, h, where)
    data.notes.extend(notes)


def code_shares(codes: np.ndarray, level: int) -> dict[str, float]:
    """The shares of undecided (``?``), tied (``+``) and above-``level`` answers among ``codes``."""
    decided = (codes != NO_MATCH) & (codes != TIE)
    above = np.asarray([bool(d) and eunis_level(str(c)) < level for c, d in zip(codes, decided, strict=True)])
    return {
        "esy_undecided": float(np.mean(codes == NO_MATCH)),
        "esy_tie": float(np.mean(codes == TIE)),
        "esy_above_level": float(np.mean(above)),
    }


def esy_fold_rows(data: HabitatData, folds: np.ndarray, h: HabitatsConfig) -> list[dict[str, Any]]:
    """One ``eunis_esy`` row per fold: ESy's codes on the fold's test plots scored as the models' are."""
    from geoplantnet.validation.habitats import code_scores

    if data.esy is None:
        return []
    labelled = data.labelled
    codes = np.asarray([eunis_ancestor(str(c), h.level) for c in data.esy], dtype=object)
    rows = []
    for k in range(h.folds):
        t0 = time.perf_counter()
        test = folds == k
        fit, _ = inner_split(labelled, ~test, h)  # the models' classes of this fold, for the untrained share
        classes = habitat_classes(labelled.habitat[fit], h)
        scores = code_scores(labelled.habitat[test], codes[test], classes, h.level)
        rows.append(
            {
                "fold": k,
                "model": MODEL,
                **scores,
                "fit_seconds": 0.0,
                "predict_seconds": time.perf_counter() - t0,
                "classes": len(classes),
                **code_shares(data.esy[test], h.level),
            }
        )
    return rows
