"""Bad inputs, one or more per command, that the command must refuse in seconds with one line naming the culprit:
the cases of ``tests/test_refusal_times.py`` (in-process) and ``benchmarks/bench_refusals.py`` (as processes).

Each case runs on the default configuration with an empty workdir, so anything heavy done before the check would
show: the default virtual region alone takes tens of seconds to generate, a cluster several."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pipelines" / "default.yaml"

# a square inside the default grid (EPSG:3035, left 4321000, top 2981000, 5 km)
SQUARE = [[4322000, 2980000], [4322300, 2980000], [4322300, 2979700], [4322000, 2979700], [4322000, 2980000]]

# What the commands import (torch, transformers, Dask: seconds the first command of a process pays for any input)
IMPORTED = ("geoplantnet.jobs", "geoplantnet.runs", "geoplantnet.sim.region")  # every module of the packages

# What the heavy work imports (each a second or more to import) and a refusal should not: it is what a user waits for
HEAVY = ("torch", "transformers", "sklearn", "matplotlib", "stackstac", "distributed")


def import_commands() -> None:
    """Import every command's modules, so that a command timed after this pays for its own work only."""
    for name in IMPORTED:
        module = importlib.import_module(name)
        for info in pkgutil.iter_modules(getattr(module, "__path__", []), prefix=f"{name}."):
            importlib.import_module(info.name)


@dataclass(frozen=True)
class Case:
    """A command line (``{tmp}`` is the case's folder) with the files it names, and what its error must name."""

    command: str  # split at spaces
    culprit: str  # a substring of the error line: the file or setting to fix
    files: Callable[[Path], None] = lambda tmp: None
    needs: tuple[str, ...] = ()  # packages of HEAVY the check itself imports (model files are read with torch)

    def argv(self, tmp: Path) -> list[str]:
        """The case's files written under ``tmp`` and its command line, on the default configuration with the
        workdir and store under ``tmp`` (``plot`` reads stores only: no configuration)."""
        self.files(tmp)
        command, *rest = [a.replace("{tmp}", str(tmp)) for a in self.command.split()]
        if command != "plot":
            rest += ["--config", str(CONFIG), "--set", f"workdir={tmp / 'work'}", "--set", f"store.root={tmp / 'out'}"]
            rest += [] if command in ("sdm-table", "catalog") or rest[:1] == ["classify"] else ["-q"]
        return [command, *rest]


def _write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        path = tmp / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)

    return write


def _both(*writers: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        for w in writers:
            w(tmp)

    return write


def _raster(tmp: Path) -> None:
    """A one-band predictor GeoTIFF over the default grid."""
    with rasterio.open(tmp / "env.tif", "w", driver="GTiff", width=100, height=100, count=1, dtype="float32",
                       crs="EPSG:3035", transform=from_origin(4321000, 2981000, 50, 50)) as ds:  # fmt: skip
        ds.write(np.random.default_rng(0).random((1, 100, 100), dtype="float32"))


def _geojson(properties: dict) -> str:
    return json.dumps(
        {
            "type": "FeatureCollection",
            "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3035"}},
            "features": [
                {"type": "Feature", "properties": properties, "geometry": {"type": "Polygon", "coordinates": [SQUARE]}}
            ],
        }
    )


def _model_folder(kind: str) -> Callable[[Path], None]:
    """A model folder's metadata alone (what the checks read before a model is loaded)."""

    def write(tmp: Path) -> None:
        (tmp / kind).mkdir()
        (tmp / kind / "geoplantnet.json").write_text(json.dumps({"kind": kind, "classes": [], "version": "v"}))

    return write


FOOTPRINT = _write("footprint.geojson", _geojson({"name": "quarry"}))
SCENARIO = _write("scenario.yaml", "name: quarry\nland_cover: urban\nbuffer_m: 50\n")
CORRUPT_MODEL = _write("model.pt", b"PK\x03\x04" + b"not a model file " * 20)

LONG_PLOTS = _write("plots.csv", "plot,taxon,cover,habitat,lon,lat\n1,Carex nigra,30,R1A,10.4,47.9\n")
# a minimal EUNIS-ESy definition (docs/esy.md): one group, one habitat whose formula reads a header field
ESY_FILE = (
    "SECTION 1: Species aggregation\n\nSECTION 1: End\nSECTION 2: Species groups\n\n### Sedges\n     Carex nigra\n\n"
    "SECTION 2: End\nSECTION 3: Group definitions\n\n1          Q51  Q51 sedge bed\n"
    "<#TC Sedges GR 20> AND <$$N Altitude (m) GR 100>\n\nSECTION 3: End\nSECTION 4: Similarity\n\nSECTION 4: End\n"
)

