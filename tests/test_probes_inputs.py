"""Bad input fails in a second, in one line (issue 20): every case a hostile-user review found on the command line,
run in process with real files, refused before any cluster starts or model trains, with exit status 2 and one line
on stderr naming the file, setting or service to fix (never a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoplantnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"


def refused(capsys: pytest.CaptureFixture, args: list[str], *names: str) -> str:
    """Run the command; assert exit status 2 and one line on stderr naming each of ``names``; return the line."""
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("geoplantnet: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def sets(*settings: str) -> list[str]:
    return ["--config", str(CONFIG), *(a for s in settings for a in ("--set", s))]


# -- settings (core/config.py)


def test_unknown_grid_crs_is_refused_by_config_show_and_sdm(capsys, tmp_path: Path) -> None:
    line = refused(capsys, ["config", "show", *sets("grid.epsg=999999")], "--set grid.epsg", "EPSG:999999")
    assert "not a CRS" in line
    refused(capsys, ["sdm", *sets("grid.epsg=999999"), "--out", str(tmp_path / "out")], "grid.epsg", "EPSG:999999")
    # a geographic CRS is no grid (its pixels would be degrees)
    refused(capsys, ["config", "show", *sets("grid.epsg=4326")], "grid.epsg", "not a projected CRS in metres")
    refused(capsys, ["config", "show", *sets("inputs.crs=EPSG:1234567")], "--set inputs.crs", "EPSG:1234567")
    assert not (tmp_path / "out").exists()


def test_an_unknown_setting_blames_the_set_override(capsys) -> None:
    line = refused(capsys, ["config", "show", *sets("unknown.key=1")], "--set unknown.key", "no such section")
    assert str(CONFIG) not in line  # the file is not to blame
    refused(capsys, ["config", "show", *sets("cube.resolutoin=20")], "--set cube.resolutoin", "cube.resolution?")


@pytest.mark.parametrize(
    ("setting", "bound"),
    [
        ("impact.draws=1000000", "1000"),
        ("indicators.draws=5000", "1000"),
        ("value.draws=100000", "1000"),
        ("map.tile=100000", "4096"),
        ("value.tile=65536", "4096"),
        ("train.epochs=10000000", "10000"),
        ("train.ensemble=1000", "100"),
        ("train.batch_size=10000000", "65536"),
        ("cluster.n_workers=100000", "256"),
        ("habitats.train.pretrain_epochs=1000000", "10000"),
    ],
)
def test_settings_that_can_exhaust_the_machine_are_bounded(capsys, setting: str, bound: str) -> None:
    key = setting.split("=")[0]
    refused(capsys, ["config", "show", *sets(setting)], f"--set {key}", f"less than or equal to {bound}")


# -- observations (samples/observations.py)

REAL = ROOT.parent / "shared" / "data" / "real"
BRADYPUS = REAL / "predicts_bradypus_bioclim"


@pytest.mark.parametrize(("text", "expected"), [("", "the file is empty"), ("species,lon,lat\n", "no records")])
def test_observations_without_records_are_refused(capsys, tmp_path: Path, text: str, expected: str) -> None:
    observations = tmp_path / "observations.csv"
    observations.write_text(text)
    args = ["sdm", "--config", str(ROOT / "pipelines" / "bradypus.yaml"), "--observations", str(observations)]
    args += ["--rasters", str(BRADYPUS / "bio.tif"), "--out", str(tmp_path / "out"), "--quiet"]
    refused(capsys, args, str(observations), expected)


# -- tables of extracted predictors (samples/tables.py), from the NCEAS Australian Wet Tropics extracts

NCEAS = REAL / "nceas_disdat"
TABLE_SETTINGS = ("table.species=spid", "table.group=group", "table.crs=EPSG:28355")


@pytest.fixture(scope="module")
def awt_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two bird species of the AWT benchmark: their presence-only records, 600 background sites, 120 test sites
    (presence-absence and predictors), and copies with one defect each."""
    import numpy as np
    import pandas as pd

    folder = tmp_path_factory.mktemp("awt")
    po = pd.read_csv(NCEAS / "AWT_train_po.csv.gz").query("spid in ['awt01', 'awt02']")
    bg = pd.read_csv(NCEAS / "AWT_train_bg.csv.gz").head(600)
    pa = pd.read_csv(NCEAS / "AWT_test_pa.csv.gz")[["group", "siteid", "x", "y", "awt01", "awt02"]].head(120)
    env = pd.read_csv(NCEAS / "AWT_test_env.csv.gz").merge(pa[["siteid"]], on="siteid")
    frames = {"po": po, "bg": bg, "pa": pa, "env": env}
    frames["bg_inf"] = bg.assign(bc01=np.where(np.arange(len(bg)) < 3, np.inf, bg["bc01"]))
    frames["env_inf"] = env.assign(bc04=np.where(np.arange(len(env)) < 2, -np.inf, env["bc04"]))
    frames["env_nan"] = env.assign(bc04=np.where(np.arange(len(env)) < 2, np.nan, env["bc04"]))
    surveyed = pa[["awt01", "awt02"]].notna()
    frames["pa_absent"] = pa.assign(awt01=pa["awt01"].where(~surveyed["awt01"], 0.0))
    frames["pa_none"] = frames["pa_absent"].assign(awt02=pa["awt02"].where(~surveyed["awt02"], 0.0))
    paths = {name: folder / f"{name}.csv" for name in frames}
    for name, frame in frames.items():
        frame.to_csv(paths[name], index=False)
    return paths


