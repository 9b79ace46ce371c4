"""The ``geoplantnet`` command: thin sub-commands over the run configurations in ``pipelines/``, built from one table
of commands (:func:`commands`: name, help, arguments, handler; the arguments in :mod:`geoplantnet.cli.arguments`, the
handlers in :mod:`geoplantnet.cli.handlers`). Every product of the registry with a tile plan is run by ``geoplantnet
product NAME``. Nothing heavy is imported here: a handler imports its job once its inputs are checked."""

from __future__ import annotations

import argparse
import builtins
import gc
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from geoplantnet.cli.arguments import (
    catalog_args,
    config_args,
    deploy_render_args,
    habitat_map_args,
    habitats_args,
    habitats_classify_args,
    impact_args,
    indicators_args,
    map_args,
    offsets_args,
    plot_args,
    predict_args,
    product_args,
    refresh_args,
    run_args,
    sdm_args,
    sdm_table_args,
    serve_args,
    simulate_args,
    stac_serve_args,
    value_args,
)
from geoplantnet.cli.handlers import (
    _cmd_catalog,
    _cmd_cluster_spec,
    _cmd_config_show,
    _cmd_deploy_render,
    _cmd_habitat_map,
    _cmd_habitats,
    _cmd_habitats_classify,
    _cmd_impact,
    _cmd_indicators,
    _cmd_map,
    _cmd_offsets,
    _cmd_plot,
    _cmd_predict,
    _cmd_product,
    _cmd_refresh,
    _cmd_run,
    _cmd_sdm,
    _cmd_sdm_table,
    _cmd_serve,
    _cmd_simulate,
    _cmd_stac_serve,
    _cmd_value,
    _config,
)
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.runtime.interrupts import exit_status, stop_on_signals

__all__ = ["GROUPS", "Command", "_config", "build_parser", "commands", "main"]