CASES = {
    "run/cube.datetime not a date": Case("run --set cube.datetime=2024-13-01/2024-14-01", "cube.datetime"),
    "sdm/observations without a species column": Case(
        "sdm --observations {tmp}/obs.csv --rasters {tmp}/env.tif",
        "obs.csv: no column 'species'",
        _both(_write("obs.csv", "lon,lat,taxon\n10.41,47.97,Quercus robur\n"), _raster),
    ),
    "sdm-table/presence table without a species column": Case(
        "sdm-table --presence {tmp}/po.csv --background {tmp}/bg.csv --out {tmp}/report",
        "po.csv: no column 'species'",
        _both(_write("po.csv", "siteid,x,y,bio1\n1,150.1,-33.2,3\n"), _write("bg.csv", "siteid,x,y,bio1\n2,150,-33,4")),
    ),
    "habitats/plot table without a species column": Case(
        "habitats --plots {tmp}/plots.csv --out {tmp}/report",
        "plots.csv: no column 'species'",
        _write("plots.csv", "plot,taxa,habitat,lon,lat\n1,Carex nigra;Poa annua,R1A,10.4,47.9\n"),
    ),
    "habitats classify/missing classifier folder": Case(
        "habitats classify --model {tmp}/nowhere --plots {tmp}/plots.csv --out {tmp}/h.csv", "nowhere: no such folder"
    ),
    "habitats classify/fill-mask folder as the classifier": Case(
        "habitats classify --model {tmp}/fill-mask --plots {tmp}/plots.csv --out {tmp}/h.csv",
        "fill-mask: a fill-mask model, not a habitat classifier",
        _model_folder("fill-mask"),
    ),
    "habitats classify/plot table without a species column": Case(
        "habitats classify --model {tmp}/classifier --plots {tmp}/plots.csv --out {tmp}/h.csv",
        "plots.csv: no column 'species'",
        _both(_model_folder("classifier"), _write("plots.csv", "plot,taxa\n1,Carex nigra;Poa annua\n")),
    ),
    "habitats classify/--out a folder": Case(
        "habitats classify --model {tmp}/classifier --plots {tmp}/plots.csv --out {tmp}",
        "is a folder",
        _model_folder("classifier"),
    ),
    "habitats/malformed EUNIS-ESy file": Case(
        "habitats --plots {tmp}/plots.csv --species-column taxon --cover cover --out {tmp}/report "
        "--set habitats.esy={tmp}/esy.txt",
        "esy.txt:",
        _both(LONG_PLOTS, _write("esy.txt", ESY_FILE.replace("SECTION 2: End\n", ""))),
    ),
    "habitats/EUNIS-ESy header column missing": Case(
        "habitats --plots {tmp}/plots.csv --species-column taxon --cover cover --out {tmp}/report "
        "--set habitats.esy={tmp}/esy.txt --set habitats.esy_header.Altitude=altitude",
        "plots.csv: no column 'altitude' (habitats.esy_header.Altitude)",
        _both(LONG_PLOTS, _write("esy.txt", ESY_FILE)),
    ),
    "map/missing model file": Case("map --model {tmp}/nowhere.pt", "nowhere.pt", needs=("torch",)),
    "habitat-map/missing species.zarr": Case("habitat-map --species {tmp}/species.zarr", "species.zarr"),
    "indicators/missing species.zarr": Case("indicators --species {tmp}/species.zarr", "species.zarr"),
    "indicators --from-model/corrupt model file": Case(
        "indicators --from-model --model {tmp}/model.pt", "model.pt", CORRUPT_MODEL, ("torch",)
    ),
    "refresh/--year the region does not hold": Case("refresh --year 2031", "--year 2031"),
    "refresh/--year without its century": Case("refresh --year 25", "--year 25"),
    "value/polygons without the label column": Case(
        "value --polygons {tmp}/polygons.geojson",
        "polygons.geojson: no label column 'value'",
        _write("polygons.geojson", _geojson({"kind": "meadow"})),
    ),
    "impact/truncated footprint": Case(
        "impact --footprint {tmp}/footprint.geojson --scenario {tmp}/scenario.yaml",
        "footprint.geojson",
        _both(_write("footprint.geojson", _geojson({"name": "quarry"})[:150]), SCENARIO),
    ),
    "impact/scenario with an unknown key": Case(
        "impact --footprint {tmp}/footprint.geojson --scenario {tmp}/scenario.yaml",
        "bufer_m",
        _both(FOOTPRINT, _write("scenario.yaml", "name: quarry\nland_cover: urban\nbufer_m: 50\n")),
    ),
    "impact/scenario with an unknown land-cover class": Case(
        "impact --footprint {tmp}/footprint.geojson --scenario {tmp}/scenario.yaml",
        "spaceport",
        _both(FOOTPRINT, _write("scenario.yaml", "name: quarry\nland_cover: spaceport\n")),
    ),
    "impact/corrupt species model": Case(
        "impact --footprint {tmp}/footprint.geojson --scenario {tmp}/scenario.yaml --model {tmp}/model.pt",
        "model.pt",
        _both(FOOTPRINT, SCENARIO, CORRUPT_MODEL),
        ("torch",),
    ),
    "offsets/sites file that is not vector data": Case(
        "offsets --sites {tmp}/sites.geojson --scenario {tmp}/scenario.yaml",
        "sites.geojson",
        _both(_write("sites.geojson", b"\x00\x01 not a vector file"), SCENARIO),
    ),
    "offsets/corrupt value model": Case(
        "offsets --sites {tmp}/footprint.geojson --scenario {tmp}/scenario.yaml --value-model {tmp}/value.pt",
        "value.pt",
        _both(FOOTPRINT, SCENARIO, _write("value.pt", b"not a value model")),
        ("torch",),
    ),
    "predict/points without coordinate columns": Case(
        "predict --model {tmp}/model.pt --points {tmp}/points.csv --out {tmp}/p.csv",
        "points.csv: no column 'lon'",
        _both(CORRUPT_MODEL, _write("points.csv", "id,easting,northing\n1,4322000,2980000\n")),
    ),
    "plot/missing species.zarr": Case("plot {tmp}/species.zarr --species sp0001 --out {tmp}/map.png", "species.zarr"),
    "catalog/missing store root": Case("catalog {tmp}/nowhere", "nowhere"),
    "catalog/a folder of no stores": Case("catalog {tmp}", "not a store root"),
    "simulate/sim.start not a date": Case("simulate --set sim.start=March-2024", "sim.start"),
}
