"""The annual monitoring refresh: ``geoplantnet refresh --year YYYY``.

One year, every yearly product of the registry (:func:`geoplantnet.products.base.products`), each after those it
requires, appended along the ``year`` axis of its series under ``store.root`` (never rewriting another year;
:mod:`geoplantnet.storage.years`): the year's Sentinel-2 items are searched (``cube.datetime`` = the year), the
species model of the series (the one its first year was mapped with, unless ``--model`` names another) maps
``species.zarr``, the habitat classifier ``habitat.zarr`` (when there is one), the indicators ``indicators.zarr``,
``changes.zarr`` gets the change since the latest earlier year of the series, and any other yearly product its
year. Each step is a resumable tiled run of its own, so an interrupted refresh leaves earlier years readable and
intact, and rerunning the command completes the year; rerunning a complete year resumes to nothing, and
``--overwrite`` replaces only that year. The run summary (``<store.root>/refresh/<YYYY>/summary.json``,
``report.md``, ``changes.png``) says what was mapped, how long each step took, where and what changed most and, on
the virtual region, how the products compare with the generator's truth (each product's registered evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geoplantnet.core.config import ConfigError, RunConfig, redact, redact_text
from geoplantnet.core.errors import RefusedError
from geoplantnet.products.base import Made, Product, load, products
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.refresh_steps import STEPS, RefreshError, YearRun, prepare_year
from geoplantnet.storage.outputs import claim_folder, claim_published_folder, finish_folder, place, place_json
from geoplantnet.storage.store import PRODUCT_ATTR, YEARS_ATTR, is_local, preflight
from geoplantnet.storage.workdir import Workdir

__all__ = ["RefreshError", "run_refresh", "year_config", "year_window"]

SUMMARY_FILES = ("summary.json", "report.md", "changes.png")
SUMMARY_KIND = "refresh summary"


def year_window(composite: str, year: int) -> str:
    """The imagery of monitoring year ``year``: whole composite periods, so every year has the same seasons. With
    meteorological seasons (``QS-DEC``) the year runs from December of the year before to November (its winter is one
    December-February season, not two halves); monthly and yearly composites use the calendar year."""
    if composite == "QS-DEC":
        return f"{year - 1}-12-01/{year}-11-30"
    return f"{year}-01-01/{year}-12-31"


def year_config(cfg: RunConfig, year: int) -> RunConfig:
    """``cfg`` with the cube searching the imagery of monitoring year ``year`` only (:func:`year_window`)."""
    cube = cfg.cube.model_copy(update={"datetime": year_window(cfg.cube.composite, year)})
    return cfg.model_copy(update={"cube": cube})


def check_series(ctx: RunContext, urls: Mapping[str, str]) -> None:
    """Before anything runs: every output is free, and a store already there is a series of its product (a
    single-year store of the same name is refused: the refresh never turns it into something else)."""
    for product, url in urls.items():
        target = preflight(url, ctx.options(url), product=product, overwrite=ctx.overwrite)
        if target.state == "store" and YEARS_ATTR not in target.attrs:
            raise RefusedError(
                f"{redact({'u': url})['u']} is a {target.attrs.get(PRODUCT_ATTR, 'geoplantnet')} store without a "
                "year axis; a refresh writes series: use another store.root"
            )


def _step(product: Product, year: YearRun, client: Any, made: Mapping[str, Made]) -> Made | None:
    """One product's year: through its step adapter while it has one, else its own plan (changes, new products)."""
    adapter = STEPS.get(product.name)
    return adapter(year, client, made) if adapter is not None else year.ctx.make(client, product)


