"""TRANSITIONAL (issue 21 merge): the registry entries of the species and indicator maps until their own modules
(``products/species_map.py``, ``products/indicators``) register them (``products/habitat_map.py`` registers
habitat). They carry no ``plan``: the annual refresh maps them through its step adapters
(:mod:`geoplantnet.runs.refresh_steps`).
Delete this module (and its line in :data:`geoplantnet.products.base.BUILTIN`) once those modules register."""

from __future__ import annotations

from geoplantnet.products.base import Product, products, register

_registered = {p.name for p in products()}
for _product in (
    Product("species", "species.zarr", "species probabilities", yearly=True),
    Product("indicators", "indicators.zarr", "biodiversity indicators", requires=("species", "habitat"), yearly=True),
):
    if _product.name not in _registered:  # never over a product's own registration
        register(_product)
