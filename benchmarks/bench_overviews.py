"""What overviews add to writing a tile: the same species tiles written into a store with overview levels and into
one laid out without them (as before overviews), through storage.tiles; prints both times and their ratio, and the
time finalise spends on the levels coarser than a tile.

    .venv/bin/python benchmarks/bench_overviews.py [--species 64] [--tile 512] [--tiles 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from geoplantnet.core.grid import Grid
from geoplantnet.products.species_map import species_template
from geoplantnet.storage import overviews
from geoplantnet.storage import tiles as tile_store
from geoplantnet.storage.store import run_id


def _write(url: str, grid: Grid, tile: int, species: int, with_overviews: bool) -> tuple[float, float]:
    """(seconds writing the tiles, seconds in finalise) for one store."""
    ds, enc = species_template(grid, [f"sp{i}" for i in range(species)], None, tile, 16)
    parts = {"bench": "overviews"}
    run = run_id(parts)
    tile_store.write_layout(url, ds.assign_attrs(geoplantnet_run=run), enc, None)
    if with_overviews:
        overviews.add_layout(url)
    rng = np.random.default_rng(0)
    tiles = list(grid.tiles(tile))
    blocks = [rng.integers(0, 255, (species, t.height, t.width), dtype="uint8") for t in tiles]
    t0 = time.perf_counter()
    for t, block in zip(tiles, blocks, strict=True):
        tile_store.write_tile_blocks(url, {"probability": block}, t, run=run)
    t1 = time.perf_counter()
    tile_store.finalise(url, n_tiles=len(tiles), run=run)
    return t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--species", type=int, default=64)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--tiles", type=int, default=2, help="tiles a side")
    parser.add_argument("--repeats", type=int, default=3, help="the fastest of this many stores of each kind")
    args = parser.parse_args(argv)
    side = args.tile * args.tiles
    grid = Grid(50.0, 4_000_000.0, 3_000_000.0, side, side)
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.repeats):  # interleaved: a busy machine slows both kinds alike
            for kind in (False, True):
                runs[kind].append(_write(str(Path(folder) / f"{kind}-{i}.zarr"), grid, args.tile, args.species, kind))
    (plain, plain_final), (levels, levels_final) = (
        (min(t for t, _ in runs[kind]), min(f for _, f in runs[kind])) for kind in (False, True)
    )
    n = args.tiles**2
    result = {
        "species": args.species,
        "tile": args.tile,
        "tiles": n,
        "tile_write_s": round(plain / n, 4),
        "tile_write_with_overviews_s": round(levels / n, 4),
        "ratio": round(levels / plain, 3),
        "finalise_s": round(plain_final, 4),
        "finalise_with_overviews_s": round(levels_final, 4),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
