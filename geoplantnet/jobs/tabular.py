"""Species models from tables of extracted predictors (``geoplantnet sdm-table``): the deep model, MaxEnt and a random
forest fitted on the same rows, scored on independent presence-absence sites and/or spatial blocks.

Flow: :func:`~geoplantnet.samples.tables.read_tables` -> one training set per sharing unit (all species, a
biological group, or one species: ``table.share``) in the training-set contract -> every model fitted on it (the deep
model's early stopping on a block-based validation split of the training rows; the test sites are never seen before
scoring) -> predictions at the test sites -> per-species, per-group and overall tables, wins/losses against MaxEnt
and time per model (:mod:`geoplantnet.validation.independent`). The fitted models are written to ``<out>/models/``
(``cnn[-<unit>].pt``, ``maxent[-<unit>].peer``, ``random_forest[-<unit>].peer``), listed in ``summary.json``.

Without a test table (or with ``table.cross_validate``), each unit is also cross-validated on spatial blocks of its
training rows, with the report of ``geoplantnet sdm`` (presence vs background: relative suitability).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from geoplantnet.core.config import RunConfig
from geoplantnet.jobs.sdm import CnnPeer, _json_safe, _model_summary
from geoplantnet.models.peers import MaxentPeer, RandomForestPeer
from geoplantnet.samples.tables import TableSamples, TestSites, read_tables
from geoplantnet.samples.training_set import open_training_set
from geoplantnet.validation import independent
from geoplantnet.validation.blocks import blocks_geodataframe, choose_block_size, spatial_blocks
from geoplantnet.validation.metrics import cross_validate
from geoplantnet.validation.report import report_warnings, write_report

log = logging.getLogger(__name__)
DEEP = "cnn"  # the project's network keeps the name it has in `geoplantnet sdm` (here an MLP on the table's columns)
_SHUFFLE_SEED = 20_241_219


def sharing_units(samples: TableSamples, share: str) -> dict[str, list[str]]:
    """Species per deep model: ``region`` (one for all), ``group`` (one per biological group), ``species``."""
    if share == "region" or (share == "group" and not any(samples.group_of.values())):
        return {"all": list(samples.species)}
    if share == "group":
        units: dict[str, list[str]] = {}
        for s in samples.species:
            units.setdefault(samples.group_of[s], []).append(s)
        return units
    return {s: [s] for s in samples.species}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "unit"


def _peer(name: str, cfg: RunConfig, client: Client) -> Any:
    # 500 trees: the forest of the NCEAS peers' reference runs (Valavi et al. 2022 use 500 too)
    if name == "maxent":
        return MaxentPeer(client=client, seed=cfg.train.seed, min_presences=2)
    return RandomForestPeer(client=client, seed=cfg.train.seed, n_estimators=500, min_presences=2)


def block_size(cfg: RunConfig, samples: TableSamples) -> float:
    """``validation.block_size_m`` or the predictors' autocorrelation range (candidate sizes in 1/50 of the extent)."""
    if cfg.validation.block_size_m:
        return float(cfg.validation.block_size_m)
    extent = max(float(np.ptp(samples.x)), float(np.ptp(samples.y)))
    step = max(1000.0, round(extent / 50, -3))
    feats = np.nan_to_num(samples.features[:, : min(8, samples.features.shape[1])])
    return float(choose_block_size(samples.x, samples.y, feats, folds=cfg.validation.folds, step=step))


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
    units = sharing_units(samples, cfg.table.share)
    block = block_size(cfg, samples)
    models = [m for m in ("cnn", "maxent", "random_forest") if m in cfg.validation.models]
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
        out["independent"] = _independent(cfg, samples, test, units, models, block, out_dir, client, notes)
    if test is None or cfg.table.cross_validate:
        out["cross_validation"] = {
            u: _cross_validate(cfg, samples, species, block, out_dir / "cv" / _safe(u), client, models)
            for u, species in units.items()
        }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out = _json_safe(out)
    (out_dir / "summary.json").write_text(json.dumps(out, indent=2, allow_nan=False))
    return out


def _training_set(samples: TableSamples, species: list[str], path: Path, cfg: RunConfig) -> str:
    # rows shuffled once: batches then mix records and background, which the DeepMaxent normaliser needs
    return samples.write(path, species, attrs=cfg.to_attrs(), shuffle_seed=_SHUFFLE_SEED)


