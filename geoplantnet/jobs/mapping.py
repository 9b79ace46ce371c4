"""``geoplantnet map``: a trained species model applied over the whole grid into ``species.zarr``.

The driver: the run's context -> the model read (or trained on the region's observations and cached by content) ->
the species product's plan (:mod:`geoplantnet.products.species_map`) -> :mod:`geoplantnet.runs.tiles`. The tile
reader, the model on the workers and the store's layout are the library's (:mod:`geoplantnet.inference.reader`,
:mod:`geoplantnet.inference.species`, :mod:`geoplantnet.products.species_map`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from geoplantnet.core.config import RunConfig
from geoplantnet.inference.reader import MapSources
from geoplantnet.inference.species import ModelFile
from geoplantnet.products import species_map
from geoplantnet.products.species_map import MapError, MapPlan
from geoplantnet.runs.context import RunContext

# distributed is imported where a cluster is used: a command refuses bad input without it (test_refusal_times.py)
if TYPE_CHECKING:
    from distributed import Client

    from geoplantnet.runs.tiles import TiledRun


@dataclass
class MapSummary:
    """What a map run did: the store, its run fingerprint, tiles computed and skipped, speed, where tiles ran; and,
    from :func:`run_map`, the model used and how it was trained if it was trained by the run."""

    store: str
    run: str
    tiles: int
    tiles_computed: int
    tiles_skipped: int
    species: int
    shape: list[int]
    pixels_per_second: float | None
    model_seconds: float
    read_seconds: float
    devices: list[str]
    model_loads: dict[str, int]  # worker process id -> model loads (1 each: the model is kept per process)
    resources: dict[str, float] | None
    seconds: float
    model: str | None = None
    trained: dict[str, Any] | None = None
    inputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready plain values (what the command prints)."""
        return asdict(self)


def _summary(plan: MapPlan, done: TiledRun, resources: dict[str, float] | None, seconds: float) -> MapSummary:
    results = done.results
    grid = plan.job.predictor.map_grid
    return MapSummary(
        store=plan.job.output.url,
        run=plan.job.output.run,
        tiles=len(done.tiles),
        tiles_computed=len(results),
        tiles_skipped=len(done.tiles) - len(done.todo),
        species=len(plan.spec.species),
        shape=[len(plan.spec.species), grid.height, grid.width],
        pixels_per_second=done.pixels_per_second,
        model_seconds=round(sum(r["model_s"] for r in results), 2),
        read_seconds=round(sum(r["read_s"] for r in results), 2),
        devices=sorted({r["device"] for r in results}),
        model_loads=done.model_loads(),
        resources=resources,
        seconds=round(seconds, 1),
    )


def plan_map(
    cfg: RunConfig, model: str | ModelFile, sources: MapSources, store_url: str, year: int | None = None
) -> MapPlan:
    """:func:`geoplantnet.products.species_map.plan_map` for the run of ``cfg`` writing ``store_url``."""
    ctx = RunContext(cfg, year=year)
    model = ctx.model_file(model)
    return species_map.plan_map(model, sources, cfg.grid, cfg.map, store_url, ctx.options(store_url), year)


def produce_map(
    client: Client,
    cfg: RunConfig,
    model_url: str,
    sources: MapSources,
    store_url: str,
    *,
    progress: bool = True,
    overwrite: bool = False,
    plan: MapPlan | None = None,
    year: int | None = None,
) -> MapSummary:
    """Write ``species.zarr`` at ``store_url`` for the grid of ``cfg``, resuming an interrupted run of the same
    fingerprint; a store of another run is replaced only with ``overwrite``, anything else is never touched.
    ``plan``: the caller's :func:`plan_map` of the same arguments, when it already made one."""
    t_start = time.perf_counter()
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite, year=year)
    # the model read and checked against the inputs, the run fingerprinted: nothing written yet
    plan = plan or plan_map(cfg, model_url, sources, store_url, year)
    tiles = plan.tiles(client)
    done = ctx.produce_plan(client, tiles, species_map.PRODUCT.name)
    return _summary(plan, done, tiles.resources, time.perf_counter() - t_start)


# -- the command


def run_map(
    cfg: RunConfig,
    *,
    model: str | None = None,
    out: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> MapSummary:
    """The map job on the configured inputs (``cfg.inputs``: a user's rasters and/or Sentinel-2 from ``stac.url``;
    nothing configured: the virtual region), with the model ``model`` or ``map.model``, or one trained here on the
    configured observations and cached by configuration; then :func:`produce_map` on the configured cluster."""
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite)
    model_url = model or cfg.map.model
    if model_url is None and not cfg.inputs.virtual and cfg.inputs.observations is None:
        raise MapError(
            "map needs a model for your inputs: pass --model FILE (or map.model), or --observations FILE "
            "(inputs.observations) to train one"
        )
    # refuse a user's folder, a store being written, another product's store before minutes of generation and training
    store_url = ctx.output(species_map.PRODUCT.store, species_map.PRODUCT.name, out)
    # the given model, then the user's files (observations only to train: a given model is applied to the predictors
    # alone), all read before the virtual region is generated or imagery searched
    model_file = ctx.model_file(model_url) if model_url is not None else None
    inputs = ctx.inputs(observations=model_url is None)
    sources = ctx.sources(inputs)
    # inputs that do not fit a given model: refused before a cluster starts
    plan = plan_map(cfg, model_file, sources, store_url) if model_file is not None else None
    trained = None
    with ctx.client() as client:
        if model_url is None:
            model_url, trained = ctx.species_model(client, inputs)
        summary = produce_map(
            client, cfg, model_url, sources, store_url, progress=progress, overwrite=overwrite, plan=plan
        )
    return replace(summary, model=model_url, trained=trained, inputs=inputs.notes)
