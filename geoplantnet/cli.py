"""The ``geoplantnet`` command: thin sub-commands over the run configurations in ``pipelines/``."""

from __future__ import annotations

import argparse
import builtins
import gc
import json
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from geoplantnet.core.config import ConfigError, HabitatsConfig, InputsConfig, RunConfig, TableConfig, load_config
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.runtime.interrupts import exit_status, stop_on_signals

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "default.yaml"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None,
        help="run configuration YAML (default: pipelines/default.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set cube.resolution=10 (repeatable; env GEOPLANTNET__CUBE__RESOLUTION too)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of the configured cluster",
    )


def _add_overwrite(parser: argparse.ArgumentParser, output: str, *, report: bool = False) -> None:
    help_ = (
        f"replace an earlier {output} at the output (only geoplantnet's own: a folder or file it did not write is "
        "never touched)"
        if report
        else f"replace a {output} of another run (other model, grid, tiling or inputs) at the output; without it "
        "such a store is left alone and the command stops. A path that is not a geoplantnet store is never replaced"
    )
    parser.add_argument("--overwrite", action="store_true", help=help_)


def _add_input_args(parser: argparse.ArgumentParser) -> None:
    """The flags naming a user's inputs; each overrides its ``inputs.*`` setting (none given: the configuration's,
    and with nothing configured, the virtual region)."""
    group = parser.add_argument_group("your data (override inputs.* in the configuration)")
    group.add_argument("--observations", type=Path, default=None, help="CSV or GeoParquet of records")
    group.add_argument("--crs", default=None, help="CRS of the CSV coordinates (default EPSG:4326)")
    group.add_argument("--x", default=None, help="x/longitude column (CSV; default lon)")
    group.add_argument("--y", default=None, help="y/latitude column (CSV; default lat)")
    group.add_argument("--species", default=None, help="species column (default species)")
    group.add_argument("--presence", default=None, help="presence/absence column (1/0); absent: presence-only")
    group.add_argument("--survey", default=None, help="survey/plot id column: rows sharing it form one survey")
    group.add_argument("--rasters", type=Path, nargs="*", default=None, help="predictor GeoTIFFs (one variable each)")
    group.add_argument(
        "--categorical",
        nargs="*",
        default=None,
        metavar="LAYER",
        help="raster layers holding class codes (land cover, soil type): resampled by nearest neighbour and given to "
        "the models as one indicator layer per class (layer names: file stems or band descriptions)",
    )
    group.add_argument(
        "--with-s2",
        dest="sentinel2",
        action="store_true",
        default=None,
        help="add Sentinel-2 composites from stac.url",
    )


_INPUT_FLAGS = ("observations", "crs", "x", "y", "species", "presence", "survey", "rasters", "categorical", "sentinel2")


