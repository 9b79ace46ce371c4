"""TRANSITIONAL (issue 21 merge): the registry entry of the indicator maps until their own module
(``products/indicators``) registers it (``products/species_map.py`` and ``products/habitat_map.py`` register theirs).
It carries no ``plan``: the annual refresh maps it through its step adapter (:mod:`geoplantnet.runs.refresh_steps`).
Delete this module (and its line in :data:`geoplantnet.products.base.BUILTIN`) once those modules register."""

from __future__ import annotations

from geoplantnet.products.base import Product, products, register

_registered = {p.name for p in products()}
for _product in (
    Product("indicators", "indicators.zarr", "biodiversity indicators", requires=("species", "habitat"), yearly=True),
):
    if _product.name not in _registered:  # never over a product's own registration
        register(_product)
