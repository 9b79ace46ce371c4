"""``geoplantnet habitats classify``: a saved habitat classifier applied to a user's plot table, one row per plot.

Checked first, without torch (a bad input is one line and exit 2 in about a second): the classifier folder (its
``geoplantnet.json``: a classifier of a kind geoplantnet loads, not a fill-mask model nor a habitat map model on point
predictors), the fill-mask folder, the output table and its summary (new, or this command's own earlier ones with
``--overwrite``: ``storage.outputs``), and the plot table, read as ``habitats`` reads it
(:func:`geoplantnet.samples.plots.read_plots`, wide or long, CSV or Parquet; any habitat column ignored). Then the
classifier, whatever its kind (:func:`geoplantnet.models.habitat_classifier.load_classifier`), gives each plot's habitat
probabilities; the set rule is the maps' (:func:`geoplantnet.validation.conformal.class_sets`) with the radius saved
with the classifier; the fill-mask model ranks the species missing from each plot
(:func:`geoplantnet.models.plantbert.rank_missing_species`). The table (:func:`geoplantnet.inference.plots.plot_table`)
and a JSON summary beside it (``<out>.summary.json``) are written beside their names and renamed into place.

The fill-mask model is ``--fill-mask``, else the ``fill-mask`` folder beside the classifier's (``habitats`` saves
``<out>/model`` and ``<out>/fill-mask``) when there is one; without one, or with ``--missing 0``, no missing species.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from geoplantnet.core.config import RunConfig, redact, redact_text
from geoplantnet.models.habitat_classifier import (
    KIND_MODULES,
    LOADERS,
    ClassifierFolderError,
    conformal_of,
    load_classifier,
    read_meta,
)
from geoplantnet.samples.plots import Plots, PlotTableError, read_plots
from geoplantnet.samples.tables import write_table
from geoplantnet.storage.outputs import claim_file, write_file

KIND = "habitat classification table"
SUMMARY_KIND = "habitat classification summary"
FORMATS = (".csv", ".parquet")
FILL_MASK = "fill-mask"  # the kind of a fill-mask folder, and its folder name beside the classifier's


@dataclass
class ClassifySummary:
    """What a classify run wrote (printed as JSON and saved beside the table)."""

    out: str
    summary: str
    model: str
    kind: str
    version: str
    plots: int
    species: int  # species entries over all plots
    unknown_species: int  # of them, not in the classifier's vocabulary (None: the model does not say)
    unknown_share: float | None
    plots_with_unknown: int | None
    top_k: int
    conformal: dict[str, Any] | None  # {level, q, plots}, or None: no set column
    fill_mask: dict[str, str] | None  # {path, version}, or None: no missing species
    missing: int
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values, credentials in the model URLs (and notes naming them) redacted: what is printed
        and saved."""
        return {**redact(asdict(self)), "notes": [redact_text(n) for n in self.notes]}


@dataclass(frozen=True)
class ClassifyInputs:
    """The inputs of a classify run, read and checked before torch is imported."""

    model: str
    kind: str
    conformal: dict[str, Any] | None
    fill_mask: str | None
    plots: Plots
    out: Path
    summary: Path


def summary_path(out: Path) -> Path:
    """Where the summary of the table ``out`` goes: ``<out>.summary.json`` beside it."""
    return out.with_name(f"{out.name}.summary.json")


def _classifier_meta(model: str) -> tuple[str, dict[str, Any]]:
    fs, root = fsspec.core.url_to_fs(model)
    if "file" in fs.protocol and not Path(root).is_dir():
        what = "not a folder" if Path(root).exists() else "no such folder"
        raise ClassifierFolderError(f"{model}: {what} (--model: a habitat classifier folder)")
    meta = read_meta(model)
    kind = str(meta.get("kind", ""))
    if kind == FILL_MASK:
        raise ClassifierFolderError(
            f"{model}: a fill-mask model, not a habitat classifier (give --model <habitats out>/model; "
            "this folder goes to --fill-mask)"
        )
    if kind not in LOADERS and kind not in KIND_MODULES:
        raise ClassifierFolderError(f"{model}: a model of kind {kind!r}, not one geoplantnet can load")
    if kind == "map-forest" and meta.get("inputs") in ("predictors", "joint"):  # it needs each pixel's predictors
        raise ClassifierFolderError(f"{model}: a habitat map model on point predictors cannot classify plot tables")
    return kind, meta


