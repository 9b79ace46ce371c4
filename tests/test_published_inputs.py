"""Inputs that workers read without a shared disk: with ``workdir`` an object-store URL, the virtual region and a
user's split rasters are published there (once, the marker last) and every raster a tile task opens is read through
GDAL's ``/vsis3/`` configured from the store's options (sources/gdal.py). Real components: a SeaweedFS S3 server and
Dask workers in processes of their own (their own folder, HOME and TMPDIR, no AWS credential in their environment)
while the driver's local copy of the region has been moved away; the stores equal those of a local workdir."""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from geoplantnet.core.config import load_config
from geoplantnet.testing.fixtures import MAP_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"


@pytest.fixture(scope="module")
def isolated_cluster(tmp_path_factory: pytest.TempPathFactory):
    """The scheduler address of workers that share no folder with this process (each its own cwd, HOME and TMPDIR)
    and hold no credential but what a task brings (no ~/.aws, no instance metadata)."""
    from geoplantnet.testing.cluster import unshared_cluster

    root = tmp_path_factory.mktemp("workers")
    none = str(root / "no-aws-file")
    env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": none, "AWS_CONFIG_FILE": none}
    with unshared_cluster(root, env) as (address, _):
        yield address


def _sets(s3, name: str) -> list[str]:
    """An object-store workdir and store root of their own on the server, its options given as settings."""
    prefix = f"s3://{s3.bucket}/{name}-{uuid.uuid4().hex[:8]}"
    return [
        f"workdir={prefix}/work",
        f"store.root={prefix}/out",
        f"store.storage_options={json.dumps(s3.storage_options)}",
    ]


def _client(sets: list[str], address: str):
    from geoplantnet.runtime.cluster import connect
    from geoplantnet.testing.cluster import address_sets

    return connect(load_config(CONFIG, [*sets, *address_sets(address)]).cluster)


def test_the_gdal_environment_reads_the_store_and_never_shows_the_credential(tmp_path, s3_server, monkeypatch) -> None:
    """An ``s3://`` COG read with the store's options equals the local file; without them GDAL cannot sign (the one
    environment is what makes the read work); the credential is in no repr and survives pickling (tasks carry it);
    with only the endpoint configured, the credential comes from the environment."""
    import s3fs
    from affine import Affine

    from geoplantnet.core.grid import Grid
    from geoplantnet.sources import predictors
    from geoplantnet.sources.cog import write_cog
    from geoplantnet.sources.cube import CubeError
    from geoplantnet.sources.gdal import GDAL_ENV, gdal_env, s3_options

    options = {
        **s3_server.storage_options,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:8333", "region_name": "eu"},
    }
    assert s3_options(options) == {
        "AWS_S3_ENDPOINT": "127.0.0.1:8333",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": "eu",
        "AWS_DEFAULT_REGION": "eu",
        "AWS_ACCESS_KEY_ID": s3_server.key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret,
        "AWS_SESSION_TOKEN": "",
    }
    assert s3_options({"client_kwargs": {"endpoint_url": "https://s3.example.org"}})["AWS_HTTPS"] == "YES"
    assert gdal_env(None) is GDAL_ENV and gdal_env({}) is GDAL_ENV  # local inputs: GDAL as it always was
    env = gdal_env(s3_server.storage_options)
    assert s3_server.secret not in repr(env) and s3_server.key not in repr(env)
    assert s3_server.secret not in repr(pickle.loads(pickle.dumps(env)))

    data = np.arange(48 * 48, dtype="float32").reshape(48, 48)
    left, top = 4_321_000.0, 3_210_000.0
    write_cog(tmp_path / "elevation.tif", data, Affine(10, 0, left, 0, -10, top), 3035)
    local = predictors.from_geotiffs({"elevation": tmp_path / "elevation.tif"})
    key = f"{s3_server.bucket}/gdal-{uuid.uuid4().hex[:8]}/elevation.tif"
    s3fs.S3FileSystem(**s3_server.storage_options).put_file(str(tmp_path / "elevation.tif"), key)
    remote = local[0].clone()
    remote.assets["elevation"].href = f"s3://{key}"
    grid = Grid(10, left, top, 48, 48, 3035)
    expected = predictors.environment_stack(local, grid).compute(scheduler="sync")
    stack = predictors.environment_stack([remote], grid, storage_options=s3_server.storage_options, check_assets=True)
    xr.testing.assert_equal(pickle.loads(pickle.dumps(stack)).compute(scheduler="sync"), expected)
    with pytest.raises(CubeError, match=f"s3://{key}"):
        predictors.environment_stack([remote], grid).compute(scheduler="sync")
    # the credential from the environment (a Kubernetes Secret's AWS_* variables), only the endpoint configured
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    endpoint = {"client_kwargs": {"endpoint_url": s3_server.endpoint}}
    xr.testing.assert_equal(predictors.environment_stack([remote], grid, storage_options=endpoint).compute(), expected)


