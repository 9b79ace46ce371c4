"""Benchmark: the species network's spatial-block cross-validation, its folds x ensemble members trained one after
another against side by side on the cluster's workers.

On the virtual region (generated once, cached under ``--workdir``), ``geoplantnet sdm``'s steps: the training set
(:func:`~geoplantnet.validation.species.prepare_samples`), the spatial folds, then the CNN cross-validated as
``sdm`` does it (:func:`~geoplantnet.validation.species.cross_validate_models`) twice back to back on the same
cluster: with ``in_flight=1`` (one training task at a time: how ``sdm`` ran before) and with every task submitted at
once. Prints the wall seconds of both and their ratio; the training tasks' seconds summed (the same work: where
the sum grows side by side, each task got less CPU, as on a machine whose cores others use) and how many trainings
ran at once on average; each fold's AUC of both runs. Those and the out-of-fold predictions must be identical (same
seeds, validation blocks and normalisation per fold): exits 1 where they differ.

On a machine others use at the same time, Linux (``kernel.sched_autogroup_enabled``) shares the cores between
sessions, not processes: this run's workers then get one session's share together, side by side or not, and the wall
ratio stays near 1 while the summed seconds grow (measured on the project's shared 2-core machine, December 2026).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cnn_cv.py [--size 2000] [--ensemble 3] [--folds 3] [--epochs 10]
        [--set cluster.n_workers=2 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from geoplantnet.core.config import RunConfig, load_config
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.inputs import virtual_inputs
from geoplantnet.runtime.cluster import connect
from geoplantnet.testing.regions import SMALL_REGION
from geoplantnet.training.species import SpeciesTraining
from geoplantnet.validation.blocks import spatial_blocks
from geoplantnet.validation.species import CnnPeer, PreparedSamples, cross_validate_models, prepare_samples

ROOT = Path(__file__).resolve().parents[1]
MODES = {"one after another": 1, "side by side": None}  # CnnPeer's in_flight


def _config(args: argparse.Namespace) -> RunConfig:
    """The tests' small region and network (``SMALL_REGION``) at ``--size`` metres a side, the CNN alone."""
    return load_config(
        ROOT / "pipelines" / "default.yaml",
        [
            *SMALL_REGION,
            "name=bench-cnn-cv",
            f"workdir={args.workdir}",
            f"grid.width_m={args.size}",
            f"grid.height_m={args.size}",
            f"sim.n_species={args.species}",
            f"train.epochs={args.epochs}",
            f"train.ensemble={args.ensemble}",
            f"validation.folds={args.folds}",
            "validation.models=[cnn]",
            "cluster.threads_per_worker=1",
            *args.set,
        ],
    )


def _cross_validate(
    settings: SpeciesTraining,
    data: PreparedSamples,
    folds: np.ndarray,
    client: Client,
    folder: Path,
    in_flight: int | None,
) -> dict[str, Any]:
    """The CNN cross-validated as ``sdm`` does it, ``in_flight`` training tasks at a time (None: all)."""
    cnn = CnnPeer(settings, data.path, client, folder, data.x_all, data.y_all, data.block, in_flight=in_flight)
    peers = {"cnn": (cnn, data.rows[:, None])}
    results, _ = cross_validate_models(peers, data.labels, data.source, folds, settings.validation, data.species)
    return {**results["cnn"], "runs": cnn.runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000, help="region side in metres (50 m map pixels)")
    parser.add_argument("--species", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--ensemble", type=int, default=3)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT / "work" / "bench-cnn-cv"), help="region (cached) and runs")
    parser.add_argument("--set", action="append", default=[], help="more KEY=VALUE settings (e.g. a cluster)")
    args = parser.parse_args()

    cfg = _config(args)
    t0 = time.perf_counter()
    inputs = virtual_inputs(cfg)
    settings = RunContext(cfg).species_training
    out = Path(cfg.workdir) / "runs"
    shutil.rmtree(out, ignore_errors=True)
    seconds: dict[str, float] = {}
    aucs: dict[str, list[float]] = {}
    oof: dict[str, np.ndarray] = {}
    training: dict[str, float] = {}  # the tasks' epochs, summed: the same work in both runs
    used: dict[str, int] = {}
    with connect(cfg.cluster) as client:
        data = prepare_samples(settings, inputs, out / "samples", client)
        folds = spatial_blocks(data.x, data.y, data.block, cfg.validation.folds, seed=cfg.validation.seed)
        workers = client.nthreads()
        print(
            f"region {args.size} m, {len(data.rows)} samples, {len(data.species)} species, {args.folds} folds x "
            f"{args.ensemble} members of {args.epochs} epochs; {len(workers)} workers x "
            f"{max(workers.values())} thread(s); ready in {time.perf_counter() - t0:.0f} s"
        )
        # untimed: one epoch of one network per fold, so that neither run pays the first use of torch, the
        # training set and the code on the workers and here (that first use took longer than the runs themselves)
        warm = dataclasses.replace(settings, train=settings.train.model_copy(update={"epochs": 1, "ensemble": 1}))
        _cross_validate(warm, data, folds, client, out / "warm-up", None)
        for mode, in_flight in MODES.items():
            t = time.perf_counter()
            results = _cross_validate(settings, data, folds, client, out / mode.replace(" ", "-"), in_flight)
            seconds[mode] = time.perf_counter() - t
            aucs[mode] = [f["auc"] for f in results["folds"]]
            oof[mode] = results["oof"]
            training[mode] = sum(sum(run.epoch_seconds) for run in results["runs"])
            used[mode] = len({run.worker for run in results["runs"]})
    first, second = MODES
    before, after = seconds[first], seconds[second]
    print(f"{'CNN cross-validation':<28}{'one after another':>20}{'side by side':>16}{'ratio':>8}")
    print(f"{'wall seconds':<28}{before:>20.1f}{after:>16.1f}{before / after:>8.2f}")
    print(f"{'training seconds (summed)':<28}{training[first]:>20.1f}{training[second]:>16.1f}")
    # summed over wall: how many trainings ran at once on average (the driver's own work between them included)
    busy = {m: training[m] / seconds[m] for m in MODES}
    print(f"{'trainings at once (mean)':<28}{busy[first]:>20.2f}{busy[second]:>16.2f}")
    print(f"{'workers used':<28}{used[first]:>20d}{used[second]:>16d}")
    for k, (a, b) in enumerate(zip(*aucs.values(), strict=True)):
        print(f"{f'fold {k} AUC':<28}{a:>20.6f}{b:>16.6f}")
    same = np.array_equal(*(np.array(v) for v in aucs.values()), equal_nan=True)
    same_oof = np.array_equal(*oof.values(), equal_nan=True)
    print(
        f"per-fold AUCs identical: {'yes' if same else 'NO'}; out-of-fold predictions identical: "
        f"{'yes' if same_oof else 'NO'}"
    )
    return 0 if same and same_oof else 1


if __name__ == "__main__":
    sys.exit(main())
