"""STAC search with pystac-client, and item metadata as tables. Never touches pixels.

Filters that a server may ignore (the in-memory rustac backend answers ``query``/``filter`` with nothing, some APIs
lack the extensions) are sent to the server only when it declares conformance, and always re-checked here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import pystac
from pyproj import CRS, Transformer

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL")
# Earth Search (element84) v1 names and eo:bands common names, per canonical Sentinel-2 band.
S2_ALIASES: dict[str, tuple[str, ...]] = {
    "B01": ("coastal",),
    "B02": ("blue",),
    "B03": ("green",),
    "B04": ("red",),
    "B05": ("rededge1", "rededge"),
    "B06": ("rededge2",),
    "B07": ("rededge3",),
    "B08": ("nir",),
    "B8A": ("nir08", "nir narrow"),
    "B09": ("nir09", "water_vapour"),
    "B11": ("swir16",),
    "B12": ("swir22",),
    "SCL": ("scl",),
}


class CatalogError(ValueError):
    """The API cannot be reached, or the collection or a band does not exist."""


class EmptySearchError(CatalogError):
    """A search matched no items."""


def lonlat_bbox(bbox: Sequence[float], crs: int | str = 4326) -> tuple[float, float, float, float]:
    """A bbox in any CRS as a lon/lat bbox that covers it (edges densified, so curved edges stay inside)."""
    if len(bbox) != 4:
        raise CatalogError(f"bbox must be (xmin, ymin, xmax, ymax), got {bbox}")
    src = CRS.from_user_input(crs)
    if src.to_epsg() == 4326:
        lon0, lat0, lon1, lat1 = map(float, bbox)
        if not (-180 <= lon0 <= lon1 <= 180 and -90 <= lat0 <= lat1 <= 90):
            raise CatalogError(f"bbox {tuple(bbox)} is not lon/lat: pass bbox_crs= (e.g. 3035)")
        return lon0, lat0, lon1, lat1
    return Transformer.from_crs(src, 4326, always_xy=True).transform_bounds(*bbox, densify_pts=21)


def _open(url: str) -> Any:
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        return Client.open(url)
    except (APIError, OSError) as exc:
        raise CatalogError(f"cannot open the STAC API at {url}: {str(exc).splitlines()[0][:200]}") from None
    except Exception as exc:  # requests' ConnectionError and friends are not OSErrors in every version
        raise CatalogError(f"cannot open the STAC API at {url}: {exc.__class__.__name__}") from None


def _cloud(item: pystac.Item) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return None if value is None else float(value)


def search(
    url: str,
    collection: str,
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: int | str = 4326,
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    limit: int = 100,
    max_items: int | None = None,
    sortby: str | None = "datetime",
) -> pystac.ItemCollection:
    """Items of ``collection`` matching the filters, all pages followed; raises :class:`EmptySearchError` on none."""
    client = _open(url)
    try:
        known = client.get_collection(collection) is not None
    except Exception:
        known = False
    if not known:
        raise CatalogError(f"collection {collection!r} does not exist at {url}")
    ll = lonlat_bbox(bbox, bbox_crs) if bbox is not None else None
    kwargs: dict[str, Any] = {"collections": [collection], "limit": limit, "max_items": max_items}
    if ll is not None:
        kwargs["bbox"] = ll
    if datetime:
        kwargs["datetime"] = datetime
    if max_cloud_cover is not None and client.conforms_to("FILTER"):
        kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud_cover]}
        kwargs["filter_lang"] = "cql2-json"
    if sortby and client.conforms_to("SORT"):
        kwargs["sortby"] = sortby
    try:
        found = list(client.search(**kwargs).items())
    except Exception as exc:
        raise CatalogError(f"search at {url} failed: {str(exc).splitlines()[0][:200]}") from None
    if max_cloud_cover is not None:
        found = [it for it in found if (c := _cloud(it)) is None or c <= max_cloud_cover]
    found.sort(key=lambda it: (it.datetime or pd.Timestamp.min, it.id))
    if not found:
        raise EmptySearchError(
            f"no items in {collection!r} at {url} for bbox={ll}, datetime={datetime}, "
            f"max_cloud_cover={max_cloud_cover}"
        )
    return pystac.ItemCollection(found)


def items_table(items: Iterable[pystac.Item]) -> pd.DataFrame:
    """One row per item: id, datetime, cloud cover, EPSG, platform, collection, asset keys (metadata only)."""
    rows = []
    for item in items:
        props = item.properties
        code = props.get("proj:code")
        epsg = props.get("proj:epsg") or (int(code.split(":")[1]) if isinstance(code, str) and ":" in code else None)
        rows.append(
            {
                "id": item.id,
                "datetime": pd.Timestamp(item.datetime) if item.datetime else pd.NaT,
                "cloud_cover": _cloud(item),
                "epsg": epsg,
                "platform": props.get("platform"),
                "collection": item.collection_id,
                "assets": sorted(item.assets),
            }
        )
    return pd.DataFrame(rows, columns=["id", "datetime", "cloud_cover", "epsg", "platform", "collection", "assets"])


def _asset_names(asset: pystac.Asset) -> set[str]:
    names = set()
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    for band in bands:
        for key in ("name", "common_name", "eo:common_name"):
            if band.get(key):
                names.add(str(band[key]).lower())
    return names


def band_assets(item: pystac.Item, bands: Sequence[str] | None = None) -> dict[str, str]:
    """Canonical Sentinel-2 band names ("B04", "SCL", ...) -> this item's asset keys.

    Handles the naming of Planetary Computer ("B04"), Earth Search v1 ("red", "scl") and older Earth Search ("B04"),
    and eo:bands names/common names. With ``bands`` given, every one must be found.
    """
    single = {k: a for k, a in item.assets.items() if len(_asset_names(a)) <= 2}
    mapping: dict[str, str] = {}
    for band in bands or S2_BANDS:
        wanted = {band.lower(), *S2_ALIASES.get(band.upper(), ())}
        for key in single:
            if key.lower() in wanted or key.lower().replace("-", "_") in wanted:
                mapping[band] = key
                break
        else:
            for key, asset in single.items():
                names = _asset_names(asset)
                if names & {band.lower()} or (band.upper() in S2_ALIASES and names & set(S2_ALIASES[band.upper()])):
                    mapping[band] = key
                    break
    if bands is not None:
        missing = [b for b in bands if b not in mapping]
        if missing:
            raise CatalogError(f"item {item.id} has no asset for band(s) {missing} (assets: {sorted(item.assets)})")
    return mapping
