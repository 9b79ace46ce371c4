"""Benchmark: indicators the two-pass way (map -> species.zarr, habitat-map -> habitat.zarr, indicators) against the
fused way (``indicators --from-model``: species predicted and habitats classified inside each indicator tile task,
indicators.zarr only), in one run on the same warm LocalCluster, the same region, model and classifier.

Generates (once, cached under the workdir) the small virtual region (2 km, 30 species; ``SMALL_REGION``) or a larger
one (``--size-m``), trains the species model (cached as ``map`` caches it) and a tiny habitat classifier, then, for
``--repeats`` rounds, alternating the order: (a) produce_map + produce_habitat_map + plan/produce_indicators,
(b) plan_fused_indicators + produce_indicators; each from empty outputs, calibration on the same surveys included.
Prints JSON: wall seconds, pixels per second, the ratio a/b, and the bytes each mode wrote (best round per mode).
The status tables, surveys and typical species (the same for both modes) are read once, outside the timings.

    PYTHONPATH=. .venv/bin/python benchmarks/indicators_modes.py [--size-m 2000] [--tile 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from geoplantnet.core.config import RunConfig, load_config
from geoplantnet.inference.reader import MapSources
from geoplantnet.jobs.habitat_map import plan_habitat_map, produce_habitat_map
from geoplantnet.jobs.mapping import produce_map
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.indicators import (
    fused_setup,
    open_stores,
    plan_fused_indicators,
    plan_indicators,
    produce_indicators,
)
from geoplantnet.runs.inputs import indicator_inputs, virtual_inputs
from geoplantnet.runtime.cluster import connect
from geoplantnet.testing.fixtures import tiny_classifier
from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _config(args: argparse.Namespace) -> RunConfig:
    work = Path(args.workdir).resolve()
    return load_config(
        ROOT / "pipelines" / "default.yaml",
        [
            *SMALL_REGION,
            f"grid.width_m={args.size_m}",
            f"grid.height_m={args.size_m}",
            f"train.epochs={args.epochs}",
            f"map.tile={args.tile}",
            "habitats.map_species=8",  # the small model has no thresholds: each pixel's top 8 species
            "indicators.n_surveys=400",
            "indicators.block_size=500",
            f"workdir={work}",
            f"store.root={work / 'out'}",
        ],
    )


def two_pass(client, cfg: RunConfig, model: str, sources: MapSources, classifier: str, tables, out: Path) -> dict:
    """species.zarr, habitat.zarr, then indicators.zarr from them."""
    t0 = time.perf_counter()
    produce_map(client, cfg, model, sources, str(out / "species.zarr"), progress=False)
    t1 = time.perf_counter()
    hplan = plan_habitat_map(cfg, str(out / "species.zarr"), classifier, str(out / "habitat.zarr"))
    produce_habitat_map(client, cfg, hplan, progress=False)
    t2 = time.perf_counter()
    stores = open_stores(cfg, str(out / "species.zarr"), str(out / "habitat.zarr"), str(out / "indicators.zarr"))
    iplan = plan_indicators(cfg, stores, tables)
    produce_indicators(client, cfg, iplan, progress=False)
    t3 = time.perf_counter()
    return {
        "seconds": t3 - t0,
        "steps_s": {"map": round(t1 - t0, 2), "habitat_map": round(t2 - t1, 2), "indicators": round(t3 - t2, 2)},
        "bytes": {name: _du(out / f"{name}.zarr") for name in ("species", "habitat", "indicators")},
        "radius": iplan.calibration.count_radius,
    }


def fused(client, cfg: RunConfig, model: str, sources: MapSources, classifier: str, tables, out: Path) -> dict:
    """indicators.zarr only, species and habitats computed in its tile tasks."""
    t0 = time.perf_counter()
    setup = fused_setup(cfg, model, sources, classifier, tables)
    plan = plan_fused_indicators(client, cfg, setup, str(out / "indicators.zarr"))
    t1 = time.perf_counter()
    produce_indicators(client, cfg, plan, progress=False)
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "steps_s": {"plan_and_calibrate": round(t1 - t0, 2), "tiles": round(t2 - t1, 2)},
        "bytes": {name: _du(out / f"{name}.zarr") for name in ("species", "habitat", "indicators")},
        "radius": plan.calibration.count_radius,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench-indicators"))
    ap.add_argument("--size-m", type=int, default=2000)
    ap.add_argument("--tile", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = _config(args)
    work = Path(cfg.workdir)
    inputs = virtual_inputs(cfg)
    sources = MapSources.from_items(cfg.cube, cfg.grid.epsg, inputs.s2_items, inputs.env_items)
    tables = indicator_inputs(cfg)
    grid = cfg.grid.grid()
    pixels = grid.width * grid.height
    runs: dict[str, list[dict]] = {"two_pass": [], "fused": []}
    with connect(cfg.cluster) as client:
        model, _ = RunContext(cfg).species_model(client, inputs)
        classifier = work / "habitat-model"
        if not (classifier / "config.json").exists():
            species = [str(s) for s in open_store_species(model)]
            tiny_classifier(cfg, species, classifier)
        cores = sum(client.nthreads().values())
        for r in range(args.repeats):
            order = ["two_pass", "fused"] if r % 2 == 0 else ["fused", "two_pass"]
            for mode in order:
                out = work / "runs" / mode
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                fn = two_pass if mode == "two_pass" else fused
                runs[mode].append(fn(client, cfg, model, sources, str(classifier), tables, out))
    best = {mode: min(rs, key=lambda x: x["seconds"]) for mode, rs in runs.items()}
    report = {
        "region": f"{grid.width} x {grid.height} pixels at {grid.resolution:g} m, {cfg.sim.n_species} species",
        "tiles": len(list(grid.tiles(cfg.map.tile))),
        "cores": cores,
        "surveys": len(tables.surveys) if tables.surveys is not None else 0,
        "repeats": args.repeats,
        **{
            mode: {
                "seconds": round(b["seconds"], 2),
                "all_seconds": [round(x["seconds"], 2) for x in runs[mode]],
                "pixels_per_second": round(pixels / b["seconds"], 1),
                "steps_s": b["steps_s"],
                "bytes_written": b["bytes"],
                "bytes_total": sum(b["bytes"].values()),
            }
            for mode, b in best.items()
        },
        "ratio_two_pass_over_fused": round(best["two_pass"]["seconds"] / best["fused"]["seconds"], 2),
        "same_radii": best["two_pass"]["radius"] == best["fused"]["radius"],
    }
    print(json.dumps(report, indent=2))


def open_store_species(model: str) -> list[str]:
    from geoplantnet.inference.species import read_model

    _, spec, _ = read_model(model)
    return list(spec.species)


if __name__ == "__main__":
    main()
