"""``geoplantnet product NAME``: any registered product with a tile plan, on its own.

The product's plan (:class:`geoplantnet.products.base.Product`) reads its input stores under ``store.root`` (their
``--year`` in a series) and its tiles are streamed by the run context (resumable; another run's store replaced only
with ``--overwrite``); ``--evaluate`` calls its registered evaluation (:mod:`geoplantnet.evaluation.registry`)."""

from __future__ import annotations

from typing import Any

from geoplantnet.core.config import RunConfig, redact
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.products.base import get, load
from geoplantnet.runs.context import RunContext


class ProductError(GeoplantnetError):
    """A product this command cannot run on its own."""


def run_product(
    cfg: RunConfig,
    name: str,
    *,
    year: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> dict[str, Any]:
    """Write the store of the registered product ``name`` (that ``year`` of its series) and say what was done."""
    load()
    product = get(name)
    if product.plan is None:
        raise ProductError(f"product {name} has no tile plan: its own command writes it")
    ctx = RunContext(cfg, progress=progress, overwrite=overwrite, year=year)
    url = ctx.output(product.store, product.name)  # refused before a cluster starts
    if evaluate:
        from geoplantnet.runs.inputs import region_truth

        truth = region_truth(cfg)
    with ctx.client() as client:
        made = ctx.make(client, product)
    summary: dict[str, Any] = {"product": name, "store": redact({"u": url})["u"], "year": year}
    if made is None:
        return {**summary, "tiles_computed": 0, "note": "nothing to map (its plan found no input for this run)"}
    summary.update({"tiles": len(made.run.tiles), **(made.info or {})})
    if evaluate:
        from geoplantnet.evaluation.registry import evaluate as evaluations

        summary["evaluation"] = evaluations(ctx, truth, {name: made})
    return summary
