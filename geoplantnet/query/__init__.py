"""The analysts' read API: a product's maps at points, in a box, per polygon, and what one pixel holds.

Lazy and decoded: stores open with :func:`geoplantnet.storage.store.open_store` (floats with NaN for no data,
probabilities 0..1, a series' complete years only, species by id or scientific name) and a query reads only the
chunks (shards) of the pixels it needs. Points, boxes and polygons come in any CRS; a point off the grid is a row of
NaN, an unknown product, variable, year or species one :class:`QueryError` (or
:class:`~geoplantnet.storage.selection.UnknownSpeciesError`, naming close matches).

::

    from geoplantnet import query

    ds = query.open_product("outputs/virtual-demo", "species")            # lazy xarray.Dataset
    query.values_at(root, [(10.5, 50.1)], product="species", species="Quercus robur")
    query.values_in(root, (10.4, 50.0, 10.6, 50.2), product="indicators")  # lon/lat box -> window
    query.zonal(parcels, root, product=["habitat", "value"])             # per polygon of a GeoDataFrame
    query.describe_point(root, 10.5, 50.1)                              # the viewer's click, as JSON

Every function takes a products root (a folder or an object-store URL: found through the root's STAC catalogue when
it has one) or a product already opened (:func:`open_product`): a server or notebook that queries often opens each
product once.
"""

from geoplantnet.query.points import describe_point, values_at, values_in
from geoplantnet.query.stores import STORES, MissingProductError, QueryError, open_product, product_url
from geoplantnet.query.zonal import zonal

__all__ = [
    "STORES",
    "MissingProductError",
    "QueryError",
    "describe_point",
    "open_product",
    "product_url",
    "values_at",
    "values_in",
    "zonal",
]