def _fill_mask_folder(model: str, given: str | None, missing: int) -> str | None:
    """The fill-mask folder to use: ``given`` (checked), else the one beside the classifier's, else None."""
    if missing == 0:
        return None
    if given is None:
        folder = model.rstrip("/")
        beside = f"{folder.rsplit('/', 1)[0] if '/' in folder else '.'}/{FILL_MASK}"
        fs, root = fsspec.core.url_to_fs(beside)
        if not fs.exists(f"{root}/geoplantnet.json"):
            return None
        given = beside
    kind = str(read_meta(given).get("kind", ""))
    if kind != FILL_MASK:
        raise ClassifierFolderError(f"{given}: a model of kind {kind!r}, not a fill-mask model (--fill-mask)")
    return given


def check_classify(
    cfg: RunConfig, model: str, plots: Path, out: Path, *, fill_mask: str | None, missing: int, overwrite: bool
) -> ClassifyInputs:
    """Every input read and checked, the outputs claimed (check only): one-line errors, no torch."""
    model = os.fspath(model)
    kind, meta = _classifier_meta(model)
    conformal = conformal_of(meta, model)
    fill = _fill_mask_folder(model, fill_mask, missing)
    out = claim_file(out, KIND, overwrite=overwrite, suffixes=FORMATS)
    summary = claim_file(summary_path(out), SUMMARY_KIND, overwrite=overwrite, suffixes=(".json",))
    table = read_plots(plots, cfg.habitats, labels=False)
    if not len(table):
        raise PlotTableError(f"{plots}: no plot lists a species (column {cfg.habitats.species!r})")
    return ClassifyInputs(model, kind, conformal, fill, table, out, summary)


def run_classify(cfg: RunConfig, inputs: ClassifyInputs, *, top_k: int, missing: int) -> ClassifySummary:
    """Classify the checked plots with the saved classifier and write the table and its summary."""
    from geoplantnet.inference.plots import Missing, plot_table, ranked, unknown_counts
    from geoplantnet.runtime.devices import resolve_device
    from geoplantnet.validation.conformal import class_sets

    t0 = time.perf_counter()
    device = str(resolve_device(cfg.map.device))
    classifier = load_classifier(inputs.model, device)
    plots = inputs.plots
    proba = classifier.predict_proba(plots.sentences)
    notes = list(plots.notes)
    vocabulary = getattr(classifier, "vocabulary", None)
    if vocabulary is None:
        notes.append(f"a {inputs.kind} model does not say which species it knows: unknown_species is empty")
        unknown = None
    else:
        unknown = unknown_counts(plots.sentences, vocabulary)
    conformal, members = inputs.conformal, None
    if conformal is None:
        notes.append("the classifier was saved without a conformal calibration: no conformal_set column")
    else:
        members = class_sets(ranked(proba)[1], conformal["q"])
    fill = found = None
    if inputs.fill_mask is not None:
        from geoplantnet.models.plantbert import PlotModel, rank_missing_species

        fill_model = PlotModel.load(inputs.fill_mask, device)
        found = Missing(*rank_missing_species(fill_model, plots.sentences, missing))
        fill = {"path": inputs.fill_mask, "version": fill_model.version}
        if classifier.parent and classifier.parent != fill_model.version:
            notes.append(f"{inputs.fill_mask} is not the fill-mask model the classifier was fine-tuned from")
    elif missing:
        notes.append("no fill-mask model (--fill-mask, or a fill-mask folder beside the classifier's): no missing")
    id_column = cfg.habitats.plot
    frame = plot_table(
        plots,
        id_column,
        classifier.classes,
        classifier.names,
        proba,
        top_k,
        unknown,
        members,
        conformal["level"] if conformal else None,
        found,
    )
    write_file(inputs.out, KIND, lambda path: write_table(frame, path))
    total = int(frame["species"].sum())
    summary = ClassifySummary(
        out=str(inputs.out),
        summary=str(inputs.summary),
        model=inputs.model,
        kind=inputs.kind,
        version=classifier.version,
        plots=len(frame),
        species=total,
        unknown_species=int(unknown.sum()) if unknown is not None else None,
        unknown_share=round(float(unknown.sum()) / max(total, 1), 4) if unknown is not None else None,
        plots_with_unknown=int((unknown > 0).sum()) if unknown is not None else None,
        top_k=min(top_k, len(classifier.classes)),
        conformal=conformal,
        fill_mask=fill,
        missing=missing if fill is not None else 0,
        notes=notes,
        seconds=round(time.perf_counter() - t0, 1),
    )
    text = json.dumps(summary.to_dict(), indent=2, default=str)
    write_file(inputs.summary, SUMMARY_KIND, lambda path: path.write_text(text))
    return summary
