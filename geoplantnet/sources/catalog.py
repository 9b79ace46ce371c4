"""STAC search with pystac-client, and item metadata as tables. Never touches pixels.

Filters and sorting that a server may ignore (the in-memory rustac backend answers ``query``/``filter`` with nothing
and ignores ``sortby``; some APIs lack the extensions) are sent to the server only when it declares conformance, and
are always applied again here, so every backend gives the same answer. What ran where is recorded in the returned
collection's ``extra_fields["geoplantnet:search"]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pystac
from pyproj import CRS
from pyproj.exceptions import CRSError
from shapely.geometry import Polygon, shape

from geoplantnet.core.errors import GeoplantnetError, ServiceError
from geoplantnet.core.grid import LONLAT, transform_bounds, transform_outline

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL")
# The unambiguous STAC eo common name of each Sentinel-2 band (Earth Search v1 uses them as asset keys). Planetary
# Computer's "rededge" (B05, B06, B07 and B8A alike) is ambiguous, so it is never used to pick an asset.
S2_COMMON_NAMES = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
}
# Landsat has a single NIR band ("nir08", 0.85-0.88 µm): it stands for B08 too, but only on non-Sentinel-2 items, so
# a Sentinel-2 item that lacks B08 is an error rather than silently B8A.
NON_S2_FALLBACKS = {"B08": ("nir08",)}
SEARCH_KEY = "geoplantnet:search"
# Answers worth another attempt: overload and gateway errors. Any other 4xx is the request's fault, and asking again
# gives the same answer.
RETRY_STATUS = (429, 500, 502, 503, 504)


class CatalogError(GeoplantnetError, ValueError):
    """The API cannot be reached, or the collection, a band or a search parameter is wrong."""


class EmptySearchError(CatalogError):
    """A search matched no items."""


class CatalogUnavailableError(CatalogError, ServiceError):
    """The API did not answer (refused, timed out, or kept failing with 5xx/429) after every attempt."""


def lonlat_bbox(bbox: Sequence[float], crs: int | str = 4326) -> tuple[float, float, float, float]:
    """A bbox in any CRS as a lon/lat bbox that covers it (edges densified, so curved edges stay inside)."""
    src = _crs(crs)
    bbox = _bbox4(bbox)
    if src.to_epsg() == 4326:
        lon0, lat0, lon1, lat1 = bbox
        if not (-180 <= lon0 <= lon1 <= 180 and -90 <= lat0 <= lat1 <= 90):
            raise CatalogError(f"bbox {bbox} is not lon/lat (xmin, ymin, xmax, ymax): pass bbox_crs= (e.g. 3035)")
        return bbox
    return transform_bounds(bbox, src, LONLAT)


def lonlat_footprint(bbox: Sequence[float], crs: int | str) -> Polygon:
    """The footprint of a projected bbox in lon/lat: its outline densified (21 points an edge), then transformed."""
    lon, lat = transform_outline(_bbox4(bbox), _crs(crs), LONLAT)
    return Polygon(zip(lon, lat, strict=True))


def _crs(crs: int | str) -> CRS:
    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        raise CatalogError(f"bbox_crs={crs!r} is not a CRS: {_detail(exc)}") from None


def _bbox4(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = map(float, bbox)
    except (TypeError, ValueError):
        raise CatalogError(f"bbox must be 4 numbers (xmin, ymin, xmax, ymax), got {bbox!r}") from None
    if not (x0 <= x1 and y0 <= y1):
        raise CatalogError(f"bbox {bbox!r} has xmin > xmax or ymin > ymax")
    return x0, y0, x1, y1


def _detail(exc: BaseException) -> str:
    """The first line of an exception's message (or its class name), short enough for a one-line error."""
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]


def _retry(retries: int) -> Any:
    from urllib3 import Retry

    class _BoundedRetry(Retry):
        # A server's Retry-After is honoured but capped: "wait an hour" must not become an unbounded wait here.
        def get_retry_after(self, response: Any) -> float | None:
            after = super().get_retry_after(response)
            return None if after is None else min(after, self.backoff_max)

    # Sleeps 0, 1, 2, 4 ... s between attempts (capped at 10 s). allowed_methods=None: searches are POSTs, which
    # are read-only in a STAC API and so safe to repeat. raise_on_status=False hands the last 5xx to pystac-client,
    # whose error carries the status and the server's message.
    return _BoundedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        backoff_factor=0.5,
        backoff_max=10.0,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,
        raise_on_status=False,
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: pystac-client re-raises requests errors as a bare ``APIError(str(err))``."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]


