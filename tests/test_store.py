"""Zarr stores: CF metadata readable by rioxarray, and no half-written store that reads as valid."""

import json
import time

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr

from geoplantnet.core.config import ConfigError, load_config
from geoplantnet.core.errors import RefusedError
from geoplantnet.core.grid import Grid
from geoplantnet.storage.lease import LeaseError, acquire
from geoplantnet.storage.store import COMPLETE, PARTS_ATTR, StoreError, open_store, storage_options_for, write_store

GRID = Grid(20.0, 4_321_000.0, 2_981_000.0, 64, 48)
RUN_A = {"product": "composites", "parts": {"grid": GRID.label(), "cube": "aaaa", "inputs": "1111"}}
RUN_B = {"product": "composites", "parts": {"grid": GRID.label(), "cube": "bbbb", "inputs": "1111"}}


def _dataset(values: da.Array) -> xr.Dataset:
    return xr.Dataset({"reflectance": (("band", "y", "x"), values)}, coords={**GRID.coords(), "band": ["B04", "B08"]})


def test_written_store_opens_with_crs_config_and_values(tmp_path):
    values = da.random.default_rng(0).random((2, *GRID.shape), chunks=(1, 32, 32)).astype("float32")
    cfg = load_config(environ={})
    url = str(tmp_path / "out.zarr")
    write_store(_dataset(values), url, provenance=cfg.to_attrs(), attrs={"source_items": 3}, **RUN_A)
    ds = open_store(url)
    np.testing.assert_allclose(ds.reflectance.values, values.compute())
    assert ds.attrs["source_items"] == 3 and "geoplantnet_config" in ds.attrs
    assert ds.reflectance.rio.crs.to_epsg() == 3035
    assert tuple(ds.reflectance.rio.transform())[:6] == tuple(GRID.transform)[:6]
    np.testing.assert_array_equal(ds.x.values, GRID.x)
    # plain xarray, as an analyst would open it
    assert xr.open_zarr(url).reflectance.dims == ("band", "y", "x")
    assert not list(tmp_path.glob(".out.zarr.*")), "temporary folders left behind"


def _fail_on_third_block(block, block_info=None):
    if block_info[0]["chunk-location"] == (1, 1, 0):
        raise RuntimeError("worker died")
    return block


def test_failed_write_leaves_no_valid_store(tmp_path):
    url = str(tmp_path / "out.zarr")
    good = da.ones((2, *GRID.shape), chunks=(1, 32, 32), dtype="float32")
    write_store(_dataset(good), url, **RUN_A)
    bad = good.map_blocks(_fail_on_third_block, dtype="float32")
    with pytest.raises(RuntimeError, match="worker died"):
        write_store(_dataset(bad * 2), url, **RUN_A)
    # the previous complete store is still there, untouched, and no temporary folder or lease is left
    assert float(open_store(url).reflectance.mean()) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_incomplete_store_is_refused(tmp_path):
    url = str(tmp_path / "partial.zarr")
    write_store(_dataset(da.zeros((2, *GRID.shape), chunks=(1, 32, 32), dtype="float32")), url, **RUN_A)
    zarr.open_group(url, mode="r+").attrs[COMPLETE] = "false"
    zarr.consolidate_metadata(url)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(url)
    with pytest.raises(StoreError, match="no Zarr store"):
        open_store(str(tmp_path / "missing.zarr"))


def _ones() -> xr.Dataset:
    return _dataset(da.ones((2, *GRID.shape), chunks=(1, 32, 32), dtype="float32"))


def test_a_users_folder_or_file_is_never_written_into_or_replaced(tmp_path):
    folder = tmp_path / "mydir"
    folder.mkdir()
    (folder / "thesis.docx").write_text("four years of work")
    with pytest.raises(RefusedError, match=r"mydir exists and is not a geoplantnet store \(1 entries\)"):
        write_store(_ones(), str(folder), **RUN_A)
    with pytest.raises(RefusedError, match=r"mydir exists and is not a geoplantnet store"):
        write_store(_ones(), str(folder), overwrite=True, **RUN_A)  # --overwrite is for stores only
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.docx"]
    assert (folder / "thesis.docx").read_text() == "four years of work"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RefusedError, match="is a file"):
        write_store(_ones(), str(tmp_path / "notes.txt"), **RUN_A)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydir", "notes.txt"]  # no lease, no temporary folder
    # an empty folder is a fine place for a store
    (tmp_path / "empty").mkdir()
    write_store(_ones(), str(tmp_path / "empty"), **RUN_A)
    assert float(open_store(str(tmp_path / "empty")).reflectance.mean()) == 1.0


