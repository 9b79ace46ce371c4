"""The indicators product (``indicators.zarr``): biodiversity indicators from the species probabilities (and the
habitat map), with their uncertainty, tile by tile.

- :mod:`.model`: what a tile's indicators need besides its pixels, and their numerics;
- :mod:`.declared`: each indicator declared once (name, dtype, CF attributes, computation), and all that derives
  from the declarations (the variables, the layout, the attributes, a tile's values, the docs' table);
- :mod:`.tiles`: the tile jobs and tile functions (worker side);
- :mod:`.plan`: the plan (driver side): the stores, the status tables, the calibration, the fingerprint.
"""

from geoplantnet.products.base import Product, register
from geoplantnet.products.indicators.declared import (
    GROUPS,
    INDICATORS,
    Indicator,
    definitions_table,
    describe,
    indicator_blocks,
    indicator_rows,
    indicator_template,
    variables,
)
from geoplantnet.products.indicators.model import (
    NO_FLAG,
    RED_LIST,
    THREATENED_CATEGORIES,
    HabitatIndicatorModel,
    IndicatorModel,
    health,
    shannon,
    typical_species,
)
from geoplantnet.validation.conformal import class_index

__all__ = [
    "GROUPS",
    "INDICATORS",
    "NO_FLAG",
    "RED_LIST",
    "THREATENED_CATEGORIES",
    "HabitatIndicatorModel",
    "Indicator",
    "IndicatorModel",
    "class_index",
    "definitions_table",
    "describe",
    "health",
    "indicator_blocks",
    "indicator_rows",
    "indicator_template",
    "shannon",
    "typical_species",
    "variables",
]

# no generic plan: the indicators need the run's status tables and surveys, which the run's inputs provide; the
# `indicators` command and the refresh's indicators step (runs/refresh_steps.py) plan them
register(
    Product("indicators", "indicators.zarr", "biodiversity indicators", requires=("species", "habitat"), yearly=True)
)