def test_split_rasters_are_published_once_and_read_by_workers_without_the_drivers_disk(
    tmp_path, s3_server, isolated_cluster
) -> None:
    """A user's 3-band raster split under an object-store workdir: each band one object under
    ``<workdir>/predictors/<sha256>/``, uploaded once (a second run finds them), the items pointing there; the stack
    read on workers that cannot see the driver's split files equals the one of a local workdir."""
    import s3fs

    from geoplantnet.runs.inputs import plan_inputs, workdir
    from geoplantnet.sources import predictors
    from geoplantnet.sources.cog import write_cog

    base = ["grid.width_m=640", "grid.height_m=640"]
    grid = load_config(CONFIG, base).grid.grid()
    rng = np.random.default_rng(5)
    raster = tmp_path / "bioclim.tif"
    layers = rng.normal(size=(3, grid.height, grid.width)).astype("float32")
    write_cog(raster, layers, grid.transform, grid.epsg, band_names=["bio1", "bio4", "bio12"])
    given = [*base, f"inputs.rasters=[{raster}]"]
    local_cfg = load_config(CONFIG, [*given, f"workdir={tmp_path / 'work'}"])
    remote_cfg = load_config(CONFIG, [*given, *_sets(s3_server, "rasters")])

    inputs = plan_inputs(remote_cfg, observations=False).load()
    wd = workdir(remote_cfg)
    hrefs = [a.href for item in inputs.env_items for a in item.assets.values()]
    assert len(hrefs) == 3 and all(h.startswith(wd.url("predictors") + "/") for h in hrefs)
    assert inputs.read_options == dict(wd.options)
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    stamps = {h: fs.info(h)["LastModified"] for h in hrefs}
    again = plan_inputs(remote_cfg, observations=False).load()
    assert [a.href for item in again.env_items for a in item.assets.values()] == hrefs
    assert {h: fs.info(h)["LastModified"] for h in hrefs} == stamps  # found there, not uploaded again
    # the driver's split files gone: only the store holds the bands
    for item in plan_inputs(remote_cfg, observations=False).env_items:
        for asset in item.assets.values():
            Path(asset.href.removeprefix("file://")).unlink()

    local = plan_inputs(local_cfg, observations=False).load()
    assert local.read_options == {} and all(Path(tmp_path / "work" / "predictors") in Path(
        a.href.removeprefix("file://")).parents for i in local.env_items for a in i.assets.values())  # fmt: skip
    expected = predictors.model_stack(local.env_items, grid).compute(scheduler="sync")
    stack = predictors.model_stack(inputs.env_items, grid, storage_options=inputs.read_options)
    with _client(given, isolated_cluster) as client:
        read = client.compute(stack).result()
    xr.testing.assert_equal(read, expected)


