"""Real Sentinel-2 imagery through the production jobs: a BigEarthNet L2A patch (UTM 33N; 10, 20 and 60 m bands)
becomes COGs and STAC items served by a real STAC API on loopback; `geoplantnet run` composites it onto an EPSG:3035
grid, a small CNN is trained on points inside it, and `geoplantnet map` maps it. The pixels are real (see the
folder's PROVENANCE.md); the STAC JSON and the observations are made here."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
from pyproj import Transformer

from geoplantnet.core.grid import Grid
from geoplantnet.sim.stac_server import StacServer
from geoplantnet.sources.cog import write_cog
from geoplantnet.sources.stac_items import AssetSpec, collection_for, item_from_cogs, write_collection
from geoplantnet.storage.store import open_store
from geoplantnet.testing.cli import Result, run_cli

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
PATCH = REAL / "bigearthnet_s2_example" / "S2A_MSIL2A_20170613T101031_87_48"  # Austria, June 2017, UTM 33N
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")  # 10 and 20 m
COLLECTION = "bigearthnet-s2"


def _settings(grid: Grid, url: str, tmp: Path) -> list[str]:
    return [
        f"stac.url={url}",
        f"stac.s2_collection={COLLECTION}",
        "cube.datetime=2017-01-01/2017-12-31",
        f"grid.left={grid.left:.0f}",
        f"grid.top={grid.top:.0f}",
        f"grid.width_m={grid.width * grid.resolution:.0f}",
        f"grid.height_m={grid.height * grid.resolution:.0f}",
        "grid.resolution=50",
        "cube.resolution=20",
        "cube.chunk=64",
        f"workdir={tmp / 'work'}",
        f"store.root={tmp / 'out'}",
        "cluster.n_workers=2",
        "cluster.memory_limit=3GiB",
    ]


@pytest.fixture(scope="module")
def patch_api(tmp_path_factory: pytest.TempPathFactory):
    """The patch's bands as COGs (DN with the L2A scale of its 2017 baseline), one STAC item in a collection served
    by rustac on 127.0.0.1, and a 1 km x 1 km EPSG:3035 grid well inside its 1.2 km footprint."""
    if not PATCH.is_dir():
        pytest.skip(f"real data folder {PATCH} is absent")
    folder = tmp_path_factory.mktemp("bigearthnet")
    meta = json.loads(next(PATCH.glob("*_labels_metadata.json")).read_text())
    specs = []
    for band in BANDS:
        with rasterio.open(next(PATCH.glob(f"*_{band}.tif"))) as ds:
            arr, transform, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
        path = write_cog(folder / f"{band}.tif", arr, transform, epsg, nodata=0)
        specs.append(AssetSpec(band, str(path), scale=1e-4, offset=0.0))
    when = datetime.fromisoformat(meta["acquisition_date"] + "+00:00")
    item = item_from_cogs(
        PATCH.name, when, specs, collection=COLLECTION, properties={"eo:cloud_cover": 0.0, "platform": "sentinel-2a"}
    )
    coll = collection_for(COLLECTION, [item], "one real BigEarthNet-S2 patch")
    pair = write_collection(coll, [item], folder / "catalog")
    # the footprint's centre in EPSG:3035, and a 1 km square around it on the 50 m grid
    lon0, lat0, lon1, lat1 = item.bbox
    cx, cy = Transformer.from_crs(4326, 3035, always_xy=True).transform((lon0 + lon1) / 2, (lat0 + lat1) / 2)
    grid = Grid.from_origin(round(cx / 100) * 100 - 500, round(cy / 100) * 100 + 500, 50, 20, 20)
    with StacServer("memory").start([pair]) as server:
        yield server.url, grid, folder


def _cli(*args: str, env: dict | None = None) -> Result:
    proc = run_cli(*args, cwd=ROOT, env=env)  # in-process (the session's cluster): the command is tested, not a process
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_composites_of_real_imagery_through_a_stac_api(patch_api, tmp_path, shared_cluster_sets):
    url, grid, _ = patch_api
    sets = [x for s in [*_settings(grid, url, tmp_path), *shared_cluster_sets] for x in ("--set", s)]
    result = json.loads(_cli("run", "-q", *sets).stdout)
    assert result["items"] == 1
    ds = open_store(result["composites"])
    refl = ds["reflectance"]
    assert refl.rio.crs.to_epsg() == 3035 and refl.sizes["y"] == refl.sizes["x"] == 50  # 1 km at 20 m
    values = refl.isel(time=0).values
    assert np.isfinite(values).all()  # the grid lies inside the footprint: every band, 10 m and 20 m, has data
    ndvi = refl.sel(band="ndvi").isel(time=0).values
    assert 0.2 < float(np.median(ndvi)) < 0.95  # June vegetation in Austria
    assert 0.0 < float(np.median(refl.sel(band="B04").values)) < 0.2  # red reflectance, physically plausible


def green_and_bare_records(url: str, grid: Grid, tmp: Path, n: int = 240, seed: int = 0) -> Path:
    """Presence records of two pseudo-species: one where the patch is greenest (NDVI above its median), one where it
    is barest, read from the real 10 m bands at random points inside the grid."""
    rng = np.random.default_rng(seed)
    red = rasterio.open(next(PATCH.glob("*_B04.tif")))
    nir = rasterio.open(next(PATCH.glob("*_B08.tif")))
    x = rng.uniform(grid.left + 60, grid.right - 60, n)
    y = rng.uniform(grid.bottom + 60, grid.top - 60, n)
    e, nn = Transformer.from_crs(3035, red.crs, always_xy=True).transform(x, y)
    r = np.array([v[0] for v in red.sample(zip(e, nn, strict=True))], float)
    ni = np.array([v[0] for v in nir.sample(zip(e, nn, strict=True))], float)
    ndvi = (ni - r) / (ni + r)
    green = ndvi > np.median(ndvi)
    lon, lat = Transformer.from_crs(3035, 4326, always_xy=True).transform(x, y)
    table = pd.DataFrame({"lon": lon, "lat": lat, "species": np.where(green, "Viridis greenii", "Nudus barensis")})
    path = tmp / "records.csv"
    table.to_csv(path, index=False)
    return path


def test_a_model_trained_on_real_imagery_maps_it_end_to_end(patch_api, tmp_path, shared_cluster_sets):
    url, grid, _ = patch_api
    records = green_and_bare_records(url, grid, tmp_path)
    sets = [
        *_settings(grid, url, tmp_path),
        "model.patch_size=8",
        "model.width=8",
        "model.series_hidden=8",
        "model.fusion_hidden=32",
        "train.epochs=12",
        "train.n_background=200",
        "train.background=uniform",
        "validation.block_size_m=250",
        "map.tile=16",
        *shared_cluster_sets,
    ]
    args = [x for s in sets for x in ("--set", s)]
    # Sentinel-2 only (no environmental rasters): `map` trains on the records, then maps every pixel
    proc = _cli("map", "-q", *args, "--observations", str(records), "--with-s2")
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["tiles"] == 4 and result["trained"] is not None
    assert not (tmp_path / "work" / "region").exists()  # no virtual region anywhere
    ds = open_store(result["store"])
    prob = ds["probability"]
    assert prob.rio.crs.to_epsg() == 3035 and prob.shape == (2, 20, 20)
    assert np.isfinite(prob.values).all()  # the grid lies inside the real footprint: every pixel mapped
    # the map follows the real imagery: the green species where the patch is green (NDVI from the 10 m bands)
    x, y = np.meshgrid(grid.x, grid.y)
    red = rasterio.open(next(PATCH.glob("*_B04.tif")))
    nir = rasterio.open(next(PATCH.glob("*_B08.tif")))
    e, n = Transformer.from_crs(3035, red.crs, always_xy=True).transform(x.ravel(), y.ravel())
    r = np.array([v[0] for v in red.sample(zip(e, n, strict=True))], float)
    ni = np.array([v[0] for v in nir.sample(zip(e, n, strict=True))], float)
    ndvi = (ni - r) / (ni + r)
    green = prob.sel(species_name="Viridis greenii").values.ravel()
    bare = prob.sel(species_name="Nudus barensis").values.ravel()
    rho_green = pd.Series(green).corr(pd.Series(ndvi), method="spearman")
    rho_bare = pd.Series(bare).corr(pd.Series(ndvi), method="spearman")
    assert rho_green > 0.3 and rho_bare < -0.3, (rho_green, rho_bare)