def _table_args(paths: dict[str, Path], out: Path, **files: str) -> list[str]:
    chosen = {"presence": "po", "background": "bg", "test": "pa", "test_env": "env", **files}
    flags = [a for key, name in chosen.items() for a in (f"--{key.replace('_', '-')}", str(paths[name]))]
    return ["sdm-table", *sets(*TABLE_SETTINGS), *flags, "--out", str(out)]


@pytest.mark.parametrize(
    ("files", "culprit", "expected"),
    [
        ({"background": "bg_inf"}, "bg_inf", "3 rows with infinite predictor values (columns: bc01: 3)"),
        ({"test_env": "env_inf"}, "env_inf", "2 rows with infinite predictor values (columns: bc04: 2)"),
        ({"test": "pa_none"}, "pa_none", "no species has both a presence (1) and an absence (0) at the test sites"),
    ],
)
def test_tables_that_cannot_be_scored_are_refused_before_a_cluster_starts(
    capsys, tmp_path: Path, awt_tables: dict[str, Path], files: dict[str, str], culprit: str, expected: str
) -> None:
    out = tmp_path / "out"
    refused(capsys, _table_args(awt_tables, out, **files), str(awt_tables[culprit]), expected)
    assert not out.exists()


def test_test_sites_with_missing_predictors_or_species_without_presences_are_left_out_and_said(
    awt_tables: dict[str, Path],
) -> None:
    import numpy as np

    from geoplantnet.core.config import load_config
    from geoplantnet.samples.tables import read_tables

    names = {"presence": "po", "background": "bg", "test": "pa_absent", "test_env": "env_nan"}
    overrides = [*TABLE_SETTINGS, *(f"table.{k}={awt_tables[v]}" for k, v in names.items())]
    _, test = read_tables(load_config(CONFIG, overrides, environ={}).table)
    assert test is not None and len(test.site) == 118 and np.isfinite(test.features).all()
    assert any("2 of 120 test sites left out of the scores: missing values of bc04" in n for n in test.notes)
    assert any("1 species with no presence at the test sites not scored: awt01" in n for n in test.notes)


# -- vegetation plot tables (samples/plots.py, jobs/habitats.py), from the GeoLifeCLEF 2024 surveys with EUNIS codes

