"""Benchmark: lazy cube + cloud mask + seasonal median composite on a LocalCluster, against the naive path.

Generates (once, cached under work/bench-cube) a virtual region of SIZE x SIZE pixels at 10 m with >= 24 dates, then,
in one run:
- ours: STAC items -> stackstac cube -> SCL mask -> quarterly median composites, computed on a 2-worker LocalCluster
  and written to Zarr;
- naive: read every band of every date whole with rasterio into one NumPy array, mask, nanmedian per season.
Prints wall time, pixel-observations per second, peak RSS per worker, the bytes read against the size of the source
COGs, and the ratios between the two paths.

    .venv/bin/python benchmarks/bench_cube.py [--size 1000] [--dates-per-season 6]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import rasterio

from geoplantnet.core.config import RunConfig, load_config
from geoplantnet.jobs.composites import composites
from geoplantnet.runtime.cluster import connect
from geoplantnet.sim.region import generate_region
from geoplantnet.sources import stac_items
from geoplantnet.sources.stac_items import local_path
from geoplantnet.storage import store

ROOT = Path(__file__).resolve().parents[1]


def _worker_read_chars() -> int:
    return psutil.Process().io_counters().read_chars


def _worker_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _source_bytes(items: list, bands: list[str]) -> int:
    return sum(local_path(item.assets[b].href).stat().st_size for item in items for b in bands)


def _naive(items: list, cfg: RunConfig) -> tuple[float, int]:
    """Everything in memory at once, the way a script without Dask would do it."""
    t0 = time.perf_counter()
    grid = cfg.grid.grid(cfg.cube.resolution)
    before = psutil.Process().io_counters().read_chars
    stack = np.empty((len(items), len(cfg.cube.bands), *grid.shape), dtype="float32")
    clouds = np.empty((len(items), *grid.shape), dtype=bool)
    for t, item in enumerate(items):
        for b, band in enumerate(cfg.cube.bands):
            with rasterio.open(item.assets[band].href) as ds:
                data = ds.read(1, out_shape=grid.shape, resampling=rasterio.enums.Resampling.average)
            stack[t, b] = np.where(data == 0, np.nan, data * 1e-4 - 0.1)
        with rasterio.open(item.assets["SCL"].href) as ds:
            scl = ds.read(1, out_shape=grid.shape, resampling=rasterio.enums.Resampling.nearest)
        clouds[t] = np.isin(scl, cfg.cube.mask_scl)
    stack[np.broadcast_to(clouds[:, None], stack.shape)] = np.nan
    seasons = pd.DatetimeIndex([it.datetime.replace(tzinfo=None) for it in items]).to_period("Q-NOV")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels (cloudy all season) are expected
        for season in seasons.unique():
            np.nanmedian(stack[np.asarray(seasons == season)], axis=0)
    return time.perf_counter() - t0, psutil.Process().io_counters().read_chars - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="region size in 10 m pixels (square)")
    parser.add_argument("--dates-per-season", type=int, default=6, help="dates per season (x 4 seasons, 1 year)")
    parser.add_argument("--resolution", type=float, default=10.0, help="cube resolution (m)")
    parser.add_argument("--chunk", type=int, default=1000, help="cube chunk side (pixels)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    side = args.size * 10
    work = ROOT / "work" / f"bench-cube-{args.size}-{args.dates_per_season}"
    cfg = load_config(
        ROOT / "pipelines" / "default.yaml",
        [
            f"grid.width_m={side}",
            f"grid.height_m={side}",
            f"sim.dates_per_season={args.dates_per_season}",
            "sim.n_species=20",
            "sim.n_plots=10",
            "sim.n_presence_only=10",
            f"cube.resolution={args.resolution}",
            f"cube.chunk={args.chunk}",
            f"cluster.n_workers={args.workers}",
            f"workdir={work}",
            f"store.root={work / 'out'}",
        ],
    )
    t0 = time.perf_counter()
    manifest = generate_region(cfg, work / "region", progress=True)
    print(f"region: {time.perf_counter() - t0:.1f} s (cached after the first run)")
    items = stac_items.read_ndjson(manifest.s2_items_path)
    bands = [*cfg.cube.bands, "SCL"]
    src = _source_bytes(items, bands)
    grid = cfg.grid.grid(cfg.cube.resolution)
    observations = len(items) * grid.width * grid.height
    print(
        f"cube: {len(items)} dates x {len(cfg.cube.bands)} bands x {grid.height} x {grid.width} px "
        f"at {cfg.cube.resolution:g} m; source COGs {src / 1e6:.1f} MB"
    )

    out = str(work / "out" / "composites.zarr")
    with connect(cfg.cluster) as client:
        lazy = composites(items, cfg)
        graph_tasks = len(lazy.__dask_graph__())
        read0 = sum(client.run(_worker_read_chars).values())
        t1 = time.perf_counter()
        store.write_store(
            lazy.to_dataset(name="reflectance"),
            out,
            product="composites",
            parts={"benchmark": "bench_cube", "items": str(len(items)), "grid": str(grid)},
            provenance=cfg.to_attrs(),
            client=client,
            overwrite=True,  # the benchmark's own output folder, rewritten every run
        )
        ours_s = time.perf_counter() - t1
        read = sum(client.run(_worker_read_chars).values()) - read0
        peaks = client.run(_worker_peak_rss)
    naive_s, naive_read = _naive(items, cfg)
    naive_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    print()
    print(f"{'path':<8}{'wall s':>9}{'Mobs/s':>9}{'peak MB':>10}{'read/src':>10}")
    print(
        f"{'ours':<8}{ours_s:9.1f}{observations / ours_s / 1e6:9.2f}"
        f"{max(peaks.values()) / 2**20:10.0f}{read / src:10.2f}   (peak per worker, {args.workers} workers)"
    )
    print(
        f"{'naive':<8}{naive_s:9.1f}{observations / naive_s / 1e6:9.2f}"
        f"{naive_peak / 2**20:10.0f}{naive_read / src:10.2f}   (one process)"
    )
    print()
    print(f"graph: {graph_tasks} tasks for {observations / 1e6:.1f} M pixel-observations")
    print(
        f"ratio naive/ours wall time: {naive_s / ours_s:.2f}x; peak memory ours/naive: "
        f"{max(peaks.values()) / naive_peak:.2f}"
    )
    shutil.rmtree(work / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
