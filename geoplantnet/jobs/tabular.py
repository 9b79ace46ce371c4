"""Species models from tables of extracted predictors (``geoplantnet sdm-table``): the deep model, MaxEnt and a random
forest fitted on the same rows, scored on independent presence-absence sites and/or spatial blocks.

Flow: :func:`~geoplantnet.samples.tables.read_tables` -> one training set per sharing unit (all species, a
biological group, or one species: ``table.share``) in the training-set contract -> every model fitted on it (the deep
model's early stopping on a block-based validation split of the training rows; the test sites are never seen before
scoring) -> predictions at the test sites -> per-species, per-group and overall tables, wins/losses against the
tuned MaxEnt (``maxent_tuned``: feature classes and beta chosen per species on spatial blocks of the training rows,
nested inside each cross-validation fold; else the default MaxEnt) and time per model
(:mod:`geoplantnet.validation.independent`). The fitted models are written to ``<out>/models/`` (``cnn[-<unit>].pt``,
``maxent[-<unit>].peer``, ``maxent_tuned[-<unit>].peer``, ``random_forest[-<unit>].peer``), listed in
``summary.json``; the tuned MaxEnt's choices per species are in its file's header (``tuning``).

Without a test table (or with ``table.cross_validate``), each unit is also cross-validated on spatial blocks of its
training rows, with the report of ``geoplantnet sdm`` (presence vs background: relative suitability).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from geoplantnet.core.config import RunConfig
from geoplantnet.reports.summary import write_summary
from geoplantnet.runs.context import RunContext
from geoplantnet.samples.tables import TableSamples, TestSites, read_tables
from geoplantnet.training.species import SpeciesTraining
from geoplantnet.validation import independent
from geoplantnet.validation.blocks import blocks_geodataframe, spatial_blocks
from geoplantnet.validation.report import model_summary, report_warnings, write_report
from geoplantnet.validation.species import CnnPeer, cross_validate_models, point_model
from geoplantnet.validation.table_models import (
    DEEP,
    block_size,
    fit_units,
    read_rows,
    safe_name,
    sharing_units,
    table_peer,
    unit_training_set,
)

log = logging.getLogger(__name__)


def run_table_sdm(
    cfg: RunConfig, out_dir: Path, client: Client, tables: tuple[TableSamples, TestSites | None] | None = None
) -> dict[str, Any]:
    """Fit and score every model of ``validation.models`` on the configured tables (``tables``: already read by
    :func:`~geoplantnet.samples.tables.read_tables`, as the command does before it starts a cluster); write the
    reports and models."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    samples, test = tables or read_tables(cfg.table)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = RunContext(cfg).species_training
    units = sharing_units(samples, cfg.table.share)
    block = block_size(settings, samples)
    models = [m for m in ("cnn", "maxent", "maxent_tuned", "random_forest") if m in cfg.validation.models]
    log.info(
        "%d species in %d unit(s), %d samples, blocks of %g m", len(samples.species), len(units), len(samples.x), block
    )
    out: dict[str, Any] = {
        "n_species": len(samples.species),
        "units": {u: len(s) for u, s in units.items()},
        "block_size_m": block,
        "share": cfg.table.share,
    }
    notes = [
        *samples.notes,
        *(test.notes if test is not None else []),
        f"deep model shared per {cfg.table.share} ({len(units)} network(s)); loss "
        f"{cfg.train.po_loss}, {cfg.train.scaling} scaling, ensemble of {cfg.train.ensemble}; early stopping on "
        f"a validation split of {block / 1000:g} km blocks of the training rows",
    ]
    if test is not None:
        out["independent"] = _independent(cfg, settings, samples, test, units, models, block, out_dir, client, notes)
    if test is None or cfg.table.cross_validate:
        out["cross_validation"] = {
            u: _cross_validate(cfg, settings, samples, species, block, out_dir / "cv" / safe_name(u), client, models)
            for u, species in units.items()
        }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return write_summary(out_dir / "summary.json", out)


def _independent(
    cfg: RunConfig,
    settings: SpeciesTraining,
    samples: TableSamples,
    test: TestSites,
    units: dict[str, list[str]],
    models: list[str],
    block: float,
    out_dir: Path,
    client: Client,
    notes: list[str],
) -> dict[str, Any]:
    n_sites = test.label.shape[0]
    fits = fit_units(settings, samples, test, units, models, block, out_dir, client)
    scores = independent.score_sites(fits.predictions, test.label, samples.species, samples.group_of)
    seconds = {k: round(v, 1) for k, v in fits.seconds.items()}
    # the reference for wins and losses: the tuned MaxEnt when run (the peer to beat), else the default one
    reference = next((m for m in ("maxent_tuned", "maxent") if m in models), models[0])
    report = independent.write_independent_report(
        scores,
        out_dir / "report",
        title=f"{cfg.name}: independent presence-absence test",
        models=models,
        reference=reference,
        challenger=DEEP,
        seconds=seconds,
        notes=[
            *notes,
            "trained on presence-only records and background: every model's output ranks relative "
            "suitability (what AUC measures); it is not a calibrated probability of presence",
            f"wall time per model (fit on all training rows + prediction at {n_sites} test sites, "
            f"seconds): {json.dumps(seconds)}",
        ],
    )
    return {
        "report": str(report),
        "models": independent.summary(scores, models, reference),
        "seconds": seconds,
        "model_files": fits.files,
        "n_test_sites": n_sites,
        "deep_training": fits.training_runs,
    }


def _cross_validate(
    cfg: RunConfig,
    settings: SpeciesTraining,
    samples: TableSamples,
    species: list[str],
    block: float,
    out_dir: Path,
    client: Client,
    models: list[str],
) -> dict[str, Any]:
    path = unit_training_set(samples, species, out_dir / "training.zarr", settings)
    x, y, labels, source, features = read_rows(path)
    rows = np.arange(len(x))
    folds = spatial_blocks(x, y, block, cfg.validation.folds, seed=cfg.validation.seed)
    cnn = CnnPeer(settings, path, client, out_dir / "cnn", x, y, block)
    peers = {
        name: (cnn, rows[:, None])  # the network itself: its folds train side by side (CnnPeer.fit_many)
        if name == DEEP
        else point_model(name, lambda n=name: table_peer(n, settings, client), features, x, y, block, cfg.validation)
        for name in models
    }
    results, timings = cross_validate_models(peers, labels, source, folds, cfg.validation, species)
    warnings = report_warnings(results)
    report = write_report(
        results,
        out_dir / "report",
        blocks_gdf=blocks_geodataframe(x, y, block, folds, crs=samples.crs),
        points=(x, y),
        title=f"{cfg.name}: spatial-block cross-validation on the training tables",
        notes=[
            *samples.notes,
            "presence-only records vs background: scores rank relative suitability, not probability of presence",
            f"wall time per model (all folds): {json.dumps(timings)}",
        ],
        warnings=warnings,
    )
    return {"report": str(report), "models": {n: model_summary(r) for n, r in results.items()}, "seconds": timings}
