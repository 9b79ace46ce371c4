"""``geoplantnet value``: biodiversity value (after Andermann et al.) from polygons labelled high / low value.

::

    polygons (GeoParquet / GeoJSON / GeoPackage, any CRS; or the virtual region's) ─▶ validation.value.load_labels
        ─▶ label and polygon-id rasters on the value grid (the map grid at value.resolution, 10 m), folds
    MapSources.composite + MapSources.environment over the polygons' window ─▶ feature stack (C, y, x)
        ─▶ validation.value.train_or_reuse: spatial folds of whole polygons, per fold a U-Net (training.value) and a
           class-balanced random forest, then the final U-Net ─▶ <store.root>/value/model.pt
    inference.value.ValuePredictor per tile ─▶ products.value: value.zarr (10 m) ─▶ value_50m.zarr (the map grid),
        both through the run's tile streamer (RunContext.produce)
    reports.value (report.md, folds.csv, report.json); --evaluate (virtual region): evaluation.value
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoplantnet.core.config import ConfigError, RunConfig, ValueConfig
from geoplantnet.core.grid import Tile
from geoplantnet.inference.reader import MapSources
from geoplantnet.inference.value import (
    ValuePredictor,
    read_features,
    run_features,
)
from geoplantnet.products.species_map import run_parts
from geoplantnet.products.value import (
    AGGREGATE,
    AGGREGATE_STORE,
    PRODUCT,
    STORE,
    aggregate_parts,
    aggregate_url,
    map_summary,
    plan_aggregate,
    plan_value,
    value_grid,
    value_parts,
)
from geoplantnet.reports.value import write_report
from geoplantnet.runs.context import RunContext
from geoplantnet.runtime.cluster import task_resources
from geoplantnet.samples.value_labels import Labels
from geoplantnet.storage.outputs import claim_folder
from geoplantnet.storage.store import is_local, shown
from geoplantnet.storage.workdir import scratch
from geoplantnet.validation.value import (
    FOLD_FILES,
    Trained,
    ValueTraining,
    fold_means,
    load_labels,
    polygon_summary,
    train_or_reuse,
    training_key,
)

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["run_value", "with_cli_options"]

REPORT_FILES = ("model.pt", "forest", *FOLD_FILES)  # forest: the forest folder beside model.pt (value.model)


def _report_folder(cfg: RunConfig, *, check: bool = False) -> Path:
    """``<store.root>/value`` (with a remote store root, where the model goes: ``<workdir>/value-report``, since
    reports are local files; with an object-store workdir too, a folder of this process's scratch, published under
    ``<workdir>/value-report`` once written), claimed (storage/outputs; with ``check`` only checked, before any
    work): a folder geoplantnet did not write is refused; its model and report stay for reuse (``train_or_reuse``
    decides, replacing another training's model only with --overwrite)."""
    if is_local(cfg.store.root):
        folder = Path(cfg.store.root) / "value"
    else:
        folder = Path(cfg.workdir) / "value-report" if is_local(cfg.workdir) else scratch("value-report")
    return claim_folder(folder, "value report", REPORT_FILES, overwrite=False, keep=True, check_only=check)


def produce_value_maps(
    ctx: RunContext, client: Client, predictor: ValuePredictor, urls: tuple[str, str]
) -> dict[str, dict[str, Any]]:
    """``value.zarr`` (10 m) then ``value_50m.zarr`` (the map grid), each resumable through the run's tile
    streamer."""
    from geoplantnet.runtime.worker_cache import WorkerCachePlugin

    cfg = ctx.cfg
    client.register_plugin(WorkerCachePlugin())
    resources = task_resources(client) if cfg.map.device != "cpu" else None
    parts = value_parts(
        predictor, cfg.value, run_parts(predictor.model.sha256, predictor.sources, cfg.grid.grid(), cfg.map)
    )
    value = plan_value(predictor, cfg.value, parts, ctx.tile_output(urls[0], parts), resources)
    t0 = time.perf_counter()
    maps = {"value": map_summary(ctx.produce_plan(client, value, PRODUCT), urls[0], time.perf_counter() - t0)}
    map_grid = cfg.grid.grid()
    agg_parts = aggregate_parts(value, map_grid)
    aggregate = plan_aggregate(value, map_grid, agg_parts, ctx.tile_output(urls[1], agg_parts))
    t0 = time.perf_counter()
    done = ctx.produce_plan(client, aggregate, AGGREGATE)
    maps["value_50m"] = map_summary(done, urls[1], time.perf_counter() - t0)
    return maps


def _train(ctx: RunContext, sources: MapSources, labels: Labels, folder: Path) -> tuple[Trained, str]:
    """The cross-validated final model (trained, or reused from an earlier run of the same key) and its key."""
    cfg = ctx.cfg
    grid = value_grid(cfg.grid, cfg.value)
    bands, variables, one_hot, names = run_features(sources, grid)
    items = [i["id"] for i in (sources.s2_items or ())] + [i["id"] for i in (sources.env_items or ())]
    key = training_key(cfg.value, cfg.grid, cfg.cube, labels, items, names)
    region = Tile(0, 0, labels.window[0], labels.window[2], 0, 0, "training-window")
    trained = train_or_reuse(
        ValueTraining(cfg.value, cfg.train.device, key),
        lambda: read_features(sources, grid, region, labels.window, bands, variables),
        labels,
        names,
        one_hot,
        folder=folder,
        model_url=ctx.value_model_url,
        store=cfg.store,
        overwrite=ctx.overwrite,
    )
    return trained, key


def run_value(
    cfg: RunConfig,
    *,
    out: str | None = None,
    overwrite: bool = False,
    evaluate: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The value job: labels, folds (U-Net vs forest), the final model, ``value.zarr`` and ``value_50m.zarr``, the
    report (``<store.root>/value``); with ``evaluate`` (virtual region only) the agreement with the true value."""
    from geoplantnet.evaluation.value import evaluate_value
    from geoplantnet.runs.inputs import run_inputs, virtual_value_polygons, virtual_value_score

    t_start = time.perf_counter()
    if evaluate and not cfg.inputs.virtual:
        raise ConfigError("--evaluate scores the value map against the virtual region's truth; inputs.* are set")
    if cfg.value.polygons is None and not cfg.inputs.virtual:
        raise ConfigError("value needs labelled polygons for your inputs: --polygons FILE (value.polygons)")
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite)
    grid = value_grid(cfg.grid, cfg.value)
    # a user's folder, a store being written, another product's store: refused before minutes of work
    value_url = ctx.output(STORE, PRODUCT, out.rstrip("/") if out else None)
    urls = (value_url, ctx.output(AGGREGATE_STORE, AGGREGATE, aggregate_url(value_url)))
    _report_folder(cfg, check=True)
    source = cfg.value.polygons
    labels = load_labels(cfg.value, source, grid) if source else None  # a user's file: checked before the inputs
    inputs = run_inputs(cfg, observations=False, progress=progress)
    if labels is None:
        labels = load_labels(cfg.value, virtual_value_polygons(cfg, progress=progress), grid)
    sources = ctx.sources(inputs)
    folder = _report_folder(cfg)
    published = not is_local(cfg.store.root) and not is_local(cfg.workdir)
    if published and ctx.workdir.complete("value-report"):  # the earlier run's report: what a reuse is decided by
        ctx.workdir.get("value-report", into=folder)
    trained, key = _train(ctx, sources, labels, folder)
    predictor = ctx.value_predictor(ctx.value_model_url, sources)
    with ctx.client() as client:
        maps = produce_value_maps(ctx, client, predictor, urls)
    report: dict[str, Any] = {
        "training_key": key,
        "polygons": polygon_summary(labels),
        "notes": list(labels.notes),
        "folds": trained.folds,
        "means": fold_means(trained.folds),
        "model": shown(trained.model),
        "model_sha256": trained.sha256,
        "model_reused": trained.reused,
        "shipped": predictor.shipped,
        "unet_weight": predictor.unet_weight,
        "meaning": dict(predictor.meaning),
        "final_model": trained.training,
        "maps": maps,
        "grid": {"value": grid.label(), "aggregate": cfg.grid.grid().label()},
        "inputs": inputs.notes,
    }
    if evaluate:
        truth = virtual_value_score(cfg).values
        report["evaluation"] = evaluate_value(truth, urls[1], labels, cfg.grid.grid(), cfg.value.resolution)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["report"] = ctx.workdir.url("value-report") if published else str(folder)
    write_report(folder, report)
    if published:  # the report of a run whose outputs are all on an object store: beside its workdir's caches
        ctx.workdir.put(folder, "value-report")
    return report


def with_cli_options(
    cfg: RunConfig, polygons: str | None, label_column: str | None, score_column: str | None = None
) -> RunConfig:
    """``cfg`` with ``--polygons`` / ``--label-column`` / ``--score-column`` applied to its value section
    (validated)."""
    options = (("polygons", polygons), ("label_column", label_column), ("score_column", score_column))
    given = {k: v for k, v in options if v is not None}
    if not given:
        return cfg
    return cfg.model_copy(update={"value": ValueConfig.model_validate({**cfg.value.model_dump(), **given})})
