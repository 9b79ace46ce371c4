"""The tables an indicator run reads (:class:`IndicatorInputs`) and what they decide: the count groups of the map's
species (status tables and policy lists matched by name), the habitat classes' Red List categories and typical
species (from the labelled plots the classifier learned from), and their digest in the run's fingerprint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoplantnet.core.config import IndicatorsConfig
from geoplantnet.core.hashing import fingerprint
from geoplantnet.products.indicators.model import RED_LIST, HabitatIndicatorModel, typical_species
from geoplantnet.samples import status as status_tables
from geoplantnet.samples.plots import Plots
from geoplantnet.validation.conformal import class_index, presence_matrix


@dataclass(frozen=True)
class IndicatorInputs:
    """The tables an indicator run reads: status sources (the species table is matched to a map's species later;
    the lists are read), surveys to calibrate on, labelled plots for typical species (the habitat classifier's)."""

    status: str | None
    invasive_names: tuple[str, ...] | None  # the EU invasive list's names
    protected_names: tuple[str, ...] | None  # the Habitats Directive checklist's names
    habitat_red_list: status_tables.HabitatRedList | None
    surveys: Plots | None
    reference_plots: Plots | None


def _report(rep: status_tables.MatchReport) -> dict[str, Any]:
    """A match report for the run summary: counts and the first unmatched rows (the species list can be long)."""
    return {
        "summary": rep.summary(),
        "rows": rep.rows,
        "matched": rep.matched,
        "unmatched": rep.unmatched[:50],
        "species_without_row": len(rep.species_without_row),
    }


def species_groups(
    inputs: IndicatorInputs, species: list[str], names: list[str] | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Group masks and the reports of the name matching: richness always; invasive, threatened and protected when a
    status table is given (it speaks for all three: a column it lacks flags nobody), invasive or protected also when
    the EU list or the Habitats Directive checklist is."""
    groups: dict[str, np.ndarray] = {"richness": np.ones(len(species), dtype=bool)}
    report: dict[str, Any] = {}
    given: set[str] = set()
    if inputs.status is not None:
        st = status_tables.read_species_status(inputs.status, species, names)
        given |= {"invasive", "threatened", "protected"}
        report["status_table"] = _report(st.report)
    else:
        st = status_tables.SpeciesStatus.empty(species, names)
    lists: dict[str, tuple[str, ...]] = {}
    if inputs.invasive_names is not None:
        lists["invasive"] = inputs.invasive_names
    if inputs.protected_names is not None:
        lists["protected"] = inputs.protected_names
    if lists:
        before = len(st.reports)
        st = status_tables.add_policy_lists(st, **lists)
        given |= set(lists)
        for rep in st.reports[before:]:
            report[f"list: {rep.source}"] = _report(rep)
    for g in ("invasive", "threatened", "protected"):
        if g in given:
            groups[g] = np.asarray(getattr(st, g), dtype=bool)
            report[f"{g}_species"] = int(groups[g].sum())
    return groups, report


def habitat_model(
    inputs: IndicatorInputs, classes: list[str], species: list[str], settings: IndicatorsConfig, radius: float
) -> tuple[HabitatIndicatorModel, dict[str, Any]]:
    """Red List categories and typical species of the habitat map's classes."""
    report: dict[str, Any] = {}
    red = np.full(len(classes), -1, dtype="int8")
    if inputs.habitat_red_list is not None:
        st = status_tables.habitat_status(classes, inputs.habitat_red_list)
        red = np.asarray([RED_LIST.index(c) if c in RED_LIST else -1 for c in st.category], dtype="int8")
        report["habitat_red_list"] = {
            "classes": len(classes),
            "from_ancestor": st.from_ancestor,
            "missing": st.missing,
            "threatened": [c for c, t in zip(classes, st.threatened, strict=True) if t],
        }
    typical = np.zeros((len(classes), len(species)), dtype=bool)
    reference = np.full(len(classes), np.nan)
    if inputs.reference_plots is not None:
        ref = inputs.reference_plots
        labels = class_index(ref.habitat, classes)
        typical, reference = typical_species(
            presence_matrix(ref, species),
            labels,
            len(classes),
            top=settings.typical_species,
            min_phi=settings.min_phi,
        )
        report["typical_species"] = {
            "plots": int((labels >= 0).sum()),
            "classes_with_typical_species": int(np.isfinite(reference).sum()),
            "classes": len(classes),
        }
    return HabitatIndicatorModel(tuple(classes), red, typical, reference, radius), report


def digest(inputs: IndicatorInputs, groups: Mapping[str, np.ndarray], hab: HabitatIndicatorModel | None) -> str:
    """What the tables decided (which species in which group, each class's category and typical species)."""
    parts: dict[str, Any] = {g: np.flatnonzero(m).tolist() for g, m in groups.items() if g != "richness"}
    if hab is not None:
        parts["red_list"] = hab.red_list.tolist()
        parts["typical"] = [np.flatnonzero(t).tolist() for t in hab.typical]
        parts["reference"] = [None if not np.isfinite(r) else round(float(r), 6) for r in hab.reference]
    return fingerprint(parts)[:16]