@pytest.mark.slow
def test_a_map_from_the_published_region_on_workers_without_the_drivers_disk_equals_the_local_map(
    small_map, s3_server, isolated_cluster
) -> None:
    """The small virtual region generated once and published under ``s3://.../work/region/<settings hash>/`` (items
    pointing into the store, the marker last); a second run (this process's copy moved away) fetches it rather than
    generating it again; the species map made by workers that share no folder with the driver equals the local
    workdir's map."""
    import s3fs

    from geoplantnet.jobs.mapping import produce_map
    from geoplantnet.runs.context import RunContext
    from geoplantnet.runs.inputs import region, region_folder, virtual_inputs, workdir
    from geoplantnet.storage.store import open_store
    from geoplantnet.storage.workdir import COMPLETE

    sets = [*MAP_SETTINGS, *_sets(s3_server, "region")]
    cfg = load_config(CONFIG, sets)
    wd, folder = workdir(cfg), region_folder(cfg)
    manifest = region(cfg, progress=False)
    assert wd.complete(*folder) and wd.exists(*folder, "region.json")
    published = wd.read_bytes(*folder, COMPLETE)
    items = [json.loads(line) for _, path in manifest.collections() for line in path.read_text().splitlines()]
    hrefs = [a["href"] for item in items for a in item["assets"].values()]
    assert hrefs and all(h.startswith(wd.url(*folder) + "/") for h in hrefs)
    assert wd.exists(*folder, hrefs[0].removeprefix(wd.url(*folder) + "/"))

    manifest.root.rename(manifest.root.with_name("moved"))  # this process's copy gone: a run must use the store
    inputs = virtual_inputs(cfg)
    assert wd.read_bytes(*folder, COMPLETE) == published  # fetched, not generated and published again
    fetched = region(cfg, progress=False).root
    assert fetched != manifest.root and inputs.read_options == dict(wd.options)
    assert not list(fetched.rglob("*.tif"))  # what only the workers read stays on the store
    sources = RunContext(cfg).sources(inputs)
    assert all(
        a["href"].startswith("s3://") for i in (*sources.env_items, *sources.s2_items) for a in i["assets"].values()
    )
    fetched.rename(fetched.with_name("moved-too"))  # no local copy of any COG is left on this machine

    url = f"{cfg.store.root}/species.zarr"
    with _client(sets, isolated_cluster) as client:
        summary = produce_map(client, cfg, small_map.model, sources, url, progress=False)
    assert summary.tiles_computed == summary.tiles
    made = open_store(url, storage_options=wd.options, mask_and_scale=False)
    reference = open_store(small_map.reference, mask_and_scale=False)
    xr.testing.assert_equal(made["probability"], reference["probability"])
    assert made.equals(reference)

    # a region whose marker is gone is no region: published again (a new marker), never read half-written
    s3fs.S3FileSystem(**s3_server.storage_options).rm_file(wd.url(*folder, COMPLETE))
    assert not wd.complete(*folder)
    region(cfg, progress=False)
    assert wd.complete(*folder) and wd.read_bytes(*folder, COMPLETE) != published


def test_simulate_publishes_the_jobs_region_under_an_object_store_workdir(tmp_path, s3_server) -> None:
    """``simulate`` without ``--out`` makes the jobs' own region: under an object-store workdir, published there (and
    nothing written under a local folder named like the URL); run again, it finds it there. The same settings under
    another workdir are published there with hrefs of their own."""
    from geoplantnet.runs.inputs import region, region_folder, workdir
    from geoplantnet.storage.workdir import COMPLETE
    from geoplantnet.testing.cli import cli_sets, run_cli
    from geoplantnet.testing.regions import SMALL_REGION

    sets = [*SMALL_REGION, *_sets(s3_server, "simulate")]
    cfg = load_config(CONFIG, sets)
    wd, folder = workdir(cfg), region_folder(cfg)
    first = run_cli("simulate", "--quiet", *cli_sets(sets), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip() == f"virtual region ready: {wd.url(*folder, 'region.json')}"
    marker = wd.read_bytes(*folder, COMPLETE)
    again = run_cli("simulate", "--quiet", *cli_sets(sets), cwd=tmp_path)
    assert again.returncode == 0 and wd.read_bytes(*folder, COMPLETE) == marker
    assert list(tmp_path.iterdir()) == []
    # the same settings under another workdir, in this process: a region of its own, its items naming that store
    other = load_config(CONFIG, [*SMALL_REGION, *_sets(s3_server, "other")])
    manifest = region(other, progress=False)
    hrefs = [
        json.loads(line)["assets"] for _, items in manifest.collections() for line in items.read_text().splitlines()
    ]
    assert hrefs and all(
        a["href"].startswith(workdir(other).url(*region_folder(other)) + "/") for h in hrefs for a in h.values()
    )
