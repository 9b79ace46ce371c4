"""The web map viewer (``geoplantnet serve ROOT``): a read-only tile server over one root's catalogue and the page
that shows it (Leaflet, bundled into the package at build time).

- :mod:`~geoplantnet.viewer.items`: what may be read (catalogue items by id, their variables, species and overview
  levels: a low zoom reads a coarse level, so a view of a large map never reads it at full resolution)
- :mod:`~geoplantnet.viewer.render`: XYZ tiles (rio-tiler's reprojection, a colour table, PNG) and legends
- :mod:`~geoplantnet.viewer.point`: a clicked pixel's description (``query.describe_point``)
- :mod:`~geoplantnet.viewer.app`: the FastAPI application (routes)
- ``page/``: the page (HTML, CSS, JS); ``web/``: its npm dependencies; ``static/``: their build output

Imports query, storage and core only (pyproject.toml's layers: ``jobs > viewer > runs``).
"""
