"""What each command does once parsed: the configuration with the command line's overrides, the checks a command
makes before its job is imported, the job's call and what it prints. Each handler imports its job (torch, Dask:
seconds) only once its inputs are checked."""

from __future__ import annotations

import argparse
import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from geoplantnet.cli.arguments import INPUT_FLAGS
from geoplantnet.core.config import ConfigError, HabitatsConfig, InputsConfig, RunConfig, TableConfig, load_config


def _config(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if getattr(args, "scheduler", None):
        overrides += ["cluster.kind=address", f"cluster.address={args.scheduler}"]
    cfg = load_config(args.config, overrides)
    given = {k: getattr(args, k) for k in INPUT_FLAGS if getattr(args, k, None) is not None}
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
    """The local output folder of a report command (``--out`` or ``<store.root>/<command>``), checked before any work
    (:meth:`geoplantnet.runs.context.RunContext.report_folder`)."""
    from geoplantnet.runs.context import RunContext

    ctx = RunContext(cfg, overwrite=args.overwrite)
    return ctx.report_folder(command, f"{command} report", _REPORT_ENTRIES[command], args.out)


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


def _plot_config(args: argparse.Namespace, **given: Any) -> RunConfig:
    """The configuration with the plot table's flags (``--plots``, ``--species-column``, ...) as habitats.* settings."""
    cfg = _config(args)
    flags = {
        key: str(getattr(args, flag)) for flag, key in _PLOT_FLAGS.items() if getattr(args, flag, None) is not None
    }
    given = {**flags, **{k: v for k, v in given.items() if v is not None}}
    if not given:
        return cfg
    return cfg.model_copy(update={"habitats": HabitatsConfig.model_validate({**cfg.habitats.model_dump(), **given})})


def _cmd_habitats(args: argparse.Namespace) -> int:
    cfg = _plot_config(args, unlabelled=[str(u) for u in args.unlabelled] if args.unlabelled else None)
    from geoplantnet.jobs.habitats import load_habitat_data, run_habitats
    from geoplantnet.runtime.cluster import connect

    out = _report_folder(args, cfg, "habitats")
    data = load_habitat_data(cfg, progress=not args.quiet)  # the tables (or the virtual region's plots) first
    with _writing_report(args, out, "habitats"), connect(cfg.cluster) as client:
        result = run_habitats(cfg, out, client, data, evaluate=not args.no_evaluation, progress=not args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k != "notes"}, indent=2, default=str))
    return 0


def _cmd_habitats_classify(args: argparse.Namespace) -> int:
    cfg = _plot_config(args)
    top_k = _at_least(args.top_k, cfg.habitats.classify_top_k, "--top-k", 1)
    missing = _at_least(args.missing, cfg.habitats.classify_missing, "--missing", 0)
    from geoplantnet.jobs.habitat_classify import check_classify, run_classify

    inputs = check_classify(
        cfg, args.model, args.plots, args.out, fill_mask=args.fill_mask, missing=missing, overwrite=args.overwrite
    )
    summary = run_classify(cfg, inputs, top_k=top_k, missing=missing)  # the models (torch) once the inputs are read
    print(json.dumps(summary.to_dict(), indent=2, default=str))
    return 0


def _at_least(value: int | None, default: int, flag: str, least: int) -> int:
    """A count flag, or its setting when not given."""
    if value is None:
        return default
    if value < least:
        raise ConfigError(f"{flag} {value}: at least {least}")
    return value


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
        summary["evaluation"] = evaluate_habitat_map(
            cfg, result.store, species.attrs["model_file"], result.species_store
        )
    print(json.dumps(summary, indent=2, default=str))
    return 0


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
    if args.random is not None:
        return _random_impact(cfg, args)
    if args.footprint is None:
        raise ConfigError("impact needs --footprint FILE (or --random N --evaluate on the virtual region)")
    if args.offset_scenario is not None:
        raise ConfigError("--offset-scenario is for --random; rank your own sites with `geoplantnet offsets`")
    if len(args.scenario) > 1:
        raise ConfigError("a footprint takes one --scenario; several are for --random N (or run impact once each)")
    from geoplantnet.jobs.impact import run_impact

    summary = run_impact(cfg, args.footprint, args.scenario[0], **_assessment_options(args))
    print(json.dumps({k: summary[k] for k in ("report", "zones", "tiles", "seconds")}, indent=2, default=str))
    return 0


def _random_impact(cfg: RunConfig, args: argparse.Namespace) -> int:
    """``impact --random N``: random footprints (and site sets) against the truth, refused before anything starts
    when it cannot run."""
    from geoplantnet.jobs.impact_random import check_random, run_random_impact

    if args.footprint is not None:
        raise ConfigError("--random draws its own footprints: drop --footprint (or --random)")
    check_random(cfg, args.random, args.evaluate, args.sites_per_set, len(args.scenario))
    summary = run_random_impact(
        cfg,
        args.random,
        args.scenario,
        offset_scenario=args.offset_scenario,
        sites_per_set=args.sites_per_set,
        seed=args.random_seed,
        **_assessment_options(args),
    )
    print(json.dumps({k: summary[k] for k in ("report", "aggregate", "tiles", "seconds")}, indent=2, default=str))
    return 0


