"""Species distribution modelling job: observations -> training set -> spatial-block CV of the CNN, MaxEnt and a random
forest on the same folds -> Markdown + PNG report.

Inputs are either the virtual region (with its true probabilities, so every model is also scored against the truth) or
a user's observations file and predictor rasters (any CRS), with or without Sentinel-2 from a STAC API.

After the cross-validation, each model is fitted once more on every kept sample, for mapping, into ``<out>/models/``:
``cnn.pt`` (the species network; early stopping on a block-based validation split carved from the samples, as in each
fold), ``maxent.peer``, ``maxent_tuned.peer`` (MaxEnt tuned per species on spatial blocks of the training rows: nested
inside each fold) and ``random_forest.peer`` (:meth:`geoplantnet.models.peers.MaxentPeer.save` files). The
cross-validation does not depend on them: its folds and numbers are those of a run without them. Their specs then get
the calibration and thresholds chosen on the cross-validation's out-of-fold predictions
(:mod:`geoplantnet.validation.calibration`; also ``<out>/models/thresholds.csv``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from geoplantnet.core.config import RunConfig
from geoplantnet.reports.summary import write_summary
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.inputs import Inputs
from geoplantnet.training.species import truth_at
from geoplantnet.validation.blocks import blocks_geodataframe, spatial_blocks
from geoplantnet.validation.calibration import CalibrationOutcome, calibration_markdown
from geoplantnet.validation.report import informative_folds, model_summary, report_warnings, write_report
from geoplantnet.validation.species import (
    CnnPeer,
    calibrate_models,
    cross_validate_models,
    fit_final_models,
    point_model,
    point_peer,
    prepare_samples,
)

log = logging.getLogger(__name__)


def run_sdm(cfg: RunConfig, inputs: Inputs, out_dir: Path, client: Client) -> dict[str, Any]:
    """Build the training set, cross-validate every model on spatial blocks, write the report; return the summary."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    settings = RunContext(cfg).species_training
    grid = cfg.grid.grid()
    obs = inputs.observations
    data = prepare_samples(settings, inputs, out_dir, client)
    path, rows, block, species = data.path, data.rows, data.block, data.species
    x, y, labels, source, features = data.x, data.y, data.labels, data.source, data.features
    x_all, y_all, extract_s = data.x_all, data.y_all, data.extract_seconds
    folds = spatial_blocks(x, y, block, cfg.validation.folds, seed=cfg.validation.seed)
    truth = truth_at(inputs.truth, grid, x, y, species) if inputs.truth is not None else None
    log.info("%d samples, %d species, %g m blocks, %d folds", len(x), len(species), block, cfg.validation.folds)

    cnn = CnnPeer(settings, path, client, out_dir / "cnn", x_all, y_all, block)
    peers: dict[str, tuple[Any, np.ndarray]] = {
        "cnn": (cnn, rows[:, None]),
        **{
            name: point_model(
                name,
                lambda n=name: point_peer(n, cfg.validation, client, cfg.train.seed),
                features,
                x,
                y,
                block,
                cfg.validation,
            )
            for name in ("maxent", "maxent_tuned", "random_forest")
        },
    }
    chosen = {name: peer for name, peer in peers.items() if name in cfg.validation.models}
    results, timings = cross_validate_models(chosen, labels, source, folds, cfg.validation, species, truth)

    epoch_s = [s for run in cnn.runs for s in run.epoch_seconds] or [float("nan")]
    # after the folds (whose numbers must not depend on it): every model once more on all kept samples, for maps
    model_files, final_s = fit_final_models(settings, data, out_dir, client, [n for n in peers if n in results])
    finals = ", ".join(f"{k}: {os.path.relpath(v, out_dir)} ({final_s[k]:g} s)" for k, v in model_files.items())
    calibration, thresholds_csv = calibrate_models(
        settings, results, labels, source, folds, species, model_files, out_dir
    )
    device = cnn.runs[0].device if cnn.runs else "-"
    n_params = cnn.runs[0].n_parameters if cnn.runs else 0
    notes = [
        f"{len(x)} samples ({', '.join(f'{k}: {int((source == k).sum())}' for k in ('pa', 'po', 'bg'))}), "
        f"{len(species)} species, blocks of {block:g} m, {cfg.validation.folds} folds "
        f"({informative_folds(next(iter(results.values()))) if results else 0} informative); "
        f"{data.n_dropped} samples without predictor data dropped",
        f"{data.records_moved} records moved to the nearest valid cell (<= {cfg.train.nearest_valid_cells} cells), "
        f"{data.records_dropped} dropped",
        f"observations: {obs.summary()}",
        f"CNN: {np.mean(epoch_s):.2f} s per epoch on {device} ({n_params} parameters); extraction {extract_s:.1f} s",
        f"wall time per model (all folds): {json.dumps(timings)}",
        f"final models on all kept samples, for maps: {finals or 'none'}",
        *_calibration_notes(calibration, thresholds_csv, out_dir),
        *inputs.notes,
    ]
    warnings = report_warnings(results) if results else []
    for line in warnings:
        log.warning("%s", line)
    report = write_report(
        results,
        out_dir / "report",
        blocks_gdf=blocks_geodataframe(x, y, block, folds, crs=grid.epsg),
        points=(x, y),
        title=f"{cfg.name}: CNN vs MaxEnt vs random forest on spatial blocks",
        notes=notes,
        warnings=warnings,
        sections=calibration_markdown(calibration, model_files),
    )
    out = {
        "report": str(report),
        "training_set": path,
        "block_size_m": block,
        "n_samples": len(x),
        "n_species": len(species),
        "cnn_seconds_per_epoch": float(np.mean(epoch_s)),
        "cross_validation_seconds": timings,  # wall time per model, all folds (the CNN's trained side by side)
        "seconds": round(time.perf_counter() - t0, 1),
        "warnings": warnings,
        "models": {name: model_summary(r) for name, r in results.items()},
        "model_files": model_files,
        "calibration": {name: {**o.table, "outputs": o.scale} for name, o in calibration.items()},
        "thresholds_file": thresholds_csv,
    }
    return write_summary(out_dir / "summary.json", out)


def _calibration_notes(outcomes: dict[str, CalibrationOutcome], csv: str | None, out_dir: Path) -> list[str]:
    if not outcomes:
        return []
    scales = "; ".join(sorted({o.scale for o in outcomes.values()}))
    where = os.path.relpath(csv, out_dir) if csv else "-"
    return [f"outputs: {scales}; per-species thresholds (max TSS, observed prevalence) in the model files and {where}"]
