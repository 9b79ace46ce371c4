"""Benchmark: map production (dense tile inference on a LocalCluster) against the naive per-pixel path.

Generates (once, cached under work/bench-map) a virtual region of SIZE x SIZE map pixels at 50 m with >= 200 species
(Sentinel-2 simulated at 10 m, composited on a 50 m cube by default), trains the species network on its observations
(cached), then, in one run:
- per core (one torch thread, in this process, same tiles, inputs already read): pixels per second of dense tile
  inference and of the naive path (one patch per pixel, batched), their ratio and their agreement;
- the same on a finer (20 m) cube: 6.25 cube pixels under each map pixel, all of which the dense encoder computes;
- the same for a 10,000-species head (random weights; the cost of a continental species list);
- the full map production on a fresh 2-worker LocalCluster, for the region and for its quarter (the region grows 4x):
  wall time, pixels per second (per core), peak memory per worker, compressed Zarr bytes per pixel per species;
- the extrapolation to Europe at 50 m (4.2e9 pixels, ../shared/DESIGN.md) with 10,000 species.

    .venv/bin/python benchmarks/bench_map.py [--size 2000] [--species 200] [--tile 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from geoplantnet.core.config import RunConfig, load_config
from geoplantnet.inference.dense import predict_tile, predict_tile_naive, tile_geometry
from geoplantnet.inference.reader import MapSources
from geoplantnet.inference.species import read_model
from geoplantnet.jobs.mapping import produce_map
from geoplantnet.models.species_net import SpeciesNet
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.inputs import virtual_inputs
from geoplantnet.runtime.cluster import connect

ROOT = Path(__file__).resolve().parents[1]
EUROPE_PIXELS = 4.2e9  # 10.5 million km2 at 50 m (../shared/DESIGN.md)
EUROPE_SPECIES = 10_000


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _config(args: argparse.Namespace, size: int, name: str) -> RunConfig:
    side = size * 50
    return load_config(
        ROOT / "pipelines" / "default.yaml",
        [
            f"name={name}",
            f"workdir={args.workdir}",
            f"grid.width_m={side}",
            f"grid.height_m={side}",
            f"cube.resolution={args.cube_resolution}",
            "sim.dates_per_season=1",
            f"sim.n_species={args.species}",
            "cube.chunk=1024",
            f"map.tile={args.tile}",
            f"train.epochs={args.epochs}",
            "cluster.n_workers=2",
            "cluster.threads_per_worker=1",
            "cluster.memory_limit=6GiB",
        ],
    )


def _timed(fn, *a, **kw) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def per_core(cfg: RunConfig, model_path: str, sources: MapSources, n_tiles: int, naive_side: int) -> dict:
    """Dense vs naive on the same tiles in this process, one torch thread."""
    torch.set_num_threads(1)
    budget = cfg.map.cpu_batch_mb * 2**20
    model, spec, _ = read_model(model_path)
    grid, cube_grid = cfg.grid.grid(), cfg.grid.grid(cfg.cube.resolution)
    tiles = list(grid.tiles(cfg.map.tile))
    picks = [tiles[len(tiles) // 2 + k] for k in range(n_tiles)]
    dense_px = dense_s = naive_px = naive_s = read_s = 0.0
    worst = 0
    big_spec = spec.model_copy(update={"species": [f"s{i}" for i in range(EUROPE_SPECIES)], "species_name": None})
    torch.manual_seed(0)
    big = SpeciesNet.from_spec(big_spec).eval()
    big_px = big_s = 0.0
    for tile in picks:
        geom = tile_geometry(spec, tile, grid, cube_grid)
        (patch, env), t = _timed(sources.read, spec, geom, grid, cube_grid)
        read_s += t
        codes, t = _timed(predict_tile, model, spec, geom, patch, env, budget_bytes=budget)
        dense_px, dense_s = dense_px + tile.height * tile.width, dense_s + t
        # the naive path on a corner of the tile (its cost per pixel does not depend on the tile size)
        sub = type(tile)(tile.row, tile.col, tile.y0, tile.x0, naive_side, naive_side, tile.id)
        sgeom = tile_geometry(spec, sub, grid, cube_grid)
        spatch, senv = _crop(geom, sgeom, patch, env)
        naive, t = _timed(predict_tile_naive, model, spec, sgeom, spatch, senv)
        naive_px, naive_s = naive_px + naive_side**2, naive_s + t
        worst = max(worst, int(np.abs(naive.astype(int) - codes[:, :naive_side, :naive_side].astype(int)).max()))
        _, t = _timed(predict_tile, big, big_spec, geom, patch, env, budget_bytes=budget)
        big_px, big_s = big_px + tile.height * tile.width, big_s + t
    dense_flops, naive_flops = _flops_per_pixel(model, spec, geom, patch, env, sgeom, spatch, senv)
    dense_rate, naive_rate = dense_px / dense_s, naive_px / naive_s
    return {
        "tiles": n_tiles,
        "tile_pixels": int(dense_px / n_tiles),
        "read_s_per_tile": round(read_s / n_tiles, 2),
        "dense_px_per_s_core": round(dense_rate, 1),
        "naive_px_per_s_core": round(naive_rate, 1),
        "dense_over_naive": round(dense_rate / naive_rate, 1),
        "max_code_difference": worst,
        "dense_mflop_per_px": round(dense_flops / 1e6, 3),
        "naive_mflop_per_px": round(naive_flops / 1e6, 3),
        "flop_ratio": round(naive_flops / dense_flops, 1),
        "dense_px_per_s_core_10k_species": round(big_px / big_s, 1),
        "read_px_per_s_core": round(dense_px / read_s, 1),
    }


def _flops_per_pixel(model, spec, geom, patch, env, sgeom, spatch, senv) -> tuple[float, float]:
    """Floating-point operations per map pixel of both paths (torch's counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as dense:
        predict_tile(model, spec, geom, patch, env, budget_bytes=64 * 2**20)
    with FlopCounterMode(display=False) as naive:
        predict_tile_naive(model, spec, sgeom, spatch, senv)
    t, s = geom.tile, sgeom.tile
    return dense.get_total_flops() / (t.height * t.width), naive.get_total_flops() / (s.height * s.width)


def _crop(geom, sgeom, patch, env):
    out_patch = out_env = None
    if patch is not None:
        r0, c0 = sgeom.cube_window[0] - geom.cube_window[0], sgeom.cube_window[2] - geom.cube_window[2]
        out_patch = patch[
            ...,
            r0 : r0 + sgeom.cube_window[1] - sgeom.cube_window[0],
            c0 : c0 + sgeom.cube_window[3] - sgeom.cube_window[2],
        ]
    if env is not None:
        r0, c0 = sgeom.env_window[0] - geom.env_window[0], sgeom.env_window[2] - geom.env_window[2]
        out_env = env[
            ...,
            r0 : r0 + sgeom.env_window[1] - sgeom.env_window[0],
            c0 : c0 + sgeom.env_window[3] - sgeom.env_window[2],
        ]
    return out_patch, out_env


def production(cfg: RunConfig, model_path: str, sources: MapSources, out: Path) -> dict:
    """The full map on a fresh LocalCluster; peak RSS per worker read from the worker processes at the end."""
    shutil.rmtree(out, ignore_errors=True)
    with connect(cfg.cluster) as client:
        baseline = client.run(_rss)
        summary, wall = _timed(produce_map, client, cfg, model_path, sources, str(out), progress=False)
        peaks = client.run(_peak_rss)
        cores = sum(client.nthreads().values())
    grid = cfg.grid.grid()
    pixels = grid.width * grid.height
    prob_bytes = _du(out / "probability")
    return {
        "pixels": pixels,
        "tiles": summary.tiles,
        "wall_s": round(wall, 1),
        "px_per_s": round(pixels / wall, 1),
        "px_per_s_core": round(pixels / wall / cores, 1),
        "model_s": summary.model_seconds,
        "read_s": summary.read_seconds,
        "worker_rss_at_start_mb": round(max(baseline.values()) / 2**20),
        "worker_peak_rss_mb": round(max(peaks.values()) / 2**20),
        "zarr_bytes": prob_bytes,
        "zarr_bytes_per_px_species": round(prob_bytes / (pixels * summary.species), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000, help="region side in 50 m map pixels")
    parser.add_argument("--species", type=int, default=200)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--cube-resolution", type=float, default=50.0, help="Sentinel-2 cube resolution (m)")
    parser.add_argument("--fine-cube-resolution", type=float, default=20.0, help="also time dense vs naive here")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-core-tiles", type=int, default=2)
    parser.add_argument("--naive-side", type=int, default=64, help="naive path on a corner of this side per tile")
    parser.add_argument("--workdir", default=str(ROOT / "work" / "bench-map"))
    args = parser.parse_args()

    t0 = time.perf_counter()
    cfg = _config(args, args.size, "bench-map")
    inputs = virtual_inputs(cfg, progress=True)
    setup_s = time.perf_counter() - t0
    with connect(cfg.cluster) as client:
        model_path, trained = RunContext(cfg).species_model(client, inputs)
    sources = MapSources.from_items(cfg.cube, cfg.grid.epsg, inputs.s2_items, inputs.env_items)
    print(
        f"region {args.size}x{args.size} at 50 m, {args.species} species, ready in {setup_s:.0f} s; model {model_path}"
    )

    core = per_core(cfg, model_path, sources, args.per_core_tiles, args.naive_side)
    print("per core:", json.dumps(core))
    fine = None
    if args.fine_cube_resolution:
        # timing only: the same weights on a finer Sentinel-2 cube (more cube pixels under each map pixel)
        cfg_fine = cfg.model_copy(
            update={"cube": cfg.cube.model_copy(update={"resolution": args.fine_cube_resolution})}
        )
        sources_fine = MapSources.from_items(cfg_fine.cube, cfg_fine.grid.epsg, inputs.s2_items, inputs.env_items)
        fine = per_core(cfg_fine, model_path, sources_fine, args.per_core_tiles, args.naive_side)
        print(f"per core, {args.fine_cube_resolution:g} m cube:", json.dumps(fine))
    # the quarter region: same grid origin, half the side (a sub-grid of the same generated region)
    quarter = cfg.model_copy(
        update={
            "grid": cfg.grid.model_copy(update={"width_m": cfg.grid.width_m / 2, "height_m": cfg.grid.height_m / 2})
        }
    )
    out_root = Path(args.workdir) / "maps"
    small = production(quarter, model_path, sources, out_root / "quarter.zarr")
    print("quarter region:", json.dumps(small))
    full = production(cfg, model_path, sources, out_root / "species.zarr")
    print("full region:", json.dumps(full))

    # Europe: reads + compositing as measured in production, the model at 10,000 species as measured per core
    read_per_px = full["read_s"] / full["pixels"]
    model_per_px_10k = 1.0 / core["dense_px_per_s_core_10k_species"]
    cpu_hours = EUROPE_PIXELS * (read_per_px + model_per_px_10k) / 3600
    storage_tb = EUROPE_PIXELS * EUROPE_SPECIES * full["zarr_bytes_per_px_species"] / 1e12
    summary = {
        "dense_over_naive_per_core": core["dense_over_naive"],
        "dense_over_naive_per_core_fine_cube": fine["dense_over_naive"] if fine else None,
        "dense_px_per_s_core": core["dense_px_per_s_core"],
        "naive_px_per_s_core": core["naive_px_per_s_core"],
        "production_px_per_s_core": full["px_per_s_core"],
        "worker_peak_rss_mb": {"quarter": small["worker_peak_rss_mb"], "full": full["worker_peak_rss_mb"]},
        "peak_rss_ratio_4x_region": round(full["worker_peak_rss_mb"] / small["worker_peak_rss_mb"], 2),
        "zarr_bytes_per_px_species": full["zarr_bytes_per_px_species"],
        "europe_cpu_hours_10k_species": round(cpu_hours),
        "europe_storage_tb_10k_species": round(storage_tb, 1),
        "europe_raw_uint8_tb": round(EUROPE_PIXELS * EUROPE_SPECIES / 1e12, 1),
        "trained": trained,
        "cpu_count": os.cpu_count(),
    }
    print("summary:", json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
