"""The main job end to end, as a user runs it: virtual region -> STAC API -> cube on Dask -> Zarr + PNG -> notebook."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from geoplantnet.testing.cli import cli_sets, run_cli

ROOT = Path(__file__).resolve().parents[1]

SMALL = [
    "grid.width_m=2000",
    "grid.height_m=1500",
    "sim.dates_per_season=2",
    "sim.n_species=40",
    "sim.n_habitats=8",
    "sim.n_plots=60",
    "sim.n_presence_only=300",
    "cube.chunk=64",
    "cluster.n_workers=2",
    "cluster.memory_limit=2GiB",
]


def _run(tmp_path: Path, *extra: str) -> dict:
    """``run`` in-process; ``extra`` overrides last (the session's cluster among them)."""
    overrides = [*SMALL, f"workdir={tmp_path / 'work'}", f"store.root={tmp_path / 'out'}", *extra]
    proc = run_cli("run", "--quiet", *cli_sets(overrides), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, shared_cluster_sets) -> tuple[Path, dict]:
    """The job once with the in-memory STAC API (the default backend): its folder (read only: copy to rerun)."""
    root = tmp_path_factory.mktemp("demo")
    return root, _run(root, "stac.backend=memory", *shared_cluster_sets)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["memory", pytest.param("pgstac", marks=pytest.mark.pgstac)])
def test_demo_job_writes_composites_that_analysts_can_open(tmp_path, backend, request, shared_cluster_sets):
    if backend == "memory":
        result = request.getfixturevalue("first_run")[1]
    else:  # the same region (a copy of the first run's), served by the other backend
        shutil.copytree(request.getfixturevalue("first_run")[0] / "work" / "region", tmp_path / "work" / "region")
        result = _run(tmp_path, f"stac.backend={backend}", *shared_cluster_sets)
    ds = xr.open_zarr(result["composites"])
    refl = ds.reflectance
    assert refl.dims == ("time", "band", "y", "x")
    assert refl.sizes["time"] == 4 and "ndvi" in refl.band.values and "B08" in refl.band.values
    # on the configured 20 m EPSG:3035 grid, cell centres
    assert refl.rio.crs.to_epsg() == 3035 and refl.rio.resolution() == (20.0, -20.0)
    assert float(ds.x[0]) == 4_321_010.0 and float(ds.y[0]) == 2_980_990.0
    ndvi = refl.sel(band="ndvi").values
    assert np.isfinite(ndvi).mean() > 0.75, "two dates a season should leave most pixels with a clear view"
    assert np.nanmin(ndvi) >= -1 and np.nanmax(ndvi) <= 1
    summer, winter = (float(np.nanmean(refl.sel(band="ndvi").isel(time=i))) for i in (2, 0))
    assert summer > winter, "vegetation is greener in summer (JJA) than in winter (DJF)"
    cfg = json.loads(ds.attrs["geoplantnet_config"])
    assert cfg["stac"]["backend"] == backend and result["items"] == 8
    assert Path(result["quicklook"]).stat().st_size > 10_000


@pytest.mark.slow
def test_rerun_reuses_the_region_and_notebook_reads_the_store(tmp_path, first_run, shared_cluster_sets):
    # a copy of the first run's work and output folders (copy2 keeps modification times), run again there
    root, first = first_run
    for name in ("work", "out"):
        shutil.copytree(root / name, tmp_path / name)
    manifest = tmp_path / "work" / "region" / "region.json"
    before = manifest.stat().st_mtime_ns
    second = _run(tmp_path, *shared_cluster_sets)
    assert manifest.stat().st_mtime_ns == before, "the region is generated once"
    assert first["shape"] == second["shape"]

    from geoplantnet.testing.notebooks import NOTEBOOKS, execute, text_outputs

    out = Path(second["composites"]).parent  # the run's store root
    outputs = text_outputs(execute(NOTEBOOKS / "explore_composites.ipynb", {"GEOPLANTNET_ROOT": str(out)}, tmp_path))
    assert "EPSG:3035" in outputs