@dataclass(frozen=True)
class Command:
    """One command, declared once: its name (``"stac serve"``: a sub-command of the group ``stac``), its one-line
    help and longer description, what builds its arguments, and its handler (exit status)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]
    description: str | None = None


# The groups of sub-commands: name -> (help, the attribute their sub-command's name is parsed into)
GROUPS = {
    "stac": ("STAC API server commands", "stac_command"),
    "config": ("configuration commands", "config_command"),
    "cluster": ("cluster commands", "cluster_command"),
    "deploy": ("Kubernetes deployment commands", "deploy_command"),
}


def commands() -> tuple[Command, ...]:
    """The table of commands, in the order ``--help`` lists them (read when the parser is built, so a handler
    replaced in a test is the one called). The registered products' tile plans are all reached through ``product``."""
    return (
        Command("run", "run the main job (region -> STAC -> cube -> composites Zarr + PNG)", run_args, _cmd_run),
        Command(
            "sdm",
            "train and evaluate species models (CNN, MaxEnt, random forest) on spatial blocks; write a report",
            sdm_args,
            _cmd_sdm,
            "With no inputs named (flags or inputs.* settings): the virtual region (scored against its true "
            "probabilities too). With --observations and --rasters: your own data (CSV or GeoParquet, coordinates in "
            "any CRS; GeoTIFFs in any CRS/resolution, aligned onto the grid set by grid.* in the configuration).",
        ),
        Command(
            "sdm-table",
            "species models from tables of extracted predictors: deep model vs MaxEnt vs random forest, scored on "
            "independent presence-absence sites and/or spatial blocks",
            sdm_table_args,
            _cmd_sdm_table,
            "Presence-only records and background sites with their predictor values (CSV/Parquet; columns named by "
            "table.* settings, e.g. pipelines/nceas-awt.yaml), optionally independent presence-absence sites (wide or "
            "long). Writes <out>/report/report.md, summary.json and the fitted models in <out>/models/.",
        ),
        Command(
            "habitats",
            "Pl@ntBERT: fill-mask pre-training on plots, EUNIS habitat fine-tuning, peers on spatial folds; saves the "
            "models",
            habitats_args,
            _cmd_habitats,
            "Plots from a CSV/Parquet table (habitats.* settings): one row per plot with a species-list column in "
            "cover order, or one row per plot x species with a cover column (--cover); a habitat column (EUNIS codes; "
            "empty = unlabelled). No table: the virtual region's plots. Writes <out>/report.md, summary.json, "
            "folds.csv, the fill-mask model in <out>/fill-mask/ and the classifier in <out>/model/.",
        ),
        Command(
            "habitats classify",
            "apply a saved habitat classifier to a plot table: top-k EUNIS habitats, conformal sets, missing species",
            habitats_classify_args,
            _cmd_habitats_classify,
            "The plot table is read as habitats reads it (wide or long, CSV or Parquet; habitats.* settings, "
            "--species-column, --cover). Writes one row per plot (--out, .csv or .parquet): habitat_1..K, "
            "probability_1..K, name_1..K, the conformal set where the classifier is calibrated, the fill-mask model's "
            "most likely missing species, and the counts of species and of species the classifier does not know; "
            "a summary beside it (<out>.summary.json).",
        ),
        Command(
            "map",
            "apply the species model over the whole grid, tile by tile on the cluster -> species.zarr",
            map_args,
            _cmd_map,
        ),
        Command(
            "habitat-map",
            "classify every pixel's predicted species assemblage (species.zarr) into EUNIS habitats -> habitat.zarr",
            habitat_map_args,
            _cmd_habitat_map,
            "Each pixel's sentence is its species above their saved thresholds (or its top-K species with "
            "habitats.map_species=K), classified by the habitat model (any kind of classifier folder); with "
            "habitats.map_model=auto|assemblage|predictors|joint, by the map's own forest trained first at the "
            "labelled plots on the species model's cross-fitted assemblages and/or the point predictors "
            "(chosen on spatial folds). Tile by tile on the cluster, resumable.",
        ),
        Command(
            "indicators",
            "biodiversity indicators with uncertainty (richness, Shannon, invasive, threatened, habitats, ecosystem "
            "health) from species.zarr and habitat.zarr -> indicators.zarr",
            indicators_args,
            _cmd_indicators,
            "Status tables (indicators.status, invasive_list, protected_list, habitat_red_list) are matched to the "
            "map's species; intervals are calibrated on held-out surveys (indicators.plots; on the virtual region "
            "independent surveys) and their coverage reported; tile by tile on the cluster, resumable.",
        ),
        Command(
            "refresh",
            "annual monitoring: map one year into the series under store.root (species, habitat, indicators) and the "
            "change since the previous year -> changes.zarr + a run summary",
            refresh_args,
            _cmd_refresh,
            "Searches the year's Sentinel-2 imagery, maps it with the series' species model and habitat classifier, "
            "appends the year along every store's year axis without rewriting other years, and reports the changes "
            "beyond the noise. Rerunning a year resumes it; --overwrite replaces that year only.",
        ),
        Command(
            "product",
            "map one registered product from the stores it reads, tile by tile on the cluster -> its store under "
            "store.root",
            product_args,
            _cmd_product,
            "Any product of the registry with a tile plan (geoplantnet.products.base: e.g. changes, or one a plugin "
            "registers): its plan reads its input stores under store.root and its tiles are written resumably; with "
            "--year, that year of its series.",
        ),
        Command(
            "value",
            "biodiversity value (0-1) at 10 m from polygons labelled high / low: a U-Net vs a random forest on spatial "
            "folds, then value.zarr and its 50 m aggregate value_50m.zarr",
            value_args,
            _cmd_value,
            "Polygons (GeoParquet / GeoJSON / GeoPackage, any CRS; value.polygons, or the virtual region's) are "
            "rasterised onto the 10 m grid; folds hold whole polygons; the report goes to <store.root>/value.",
        ),
        Command(
            "impact",
            "in-silico impact assessment: a scenario applied inside a project footprint, the affected tiles predicted "
            "again -> report.md, summary.json, maps.png, impact.gpkg",
            impact_args,
            _cmd_impact,
            "The scenario (YAML: name, land_cover, buffer_m, edge_strength, context_m) edits the models' inputs inside "
            "the footprint and its buffer; species, habitats, indicators and biodiversity value are predicted before "
            "and after, with paired Monte-Carlo dropout intervals of the change.",
        ),
        Command(
            "offsets",
            "rank candidate offset sites by the value a restoration scenario would gain there, and say whether each "
            "compensates an impact (no net loss) -> report.md, offsets.csv, offsets.gpkg",
            offsets_args,
            _cmd_offsets,
        ),
        Command(
            "plot",
            "one species from one or more species.zarr stores side by side (e.g. CNN and MaxEnt) -> PNG",
            plot_args,
            _cmd_plot,
        ),
        Command(
            "catalog",
            "list a store root's STAC catalogue (products, stores, years, species counts, runs), or --rebuild it",
            catalog_args,
            _cmd_catalog,
            "The catalogue is <ROOT>/stac/collection.json with one item per complete store (per complete year of a "
            "series), written by the jobs as they complete stores under store.root; --rebuild makes it for a root "
            "written before catalogues existed. Stores written elsewhere (--out) are not catalogued.",
        ),
        Command(
            "predict",
            "each species' probability at a table of points (CSV or Parquet out: one row per point)",
            predict_args,
            _cmd_predict,
            "Extracts the model's inputs at the points as training did and writes one row per point: the id column "
            "(--id, else the row number as 'point'), the coordinates as given, one probability column per species id. "
            "Points outside the grid or the rasters' data get NaN (counted in a warning).",
        ),
        Command(
            "simulate",
            "generate the virtual region (imagery, environment, species, observations)",
            simulate_args,
            _cmd_simulate,
        ),
        Command(
            "serve",
            "the web map viewer: a read-only tile server over a root's catalogue, on 127.0.0.1",
            serve_args,
            _cmd_serve,
            description=(
                "Serves ROOT's catalogue (its complete stores, each year of a series) to a browser: a map page "
                "(Leaflet, bundled), XYZ tiles, /api/catalog, /api/species?q=, /api/point?lon=&lat=&year=. Only "
                "catalogue items can be read, never a path from a URL. Ctrl-C stops."
            ),
        ),
        Command(
            "stac serve",
            "serve a generated region's collections on loopback until Ctrl-C",
            stac_serve_args,
            _cmd_stac_serve,
        ),
        Command("config show", "print the resolved configuration as YAML", config_args, _cmd_config_show),
        Command(
            "cluster spec",
            "print the dask-kubernetes DaskCluster resource for the configuration",
            config_args,
            _cmd_cluster_spec,
        ),
        Command(
            "deploy render",
            "write the Kustomize tree of the deployment (base/ and overlays cpu, gpu, dev) for the configuration",
            deploy_render_args,
            _cmd_deploy_render,
            "Namespace, ServiceAccount and RBAC, the pipeline's ConfigMap, the shared volume's claim (if any), the "
            "DaskCluster (CPU workers) and its DaskAutoscaler, a suspended driver Job per command and the annual "
            "refresh's CronJob, all from cluster.kubernetes.*; the gpu overlay adds the GPU worker group, dev makes it "
            "small. Credentials come from the Secrets named in cluster.kubernetes.env_from, never from these files.",
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-command per entry of :func:`commands` (sub-commands with their own ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="geoplantnet", description="Plant biodiversity maps of Europe from Sentinel-2 on Dask."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    made: dict[str, argparse.ArgumentParser] = {}
    for command in commands():
        group, _, name = command.name.rpartition(" ")
        if group in made and group not in groups:
            # a command with an action of its own (``habitats classify``): ``habitats`` alone still trains
            groups[group] = made[group].add_subparsers(dest=f"{group}_action", required=False, metavar="[ACTION]")
        elif group and group not in groups:
            help_, dest = GROUPS[group]
            groups[group] = sub.add_parser(group, help=help_).add_subparsers(
                dest=dest, required=True, metavar="SUBCOMMAND"
            )
        parent = groups[group] if group else sub
        parser_ = parent.add_parser(name, help=command.help, description=command.description)
        command.arguments(parser_)
        parser_.set_defaults(func=command.handler)
        made[command.name] = parser_
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
