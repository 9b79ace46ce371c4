"""Every notebook of ``notebooks/`` run headless against a store root holding every product (the ``products_root``
session fixture: two years of a series, value, an impact report), stored without outputs, and one for every
registered product (plus the catalogue and the query API): a new product without a notebook fails here."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from geoplantnet.testing.notebooks import declared_products, execute, notebooks, text_outputs

# shown by the notebooks besides the registry's products: not products, but what analysts read them through
EXTRA = {"impact", "catalog", "query"}
# notebooks of other roots: the composites of `geoplantnet run` (tests/test_demo_e2e.py runs it)
ELSEWHERE = {"explore_composites.ipynb"}
PRODUCT_NOTEBOOKS = [p for p in notebooks() if p.name not in ELSEWHERE]


def test_every_notebook_is_stored_without_outputs() -> None:
    assert notebooks(), "no notebooks found"
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear its outputs"
        assert "GEOPLANTNET_ROOT" in path.read_text(), f"{path.name}: read the store root from GEOPLANTNET_ROOT"


def test_every_product_has_a_notebook() -> None:
    from geoplantnet.products.base import load, products

    load()
    shown = {p for path in PRODUCT_NOTEBOOKS for p in declared_products(path)}
    wanted = {p.name for p in products()} | EXTRA
    assert wanted <= shown, f"no notebook shows {sorted(wanted - shown)}: add one to notebooks/ (metadata products)"
    for path in PRODUCT_NOTEBOOKS:  # a notebook declaring a product opens it (by name or by its store's name)
        from geoplantnet.products.base import get

        text = path.read_text()
        for name in declared_products(path):
            if name not in EXTRA:
                opened = f'open_product(ROOT, \\"{name}\\"' in text or get(name).store in text
                assert opened, f"{path.name} declares {name} but never opens it"


@pytest.mark.slow
@pytest.mark.parametrize("path", PRODUCT_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_every_product(path: Path, products_root: Path, tmp_path: Path) -> None:
    nb = execute(path, {"GEOPLANTNET_ROOT": str(products_root)}, tmp_path)
    text = text_outputs(nb)
    assert "Traceback" not in text
    if path.name == "explore_species.ipynb":
        assert "EPSG:3035" in text and "top species at" in text and "expected richness" in text
    images = sum(
        "image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code" for out in c.get("outputs", [])
    )
    assert images >= 1, f"{path.name} drew no figure"