def _config(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if getattr(args, "scheduler", None):
        overrides += ["cluster.kind=address", f"cluster.address={args.scheduler}"]
    cfg = load_config(args.config, overrides)
    given = {k: getattr(args, k) for k in _INPUT_FLAGS if getattr(args, k, None) is not None}
    if not given:
        return cfg
    given = {
        k: [str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
        for k, v in given.items()
    }
    inputs = InputsConfig.model_validate({**cfg.inputs.model_dump(), **given})
    return cfg.model_copy(update={"inputs": inputs})


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.composites import run_composites

    result = run_composites(cfg, progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return 0


# What each report command writes at the top of its folder (storage/outputs.claim_folder: anything else there is a
# user's, and refused).
_REPORT_ENTRIES = {
    "sdm": ("summary.json", "training.zarr", "report", "models", "cnn", "model"),
    "sdm-table": ("summary.json", "training.zarr", "report", "models", "cnn", "units", "cv"),
    "habitats": ("summary.json", "report.md", "folds.csv", "fill_mask_folds.csv", "fill-mask", "model"),
}


def _report_folder(args: argparse.Namespace, cfg: RunConfig, command: str) -> Path:
    """The local output folder of a report command (``--out`` or ``<store.root>/<command>``), checked before any work:
    new or empty, or this command's earlier report (replaced with ``--overwrite``); a user's file or folder is refused,
    never written into."""
    from geoplantnet.storage.outputs import claim_folder
    from geoplantnet.storage.store import is_local

    if args.out is None and not is_local(cfg.store.root):
        raise ConfigError(f"{command} writes a local report folder and store.root is {cfg.store.root}: pass --out DIR")
    out = Path(args.out or Path(cfg.store.root) / command)
    claim_folder(out, f"{command} report", _REPORT_ENTRIES[command], overwrite=args.overwrite, check_only=True)
    return out


def _writing_report(args: argparse.Namespace, out: Path, command: str) -> AbstractContextManager[Path]:
    """The report folder claimed once the inputs are read (an earlier report is removed only then), marked finished
    when the run ends."""
    from geoplantnet.storage.outputs import claimed_folder

    return claimed_folder(out, f"{command} report", _REPORT_ENTRIES[command], overwrite=args.overwrite)


def _cmd_sdm(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.runs.inputs import run_inputs

    out = _report_folder(args, cfg, "sdm")
    inputs = run_inputs(cfg, progress=not args.quiet)
    # the job's modules (torch, scikit-learn, Dask: seconds) once the inputs are checked
    from geoplantnet.jobs.sdm import run_sdm
    from geoplantnet.runtime.cluster import connect

    with _writing_report(args, out, "sdm"), connect(cfg.cluster) as client:
        result = run_sdm(cfg, inputs, out, client)
    print(json.dumps(result, indent=2))
    return 0


_TABLE_FLAGS = ("presence", "background", "test", "test_env")


def _cmd_sdm_table(args: argparse.Namespace) -> int:
    cfg = _config(args)
    given = {k: str(getattr(args, k)) for k in _TABLE_FLAGS if getattr(args, k) is not None}
    if given:
        cfg = cfg.model_copy(update={"table": TableConfig.model_validate({**cfg.table.model_dump(), **given})})
    from geoplantnet.samples.tables import read_tables

    out = _report_folder(args, cfg, "sdm-table")
    tables = read_tables(cfg.table)  # the user's tables checked before a cluster starts and the job is imported
    from geoplantnet.jobs.tabular import run_table_sdm
    from geoplantnet.runtime.cluster import connect

    with _writing_report(args, out, "sdm-table"), connect(cfg.cluster) as client:
        result = run_table_sdm(cfg, out, client, tables)
    print(json.dumps(result, indent=2))
    return 0


_PLOT_FLAGS = {"plots": "plots", "species_column": "species", "cover": "cover", "habitat": "habitat"}


def _cmd_habitats(args: argparse.Namespace) -> int:
    cfg = _config(args)
    given = {key: str(getattr(args, flag)) for flag, key in _PLOT_FLAGS.items() if getattr(args, flag) is not None}
    if args.unlabelled:
        given["unlabelled"] = [str(u) for u in args.unlabelled]
    if given:
        cfg = cfg.model_copy(update={"habitats": HabitatsConfig.model_validate({**cfg.habitats.model_dump(), **given})})
    from geoplantnet.jobs.habitats import load_habitat_data, run_habitats
    from geoplantnet.runtime.cluster import connect

    out = _report_folder(args, cfg, "habitats")
    data = load_habitat_data(cfg, progress=not args.quiet)  # the tables (or the virtual region's plots) first
    with _writing_report(args, out, "habitats"), connect(cfg.cluster) as client:
        result = run_habitats(cfg, out, client, data, evaluate=not args.no_evaluation)
    print(json.dumps({k: v for k, v in result.items() if k != "notes"}, indent=2, default=str))
    return 0


def _cmd_map(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.mapping import run_map

    result = run_map(cfg, model=args.model, out=args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _cmd_habitat_map(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.habitat_map import run_habitat_map

    result = run_habitat_map(
        cfg, args.species_store, args.model, args.out, overwrite=args.overwrite, progress=not args.quiet
    )
    summary = result.to_dict()
    if args.evaluate:
        if not cfg.inputs.virtual:
            raise ConfigError("--evaluate scores a map against the virtual region's true habitats; inputs.* are set")
        from geoplantnet.jobs.habitat_eval import evaluate_habitat_map
        from geoplantnet.storage.store import open_store

        species = open_store(result.species_store)
        summary["evaluation"] = evaluate_habitat_map(cfg, result.store, species.attrs["model_file"])
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _add_habitat_map(sub: argparse._SubParsersAction) -> None:
    habitat_map = sub.add_parser(
        "habitat-map",
        help="classify every pixel's predicted species assemblage (species.zarr) into EUNIS habitats -> habitat.zarr",
        description="Each pixel's sentence is its species above their saved thresholds (or its top-K species with "
        "habitats.map_species=K), classified by the habitat model; tile by tile on the cluster, resumable.",
    )
    _add_config_args(habitat_map)
    habitat_map.add_argument(
        "--species", dest="species_store", default=None, help="species.zarr (default: <store.root>/species.zarr)"
    )
    habitat_map.add_argument(
        "--model", default=None, help="habitat classifier folder (default: <store.root>/habitats/model)"
    )
    habitat_map.add_argument(
        "--out", default=None, help="habitat.zarr path or URL (default: <store.root>/habitat.zarr)"
    )
    habitat_map.add_argument(
        "--evaluate",
        action="store_true",
        help="virtual region: score the map against its true habitats, next to a "
        "direct random forest from the same predictors",
    )
    habitat_map.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite(habitat_map, "habitat.zarr")
    habitat_map.set_defaults(func=_cmd_habitat_map)


def _cmd_indicators(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.indicators import run_indicators

    if args.evaluate and not cfg.inputs.virtual:
        raise ConfigError("--evaluate scores indicators against the virtual region's truth; inputs.* are set")
    options = {"habitats": not args.no_habitats, "overwrite": args.overwrite, "progress": not args.quiet}
    if args.from_model:
        from geoplantnet.jobs.indicators import run_fused_indicators

        if args.species_store or args.habitat_store:
            raise ConfigError("--from-model predicts the species in each tile: it reads no --species or --habitats")
        result = run_fused_indicators(cfg, args.model, args.habitat_model, args.out, **options, evaluate=args.evaluate)
    else:
        if args.model or args.habitat_model:
            raise ConfigError("--model and --habitat-model are for --from-model (stores name their own models)")
        result = run_indicators(
            cfg, args.species_store, args.habitat_store, args.out, **options, evaluate=args.evaluate
        )
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


def _add_indicators(sub: argparse._SubParsersAction) -> None:
    ind = sub.add_parser(
        "indicators",
        help="biodiversity indicators with uncertainty (richness, Shannon, invasive, threatened, habitats, "
        "ecosystem health) from species.zarr and habitat.zarr -> indicators.zarr",
        description="Status tables (indicators.status, invasive_list, protected_list, habitat_red_list) are matched "
        "to the map's species; intervals are calibrated on held-out surveys (indicators.plots; on the virtual region "
        "independent surveys) and their coverage reported; tile by tile on the cluster, resumable.",
    )
    _add_config_args(ind)
    ind.add_argument("--species", dest="species_store", default=None, help="default: <store.root>/species.zarr")
    ind.add_argument(
        "--habitats", dest="habitat_store", default=None, help="default: <store.root>/habitat.zarr when it exists"
    )
    ind.add_argument("--no-habitats", action="store_true", help="species indicators only (no habitat.zarr)")
    ind.add_argument(
        "--from-model",
        action="store_true",
        help="fused mode: predict the species (and classify the habitats) inside each indicator tile, on the "
        "configured inputs, writing indicators.zarr only (no species.zarr, no habitat.zarr)",
    )
    ind.add_argument(
        "--model", default=None, help="--from-model: species model file (default: map.model, else trained as map does)"
    )
    ind.add_argument(
        "--habitat-model",
        default=None,
        help="--from-model: habitat classifier folder (default: <store.root>/habitats/model when it exists)",
    )
    ind.add_argument("--out", default=None, help="indicators.zarr path or URL (default: <store.root>/indicators.zarr)")
    ind.add_argument(
        "--evaluate", action="store_true", help="virtual region: error of every indicator against the truth"
    )
    ind.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite(ind, "indicators.zarr")
    ind.set_defaults(func=_cmd_indicators)


def _assessment_options(args: argparse.Namespace) -> dict[str, Any]:
    """What impact and offsets take alike from their command lines."""
    return {
        "model": args.model,
        "habitat_model": args.habitat_model,
        "value_model": args.value_model,
        "out": args.out,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
        "evaluate": args.evaluate,
    }


def _cmd_impact(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.impact import run_impact

    summary = run_impact(cfg, args.footprint, args.scenario, **_assessment_options(args))
    print(json.dumps({k: summary[k] for k in ("report", "zones", "tiles", "seconds")}, indent=2, default=str))
    return 0


def _cmd_offsets(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.offsets import run_offsets

    summary = run_offsets(
        cfg, args.sites, args.scenario, impact=args.impact, id_column=args.id_column, **_assessment_options(args)
    )
    print(json.dumps({k: summary[k] for k in ("report", "ranking", "seconds")}, indent=2, default=str))
    return 0


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="species model file (default: map.model, else trained as map does)"
    )
    parser.add_argument(
        "--habitat-model", default=None, help="habitat classifier folder (default: <store.root>/habitats/model)"
    )
    parser.add_argument(
        "--value-model", default=None, help="value model file (default: impact.value_model, else <store.root>/value)"
    )
    parser.add_argument("--evaluate", action="store_true", help="virtual region: predicted versus true change")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _add_impact(sub: argparse._SubParsersAction) -> None:
    impact = sub.add_parser(
        "impact",
        help="in-silico impact assessment: a scenario applied inside a project footprint, the affected tiles "
        "predicted again -> report.md, summary.json, maps.png, impact.gpkg",
        description="The scenario (YAML: name, land_cover, buffer_m, edge_strength, context_m) edits the models' "
        "inputs inside the footprint and its buffer; species, habitats, indicators and biodiversity value are "
        "predicted before and after, with paired Monte-Carlo dropout intervals of the change.",
    )
    _add_config_args(impact)
    impact.add_argument(
        "--footprint", required=True, help="project polygons (GeoJSON, GeoPackage, GeoParquet; any CRS)"
    )
    impact.add_argument("--scenario", required=True, help="scenario YAML file")
    impact.add_argument("--out", default=None, help="report folder (default: <store.root>/impact/<scenario name>)")
    _add_overwrite(impact, "impact report", report=True)
    _add_model_args(impact)
    impact.set_defaults(func=_cmd_impact)

    offsets = sub.add_parser(
        "offsets",
        help="rank candidate offset sites by the value a restoration scenario would gain there, and say whether "
        "each compensates an impact (no net loss) -> report.md, offsets.csv, offsets.gpkg",
    )
    _add_config_args(offsets)
    offsets.add_argument("--sites", required=True, help="candidate site polygons (any vector format and CRS)")
    offsets.add_argument("--scenario", required=True, help="restoration scenario YAML file")
    offsets.add_argument("--impact", default=None, help="an impact report folder (or its summary.json) to offset")
    offsets.add_argument("--id-column", default=None, help="the sites' id column (default: id, name, else row number)")
    offsets.add_argument("--out", default=None, help="report folder (default: <store.root>/offsets/<scenario name>)")
    _add_overwrite(offsets, "offset ranking", report=True)
    _add_model_args(offsets)
    offsets.set_defaults(func=_cmd_offsets)


def _cmd_refresh(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.refresh import run_refresh

    if args.evaluate and not cfg.inputs.virtual:
        raise ConfigError("--evaluate scores a refresh against the virtual region's truth; inputs.* are set")
    summary = run_refresh(
        cfg, args.year, model=args.model, overwrite=args.overwrite, progress=not args.quiet, evaluate=args.evaluate
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _add_refresh(sub: argparse._SubParsersAction) -> None:
    refresh = sub.add_parser(
        "refresh",
        help="annual monitoring: map one year into the series under store.root (species, habitat, indicators) and "
        "the change since the previous year -> changes.zarr + a run summary",
        description="Searches the year's Sentinel-2 imagery, maps it with the series' species model and habitat "
        "classifier, appends the year along every store's year axis without rewriting other years, and reports "
        "the changes beyond the noise. Rerunning a year resumes it; --overwrite replaces that year only.",
    )
    _add_config_args(refresh)
    refresh.add_argument(
        "--year",
        type=int,
        required=True,
        help="the monitoring year to map (e.g. 2025: whole composite seasons, December 2024 to November 2025 with "
        "cube.composite QS-DEC)",
    )
    refresh.add_argument(
        "--model", default=None, help="species model file (default: the series' first year's, or map.model)"
    )
    refresh.add_argument(
        "--evaluate", action="store_true", help="virtual region: indicators and detected changes against the truth"
    )
    refresh.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    refresh.add_argument(
        "--overwrite",
        action="store_true",
        help="replace this year of every series when another run (other model, inputs or settings) wrote it; other "
        "years are never touched, and a path that is not a geoplantnet series is never replaced",
    )
    refresh.set_defaults(func=_cmd_refresh)


def _cmd_value(args: argparse.Namespace) -> int:
    from geoplantnet.jobs.value import run_value, with_cli_options

    cfg = with_cli_options(_config(args), args.polygons, args.label_column)
    report = run_value(cfg, out=args.out, overwrite=args.overwrite, evaluate=args.evaluate, progress=not args.quiet)
    print(json.dumps(report, indent=2, default=str))
    return 0


def _add_value(sub: argparse._SubParsersAction) -> None:
    value = sub.add_parser(
        "value",
        help="biodiversity value (0-1) at 10 m from polygons labelled high / low: a U-Net vs a random forest on "
        "spatial folds, then value.zarr and its 50 m aggregate value_50m.zarr",
        description="Polygons (GeoParquet / GeoJSON / GeoPackage, any CRS; value.polygons, or the virtual region's) "
        "are rasterised onto the 10 m grid; folds hold whole polygons; the report goes to <store.root>/value.",
    )
    _add_config_args(value)
    value.add_argument("--polygons", default=None, help="labelled polygons file or URL (value.polygons)")
    value.add_argument("--label-column", default=None, help="column of high / low labels (value.label_column)")
    value.add_argument("--out", default=None, help="value.zarr path or URL (default: <store.root>/value.zarr)")
    value.add_argument(
        "--evaluate", action="store_true", help="virtual region: agreement of the 50 m map with the true value score"
    )
    value.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite(value, "value.zarr")
    value.set_defaults(func=_cmd_value)


PLOT_SUFFIXES = (".png", ".pdf", ".svg")  # what matplotlib writes without extra packages


def _cmd_plot(args: argparse.Namespace) -> int:
    from geoplantnet.core.errors import InputError
    from geoplantnet.storage.outputs import claim_file, write_file
    from geoplantnet.storage.store import open_store

    out = claim_file(args.out, "species plot", overwrite=args.overwrite, suffixes=PLOT_SUFFIXES)
    maps = {}
    for url in args.stores:
        ds = open_store(url)
        if "probability" not in ds:
            raise InputError(f"{url}: no 'probability' variable (not a species.zarr)")
        by = "species_name" if args.species not in ds["species"].values and "species_name" in ds.coords else "species"
        prob = ds["probability"].sel({by: args.species}).squeeze(drop=True)
        if prob.ndim != 2:
            raise InputError(f"{url}: {args.species!r} names {prob.sizes.get('species', 0)} species; give its id")
        kind = ds.attrs.get("model_version", "").split("/")[0] or Path(url).name  # species-net, maxent, ...
        maps[kind if kind not in maps else f"{kind} ({Path(url).name})"] = prob
    from geoplantnet.jobs.quicklook import species_quicklook  # matplotlib: once the stores are read

    png = write_file(out, "species plot", lambda p: species_quicklook(maps, p, title=args.title or args.species))
    print(json.dumps({"png": str(png), "maps": list(maps)}, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.predict import run_predict

    result = run_predict(
        cfg,
        model=args.model,
        points=args.points,
        out=args.out,
        id_column=args.id,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.sim.region import generate_region

    out = args.out or Path(cfg.workdir) / "region"
    manifest = generate_region(cfg, Path(out), progress=not args.quiet, overwrite=args.overwrite)
    print(f"virtual region ready: {manifest.root / 'region.json'}")
    return 0


def _cmd_stac_serve(args: argparse.Namespace) -> int:
    from geoplantnet.sim.region import RegionManifest
    from geoplantnet.sim.stac_server import serve_forever

    manifest = RegionManifest.load(args.region)
    serve_forever(args.backend, args.host, args.port, manifest.collections())
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    print(_config(args).to_yaml(), end="")
    return 0


def _cmd_cluster_spec(args: argparse.Namespace) -> int:
    import yaml

    from geoplantnet.runtime.cluster import kubernetes_spec

    print(yaml.safe_dump(kubernetes_spec(_config(args).cluster), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (sub-commands with their own ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="geoplantnet", description="Plant biodiversity maps of Europe from Sentinel-2 on Dask."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the main job (region -> STAC -> cube -> composites Zarr + PNG)")
    _add_config_args(run)
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite(run, "composites.zarr")
    run.set_defaults(func=_cmd_run)

    sdm = sub.add_parser(
        "sdm",
        help="train and evaluate species models (CNN, MaxEnt, random forest) on spatial blocks; write a report",
        description="With no inputs named (flags or inputs.* settings): the virtual region (scored against its true "
        "probabilities too). With --observations and --rasters: your own data (CSV or GeoParquet, coordinates in any "
        "CRS; GeoTIFFs in any CRS/resolution, aligned onto the grid set by grid.* in the configuration).",
    )
    _add_config_args(sdm)
    _add_input_args(sdm)
    sdm.add_argument("--out", type=Path, default=None, help="output folder (default: <store.root>/sdm)")
    sdm.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite(sdm, "sdm report", report=True)
    sdm.set_defaults(func=_cmd_sdm)

    table = sub.add_parser(
        "sdm-table",
        help="species models from tables of extracted predictors: deep model vs MaxEnt vs random forest, scored on "
        "independent presence-absence sites and/or spatial blocks",
        description="Presence-only records and background sites with their predictor values (CSV/Parquet; columns "
        "named by table.* settings, e.g. pipelines/nceas-awt.yaml), optionally independent presence-absence sites "
        "(wide or long). Writes <out>/report/report.md, summary.json and the fitted models in <out>/models/.",
    )
    _add_config_args(table)
    table.add_argument("--presence", type=Path, default=None, help="presence-only records (table.presence)")
    table.add_argument("--background", type=Path, default=None, help="background sites (table.background)")
    table.add_argument("--test", type=Path, default=None, help="independent presence-absence sites (table.test)")
    table.add_argument("--test-env", type=Path, default=None, help="test-site predictors, joined on table.site")
    table.add_argument("--out", type=Path, default=None, help="output folder (default: <store.root>/sdm-table)")
    _add_overwrite(table, "sdm-table report", report=True)
    table.set_defaults(func=_cmd_sdm_table)

    habitats = sub.add_parser(
        "habitats",
        help="Pl@ntBERT: fill-mask pre-training on plots, EUNIS habitat fine-tuning, peers on spatial folds; saves "
        "the models",
        description="Plots from a CSV/Parquet table (habitats.* settings): one row per plot with a species-list "
        "column in cover order, or one row per plot x species with a cover column (--cover); a habitat column "
        "(EUNIS codes; empty = unlabelled). No table: the virtual region's plots. Writes <out>/report.md, "
        "summary.json, folds.csv, the fill-mask model in <out>/fill-mask/ and the classifier in <out>/model/.",
    )
    _add_config_args(habitats)
    habitats.add_argument("--plots", type=Path, default=None, help="plot table (habitats.plots)")
    habitats.add_argument("--species-column", default=None, help="species column (habitats.species)")
    habitats.add_argument("--cover", default=None, help="cover column of a long table (habitats.cover)")
    habitats.add_argument("--habitat", default=None, help="habitat code column (habitats.habitat)")
    habitats.add_argument(
        "--unlabelled",
        type=Path,
        nargs="*",
        default=None,
        help="more plot tables for pre-training only (habitats.unlabelled)",
    )
    habitats.add_argument("--no-evaluation", action="store_true", help="train the final models only (no folds)")
    habitats.add_argument("--out", type=Path, default=None, help="output folder (default: <store.root>/habitats)")
    habitats.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite(habitats, "habitats report", report=True)
    habitats.set_defaults(func=_cmd_habitats)

    mapping = sub.add_parser(
        "map", help="apply the species model over the whole grid, tile by tile on the cluster -> species.zarr"
    )
    _add_config_args(mapping)
    mapping.add_argument(
        "--model", default=None, help="trained model file (default: map.model, or train one on --observations)"
    )
    mapping.add_argument("--out", default=None, help="species.zarr path or URL (default: <store.root>/species.zarr)")
    mapping.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite(mapping, "species.zarr")
    _add_input_args(mapping)
    mapping.set_defaults(func=_cmd_map)

    _add_habitat_map(sub)
    _add_indicators(sub)
    _add_refresh(sub)
    _add_value(sub)
    _add_impact(sub)

    plot = sub.add_parser(
        "plot", help="one species from one or more species.zarr stores side by side (e.g. CNN and MaxEnt) -> PNG"
    )
    plot.add_argument("stores", nargs="+", help="species.zarr paths or URLs (complete stores)")
    plot.add_argument("--species", required=True, help="species id or scientific name")
    plot.add_argument("--out", type=Path, required=True, help="figure file to write (.png, .pdf or .svg)")
    plot.add_argument(
        "--overwrite", action="store_true", help="replace a figure geoplantnet wrote there before (never a user's file)"
    )
    plot.add_argument("--title", default=None, help="figure title (default: the species)")
    plot.set_defaults(func=_cmd_plot)

    pred = sub.add_parser(
        "predict",
        help="each species' probability at a table of points (CSV or Parquet out: one row per point)",
        description="Extracts the model's inputs at the points as training did and writes one row per point: the id "
        "column (--id, else the row number as 'point'), the coordinates as given, one probability column per "
        "species id. Points outside the grid or the rasters' data get NaN (counted in a warning).",
    )
    _add_config_args(pred)
    pred.add_argument("--model", default=None, help="trained model file (default: map.model)")
    pred.add_argument("--points", type=Path, required=True, help="CSV (--x/--y in --crs) or (Geo)Parquet of points")
    pred.add_argument("--id", default="id", help="point id column, copied to the output when present (default id)")
    pred.add_argument("--out", type=Path, required=True, help="output table: .csv or .parquet")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    pred.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_input_args(pred)
    pred.set_defaults(func=_cmd_predict)

    sim = sub.add_parser("simulate", help="generate the virtual region (imagery, environment, species, observations)")
    _add_config_args(sim)
    sim.add_argument("--out", type=Path, default=None, help="output folder (default: <workdir>/region)")
    sim.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_overwrite(sim, "virtual region", report=True)
    sim.set_defaults(func=_cmd_simulate)

    stac = sub.add_parser("stac", help="STAC API server commands")
    stac_sub = stac.add_subparsers(dest="stac_command", required=True, metavar="SUBCOMMAND")
    serve = stac_sub.add_parser("serve", help="serve a generated region's collections on loopback until Ctrl-C")
    serve.add_argument("region", type=Path, help="a region folder (with region.json) from `geoplantnet simulate`")
    serve.add_argument("--backend", choices=["memory", "pgstac"], default="memory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.set_defaults(func=_cmd_stac_serve)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    show = config_sub.add_parser("show", help="print the resolved configuration as YAML")
    _add_config_args(show)
    show.set_defaults(func=_cmd_config_show)

    cluster = sub.add_parser("cluster", help="cluster commands")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    spec = cluster_sub.add_parser("spec", help="print the dask-kubernetes DaskCluster resource for the configuration")
    _add_config_args(spec)
    spec.set_defaults(func=_cmd_cluster_spec)
    return parser


# Warnings a user can do nothing about; the ones that matter (records dropped, too few background points) are log
# messages and still shown. Set in the environment too, so the Dask worker processes started here inherit them.
QUIET_WARNINGS = (
    "ignore:Consolidated metadata:UserWarning",  # zarr: consolidated metadata is not in the v3 spec yet
    "ignore:Mean of empty slice:RuntimeWarning",  # numpy: all-NaN pixels (clouds, sea) give NaN, as intended
    "ignore:All-NaN slice encountered:RuntimeWarning",
    # multiprocessing: a worker killed on Ctrl-C or SIGTERM leaves its semaphores (tqdm's lock) to the resource
    # tracker, which removes them and says so at exit
    "ignore:resource_tracker:UserWarning",
)


def _quiet_warnings() -> None:
    for spec in QUIET_WARNINGS:
        action, message, category = spec.split(":")
        warnings.filterwarnings(action, message=re.escape(message), category=getattr(builtins, category))
    existing = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join([*([existing] if existing else []), *QUIET_WARNINGS])


def _give_up(status: int) -> None:
    """Stopping took seconds (the driver in a long native call, where Python runs no signal handler): end now."""
    print("geoplantnet: interrupted", file=sys.stderr, flush=True)
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one sub-command. User errors (:class:`geoplantnet.core.errors.GeoplantnetError`) are one line on
    stderr and exit status 2; Ctrl-C or SIGTERM is one line and 130 or 143; anything else is a bug: its traceback and
    exit status 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own progress at INFO; Dask's chatter (workers joining, clients closing) only with --verbose.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("geoplantnet").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        _quiet_warnings()
        import dask.config

        # distributed sets its loggers to this level when first imported (by a command that starts a cluster: not
        # before a bad input is refused), else to INFO; and it may be imported already
        dask.config.set({"logging.distributed": "warning"})
        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        with stop_on_signals(give_up=_give_up):  # SIGTERM (kill, Kubernetes) stops a run as Ctrl-C does
            return args.func(args)
    except KeyboardInterrupt as exc:
        if args.verbose:  # where it was stopped
            traceback.print_exc()
        print("geoplantnet: interrupted", file=sys.stderr)
        gc.freeze()  # the process ends now: the collections of interpreter exit would take seconds on this heap
        return exit_status(exc)
    except GeoplantnetError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"geoplantnet: error: {(str(exc).strip().splitlines() or [exc.__class__.__name__])[0]}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(
            "geoplantnet: internal error (a bug, not your input): please report it with the traceback above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
