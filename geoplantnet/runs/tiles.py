"""The one tile streamer: every loop over tiles on the cluster goes through here (bounded, retried, leased).

:func:`produce_tiles` is the whole protocol of :mod:`geoplantnet.storage.tiles` under the store's lease: claim the
output (new / resume / replace with ``--overwrite`` / refused), lay it out or find the finished tiles, stream the
missing tiles to the cluster (a bounded number in flight, so the scheduler's graph stays small for a continent),
then mark the store complete. The tile function writes its own region and marker; it is the only part a product
supplies besides the layout.

With ``year`` the store is a series (:mod:`geoplantnet.storage.years`) and the run writes that year only: build the
output with :meth:`TileOutput.of` (its run id names the year); tile functions need no change, since
:func:`geoplantnet.storage.tiles.write_tile_blocks` finds the year's slot from the run.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xarray as xr

from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.runs.progress import bar as progress_bar
from geoplantnet.storage import tiles as tile_store
from geoplantnet.storage.lease import Lease
from geoplantnet.storage.tiles import TileOutput

# distributed is imported where tiles are streamed: commands import this module before checking their inputs
if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSettings:
    """How tiles are streamed: tasks in flight (None: two per worker thread), retries of a failed tile task, and the
    store lease's time to live (the run context builds it from ``map.max_in_flight``, ``map.retries``,
    ``store.lease_ttl_s``)."""

    max_in_flight: int | None = None
    retries: int = 2
    lease_ttl: float = 120.0


@dataclass(frozen=True)
class TiledRun:
    """What :func:`produce_tiles` did: every tile of the grid, those computed now, their reports, the compute time."""

    tiles: list[Tile]
    todo: list[Tile]
    results: list[dict[str, Any]]
    compute_seconds: float

    @property
    def pixels_per_second(self) -> float | None:
        """Pixels computed per wall-clock second of the tile stream (None when every tile was already there)."""
        pixels = sum(r["pixels"] for r in self.results)
        return round(pixels / self.compute_seconds, 1) if self.results and self.compute_seconds > 0 else None

    def model_loads(self) -> dict[str, int]:
        """Worker process id -> model loads (1 each when the model is kept per process)."""
        pids = {r["pid"] for r in self.results}
        return {str(pid): max(r["model_loads"] for r in self.results if r["pid"] == pid) for pid in pids}


def produce_tiles(
    client: Client,
    fn: Callable[[Any, Tile], dict[str, Any]],
    job: Any,
    *,
    output: TileOutput,
    grid: Grid,
    tile: int,
    layout: tuple[xr.Dataset, Mapping[str, Mapping[str, Any]]],
    product: str,
    parts: Mapping[str, str],
    settings: StreamSettings,
    provenance: Mapping[str, Any] | None,
    attrs: Mapping[str, Any],
    overwrite: bool,
    resources: dict[str, float] | None,
    progress: bool,
    error: type[GeoplantnetError],
    year: int | None = None,
) -> TiledRun:
    """Write the ``product`` store at ``output.url``: ``fn(job, tile)`` for every tile of ``grid`` without a marker
    of this run, then the completion flag. A store of another run is replaced only with ``overwrite``. With
    ``year``: that year of a series (``layout`` without a year axis; ``overwrite`` replaces that year only)."""
    with tile_store.writing_tiles(
        output.url,
        *layout,
        product=product,
        parts=parts,
        run=output.run,
        overwrite=overwrite,
        provenance=provenance,
        attrs=attrs,
        storage_options=output.storage_options,
        lease_ttl=settings.lease_ttl,
        year=year,
    ) as (done, lease):
        tiles = list(grid.tiles(tile))
        todo = [t for t in tiles if t.id not in done]
        results, compute_s = stream_tiles(
            client,
            fn,
            job,
            todo,
            run=output.run,
            n_tiles=len(tiles),
            n_done=len(done),
            resources=resources,
            settings=settings,
            lease=lease,
            progress=progress,
            error=error,
            label=product,
        )
        lease.check()
        tile_store.finalise(output.url, n_tiles=len(tiles), run=output.run, storage_options=output.storage_options)
    return TiledRun(tiles, todo, results, compute_s)


def stream_tiles(
    client: Client,
    fn: Callable[[Any, Tile], dict[str, Any]],
    job: Any,
    todo: Sequence[Tile],
    *,
    run: str,
    n_tiles: int,
    n_done: int,
    resources: dict[str, float] | None,
    settings: StreamSettings,
    lease: Lease | None,
    progress: bool,
    error: type[GeoplantnetError],
    label: str,
) -> tuple[list[dict[str, Any]], float]:
    """Stream ``todo`` to the cluster, a bounded number in flight; returns each tile's report and the wall time.
    A tile failing on the user's input ends the run with one line naming the tile (``error``)."""
    from distributed import as_completed

    threads = sum(client.nthreads().values()) or 1
    in_flight = settings.max_in_flight or 2 * threads
    print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
    log.info("%d tiles (%d already written), %d in flight, resources %s", n_tiles, n_done, in_flight, resources)
    results: list[dict[str, Any]] = []
    nonce = uuid.uuid4().hex[:6]
    bar = progress_bar(n_tiles, progress=progress, initial=n_done, unit="tile")
    t_compute = time.perf_counter()
    pending = iter(todo)
    names: dict[str, str] = {}

    def submit(tile: Tile) -> Any:
        future = client.submit(
            fn,
            job,
            tile,
            key=f"{label}-tile-{tile.id}-{run}-{nonce}",
            resources=resources,
            retries=settings.retries,
            pure=False,
        )
        names[future.key] = tile.id
        return future

    queue = as_completed([submit(t) for t in itertools.islice(pending, in_flight)])
    try:
        for future in queue:
            try:
                result = future.result()
            except GeoplantnetError as exc:  # inputs the user can fix: one line naming the tile
                first = (str(exc).splitlines() or [""])[0]
                raise error(f"tile {names[future.key]} failed: {first}") from exc
            except Exception as exc:  # a bug: its traceback, with the tile it happened on
                exc.add_note(f"while computing {label} tile {names[future.key]}")
                raise
            results.append(result)
            if lease is not None:
                lease.check()
            pixels = sum(r["pixels"] for r in results)
            bar.update(1)
            bar.set_postfix(px_per_s=f"{pixels / max(time.perf_counter() - t_compute, 1e-9):,.0f}")
            nxt = next(pending, None)
            if nxt is not None:
                queue.add(submit(nxt))
    finally:
        bar.close()
        for future in list(queue.futures):
            future.cancel()
    return results, time.perf_counter() - t_compute