GLC24 = REAL / "glc24_pa_habitats" / "GLC24_PA_species_habitat_joined.csv"
PLOT_SETTINGS = (
    "habitats.plot=surveyId",
    "habitats.species=target_species_ids",
    "habitats.habitat=habitatIds",
    "habitats.block_size=1.0",
)


@pytest.fixture(scope="module")
def glc24_plots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """80 surveys of two habitats (N16, R22) and copies with one defect each."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("glc24")
    table = pd.read_csv(GLC24, usecols=["surveyId", "target_species_ids", "lon", "lat", "habitatIds"])
    two = table[table["habitatIds"].isin(["N16", "R22"])].head(80).reset_index(drop=True)
    script, coords = two.copy(), two.astype({"lon": object})
    script.loc[2, "habitatIds"] = "<script>"
    coords.loc[4, "lon"] = "abc"
    frames = {
        "two": two,
        "one": table[table["habitatIds"] == "N16"].head(60),
        "script": script,
        "empty": two.assign(habitatIds=""),
        "nan": two.assign(habitatIds="nan"),
        "coords": coords,
    }
    paths = {name: folder / f"{name}.csv" for name in frames}
    for name, frame in frames.items():
        frame.to_csv(paths[name], index=False)
    (folder / "blank.csv").write_text("")
    paths["blank"] = folder / "blank.csv"
    return paths


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("one", "1 habitat class at EUNIS level 3 with habitats.min_plots=2 plots or more (N16 60)"),
        ("script", "column 'habitatIds' (habitats.habitat) holds values that are not EUNIS habitat codes"),
        ("empty", "0 plots with one habitat code (column 'habitatIds') are too few"),
        ("nan", "0 plots with one habitat code (column 'habitatIds') are too few"),
        ("coords", "column 'lon' (habitats.x) holds values that are not finite numbers in row 5 ('abc')"),
        ("blank", "cannot read it (plot table; EmptyDataError"),
    ],
)
def test_plot_tables_that_cannot_train_a_classifier_are_refused_before_a_cluster_starts(
    capsys, tmp_path: Path, glc24_plots: dict[str, Path], table: str, expected: str
) -> None:
    out = tmp_path / "out"
    args = ["habitats", *sets(*PLOT_SETTINGS), "--plots", str(glc24_plots[table]), "--out", str(out), "--quiet"]
    line = refused(capsys, args, str(glc24_plots[table]), expected)
    assert "table table" not in line
    if table == "script":
        assert "row 3 ('<script>')" in line
    assert not out.exists()


def test_a_valid_plot_table_reads_with_its_codes(glc24_plots: dict[str, Path]) -> None:
    from geoplantnet.core.config import load_config
    from geoplantnet.jobs.habitats import load_habitat_data

    cfg = load_config(CONFIG, [*PLOT_SETTINGS, f"habitats.plots={glc24_plots['two']}"], environ={})
    data = load_habitat_data(cfg)
    assert sorted(set(data.labelled.habitat)) == ["N16", "R22"] and len(data.labelled) == 80


# -- users' polygons (samples/vectors.py): an invalid geometry is refused, never silently repaired

SCENARIO = ROOT / "pipelines" / "examples" / "impact" / "sealed.yaml"


def _polygons_with_a_bow_tie(path: Path) -> Path:
    """Two polygons near the example footprint (lon/lat), the second a self-intersecting bow-tie."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    square = Polygon([(10.0083, 49.9145), (10.0125, 49.9145), (10.0125, 49.9170), (10.0083, 49.9170)])
    bow_tie = Polygon([(10.0083, 49.9145), (10.0125, 49.9170), (10.0125, 49.9145), (10.0083, 49.9170)])
    frame = gpd.GeoDataFrame({"value": ["high", "low"]}, geometry=[square, bow_tie], crs=4326)
    frame.to_file(path, driver="GeoJSON")
    return path


