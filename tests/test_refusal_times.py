"""Bad input fails fast: every command reads and checks its inputs (files, settings, scenarios, model files, stores)
before it generates the virtual region, searches imagery, starts a Dask cluster or loads and trains models.

Each case runs the command in this process (``geoplantnet.cli.main``) on the default configuration with an empty
workdir, so anything heavy done before the check would show: the default virtual region alone takes tens of seconds
to generate. The assertions: exit status 2, one line on stderr naming the culprit, no region generated, no cluster
started (:func:`_no_cluster`), and under 3 s of the command's own time. The interpreter's imports are paid once,
before the clock starts (:func:`_imported`): they are the same for good and bad input. The figures are printed at
the end of the module."""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoplantnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"
LIMIT_S = 3.0
TIMINGS: dict[str, float] = {}

# a square inside the default grid (EPSG:3035, left 4321000, top 2981000, 5 km)
SQUARE = [[4322000, 2980000], [4322300, 2980000], [4322300, 2979700], [4322000, 2979700], [4322000, 2980000]]


@pytest.fixture(scope="module", autouse=True)
def _imported(request: pytest.FixtureRequest) -> Iterator[None]:
    """The job modules imported once (torch, transformers, Dask: seconds the first command of a process pays for
    any input), then, after the module's cases, the figures as a table."""
    for name in ("composites", "sdm", "tabular", "habitats", "mapping", "habitat_map", "indicators", "refresh",
                 "value", "impact", "predict", "inputs", "quicklook"):  # fmt: skip
        importlib.import_module(f"geoplantnet.jobs.{name}")
    importlib.import_module("geoplantnet.sim.region")
    yield
    lines = [f"  {case:<52} {seconds:5.2f} s" for case, seconds in sorted(TIMINGS.items())]
    report = "\nrefusal times (in-process main(), imports excluded):\n" + "\n".join(lines)
    # shown without -s too (capsys.disabled() does the same for a test)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(report)


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a cluster before the check fails the case, however fast the cluster would start (a local one takes a
    second on an idle machine, half a minute on a busy one: the clock alone would not say): the one place a client
    is made (:func:`geoplantnet.runtime.cluster.get_client`) raises instead."""
    from geoplantnet.runtime import cluster

    def started(cfg: object) -> None:
        raise AssertionError("a Dask cluster was started before the input was checked")

    monkeypatch.setattr(cluster, "get_client", started)


@dataclass(frozen=True)
class Case:
    """A command line (``{tmp}`` is the case's folder) with the files it names, and what its error must name."""

    command: str  # split at spaces
    culprit: str  # a substring of the error line: the file or setting to fix
    files: Callable[[Path], None] = lambda tmp: None


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


FOOTPRINT = _write("footprint.geojson", _geojson({"name": "quarry"}))
SCENARIO = _write("scenario.yaml", "name: quarry\nland_cover: urban\nbuffer_m: 50\n")
CORRUPT_MODEL = _write("model.pt", b"PK\x03\x04" + b"not a model file " * 20)

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
    "map/missing model file": Case("map --model {tmp}/nowhere.pt", "nowhere.pt"),
    "habitat-map/missing species.zarr": Case("habitat-map --species {tmp}/species.zarr", "species.zarr"),
    "indicators/missing species.zarr": Case("indicators --species {tmp}/species.zarr", "species.zarr"),
    "indicators --from-model/corrupt model file": Case(
        "indicators --from-model --model {tmp}/model.pt", "model.pt", CORRUPT_MODEL
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
    ),
    "predict/points without coordinate columns": Case(
        "predict --model {tmp}/model.pt --points {tmp}/points.csv --out {tmp}/p.csv",
        "points.csv: no column 'lon'",
        _both(CORRUPT_MODEL, _write("points.csv", "id,easting,northing\n1,4322000,2980000\n")),
    ),
    "plot/missing species.zarr": Case("plot {tmp}/species.zarr --species sp0001 --out {tmp}/map.png", "species.zarr"),
    "simulate/sim.start not a date": Case("simulate --set sim.start=March-2024", "sim.start"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_in_seconds(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    case = CASES[name]
    case.files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.command.split()]
    command, rest = argv[0], argv[1:]
    if command != "plot":  # plot reads stores only: no configuration
        work, out = tmp_path / "work", tmp_path / "out"
        rest += ["--config", str(CONFIG), "--set", f"workdir={work}", "--set", f"store.root={out}"]
        rest += [] if command == "sdm-table" else ["-q"]
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main([command, *rest])
    seconds = time.perf_counter() - t0
    TIMINGS[name] = seconds
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, "\n".join(err[-3:])  # the end of a traceback says what started
    assert len(err) == 1 and err[0].startswith("geoplantnet: error: "), err
    assert case.culprit in err[0], err[0]
    assert not (tmp_path / "work" / "region").exists(), "the virtual region was generated before the check"
    assert seconds < LIMIT_S, f"{name}: {seconds:.1f} s"
