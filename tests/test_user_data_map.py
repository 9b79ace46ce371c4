"""Bring your own data, end to end through the CLI: GeoTIFFs in three CRSs (one categorical) and a CSV of surveys ->
a model trained by ``map`` -> species.zarr; the model applied to the rasters alone; rasters that do not fit refused
before anything is written. No virtual region anywhere."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_bounds

from geoplantnet.core.config import load_config
from geoplantnet.storage.store import open_store
from geoplantnet.testing.cli import Result, cli_sets, run_cli
from geoplantnet.testing.regions import SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]
GRID = [s for s in SMALL_REGION if s.startswith(("grid.", "model.", "cluster.", "cube.chunk", "validation.block"))]
SETTINGS = [*GRID, "train.epochs=2", "train.n_background=200"]


def _write(path: Path, data: np.ndarray, crs: str, bounds: tuple[float, float, float, float]) -> Path:
    h, w = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype=data.dtype,
        crs=crs,
        transform=from_bounds(*bounds, w, h),
        nodata=None if data.dtype.kind in "iu" else np.nan,
    ) as ds:
        ds.write(data, 1)
    return path


def _grid_in(crs: str, grid, margin: float = 300.0) -> tuple[float, float, float, float]:
    """The grid's bounds (plus a margin, metres) in another CRS."""
    from pyproj import Transformer

    left, bottom, right, top = grid.bounds
    xs = np.array([left - margin, right + margin, left - margin, right + margin])
    ys = np.array([bottom - margin, bottom - margin, top + margin, top + margin])
    tx, ty = Transformer.from_crs(grid.epsg, crs, always_xy=True).transform(xs, ys)
    return float(min(tx)), float(min(ty)), float(max(tx)), float(max(ty))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Three rasters over the grid (lon/lat, UTM, EPSG:3035 land cover); surveys of three species that follow them."""
    root = tmp_path_factory.mktemp("byod")
    grid = load_config(None, GRID).grid.grid()
    yy, xx = np.mgrid[0:60, 0:60] / 59.0
    temp = _write(root / "temp.tif", (8 + 6 * xx).astype("float32"), "EPSG:4326", _grid_in("EPSG:4326", grid))
    moist = _write(
        root / "moist.tif", (100 * yy + 20 * xx).astype("float32"), "EPSG:32632", _grid_in("EPSG:32632", grid)
    )
    cover = _write(
        root / "landcover.tif",
        (1 + (xx > 0.5) + 2 * (yy > 0.6)).astype("uint8"),
        "EPSG:3035",
        _grid_in("EPSG:3035", grid),
    )
    rng = np.random.default_rng(0)
    n = 160
    x = rng.uniform(grid.left + 60, grid.right - 60, n)
    y = rng.uniform(grid.bottom + 60, grid.top - 60, n)
    u, v = (x - grid.left) / (grid.right - grid.left), (y - grid.bottom) / (grid.top - grid.bottom)
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(x, y)
    logits = {"Quercus robur": 6 * (u - 0.5), "Fagus sylvatica": 6 * (v - 0.5), "Carex nigra": 6 * (0.4 - u * v)}
    rows = [
        {
            "plot": f"p{i:03d}",
            "lon": lon[i],
            "lat": lat[i],
            "species": name,
            "present": int(rng.uniform() < 1 / (1 + np.exp(-logit[i]))),
        }
        for i in range(n)
        for name, logit in logits.items()
    ]
    obs = root / "surveys.csv"
    pd.DataFrame(rows).to_csv(obs, index=False)
    return {"root": root, "rasters": [temp, moist, cover], "observations": obs}


def _map(data: dict, *args: str, cluster: Sequence[str] = ()) -> Result:
    """``map`` in-process (on the cluster the ``cluster`` overrides name, else one of its own)."""
    sets = [*SETTINGS, f"workdir={data['root'] / 'work'}", f"store.root={data['root'] / 'out'}", *cluster]
    return run_cli("map", "--quiet", *args, *cli_sets(sets), cwd=ROOT)


def _result(proc: Result) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


@pytest.fixture(scope="module")
def first(data, shared_cluster_sets) -> dict:
    """The map command on the user's surveys and rasters: trains the model, then maps (the default --out)."""
    return _result(
        _map(
            data,
            "--observations",
            str(data["observations"]),
            "--survey",
            "plot",
            "--presence",
            "present",
            "--rasters",
            *map(str, data["rasters"]),
            "--categorical",
            "landcover",
            cluster=shared_cluster_sets,
        )
    )


@pytest.mark.slow
def test_map_trains_on_user_data_and_applies_the_model_to_rasters_alone(data, first, shared_cluster_sets):
    rasters = [str(p) for p in data["rasters"]]
    assert first["trained"] is not None and first["store"] == str(data["root"] / "out" / "species.zarr")
    assert not (data["root"] / "work" / "region").exists()  # no virtual region anywhere
    ds = open_store(first["store"])
    assert [str(s) for s in ds["species_name"].values] == ["Carex nigra", "Fagus sylvatica", "Quercus robur"]
    prob = ds["probability"].values
    assert prob.shape == (3, 40, 40) and np.isfinite(prob).all()  # the rasters cover the whole grid
    # the model alone on the rasters alone (no observations): the same map
    again = _result(
        _map(
            data,
            "--model",
            first["model"],
            "--rasters",
            *rasters,
            "--categorical",
            "landcover",
            "--out",
            str(data["root"] / "again.zarr"),
            cluster=shared_cluster_sets,
        )
    )
    assert again["trained"] is None
    np.testing.assert_array_equal(open_store(again["store"])["probability"].values, prob)
    assert not (data["root"] / "work" / "region").exists()


@pytest.mark.slow
def test_rasters_that_do_not_fit_the_model_are_refused_before_writing(data, first):
    temp, moist, cover = data["rasters"]
    renamed = shutil.copy(temp, data["root"] / "temperature.tif")
    cases = {
        "missing": ([moist, cover], "missing [temp]"),
        "renamed": ([renamed, moist, cover], "missing [temp]; not in the model [temperature]"),
    }
    for name, (rasters, message) in cases.items():
        out = data["root"] / f"{name}.zarr"
        proc = _map(
            data,
            "--model",
            first["model"],
            "--rasters",
            *map(str, rasters),
            "--categorical",
            "landcover",
            "--out",
            str(out),
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()
        assert len(last) == 1 and "the model was trained on environmental variables [temp, moist," in last[0]
        assert message in last[0], last[0]
        assert not out.exists() and not list(data["root"].glob(f".{name}*"))
    # without a model and without observations there is nothing to train on: one line, nothing written
    proc = _map(data, "--rasters", str(temp), "--out", str(data["root"] / "none.zarr"))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("geoplantnet: error: map needs a model")
    assert not (data["root"] / "none.zarr").exists()