def test_an_invalid_footprint_is_refused_with_its_feature(capsys, tmp_path: Path) -> None:
    footprint = _polygons_with_a_bow_tie(tmp_path / "footprint.geojson")
    args = ["impact", *sets(f"workdir={tmp_path / 'work'}", f"store.root={tmp_path / 'out'}")]
    args += ["--footprint", str(footprint), "--scenario", str(SCENARIO), "--quiet"]
    refused(capsys, args, f"footprint {footprint}", "feature 1 is not a valid polygon: Self-intersection")
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_invalid_value_polygons_are_refused_with_their_feature(capsys, tmp_path: Path) -> None:
    polygons = _polygons_with_a_bow_tie(tmp_path / "labels.geojson")
    args = ["value", *sets(f"workdir={tmp_path / 'work'}", f"store.root={tmp_path / 'out'}")]
    args += ["--polygons", str(polygons), "--quiet"]
    refused(capsys, args, f"value polygons {polygons}", "feature 1 is not a valid polygon: Self-intersection")
    assert not (tmp_path / "work").exists()


# -- object stores (storage/store.py): unreachable or uncredentialed, told before any work, in one line


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the environment or ~/.aws: only what the configuration gives."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _store(endpoint: str, **credentials: str) -> list[str]:
    import json

    options = json.dumps({**credentials, "client_kwargs": {"endpoint_url": endpoint}})
    return ["store.root=s3://geoplantnet/run", f"store.storage_options={options}"]


def test_an_object_store_that_is_down_is_one_line_within_seconds(capsys, tmp_path: Path, no_aws_credentials) -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    settings = _store(f"http://127.0.0.1:{closed}", key="probe-key", secret="probe-secret")
    t0 = time.perf_counter()
    line = refused(
        capsys,
        ["map", *sets(*settings, f"workdir={tmp_path / 'work'}"), "--quiet"],
        "object store for s3://geoplantnet/run/species.zarr",
        "cannot reach the endpoint",
    )
    assert time.perf_counter() - t0 < 20  # not the retries' half minute of backoff
    assert "probe-secret" not in line and "probe-key" not in line
    assert not (tmp_path / "work").exists()  # refused before the virtual region or a model is made


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [({}, "no credentials found"), ({"key": "geoplantnet-test", "secret": "wrong"}, "access denied")],
)
def test_value_on_an_uncredentialed_store_is_refused_before_training(
    capsys, tmp_path: Path, s3_server, no_aws_credentials, credentials: dict[str, str], expected: str
) -> None:
    args = ["value", *sets(*_store(s3_server.endpoint, **credentials), f"workdir={tmp_path / 'work'}"), "--quiet"]
    line = refused(capsys, args, "s3://geoplantnet/run/value.zarr", expected)
    assert "wrong" not in line
    assert not (tmp_path / "work").exists()


def test_the_value_model_travels_with_the_store_options(s3_server, no_aws_credentials) -> None:
    """The value model under an object-store root is written and read (driver and workers) with store.storage_options:
    credentials given only there reach the model file."""
    from geoplantnet.core.config import load_config
    from geoplantnet.inference.species import ModelRef
    from geoplantnet.inference.value import cached_value_model
    from geoplantnet.models.value_net import ValueModel, ValueSpec
    from geoplantnet.runs.context import RunContext
    from geoplantnet.storage.store import read_options_for, storage_options_for

    settings = _store(s3_server.endpoint, key=s3_server.key, secret=s3_server.secret)
    cfg = load_config(CONFIG, settings, environ={})
    url = RunContext(cfg).value_model_url
    spec = ValueSpec(base_channels=2, depth=1, dropout=0.1, features=["a", "b"], mean=[0.0, 0.0], std=[1.0, 1.0])
    model = ValueModel.build(spec)
    sha = model.save(url, storage_options_for(url, cfg.store))
    loaded, loads = cached_value_model(ModelRef(url, sha), "cpu", read_options_for(url, cfg.store))
    assert loaded.version == model.version and loads >= 1
