"""The species map as a registered product: its registry entry, and its plan through a run context writing the same
store as the map command's driver."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoplantnet.storage.store import open_store
from geoplantnet.testing.fixtures import SmallMap


def test_the_registered_species_plan_writes_the_reference_map(small_map: SmallMap, tmp_path: Path) -> None:
    from geoplantnet.products import base, species_map
    from geoplantnet.runs.context import RunContext

    product = base.get("species")
    assert (product.store, product.yearly, product.plan) == ("species.zarr", True, species_map.plan)
    cfg = small_map.cfg.model_copy(
        update={
            "map": small_map.cfg.map.model_copy(update={"model": small_map.model}),
            "store": small_map.cfg.store.model_copy(update={"root": str(tmp_path)}),
        }
    )
    ctx = RunContext(cfg, progress=False)
    with ctx.client() as client:
        plan = product.plan(ctx, client)
        fields = ("output", "grid", "tile", "layout", "parts", "attrs", "resources", "error")
        done = ctx.produce(client, plan.fn, plan.job, product=product.name, **{f: getattr(plan, f) for f in fields})
    assert len(done.results) == len(done.tiles) == 9
    written = open_store(str(tmp_path / "species.zarr"), mask_and_scale=False)
    reference = open_store(small_map.reference, mask_and_scale=False)
    np.testing.assert_array_equal(written["probability"].values, reference["probability"].values)
    assert written.attrs["model_sha256"] == reference.attrs["model_sha256"]
