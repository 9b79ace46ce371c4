"""``geoplantnet catalog``: the catalogue of a store root listed (products, stores, years, species counts, runs), or
rebuilt from the root's complete stores (a root written before catalogues existed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geoplantnet.storage import catalog

PREFIX = catalog.PREFIX


def run_catalog(root: str, storage_options: Mapping[str, Any] | None = None, *, rebuild: bool = False) -> dict:
    """The catalogue of ``root`` as JSON-able rows, one per item (after rebuilding it from the complete stores when
    ``rebuild``)."""
    if rebuild:
        from geoplantnet.products.base import load, products
        from geoplantnet.runs.context import required_stores

        load()
        order = [p.name for p in products()]
        catalog.rebuild(root, storage_options, derived_from=required_stores, order=order)
    collection = catalog.open_catalog(root, storage_options)
    rows = []
    for item in sorted(collection.get_items(), key=lambda i: i.id):
        p = item.properties
        rows.append(
            {
                "id": item.id,
                "product": p.get(f"{PREFIX}product"),
                "store": p.get(f"{PREFIX}store"),
                "year": p.get(f"{PREFIX}year"),
                "species": p.get(f"{PREFIX}species"),
                "run": p.get(f"{PREFIX}run"),
                "model_version": p.get(f"{PREFIX}model_version"),
                "derived_from": [link.title or link.href for link in item.links if link.rel == "derived_from"],
            }
        )
    return {"root": root, "collection": catalog.CATALOG + "/" + catalog.COLLECTION, "items": rows}


def table(result: Mapping[str, Any]) -> str:
    """The listing as a plain text table."""
    columns = ("product", "store", "year", "species", "run")
    rows = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in result["items"]]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"{len(rows)} item(s) in {result['root']}/{result['collection']}")
    return "\n".join(lines)