def test_another_runs_store_is_refused_naming_what_differs_unless_overwrite(tmp_path):
    url = str(tmp_path / "out.zarr")
    write_store(_ones(), url, **RUN_A)
    twos = _dataset(da.full((2, *GRID.shape), 2.0, chunks=(1, 32, 32), dtype="float32"))
    with pytest.raises(RefusedError, match=r"holds a complete composites store of another run \(cube aaaa -> bbbb\)"):
        write_store(twos, url, **RUN_B)
    assert float(open_store(url).reflectance.mean()) == 1.0
    write_store(twos, url, overwrite=True, **RUN_B)
    ds = open_store(url)
    assert float(ds.reflectance.mean()) == 2.0 and json.loads(ds.attrs[PARTS_ATTR])["cube"] == "bbbb"
    write_store(_ones(), url, **RUN_B)  # the same run may always rewrite its own store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_persisted_configuration_has_no_credentials(tmp_path):
    secret = "SUPERSECRET-store-0451"
    cfg = load_config(
        environ={"GEOPLANTNET__STORE__STORAGE_OPTIONS__SECRET": secret},
        overrides=[
            f"store.storage_options.key=AKIA{secret}",
            f"stac.url=https://user:{secret}@stac.example.org/v1",
            f"map.model=https://models.example.org/m.pt?X-Amz-Signature={secret}&X-Amz-Credential={secret}",
        ],
    )
    url = str(tmp_path / "out.zarr")
    write_store(_ones(), url, provenance=cfg.to_attrs(), **RUN_A)
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not any(secret.encode() in data for data in written)
    persisted = json.loads(open_store(url).attrs["geoplantnet_config"])
    assert persisted["store"]["storage_options"] == {"key": "<redacted>", "secret": "<redacted>"}
    assert persisted["stac"]["url"] == "https://stac.example.org/v1"
    assert persisted["map"]["model"].endswith("X-Amz-Signature=<redacted>&X-Amz-Credential=<redacted>")
    assert secret not in cfg.to_yaml()


def test_storage_options_with_a_local_output_is_a_configuration_error(tmp_path):
    cfg = load_config(environ={}, overrides=["store.storage_options={key: a, secret: b}"])
    with pytest.raises(ConfigError, match=r"store.storage_options is set but the output .* is a local path"):
        storage_options_for(str(tmp_path / "out.zarr"), cfg.store)
    options = storage_options_for("s3://bucket/out.zarr", cfg.store)
    assert options["config_kwargs"]["read_timeout"] == cfg.store.timeout
    assert options["config_kwargs"]["retries"] == {"max_attempts": cfg.store.retries + 1, "mode": "standard"}


# -- one writer per store


def test_a_live_lease_refuses_a_second_writer_and_an_expired_one_is_taken_over(tmp_path):
    url = str(tmp_path / "out.zarr")
    first = acquire(url, "run-a", ttl=5.0)
    try:
        with pytest.raises(LeaseError, match=r"out.zarr is being written by another run run-a \(pid \d+"):
            acquire(url, "run-b", ttl=5.0)
        with pytest.raises(LeaseError, match="being written"):
            acquire(url, "run-a", ttl=5.0)  # the same run in a second process is refused too
        with pytest.raises(LeaseError):
            write_store(_ones(), url, **RUN_A)
        assert not (tmp_path / "out.zarr").exists()
    finally:
        first.release()
    assert not (tmp_path / ".out.zarr.lease.json").exists()
    # a run that died leaves its lease behind: it expires and the next run takes the store over
    stale = {
        "owner": "dead",
        "run": "run-a",
        "host": "h",
        "pid": 1,
        "renewed": time.time() - 60,
        "expires": time.time() - 1,
    }
    (tmp_path / ".out.zarr.lease.json").write_text(json.dumps(stale))
    write_store(_ones(), url, **RUN_A)
    assert float(open_store(url).reflectance.mean()) == 1.0 and not (tmp_path / ".out.zarr.lease.json").exists()


def test_a_lease_taken_over_is_noticed_by_its_holder(tmp_path):
    url = str(tmp_path / "out.zarr")
    lease = acquire(url, "run-a", ttl=5.0)
    try:
        lease.check()
        thief = {"owner": "other", "run": "run-b", "expires": time.time() + 60}
        (tmp_path / ".out.zarr.lease.json").write_text(json.dumps(thief))
        assert lease.lost.wait(timeout=10), "the heartbeat did not notice"
        with pytest.raises(LeaseError, match="lost its lease"):
            lease.check()
    finally:
        lease.release()
    assert json.loads((tmp_path / ".out.zarr.lease.json").read_text())["owner"] == "other"  # not ours to remove


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {
        "owner": "killed",
        "run": "run-a",
        "host": socket.gethostname(),
        "pid": int(dead.stdout),
        "renewed": time.time(),
        "expires": time.time() + 600,
    }
    (tmp_path / ".out.zarr.lease.json").write_text(json.dumps(record))
    write_store(_ones(), str(tmp_path / "out.zarr"), **RUN_A)  # no 10-minute wait for a process that is gone
    assert float(open_store(str(tmp_path / "out.zarr")).reflectance.mean()) == 1.0


def test_stamp_writes_every_string_coordinate_as_variable_length() -> None:
    """Index and non-index string coordinates alike (a non-index one must not bring the fixed-width index back)."""
    from geoplantnet.storage.store import stamp

    names = {"species": np.asarray(["sp1", "sp2"]), "species_name": ("species", np.asarray(["a", "b"]))}
    data = {"p": (("species", "y", "x"), np.zeros((2, *GRID.shape), "float32"))}
    ds = xr.Dataset(data, coords={**GRID.coords(), **names})
    out = stamp(ds, None, {"extra": "1"})
    assert out["species"].dtype == object and out["species_name"].dtype == object
    assert out.attrs[COMPLETE] == "false" and out.attrs["extra"] == "1"
    assert out["p"].attrs["grid_mapping"] == "spatial_ref"
    assert ds["species"].dtype.kind == "U" and COMPLETE not in ds.attrs  # the input is left as it was
