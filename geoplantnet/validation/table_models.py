"""Species models from tables of extracted predictors (``geoplantnet sdm-table``): the species grouped into sharing
units (one deep model per unit), each unit's training set in the training-set contract, and every model fitted on a
unit and predicted at the independent test sites. The reports are the command's
(:mod:`geoplantnet.jobs.tabular`); the scores :mod:`geoplantnet.validation.independent`'s.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from geoplantnet.models.peers import RandomForestPeer
from geoplantnet.samples.tables import TableSamples, TestSites
from geoplantnet.samples.training_set import open_training_set
from geoplantnet.training.species import SpeciesTraining
from geoplantnet.validation.blocks import choose_block_size
from geoplantnet.validation.species import CnnPeer, fit_networks, fit_point_model, point_model, point_peer

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


def safe_name(name: str) -> str:
    """``name`` as a file or folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "unit"


def table_peer(name: str, settings: SpeciesTraining, client: Client) -> Any:
    """A fresh MaxEnt (``maxent``, ``maxent_tuned``) or random forest of the table runs."""
    # 500 trees: the forest of the NCEAS peers' reference runs (Valavi et al. 2022 use 500 too)
    if name != RandomForestPeer.name:
        return point_peer(name, settings.validation, client, settings.train.seed, min_presences=2)
    return RandomForestPeer(client=client, seed=settings.train.seed, n_estimators=500, min_presences=2)


def block_size(settings: SpeciesTraining, samples: TableSamples) -> float:
    """``validation.block_size_m`` or the predictors' autocorrelation range (candidate sizes in 1/50 of the extent)."""
    if settings.validation.block_size_m:
        return float(settings.validation.block_size_m)
    extent = max(float(np.ptp(samples.x)), float(np.ptp(samples.y)))
    step = max(1000.0, round(extent / 50, -3))
    feats = np.nan_to_num(samples.features[:, : min(8, samples.features.shape[1])])
    return float(choose_block_size(samples.x, samples.y, feats, folds=settings.validation.folds, step=step))


def unit_training_set(samples: TableSamples, species: list[str], path: Path, settings: SpeciesTraining) -> str:
    """The training set of ``species`` at ``path``. Rows shuffled once: batches then mix records and background,
    which the DeepMaxent normaliser needs."""
    # rows shuffled once: batches then mix records and background, which the DeepMaxent normaliser needs
    return samples.write(path, species, attrs=dict(settings.provenance), shuffle_seed=_SHUFFLE_SEED)


def read_rows(path: str) -> tuple[np.ndarray, ...]:
    """x, y, labels, source, features of a written training set, in its (shuffled) row order."""
    ds = open_training_set(path)
    source = np.array([str(s) for s in ds["source"].values])  # StringDType does not cast to fixed-width str
    return ds["x"].values, ds["y"].values, ds["label"].values, source, ds["env_point"].values


@dataclass
class UnitFits:
    """Every model of a run fitted on the units so far: predictions at the test sites (model -> (site, species)), the
    model files written, the seconds per model, and the deep model's training runs per unit."""

    predictions: dict[str, np.ndarray]
    files: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    training_runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def fit_units(
    settings: SpeciesTraining,
    samples: TableSamples,
    test: TestSites,
    units: dict[str, list[str]],
    models: list[str],
    block: float,
    out_dir: Path,
    client: Client,
) -> UnitFits:
    """Fit every model of ``models`` on each unit's training rows (the deep model with early stopping on a
    block-based split of them; every unit's at once, side by side on the cluster), predict at the test sites, and
    write the models to ``<out_dir>/models/``."""
    n_sites, n_species = test.label.shape
    fits = UnitFits(
        {m: np.full((n_sites, n_species), np.nan, "float32") for m in models}, seconds=dict.fromkeys(models, 0.0)
    )
    written = [
        _write_unit(samples, test, unit, species, len(units) > 1, out_dir, settings) for unit, species in units.items()
    ]
    if DEEP in models:
        _fit_deep(settings, written, n_sites, block, out_dir, client, fits)
    for unit in written:
        x, y, labels, source, features = read_rows(unit.path)
        for name in (m for m in models if m != DEEP):
            t = time.perf_counter()
            make = partial(table_peer, name, settings, client)
            model = point_model(name, make, features, x, y, block, settings.validation)
            peer = fit_point_model(model, labels, source)
            fits.predictions[name][:, unit.cols] = peer.predict_proba(test.features)
            fits.files[f"{name}{unit.tag}"] = peer.save(
                out_dir / "models" / f"{name}{unit.tag}.peer",
                species=unit.species,
                variables=samples.feature_names,
            )
            fits.seconds[name] += time.perf_counter() - t
            log.info("%s on %s: %.0f s", name, unit.name, time.perf_counter() - t)
    return fits


@dataclass(frozen=True)
class _Unit:
    """A sharing unit's training and test sets, written under the run's folder."""

    name: str
    species: list[str]
    tag: str  # model file suffix: "" for the only unit
    path: str
    test_path: str
    cols: list[int]  # the unit's species among the test sites' columns


def _write_unit(
    samples: TableSamples,
    test: TestSites,
    unit: str,
    species: list[str],
    several: bool,
    out_dir: Path,
    settings: SpeciesTraining,
) -> _Unit:
    work = out_dir / "units" / safe_name(unit)
    return _Unit(
        unit,
        species,
        f"-{safe_name(unit)}" if several else "",
        unit_training_set(samples, species, work / "training.zarr", settings),
        test.write(work / "test.zarr", species, samples.species, samples.feature_names),
        [samples.species.index(s) for s in species],
    )


def _fit_deep(
    settings: SpeciesTraining,
    units: list[_Unit],
    n_sites: int,
    block: float,
    out_dir: Path,
    client: Client,
    fits: UnitFits,
) -> None:
    """The deep model of every unit, all units' ensemble members trained side by side on the cluster; their
    predictions at the test sites and model files into ``fits``."""
    t = time.perf_counter()
    peers, rows = [], []
    for unit in units:
        x, y, *_ = read_rows(unit.path)
        peers.append(CnnPeer(settings, unit.path, client, out_dir / "cnn" / safe_name(unit.name), x, y, block, "final"))
        rows.append(np.arange(len(x))[:, None])
    for unit, peer, net in zip(units, peers, fit_networks(list(zip(peers, rows, strict=True))), strict=True):
        fits.training_runs[unit.name] = [
            {
                "epochs": r.epochs_run,
                "best_epoch": r.best_epoch,
                "monitor": r.monitor,
                "best_score": r.best_score,
                "seconds_per_epoch": float(np.mean(r.epoch_seconds)),
                "device": r.device,
            }
            for r in peer.runs
        ]
        fits.predictions[DEEP][:, unit.cols] = net.predict_at(unit.test_path, np.arange(n_sites))
        fits.files[f"{DEEP}{unit.tag}"] = net.save(out_dir / "models" / f"cnn{unit.tag}.pt")
    fits.seconds[DEEP] += time.perf_counter() - t
    log.info("%s on %d unit(s): %.0f s", DEEP, len(units), time.perf_counter() - t)
