"""``map`` trains and maps with its workdir and store on an object store (SeaweedFS) and Dask workers that share no
folder with the driver or each other: the fold and final models travel through the bucket, and a second run reuses
the cached model from there."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from geoplantnet.testing.cli import cli_sets, run_cli
from geoplantnet.testing.cluster import address_sets, unshared_cluster
from geoplantnet.testing.fixtures import MAP_SETTINGS

CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "default.yaml"
pytestmark = pytest.mark.slow  # a SeaweedFS server, a cluster of its own, a training and two maps (~1 min)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_map_trains_and_maps_through_an_object_store_with_workers_that_share_no_disk(
    tmp_path: Path, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    from geoplantnet.storage.store import open_store

    # credentials from the environment only (never in a setting): the driver's and each worker's
    credentials = {"AWS_ACCESS_KEY_ID": s3_server.key, "AWS_SECRET_ACCESS_KEY": s3_server.secret}
    endpoint = {"client_kwargs": {"endpoint_url": s3_server.endpoint}}
    bucket = f"s3://{s3_server.bucket}"
    workdir, root = f"{bucket}/unshared/work", f"{bucket}/unshared/out"
    driver = tmp_path / "driver"
    driver.mkdir()
    overrides = [
        *MAP_SETTINGS,
        "train.epochs=2",
        f"workdir={workdir}",
        f"store.root={root}",
        f"store.storage_options={json.dumps(endpoint)}",
    ]
    with unshared_cluster(tmp_path / "cluster", env=credentials) as (address, workers):
        sets = cli_sets([*overrides, *address_sets(address)])
        first = run_cli("map", "--quiet", *sets, cwd=driver, env=credentials)
        assert first.returncode == 0, first.stderr[-3000:]
        second = run_cli("map", "--quiet", "--out", f"{root}/again.zarr", *sets, cwd=driver, env=credentials)
        assert second.returncode == 0, second.stderr[-3000:]
        # nothing written where a worker's pod keeps its files (working directory, home): only its scratch (TMPDIR),
        # where the training task fetched the training set the driver staged in the bucket, deleted with the stage
        # once the training was over (a long-lived worker would otherwise keep every run's)
        for folder in workers:
            assert _files(folder / "cwd") == [] and _files(folder / "home") == [], folder
        fetched = [f for w in workers for f in (w / "tmp").glob("geoplantnet-*/fetched")]
        assert fetched and not [p for f in fetched for p in f.iterdir()], fetched
    made = json.loads(first.stdout[first.stdout.index("{") :])
    again = json.loads(second.stdout[second.stdout.index("{") :])
    # trained once, by the workers, into the bucket; the second run reuses the model from there (no training)
    assert made["trained"] is not None and again["trained"] is None
    assert made["model"] == again["model"]
    assert made["model"].startswith(f"{workdir}/map-models/") and made["model"].endswith("/model/map.pt")
    fs = fsspec.filesystem("s3", key=s3_server.key, secret=s3_server.secret, **endpoint)
    assert fs.isfile(made["model"])
    # the stage the driver and the workers exchanged the training set and fold models through is gone
    # (SeaweedFS lists an emptied prefix as one empty entry of its own name)
    left = fs.find(f"{workdir}/train", detail=True)
    assert not [p for p, info in left.items() if info["size"] and not p.endswith("/train")], left
    assert again["tiles_computed"] == made["tiles_computed"] == 9
    # the same model, the same map
    options = {"key": s3_server.key, "secret": s3_server.secret, **endpoint}
    a, b = (open_store(url, storage_options=options) for url in (made["store"], again["store"]))
    np.testing.assert_array_equal(a["probability"].values, b["probability"].values)
    # nothing of the workdir was written on the driver's disk: the virtual region was published to the bucket (from
    # the driver's scratch) and its COGs read by the workers from there
    assert _files(driver) == []
    assert fs.glob(f"{workdir}/region/*/region.json")  # region/<settings hash>/
    # the habitat map's cross-fit is cached beside the map model, by the same key, and read back from the bucket
    from geoplantnet.core.config import load_config
    from geoplantnet.runs.context import RunContext
    from geoplantnet.runs.habitat_model import _raw_assemblages

    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(driver)
    ctx = RunContext(load_config(CONFIG, overrides), progress=False)
    inputs = ctx.inputs()
    key = ctx.species_training_key(inputs)
    assert made["model"] == ctx.workdir.url("map-models", key, "model", "map.pt")
    x = np.arange(3.0)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=x, species=np.asarray(["a"]), prob=np.ones((3, 1)), folds=np.zeros(3, int))
    ctx.workdir.write_bytes(buf.getvalue(), "map-models", key, "crossfit", "assemblages.npz")
    cached = _raw_assemblages(ctx, None, inputs)  # no cluster: a cache miss would fail
    np.testing.assert_array_equal(cached.x, x)