def _unavailable(exc: BaseException, url: str, timeout: float, retries: int) -> CatalogUnavailableError | None:
    """The one-line error for a request that failed for want of an answer, or None when the API did answer."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

    attempts = f"{retries + 1} attempt{'s' if retries else ''}"
    causes = list(_causes(exc))
    status = next((c.status_code for c in causes if isinstance(getattr(c, "status_code", None), int)), None)
    if status in RETRY_STATUS:
        return CatalogUnavailableError(f"the STAC API at {url} answered HTTP {status} after {attempts}: {_detail(exc)}")
    if status is not None:
        return None
    # NewConnectionError subclasses ConnectTimeoutError in urllib3, so it is tested first.
    if any(isinstance(c, (NewConnectionError, ConnectionRefusedError)) for c in causes):
        what = f"could not be reached after {attempts} (connection refused or host not found)"
    elif any(isinstance(c, (ReadTimeoutError, ConnectTimeoutError, requests.Timeout, TimeoutError)) for c in causes):
        what = f"did not answer within {timeout:g} s after {attempts}"
    elif any(isinstance(c, (requests.ConnectionError, ConnectionError)) for c in causes):
        what = f"could not be reached after {attempts} ({_detail(exc)})"
    else:
        return None
    return CatalogUnavailableError(f"the STAC API at {url} {what} (settings stac.timeout, stac.retries)")


def _open(url: str, *, timeout: float = 30.0, retries: int = 3) -> Any:
    """A pystac-client Client whose every request waits at most ``timeout`` s per attempt, ``retries`` times more."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    if timeout <= 0 or retries < 0:
        raise CatalogError(f"timeout={timeout} must be positive and retries={retries} not negative")
    io = StacApiIO(timeout=timeout, max_retries=_retry(retries))
    try:
        # timeout again here: Client.open passes its own (default None) to the StacApiIO, which would unset ours.
        return Client.open(url, stac_io=io, timeout=timeout)
    except Exception as exc:  # requests, pystac-client and JSON errors alike mean "not a usable STAC API here"
        raise _unavailable(exc, url, timeout, retries) or CatalogError(
            f"cannot open the STAC API at {url}: {_detail(exc)}"
        ) from None


def _require_collection(client: Any, url: str, collection: str, timeout: float, retries: int) -> None:
    from pystac_client.exceptions import APIError

    try:
        found = client.get_collection(collection)
    except Exception as exc:
        if (down := _unavailable(exc, url, timeout, retries)) is not None:
            raise down from None
        # A 404 means no such collection; other API errors are surfaced as they are. pystac-client turns a missing
        # collection into different errors across versions, hence the catch-all.
        if isinstance(exc, APIError) and getattr(exc, "status_code", 404) != 404:
            raise CatalogError(f"looking up collection {collection!r} at {url} failed: {_detail(exc)}") from None
        found = None
    if found is None:
        raise CatalogError(f"collection {collection!r} does not exist at {url}")


def _cloud(item: pystac.Item) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return None if value is None else float(value)


def _sort_fields(sortby: str | Sequence[str] | None) -> list[tuple[str, bool]]:
    """``"-eo:cloud_cover,datetime"`` -> ``[("eo:cloud_cover", True), ("datetime", False)]`` (field, descending)."""
    parts = [sortby] if isinstance(sortby, str) else list(sortby or [])
    fields = [p.strip() for part in parts for p in part.split(",") if p.strip()]
    return [(f.lstrip("+-"), f.startswith("-")) for f in fields]


def _sort_value(item: pystac.Item, field: str, descending: bool) -> tuple[bool, Any]:
    if field == "id":
        value: Any = item.id
    elif field == "datetime" and item.datetime is not None:
        value = pd.Timestamp(item.datetime)
    else:
        value = item.properties.get(field.removeprefix("properties."))
    # Items without the property go last in either direction.
    return (value is None) != descending, "" if value is None else value


def _sort_items(items: list[pystac.Item], fields: list[tuple[str, bool]]) -> list[pystac.Item]:
    # Stable sorts from the last key to the first give a lexicographic order with per-key directions.
    for field, desc in reversed(fields):
        items = sorted(items, key=lambda it, f=field, d=desc: _sort_value(it, f, d), reverse=desc)
    return items