def _read_rows(path: str) -> tuple[np.ndarray, ...]:
    """x, y, labels, source, features of a written training set, in its (shuffled) row order."""
    ds = open_training_set(path)
    source = np.array([str(s) for s in ds["source"].values])  # StringDType does not cast to fixed-width str
    return ds["x"].values, ds["y"].values, ds["label"].values, source, ds["env_point"].values


def _independent(
    cfg: RunConfig,
    samples: TableSamples,
    test: TestSites,
    units: dict[str, list[str]],
    models: list[str],
    block: float,
    out_dir: Path,
    client: Client,
    notes: list[str],
) -> dict[str, Any]:
    n_sites, n_species = test.label.shape
    predictions = {m: np.full((n_sites, n_species), np.nan, "float32") for m in models}
    seconds = dict.fromkeys(models, 0.0)
    files: dict[str, str] = {}
    training_runs: dict[str, list[dict[str, Any]]] = {}
    for unit, species in units.items():
        tag = "" if len(units) == 1 else f"-{_safe(unit)}"
        work = out_dir / "units" / _safe(unit)
        path = _training_set(samples, species, work / "training.zarr", cfg)
        test_path = test.write(work / "test.zarr", species, samples.species, samples.feature_names)
        cols = [samples.species.index(s) for s in species]
        x, y, labels, source, features = _read_rows(path)
        rows = np.arange(len(x))
        for name in models:
            t = time.perf_counter()
            if name == DEEP:
                cnn = CnnPeer(cfg, path, client, out_dir / "cnn" / _safe(unit), x, y, block, run_name="final")
                cnn.fit(rows[:, None], labels, source)
                training_runs[unit] = [
                    {
                        "epochs": r.epochs_run,
                        "best_epoch": r.best_epoch,
                        "monitor": r.monitor,
                        "best_score": r.best_score,
                        "seconds_per_epoch": float(np.mean(r.epoch_seconds)),
                        "device": r.device,
                    }
                    for r in cnn.runs
                ]
                predictions[name][:, cols] = cnn.predict_at(test_path, np.arange(n_sites))
                files[f"{name}{tag}"] = cnn.save(out_dir / "models" / f"cnn{tag}.pt")
            else:
                peer = _peer(name, cfg, client).fit(features, labels, source)
                predictions[name][:, cols] = peer.predict_proba(test.features)
                files[f"{name}{tag}"] = peer.save(
                    out_dir / "models" / f"{name}{tag}.peer",
                    species=species,
                    variables=samples.feature_names,
                )
            seconds[name] += time.perf_counter() - t
            log.info("%s on %s: %.0f s", name, unit, time.perf_counter() - t)
    scores = independent.score_sites(predictions, test.label, samples.species, samples.group_of)
    seconds = {k: round(v, 1) for k, v in seconds.items()}
    reference = "maxent" if "maxent" in models else models[0]
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
        "model_files": files,
        "n_test_sites": n_sites,
        "deep_training": training_runs,
    }


def _cross_validate(
    cfg: RunConfig,
    samples: TableSamples,
    species: list[str],
    block: float,
    out_dir: Path,
    client: Client,
    models: list[str],
) -> dict[str, Any]:
    path = _training_set(samples, species, out_dir / "training.zarr", cfg)
    x, y, labels, source, features = _read_rows(path)
    rows = np.arange(len(x))
    folds = spatial_blocks(x, y, block, cfg.validation.folds, seed=cfg.validation.seed)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in models:
        t = time.perf_counter()
        if name == DEEP:
            cnn = CnnPeer(cfg, path, client, out_dir / "cnn", x, y, block)
            results[name] = cross_validate(
                lambda c=cnn: c, rows[:, None], labels, source, folds, cfg=cfg.validation, species=species
            )
        else:
            results[name] = cross_validate(
                lambda n=name: _peer(n, cfg, client),
                features,
                labels,
                source,
                folds,
                cfg=cfg.validation,
                species=species,
            )
        timings[name] = round(time.perf_counter() - t, 1)
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
    return {"report": str(report), "models": {n: _model_summary(r) for n, r in results.items()}, "seconds": timings}
