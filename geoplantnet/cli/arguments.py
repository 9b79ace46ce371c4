"""The arguments of every command, one builder each (the table of commands in :mod:`geoplantnet.cli` names them),
and the options commands share: the configuration, a user's inputs, ``--overwrite``, ``--quiet``."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "default.yaml"


def config_args(parser: argparse.ArgumentParser) -> None:
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


def overwrite_arg(parser: argparse.ArgumentParser, output: str, *, report: bool = False) -> None:
    help_ = (
        f"replace an earlier {output} at the output (only geoplantnet's own: a folder or file it did not write is "
        "never touched)"
        if report
        else f"replace a {output} of another run (other model, grid, tiling or inputs) at the output; without it "
        "such a store is left alone and the command stops. A path that is not a geoplantnet store is never replaced"
    )
    parser.add_argument("--overwrite", action="store_true", help=help_)


def input_args(parser: argparse.ArgumentParser) -> None:
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


INPUT_FLAGS = ("observations", "crs", "x", "y", "species", "presence", "survey", "rasters", "categorical", "sentinel2")


def model_args(parser: argparse.ArgumentParser) -> None:
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


def quiet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def run_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    quiet_arg(parser)
    overwrite_arg(parser, "composites.zarr")


def sdm_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    input_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <store.root>/sdm)")
    quiet_arg(parser)
    overwrite_arg(parser, "sdm report", report=True)


def sdm_table_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--presence", type=Path, default=None, help="presence-only records (table.presence)")
    parser.add_argument("--background", type=Path, default=None, help="background sites (table.background)")
    parser.add_argument("--test", type=Path, default=None, help="independent presence-absence sites (table.test)")
    parser.add_argument("--test-env", type=Path, default=None, help="test-site predictors, joined on table.site")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <store.root>/sdm-table)")
    overwrite_arg(parser, "sdm-table report", report=True)


def habitats_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--plots", type=Path, default=None, help="plot table (habitats.plots)")
    parser.add_argument("--species-column", default=None, help="species column (habitats.species)")
    parser.add_argument("--cover", default=None, help="cover column of a long table (habitats.cover)")
    parser.add_argument("--habitat", default=None, help="habitat code column (habitats.habitat)")
    parser.add_argument(
        "--unlabelled",
        type=Path,
        nargs="*",
        default=None,
        help="more plot tables for pre-training only (habitats.unlabelled)",
    )
    parser.add_argument("--no-evaluation", action="store_true", help="train the final models only (no folds)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <store.root>/habitats)")
    quiet_arg(parser)
    overwrite_arg(parser, "habitats report", report=True)


def habitats_classify_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument(
        "--model", required=True, help="habitat classifier folder (<out>/model of geoplantnet habitats)"
    )
    parser.add_argument("--plots", type=Path, required=True, help="plot table to classify (CSV or Parquet)")
    parser.add_argument("--out", type=Path, required=True, help="output table: .csv or .parquet (one row per plot)")
    parser.add_argument("--top-k", type=int, default=None, help="habitats per plot (habitats.classify_top_k, 3)")
    parser.add_argument(
        "--missing",
        type=int,
        default=None,
        help="most likely missing species per plot from the fill-mask model (habitats.classify_missing, 5; 0: none)",
    )
    parser.add_argument(
        "--fill-mask",
        default=None,
        help="fill-mask model folder (default: the fill-mask folder beside the classifier's, when there is one)",
    )
    parser.add_argument("--species-column", default=None, help="species column (habitats.species)")
    parser.add_argument("--cover", default=None, help="cover column of a long table (habitats.cover)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the table (and its summary) this command wrote before"
    )


def map_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument(
        "--model", default=None, help="trained model file (default: map.model, or train one on --observations)"
    )
    parser.add_argument("--out", default=None, help="species.zarr path or URL (default: <store.root>/species.zarr)")
    quiet_arg(parser)
    overwrite_arg(parser, "species.zarr")
    input_args(parser)


def habitat_map_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument(
        "--species", dest="species_store", default=None, help="species.zarr (default: <store.root>/species.zarr)"
    )
    parser.add_argument(
        "--model", default=None, help="habitat classifier folder (default: <store.root>/habitats/model)"
    )
    parser.add_argument("--out", default=None, help="habitat.zarr path or URL (default: <store.root>/habitat.zarr)")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="virtual region: score the map against its true habitats, next to a "
        "direct random forest from the same predictors",
    )
    quiet_arg(parser)
    overwrite_arg(parser, "habitat.zarr")


def indicators_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--species", dest="species_store", default=None, help="default: <store.root>/species.zarr")
    parser.add_argument(
        "--habitats", dest="habitat_store", default=None, help="default: <store.root>/habitat.zarr when it exists"
    )
    parser.add_argument("--no-habitats", action="store_true", help="species indicators only (no habitat.zarr)")
    parser.add_argument(
        "--from-model",
        action="store_true",
        help="fused mode: predict the species (and classify the habitats) inside each indicator tile, on the "
        "configured inputs, writing indicators.zarr only (no species.zarr, no habitat.zarr)",
    )
    parser.add_argument(
        "--model", default=None, help="--from-model: species model file (default: map.model, else trained as map does)"
    )
    parser.add_argument(
        "--habitat-model",
        default=None,
        help="--from-model: habitat classifier folder (default: <store.root>/habitats/model when it exists)",
    )
    parser.add_argument(
        "--out", default=None, help="indicators.zarr path or URL (default: <store.root>/indicators.zarr)"
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="virtual region: error of every indicator against the truth"
    )
    quiet_arg(parser)
    overwrite_arg(parser, "indicators.zarr")


def deploy_render_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder of the Kustomize tree (base/, overlays/)")
    parser.add_argument(
        "--overlay",
        dest="overlays",
        action="append",
        choices=("cpu", "gpu", "dev"),
        default=None,
        help="write only this overlay (repeatable; default: cpu, gpu and dev)",
    )
    overwrite_arg(parser, "deployment tree", report=True)


def monitoring_year(text: str) -> int:
    """``--year``: a calendar year, or ``last``: the year before today's (UTC), so a yearly CronJob maps the year
    that has just ended whatever year it runs in."""
    if text == "last":
        return datetime.datetime.now(datetime.UTC).year - 1
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a year (e.g. 2025) nor 'last'") from None


def refresh_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument(
        "--year",
        type=monitoring_year,
        required=True,
        help="the monitoring year to map (e.g. 2025: whole composite seasons, December 2024 to November 2025 with "
        "cube.composite QS-DEC), or 'last': the calendar year before the run's (UTC; what the yearly CronJob uses)",
    )
    parser.add_argument(
        "--model", default=None, help="species model file (default: the series' first year's, or map.model)"
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="virtual region: indicators and detected changes against the truth"
    )
    quiet_arg(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace this year of every series when another run (other model, inputs or settings) wrote it; other "
        "years are never touched, and a path that is not a geoplantnet series is never replaced",
    )


def product_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("name", metavar="NAME", help="the product's registry name (e.g. changes)")
    parser.add_argument(
        "--year", type=int, default=None, help="write that year of the product's series (the year of its inputs')"
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="virtual region: the product's registered evaluation against the truth"
    )
    quiet_arg(parser)
    overwrite_arg(parser, "store of the product")


def value_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--polygons", default=None, help="labelled polygons file or URL (value.polygons)")
    parser.add_argument("--label-column", default=None, help="column of high / low labels (value.label_column)")
    parser.add_argument(
        "--score-column",
        default=None,
        help="column of a numeric condition score per polygon: learn it, the map linear in its units "
        "(value.score_column)",
    )
    parser.add_argument("--out", default=None, help="value.zarr path or URL (default: <store.root>/value.zarr)")
    parser.add_argument(
        "--evaluate", action="store_true", help="virtual region: agreement of the 50 m map with the true value score"
    )
    quiet_arg(parser)
    overwrite_arg(parser, "value.zarr")


def impact_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--footprint", default=None, help="project polygons (GeoJSON, GeoPackage, GeoParquet; any CRS)")
    parser.add_argument("--scenario", required=True, action="append",
                        help="scenario YAML file (--random: repeat it to give each footprint one of several, never "
                        "one of its own majority class)")  # fmt: skip
    parser.add_argument("--out", default=None, help="report folder (default: <store.root>/impact/<scenario name>)")
    random = parser.add_argument_group("random evaluation (virtual region, with --evaluate; instead of --footprint)")
    random.add_argument("--random", type=int, default=None, metavar="N",
                        help="draw N footprints (and N offset site sets) at random and score them against the truth "
                        "-> <store.root>/impact/random-<scenario names>/")  # fmt: skip
    random.add_argument("--offset-scenario", default=None, help="restoration scenario of the random site sets")
    random.add_argument("--sites-per-set", type=int, default=5, help="candidate sites per random set (default 5)")
    random.add_argument("--random-seed", type=int, default=0, help="seed of the draws (default 0)")
    overwrite_arg(parser, "impact report", report=True)
    model_args(parser)


def offsets_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--sites", required=True, help="candidate site polygons (any vector format and CRS)")
    parser.add_argument("--scenario", required=True, help="restoration scenario YAML file")
    parser.add_argument("--impact", default=None, help="an impact report folder (or its summary.json) to offset")
    parser.add_argument("--id-column", default=None, help="the sites' id column (default: id, name, else row number)")
    parser.add_argument("--out", default=None, help="report folder (default: <store.root>/offsets/<scenario name>)")
    overwrite_arg(parser, "offset ranking", report=True)
    model_args(parser)


def plot_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stores", nargs="+", help="species.zarr paths or URLs (complete stores)")
    parser.add_argument("--species", required=True, help="species id or scientific name")
    parser.add_argument("--out", type=Path, required=True, help="figure file to write (.png, .pdf or .svg)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a figure geoplantnet wrote there before (never a user's file)"
    )
    parser.add_argument("--title", default=None, help="figure title (default: the species)")


def predict_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--model", default=None, help="trained model file (default: map.model)")
    parser.add_argument("--points", type=Path, required=True, help="CSV (--x/--y in --crs) or (Geo)Parquet of points")
    parser.add_argument("--id", default="id", help="point id column, copied to the output when present (default id)")
    parser.add_argument("--out", type=Path, required=True, help="output table: .csv or .parquet")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    quiet_arg(parser)
    input_args(parser)


def simulate_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <workdir>/region)")
    quiet_arg(parser)
    overwrite_arg(parser, "virtual region", report=True)


def serve_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument(
        "root", nargs="?", default=None, help="a store root: a folder or an s3:// URL (default: store.root)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")


def stac_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("region", type=Path, help="a region folder (with region.json) from `geoplantnet simulate`")
    parser.add_argument("--backend", choices=["memory", "pgstac"], default="memory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")


def catalog_args(parser: argparse.ArgumentParser) -> None:
    config_args(parser)
    parser.add_argument(
        "root", nargs="?", default=None, help="a store root: a folder or an s3:// URL (default: store.root)"
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="(re)publish an item for every complete store (and year) under ROOT; items of stores gone are withdrawn",
    )
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