def run_refresh(
    cfg: RunConfig,
    year: int,
    *,
    model: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> dict[str, Any]:
    """Map ``year`` into every series under ``store.root`` and write its run summary (see the module docstring)."""
    if not 1000 <= year <= 9999:  # imagery is searched by ISO 8601 dates
        raise RefreshError(f"--year {year}: give the calendar year with its four digits (e.g. 2025)")
    t_start = time.perf_counter()
    # the series' stores carry the run's configuration; the imagery steps search the year's (cube.datetime)
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite, year=year)
    imagery = RunContext(year_config(cfg, year), progress=progress, overwrite=overwrite, year=year)
    load()
    yearly = products(yearly=True)
    urls = {p.name: ctx.url(p.store) for p in yearly}
    check_series(ctx, urls)
    report_dir = summary_folder(cfg, year)
    state = prepare_year(ctx, imagery, urls, model)  # every file read and checked before a cluster starts
    made: dict[str, Made] = {}
    with ctx.client() as client:
        for product in yearly:
            done = _step(product, state, client, made)
            if done is not None:
                made[product.name] = done
    summary = year_summary(cfg, year, state, made)
    if "changes" in made:
        from geoplantnet.products.changes import describe_changes

        changes = made["changes"]
        grid, tile = changes.plan.grid, changes.plan.tile
        summary["changes"] = describe_changes(changes.url, ctx.options(changes.url), year, grid, tile)
    if evaluate:
        if not cfg.inputs.virtual:
            raise ConfigError("--evaluate scores a refresh against the virtual region's truth; inputs.* are set")
        from geoplantnet.evaluation.registry import evaluate as evaluations
        from geoplantnet.runs.inputs import region_truth

        summary["evaluation"] = evaluations(ctx, region_truth(cfg), made)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    write_summary(summary, report_dir, ctx, made)
    return summary


def year_summary(cfg: RunConfig, year: int, state: YearRun, made: Mapping[str, Made]) -> dict[str, Any]:
    """The run summary's body: what was mapped where, with which model, how long each step took, the change model."""
    from geoplantnet.products.changes import change_record

    grid = made["indicators"].plan.grid
    return {
        "year": year,
        "store_root": redact({"u": cfg.store.root})["u"],
        "stores": {name: redact({"u": m.url})["u"] for name, m in made.items()},
        "model": redact({"u": state.model_url})["u"],
        "trained": state.trained,
        "habitat_maps": state.habitats,
        "area_km2": round(grid.width * grid.height * grid.resolution**2 / 1e6, 3),
        "shape": [grid.height, grid.width],
        "tiles": len(made["species"].run.tiles),
        "steps": {name: m.info for name, m in made.items() if m.info is not None},
        "change": change_record(made["changes"].plan) if "changes" in made else None,
        "inputs": [redact_text(note) for note in state.inputs.notes],
    }


def summary_folder(cfg: RunConfig, year: int) -> Path:
    """Where the run summary is written, checked before the run: ``<store.root>/refresh/<year>``, or, with an
    object-store root, a folder of this process's scratch published there once finished. Refused when geoplantnet did
    not write what is there (a user's files); an earlier summary of the year is replaced when the new one is
    written."""
    if not is_local(cfg.store.root):
        root = Workdir.of(cfg.store.root, cfg.store)
        return claim_published_folder(root, f"refresh/{year}", SUMMARY_KIND, SUMMARY_FILES, overwrite=True)
    folder = Path(cfg.store.root) / "refresh" / str(year)
    claim_folder(folder, SUMMARY_KIND, SUMMARY_FILES, overwrite=True, check_only=True)
    return folder


def write_summary(summary: Mapping[str, Any], folder: Path, ctx: RunContext, made: Mapping[str, Made]) -> None:
    """``summary.json``, ``report.md`` and ``changes.png`` of a refresh, each written beside its name and renamed
    into place (the JSON last: its presence says the summary is whole), then published with an object-store root
    (:func:`summary_folder`)."""
    from geoplantnet.reports.refresh import markdown, plot_changes

    # the year's stores were claimed first (another run's year needs --overwrite there): the summary is theirs
    claim_folder(folder, SUMMARY_KIND, SUMMARY_FILES, overwrite=True)
    place(folder, "report.md", lambda path: path.write_text(markdown(summary)))
    stores = {name: (m.url, ctx.options(m.url)) for name, m in made.items()}
    place(folder, "changes.png", lambda path: plot_changes(stores, int(summary["year"]), summary, path))
    place_json(folder, "summary.json", summary)
    finish_folder(folder)
