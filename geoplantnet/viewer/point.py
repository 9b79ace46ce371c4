"""A pixel's description for the page's click panel: :func:`geoplantnet.query.describe_point`, the analysts' own
answer, so the viewer and a notebook never disagree about a place."""

from __future__ import annotations

from typing import Any

from geoplantnet.query import describe_point
from geoplantnet.viewer.items import Catalogue


def describe(catalogue: Catalogue, lon: float, lat: float, year: int | None, top: int = 10) -> dict[str, Any]:
    """What is known at (lon, lat) in ``year`` (JSON-able): top species, habitat and its conformal set, indicators
    with intervals, value, changes — each where the served root has that product for that year."""
    return describe_point(
        catalogue.root, lon, lat, crs="EPSG:4326", year=year, top=top, storage_options=catalogue.storage_options
    )
