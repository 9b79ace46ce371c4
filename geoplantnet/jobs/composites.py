"""Jobs that follow the data flow end to end; the CLI and the scheduled pipelines call these.

``run_composites`` is the embedded default: virtual region -> STAC API on loopback -> search -> lazy cube on the Dask
cluster -> cloud-masked seasonal composites + NDVI -> ``composites.zarr`` and a PNG quick-look.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import xarray as xr

from geoplantnet.core.config import RunConfig
from geoplantnet.core.grid import Grid
from geoplantnet.core.hashing import fingerprint
from geoplantnet.reports.quicklook import composite_quicklook
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.inputs import read_options, sentinel2_items, stac_api
from geoplantnet.sources.cube import cube_composites
from geoplantnet.storage import store
from geoplantnet.storage.outputs import claim_file, write_file

log = logging.getLogger(__name__)
QUICKLOOK = "composites quick-look"


def composites(items: list, cfg: RunConfig, grid: Grid | None = None) -> xr.DataArray:
    """Lazy cloud-masked seasonal median composites (time, band, y, x) with the configured indices appended, on
    ``grid`` (default: the run's grid at the cube resolution): :func:`geoplantnet.sources.cube.cube_composites`."""
    return cube_composites(items, cfg.cube, grid or cfg.grid.grid(cfg.cube.resolution), read_options(cfg))


def run_composites(cfg: RunConfig, *, progress: bool = True, overwrite: bool = False) -> dict[str, object]:
    """Run the default job and return where its outputs are, with timings. An existing ``composites.zarr`` of the
    same run is rewritten; one of another run only with ``overwrite``; anything else is never touched."""
    t0 = time.perf_counter()
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite)
    grid = cfg.grid.grid(cfg.cube.resolution)
    out_root = cfg.store.root
    zarr_url = ctx.output("composites.zarr", "composites")  # refused before any work
    storage_options = ctx.options(zarr_url)
    # the quick-look shows the store: replaced when the store may be, and never a user's own file of that name
    local = store.is_local(out_root)
    png_path = claim_file(Path(out_root) / "composites.png", QUICKLOOK, overwrite=True) if local else None
    with stac_api(cfg, progress) as url:
        items = sentinel2_items(cfg, url)
    log.info("%d Sentinel-2 items found at %s", len(items), url)
    composite = composites(items, cfg)
    ds = composite.to_dataset(name="reflectance")
    ds["reflectance"].attrs.update(
        {"long_name": "cloud-masked seasonal median surface reflectance (bands) and spectral indices", "units": "1"}
    )
    parts = {
        "grid": grid.label(),
        "cube": fingerprint(cfg.cube.model_dump(mode="json"))[:12],
        "inputs": fingerprint(sorted(item.id for item in items))[:12],
    }
    with ctx.client() as client:
        t1 = time.perf_counter()
        with ctx.cataloguing(zarr_url, "composites"):  # listed in the root's catalogue once complete
            store.write_store(
                ds,
                zarr_url,
                product="composites",
                parts=parts,
                provenance=ctx.provenance,
                attrs={"source_items": len(items)},
                storage_options=storage_options,
                client=client,
                show_progress=progress,
                overwrite=overwrite,
                lease_ttl=cfg.store.lease_ttl_s,
            )
        compute_s = time.perf_counter() - t1
    written = store.open_store(zarr_url, storage_options=storage_options)
    png = None
    if png_path is not None:
        draw = partial(composite_quicklook, written["reflectance"], title=cfg.name)
        png = str(write_file(png_path, QUICKLOOK, draw))
    return {
        "composites": zarr_url,
        "quicklook": png,
        "items": len(items),
        "shape": dict(written.sizes),
        "compute_seconds": round(compute_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