def _cmd_offsets(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.offsets import run_offsets

    summary = run_offsets(
        cfg, args.sites, args.scenario, impact=args.impact, id_column=args.id_column, **_assessment_options(args)
    )
    print(json.dumps({k: summary[k] for k in ("report", "ranking", "seconds")}, indent=2, default=str))
    return 0


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


def _cmd_product(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from geoplantnet.jobs.product import run_product

    summary = run_product(
        cfg, args.name, year=args.year, overwrite=args.overwrite, progress=not args.quiet, evaluate=args.evaluate
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_value(args: argparse.Namespace) -> int:
    from geoplantnet.jobs.value import run_value, with_cli_options

    cfg = with_cli_options(_config(args), args.polygons, args.label_column, args.score_column)
    report = run_value(cfg, out=args.out, overwrite=args.overwrite, evaluate=args.evaluate, progress=not args.quiet)
    print(json.dumps(report, indent=2, default=str))
    return 0


PLOT_SUFFIXES = (".png", ".pdf", ".svg")  # what matplotlib writes without extra packages
PLOT_PIXELS = 1500  # cells a side at most in a plotted map: finer than a 4-inch panel at 300 dpi


def _cmd_plot(args: argparse.Namespace) -> int:
    from geoplantnet.core.errors import InputError
    from geoplantnet.storage.outputs import claim_file, write_file
    from geoplantnet.storage.overviews import open_overview

    out = claim_file(args.out, "species plot", overwrite=args.overwrite, suffixes=PLOT_SUFFIXES)
    maps = {}
    for url in args.stores:
        ds = open_overview(url, max_pixels=PLOT_PIXELS)  # a figure's worth of pixels, never a continental array
        if "probability" not in ds:
            raise InputError(f"{url}: no 'probability' variable (not a species.zarr)")
        by = "species_name" if args.species not in ds["species"].values and "species_name" in ds.coords else "species"
        prob = ds["probability"].sel({by: args.species}).squeeze(drop=True)
        if prob.ndim != 2:
            raise InputError(f"{url}: {args.species!r} names {prob.sizes.get('species', 0)} species; give its id")
        kind = ds.attrs.get("model_version", "").split("/")[0] or Path(url).name  # species-net, maxent, ...
        maps[kind if kind not in maps else f"{kind} ({Path(url).name})"] = prob
    from geoplantnet.reports.quicklook import species_quicklook  # matplotlib: once the stores are read

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
    from geoplantnet.runs.inputs import region, region_folder, workdir
    from geoplantnet.sim.region import generate_region

    if args.out is None and not workdir(cfg).local:
        # the jobs' own region of an object-store workdir: published there, as a job would (its cache semantics)
        region(cfg, progress=not args.quiet)
        print(f"virtual region ready: {workdir(cfg).url(*region_folder(cfg), 'region.json')}")
        return 0
    out = args.out or Path(cfg.workdir) / "region"
    manifest = generate_region(cfg, Path(out), progress=not args.quiet, overwrite=args.overwrite)
    print(f"virtual region ready: {manifest.root / 'region.json'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from geoplantnet.jobs.serve import serve
    from geoplantnet.storage.store import read_options_for

    cfg = _config(args)
    root = str(args.root) if args.root is not None else cfg.store.root
    serve(root, read_options_for(root, cfg.store), host=args.host, port=args.port)
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
    from geoplantnet.runtime.cluster import kubernetes_spec
    from geoplantnet.runtime.kubernetes import dump_yaml

    print(dump_yaml([kubernetes_spec(_config(args).cluster)]), end="")
    return 0


def _cmd_deploy_render(args: argparse.Namespace) -> int:
    from geoplantnet.runs.deploy import render_deploy
    from geoplantnet.runtime.kubernetes import OVERLAYS

    written = render_deploy(_config(args), args.out, args.overlays or OVERLAYS, overwrite=args.overwrite)
    print(f"wrote {len(written)} files under {args.out}: kubectl apply -k {args.out}/overlays/<cpu|gpu|dev>")
    return 0


def _cmd_catalog(args: argparse.Namespace) -> int:
    from geoplantnet.core.errors import InputError

    cfg = _config(args)
    root = str(args.root) if args.root is not None else cfg.store.root
    if "://" not in root or root.startswith("file://"):  # checked before the array stack is imported
        folder = Path(root.removeprefix("file://"))
        if not folder.exists():
            raise InputError(f"{folder}: no such folder (give a store root: the folder holding the output stores)")
        if not folder.is_dir():
            raise InputError(f"{folder} is a file, not a store root (a folder of geoplantnet stores)")
        if not (folder / "stac").is_dir() and not any(p.is_file() for p in folder.glob("*/zarr.json")):
            raise InputError(f"{folder}: not a store root (no Zarr stores, no stac/ catalogue in it)")
    from geoplantnet.jobs.catalog import run_catalog, table
    from geoplantnet.storage.store import exists, read_options_for

    options = read_options_for(root, cfg.store)
    if not exists(root, options):
        raise InputError(f"{root}: nothing there (give a store root: the folder holding the output stores)")
    result = run_catalog(root, options, rebuild=args.rebuild)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0