@dataclass
class _Plan:
    """Which parts of a search the server does, and what is re-checked here."""

    kwargs: dict[str, Any]
    server_filter: str | None
    server_sort: bool
    footprint: Polygon | None
    max_cloud_cover: float | None

    def keep(self, item: pystac.Item) -> bool:
        # Items without eo:cloud_cover fail a cloud filter, as they do in CQL2 on the server.
        if self.max_cloud_cover is not None and ((c := _cloud(item)) is None or c > self.max_cloud_cover):
            return False
        return self.footprint is None or item.geometry is None or shape(item.geometry).intersects(self.footprint)


def _plan(
    client: Any,
    collection: str,
    ll: tuple | None,
    footprint: Polygon | None,
    datetime: Any,
    max_cloud_cover: float | None,
    sortby: list[tuple[str, bool]],
    limit: int,
    max_items: int | None,
) -> _Plan:
    kwargs: dict[str, Any] = {"collections": [collection], "limit": limit}
    if ll is not None:
        kwargs["bbox"] = ll
    if datetime:
        kwargs["datetime"] = datetime
    server_filter = None
    if max_cloud_cover is not None and client.conforms_to("FILTER"):
        kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud_cover]}
        kwargs["filter_lang"] = "cql2-json"
        server_filter = "filter"
    elif max_cloud_cover is not None and client.conforms_to("QUERY"):
        kwargs["query"] = {"eo:cloud_cover": {"lte": max_cloud_cover}}
        server_filter = "query"
    server_sort = bool(sortby) and client.conforms_to("SORT")
    if server_sort:
        kwargs["sortby"] = [("-" if desc else "+") + field for field, desc in sortby]
    # The server may stop at max_items only when nothing here can drop items or change their order.
    exact = (max_cloud_cover is None or server_filter is not None) and footprint is None
    if max_items is not None and exact and (not sortby or server_sort):
        kwargs["max_items"] = max_items
    return _Plan(kwargs, server_filter, server_sort, footprint, max_cloud_cover)


def search(
    url: str,
    collection: str,
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: int | str = 4326,
    datetime: Any = None,
    max_cloud_cover: float | None = None,
    limit: int = 100,
    max_items: int | None = None,
    sortby: str | Sequence[str] | None = None,
    timeout: float = 30.0,
    retries: int = 3,
) -> pystac.ItemCollection:
    """Items of ``collection`` matching the filters, every page followed; :class:`EmptySearchError` when none match.

    ``bbox`` is in ``bbox_crs`` (lon/lat by default; a projected bbox is searched by its lon/lat envelope, then items
    outside its exact footprint are dropped). ``datetime`` is anything pystac-client takes ("2023-01-01/2023-06-30",
    "2023", a datetime pair). ``max_cloud_cover`` keeps items with ``eo:cloud_cover <= max_cloud_cover``. ``limit`` is
    the page size; ``max_items`` caps the result, taken in ``sortby`` order (e.g. "eo:cloud_cover" for the clearest
    scenes) or else in the server's order. Items come back sorted by ``sortby``, or by (datetime, id).

    Each request waits at most ``timeout`` seconds for an answer and is retried up to ``retries`` times (with
    backoff) on connection errors, timeouts and 5xx/429 answers, never on other 4xx. An API that still does not
    answer is a :class:`CatalogUnavailableError` (a :class:`~geoplantnet.core.errors.ServiceError`) naming the URL.
    """
    if limit < 1 or (max_items is not None and max_items < 1):
        raise CatalogError(f"limit={limit} and max_items={max_items} must be positive")
    if max_cloud_cover is not None and not 0 <= max_cloud_cover <= 100:
        raise CatalogError(f"max_cloud_cover={max_cloud_cover} is not a percentage in [0, 100]")
    ll = lonlat_bbox(bbox, bbox_crs) if bbox is not None else None
    footprint = None if bbox is None or _crs(bbox_crs).to_epsg() == 4326 else lonlat_footprint(bbox, bbox_crs)
    fields = _sort_fields(sortby)
    client = _open(url, timeout=timeout, retries=retries)
    _require_collection(client, url, collection, timeout, retries)
    plan = _plan(client, collection, ll, footprint, datetime, max_cloud_cover, fields, limit, max_items)
    found: list[pystac.Item] = []
    pages = served = 0
    try:
        for page in client.search(**plan.kwargs).pages():
            pages += 1
            served += len(page.items)
            found.extend(it for it in page.items if plan.keep(it))
            if max_items is not None and len(found) >= max_items and (not fields or plan.server_sort):
                break
    except Exception as exc:
        down = _unavailable(exc, url, timeout, retries)
        raise down or CatalogError(f"search of {collection!r} at {url} failed: {_detail(exc)}") from None
    dropped = served - len(found)
    if fields:
        found = _sort_items(found, fields)[:max_items]
    else:  # the server's order decides which max_items are kept; time order is what the cube builders want
        found = _sort_items(found[:max_items], [("datetime", False), ("id", False)])
    if not found:
        crs_label = f"EPSG:{bbox_crs}" if isinstance(bbox_crs, int) else bbox_crs
        where = f"bbox={tuple(bbox)} in {crs_label}" if bbox is not None else "bbox=None"
        raise EmptySearchError(
            f"no items in {collection!r} at {url} for {where}, datetime={datetime}, max_cloud_cover={max_cloud_cover}"
        )
    stats = {
        "url": url,
        "collection": collection,
        "pages": pages,
        "served": served,
        "dropped_here": dropped,
        "server_filter": plan.server_filter,
        "server_sort": plan.server_sort,
    }
    return pystac.ItemCollection(found, extra_fields={SEARCH_KEY: stats})


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


