"""The overview levels a tile reads (:mod:`geoplantnet.storage.overviews`): a low zoom reads a coarse level, so a
view of a large map never reads it at full resolution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import xarray as xr

    from geoplantnet.viewer.items import Item


def factors(item: Item, storage_options: Mapping[str, Any] | None = None) -> list[int]:
    """The overview factors the item's store holds (empty: full resolution only)."""
    try:
        from geoplantnet.storage.overviews import levels
    except ImportError:  # until h26-overviews is merged
        return []
    return list(levels(item.url, storage_options))


def overview(
    item: Item,
    *,
    factor: int | None = None,
    max_pixels: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset | None:
    """The item's overview at ``factor`` (or the finest with at most ``max_pixels`` a side); None without overviews."""
    if factor is None and not factors(item, storage_options):
        return None
    from geoplantnet.storage.overviews import open_overview

    return open_overview(
        item.url, factor=factor, max_pixels=max_pixels, storage_options=storage_options, year=item.year
    )