def _bands_of(asset: pystac.Asset) -> list[dict[str, Any]]:
    # STAC 1.0 eo:bands, STAC 1.1 bands (with eo:common_name).
    return list(asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or [])


_RES_SUFFIX = re.compile(r"^(?P<band>[A-Za-z0-9]+?)[_-](?P<res>\d+)m$", re.IGNORECASE)


def _key_candidates(item: pystac.Item) -> dict[str, list[tuple[float, str]]]:
    """Lower-cased band name -> [(resolution, asset key)] from keys like "B04", "red", "B04_10m" (CDSE)."""
    out: dict[str, list[tuple[float, str]]] = {}
    for key, asset in item.assets.items():
        if len(_bands_of(asset)) > 1:  # "visual" and other multi-band assets are not a band
            continue
        m = _RES_SUFFIX.match(key)
        name, res = (m["band"], float(m["res"])) if m else (key, 0.0)
        out.setdefault(name.lower(), []).append((res, key))
    return out


def _metadata_candidates(item: pystac.Item) -> dict[str, str]:
    """Lower-cased eo:bands name / common name -> asset key, for single-band assets (first asset wins)."""
    out: dict[str, str] = {}
    for key, asset in item.assets.items():
        bands = _bands_of(asset)
        if len(bands) != 1:
            continue
        for field in ("name", "common_name", "eo:common_name"):
            if bands[0].get(field):
                out.setdefault(str(bands[0][field]).lower(), key)
    return out


def band_assets(item: pystac.Item, bands: Sequence[str] | None = None) -> dict[str, str]:
    """Canonical Sentinel-2 band names ("B04", "B8A", "SCL", ...) -> this item's asset keys.

    Tries, in order: an asset keyed by the band ("B04", or "B04_10m" at the finest resolution), an asset keyed by its
    unambiguous common name ("red", "nir08", "scl": Earth Search v1, Landsat C2), then single-band assets by their
    eo:bands name or common name. Landsat's one NIR band ("nir08") also answers "B08". With ``bands`` given, each must
    be found (:class:`CatalogError` names the item, the missing bands and the assets there); without, all that exist.
    """
    by_key, by_meta = _key_candidates(item), _metadata_candidates(item)
    platform = str(item.properties.get("platform") or "").lower()
    mapping: dict[str, str] = {}
    for band in bands or S2_BANDS:
        canon = band.upper()
        names = [canon.lower()] + ([S2_COMMON_NAMES[canon]] if canon in S2_COMMON_NAMES else [])
        if not platform.startswith("sentinel-2"):
            names += NON_S2_FALLBACKS.get(canon, ())
        for name in names:
            if name in by_key:
                mapping[band] = min(by_key[name])[1]
                break
        else:
            key = next((by_meta[n] for n in names if n in by_meta), None)
            if key is not None:
                mapping[band] = key
    if bands is not None:
        missing = [b for b in bands if b not in mapping]
        if missing:
            raise CatalogError(f"item {item.id} has no asset for band(s) {missing} (assets: {sorted(item.assets)})")
    return mapping
