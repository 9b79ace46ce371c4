"""The catalogue of a store root's outputs: a STAC Collection ``<root>/stac/collection.json`` and one Item file per
complete store, or per complete year of a series, ``<root>/stac/items/<id>.json`` (hrefs relative: a root copied or
synced elsewhere still opens).

An Item's id is the store's stem (``species`` for ``species.zarr``), ``<stem>-<year>`` for a year of a series. It
carries the grid (projection extension: ``proj:code``, ``proj:shape``, ``proj:transform``), the dimensions and
variables (datacube extension), its footprint in WGS84, the product, store, run, year, model versions and species
count (``geoplantnet:*``), the ``zarr`` asset with the keyword arguments xarray opens it with, and ``derived_from``
links to the items of the stores it was made from (the caller names them: storage knows no product registry).

Nothing incomplete is listed: :func:`publish` writes an Item only for a complete store or year, :func:`withdraw` takes
it out when a run claims the store or year for rewriting, and :func:`open_catalog` checks each store's completion
attributes again (a store rewritten by hand, or by a run of an older version, is left out).

Writes: every file whole (:class:`~geoplantnet.storage.workdir.Workdir`: renamed into place locally, one PUT on an
object store), under the catalogue's lease (:mod:`geoplantnet.storage.lease`, ``<root>/.stac.lease.json``), and the
collection is derived from the item files on every write: two runs publishing at once never lose each other's items.
A ``<root>/stac/`` that geoplantnet did not make (no marker) is never written into.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from geoplantnet.core.errors import InputError
from geoplantnet.runtime.interrupts import deferred
from geoplantnet.storage.lease import LeaseError, acquire
from geoplantnet.storage.outputs import MARKER, _refuse, _valid_marker
from geoplantnet.storage.store import (
    COMPLETE,
    PRODUCT_ATTR,
    RUN_ATTR,
    YEARS_ATTR,
    YEARS_COMPLETE_ATTR,
    join,
    open_store,
    service_errors,
    shown,
)
from geoplantnet.storage.workdir import Workdir

if TYPE_CHECKING:
    import pystac
    import xarray as xr

log = logging.getLogger(__name__)

CATALOG = "stac"
COLLECTION = "collection.json"
ITEMS = "items"
KIND = "catalog"  # the marker's kind: <root>/stac/.geoplantnet.json
ZARR_MEDIA_TYPE = "application/vnd+zarr"
OPEN_KWARGS = {"engine": "zarr", "consolidated": True}
XARRAY_ASSETS = "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json"
PREFIX = "geoplantnet:"
COLLECTION_ID = "geoplantnet-outputs"
LEASE_WAIT_S = 60.0  # how long a publisher waits for another one's (short) rewrite of the catalogue


class CatalogError(InputError):
    """A root without a catalogue, or a catalogue that is not geoplantnet's."""


def item_id(name: str, year: int | None = None) -> str:
    """The Item id of the store ``name`` (its stem; ``<stem>-<year>`` for a year of a series)."""
    stem = name.strip("/").removesuffix(".zarr").replace("/", "-")
    return stem if year is None else f"{stem}-{int(year)}"


def _root(root: str, storage_options: Mapping[str, Any] | None) -> Workdir:
    return Workdir(str(root), dict(storage_options or {}))


def _raw_attrs(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The root attrs of the store at ``url`` as its consolidated metadata gives them (None: no store there)."""
    import zarr

    from geoplantnet.storage.store import zarr_store

    try:
        return dict(zarr.open_group(zarr_store(url, storage_options), mode="r").attrs)
    except (
        FileNotFoundError,
        KeyError,
        ValueError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ):
        return None


def _complete_years(attrs: Mapping[str, Any]) -> list[int]:
    return sorted(int(y) for y in attrs.get(YEARS_COMPLETE_ATTR) or [])


def _is_complete(attrs: Mapping[str, Any] | None, year: int | None) -> bool:
    """Whether a store with root ``attrs`` is complete (``year``: that year of a series is)."""
    if attrs is None or attrs.get(COMPLETE) != "true":
        return False
    if YEARS_ATTR in attrs:
        return year is not None and int(year) in _complete_years(attrs)
    return year is None


def _check_folder(work: Workdir) -> bool:
    """Refuse a ``<root>/stac/`` that geoplantnet did not make; whether it is ours (False: nothing there yet)."""
    # the marker's own temporary file (a first publisher interrupted while writing it) is ours too
    present = [n for n in work.names(CATALOG) if n != MARKER and not n.startswith(f".{MARKER}.tmp-")]
    marker = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        marker = _valid_marker(json.loads(work.read_bytes(CATALOG, MARKER)))
    if marker is None and not present:
        return False
    _refuse(shown(work.url(CATALOG)), KIND, [COLLECTION, ITEMS], present, marker, finished=False)
    return marker is not None


@contextlib.contextmanager
def _rewriting(work: Workdir) -> Iterator[None]:
    """Hold the catalogue's lease (waiting, bounded, for another publisher) with the folder claimed as ours."""
    url = work.url(CATALOG)
    deadline = time.monotonic() + LEASE_WAIT_S
    lease = None
    with service_errors(url):
        while lease is None:
            try:
                with deferred():  # Ctrl-C waits until a lease created is ours to release
                    lease = acquire(url, f"catalog-{uuid.uuid4().hex[:8]}", ttl=30.0, storage_options=work.options)
            except LeaseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            if not _check_folder(work):
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ")
                marker = {"kind": KIND, "entries": [COLLECTION, ITEMS], "complete": True, "started": stamp}
                work.write_bytes(json.dumps(marker, indent=2).encode(), CATALOG, MARKER)
            yield
            lease.check()
        finally:
            lease.release()


def check_catalog(root: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse (:class:`~geoplantnet.core.errors.RefusedError`, one line) a ``<root>/stac/`` that geoplantnet did not
    make: what a run checks before any work, so it never fails on it after hours of mapping."""
    work = _root(root, storage_options)
    with service_errors(work.url(CATALOG)):
        _check_folder(work)


def _item_names(work: Workdir) -> list[str]:
    return [n for n in work.names(CATALOG, ITEMS) if n.endswith(".json") and not n.startswith(".")]


def _read_json(work: Workdir, *names: str) -> dict[str, Any] | None:
    try:
        return json.loads(work.read_bytes(*names))
    except (FileNotFoundError, ValueError):
        return None


def publish(
    root: str,
    name: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    year: int | None = None,
    derived_from: Sequence[str] = (),
) -> pystac.Item | None:
    """(Re)write the Item of the complete store ``<root>/<name>`` (with ``year``: that year's item of a series; a
    series without ``year``: an item per complete year, the latest returned), then the collection. None (nothing
    written) when the store or year is not complete. ``derived_from``: the store names (under ``root``) it was made
    from; links go to those of their items that are in the catalogue (the same year's, where a series)."""
    name = name.strip("/")
    url = join(root, name)
    attrs = _raw_attrs(url, storage_options)
    if attrs is not None and YEARS_ATTR in attrs and year is None:
        made = [publish(root, name, storage_options, year=y, derived_from=derived_from) for y in _complete_years(attrs)]
        return made[-1] if made else None
    if not _is_complete(attrs, year):
        return None
    work = _root(root, storage_options)
    with _rewriting(work):
        if not _is_complete(_raw_attrs(url, storage_options), year):  # a run claimed it meanwhile (it withdraws)
            return None
        present = {n.removesuffix(".json") for n in _item_names(work)}
        links = []
        for required in derived_from:
            ids = ([item_id(required, year)] if year is not None else []) + [item_id(required)]
            found = next((i for i in ids if i in present), None)
            if found is not None:
                links.append(found)
        item = build_item(url, name, storage_options, year=year, derived_from=links)
        item.id = _free_id(work, item.id, name.strip("/"))
        text = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2)
        work.write_bytes(text.encode(), CATALOG, ITEMS, f"{item.id}.json")
        _write_collection(work)
    return item


def _free_id(work: Workdir, wanted: str, store: str) -> str:
    """``wanted``, or, when its item file describes another store (``species-2030.zarr`` beside the 2030 year of
    ``species.zarr``), ``wanted`` with a short hash of ``store``: one store's item never replaces another's."""
    props = (_read_json(work, CATALOG, ITEMS, f"{wanted}.json") or {}).get("properties", {})
    if props.get(f"{PREFIX}store", store) == store:
        return wanted
    return f"{wanted}-{hashlib.sha256(store.encode()).hexdigest()[:8]}"


def withdraw(
    root: str, name: str, storage_options: Mapping[str, Any] | None = None, *, year: int | None = None
) -> None:
    """Remove the item(s) of the store ``<root>/<name>`` (with ``year``: that year's only), then rewrite the
    collection: called when a run claims the store or year for (re)writing. Nothing happens without a catalogue."""
    work = _root(root, storage_options)
    if not work.exists(CATALOG):
        return
    store = name.strip("/")
    with _rewriting(work):
        gone = []
        for n in _item_names(work):  # by the store they describe, not by id (a store may be named species-2030.zarr)
            props = (_read_json(work, CATALOG, ITEMS, n) or {}).get("properties", {})
            if props.get(f"{PREFIX}store") == store and (year is None or props.get(f"{PREFIX}year") == int(year)):
                gone.append(n)
        for n in gone:
            work.remove(CATALOG, ITEMS, n)
        _write_collection(work)


def _write_collection(work: Workdir) -> None:
    """``collection.json`` derived from the item files (under the catalogue's lease): links and extent."""
    import pystac

    items = [d for n in _item_names(work) if (d := _read_json(work, CATALOG, ITEMS, n)) is not None]
    bboxes = [d["bbox"] for d in items if d.get("bbox")]
    bbox = (
        [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
        if bboxes
        else [-180.0, -90.0, 180.0, 90.0]
    )
    times = [
        _parse_time(t)
        for d in items
        for k in ("datetime", "start_datetime", "end_datetime")
        if (t := d.get("properties", {}).get(k))
    ]
    interval = [min(times), max(times)] if times else [None, None]
    title = work.root.rstrip("/").rsplit("/", 1)[-1] or "geoplantnet"
    collection = pystac.Collection(
        id=COLLECTION_ID,
        title=f"geoplantnet outputs: {title}",
        description="The complete output stores (and complete years of series) of a geoplantnet store root.",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
        license="other",
        keywords=["geoplantnet", "species distribution", "habitats", "biodiversity"],
    )
    collection.clear_links()
    collection.add_link(pystac.Link("root", f"./{COLLECTION}", pystac.MediaType.JSON))
    for d in sorted(items, key=lambda d: d["id"]):
        collection.add_link(pystac.Link("item", f"./{ITEMS}/{d['id']}.json", pystac.MediaType.GEOJSON, title=d["id"]))
    text = json.dumps(collection.to_dict(include_self_link=False, transform_hrefs=False), indent=2)
    work.write_bytes(text.encode(), CATALOG, COLLECTION)


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def build_item(
    url: str,
    name: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    year: int | None = None,
    derived_from: Sequence[str] = (),
) -> pystac.Item:
    """The Item of the complete store at ``url`` (``name`` under the root; ``year`` of a series), with its asset's
    href relative to ``<root>/stac/items/`` and ``derived_from`` links to the item ids given."""
    import pystac
    from pystac.extensions.datacube import DatacubeExtension
    from pystac.extensions.projection import ProjectionExtension

    from geoplantnet.storage.years import year_records, year_view

    ds = open_store(url, storage_options=storage_options)
    view = year_view(ds, year)
    attrs = dict(ds.attrs)
    record = year_records(attrs).get(int(year), {}) if year is not None else {}
    provenance = {**attrs, **(record.get("attrs") or {})}
    grid = _grid(view)
    if year is not None:
        start = dt.datetime(int(year), 1, 1, tzinfo=dt.UTC)
        end = dt.datetime(int(year), 12, 31, 23, 59, 59, tzinfo=dt.UTC)
        when: dict[str, Any] = {"datetime": start, "start_datetime": start, "end_datetime": end}
    else:
        created = _parse_time(str(attrs.get("created") or dt.datetime.now(dt.UTC).isoformat()))
        when = {"datetime": created, "start_datetime": None, "end_datetime": None}
    properties: dict[str, Any] = {
        f"{PREFIX}product": str(attrs.get(PRODUCT_ATTR, "unknown")),
        f"{PREFIX}store": name,
        f"{PREFIX}run": str(record.get("run") or attrs.get(RUN_ATTR, "")),
        f"{PREFIX}version": str(provenance.get("geoplantnet_version", "")),
    }
    if year is not None:
        properties[f"{PREFIX}year"] = int(year)
    versions = provenance.get("model_versions", provenance.get("model_version"))
    if versions not in (None, ""):
        properties[f"{PREFIX}model_version"] = _json_value(versions)
    if "species" in view.dims:
        properties[f"{PREFIX}species"] = int(view.sizes["species"])
    item = pystac.Item(
        id=item_id(name, year),
        geometry=grid["geometry"],
        bbox=grid["bbox"],
        datetime=when["datetime"],
        start_datetime=when["start_datetime"],
        end_datetime=when["end_datetime"],
        properties=properties,
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code = grid["code"]
    if grid["code"] is None:
        proj.wkt2 = grid["wkt"]
    proj.shape = grid["shape"]
    proj.transform = grid["transform"]
    cube = DatacubeExtension.ext(item, add_if_missing=True)
    cube.apply(dimensions=_dimensions(view, grid), variables=_variables(view))
    asset = pystac.Asset(
        href=f"../../{name.strip('/')}",
        media_type=ZARR_MEDIA_TYPE,
        roles=["data"],
        title=str(attrs.get("title") or properties[f"{PREFIX}product"]),
        extra_fields={"xarray:open_kwargs": dict(OPEN_KWARGS)},
    )
    item.add_asset("zarr", asset)
    item.stac_extensions.append(XARRAY_ASSETS)
    item.clear_links()
    item.add_link(pystac.Link("collection", f"../{COLLECTION}", pystac.MediaType.JSON))
    item.add_link(pystac.Link("root", f"../{COLLECTION}", pystac.MediaType.JSON))
    item.add_link(pystac.Link("parent", f"../{COLLECTION}", pystac.MediaType.JSON))
    for other in derived_from:
        item.add_link(pystac.Link("derived_from", f"./{other}.json", pystac.MediaType.GEOJSON, title=other))
    item.collection_id = COLLECTION_ID
    return item


def _json_value(value: Any) -> Any:
    """An attr as JSON (a JSON-encoded string decoded, other values as they are)."""
    if isinstance(value, str) and value[:1] in "{[":
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _grid(ds: xr.Dataset) -> dict[str, Any]:
    """The grid of a store (its ``spatial_ref`` and ``x``/``y`` cell centres): EPSG code, WKT, shape, affine
    transform (STAC order), footprint and bbox in WGS84."""
    import numpy as np
    from pyproj import CRS, Transformer

    ref = ds["spatial_ref"].attrs if "spatial_ref" in ds.coords else {}
    wkt = ref.get("crs_wkt") or ref.get("spatial_ref")
    if not wkt or "x" not in ds.coords or "y" not in ds.coords:
        raise CatalogError("the store has no grid (spatial_ref with crs_wkt, x and y coordinates): not catalogued")
    crs = CRS.from_wkt(str(wkt))
    x, y = np.asarray(ds["x"].values, dtype=float), np.asarray(ds["y"].values, dtype=float)
    dx = float(x[1] - x[0]) if x.size > 1 else float(_geo_transform(ref)[1])
    dy = float(y[1] - y[0]) if y.size > 1 else float(_geo_transform(ref)[5])
    left, top = float(x[0] - dx / 2), float(y[0] - dy / 2)
    right, bottom = left + dx * x.size, top + dy * y.size
    xmin, xmax, ymin, ymax = min(left, right), max(left, right), min(top, bottom), max(top, bottom)
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    west, south, east, north = to_wgs84.transform_bounds(xmin, ymin, xmax, ymax, densify_pts=21)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    epsg = crs.to_epsg()
    return {
        "code": f"EPSG:{epsg}" if epsg else None,
        "epsg": epsg,
        "wkt": crs.to_wkt(),
        "shape": [int(y.size), int(x.size)],
        "transform": [dx, 0.0, left, 0.0, dy, top],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [west, south, east, north],
        "extent": {"x": [xmin, xmax], "y": [ymin, ymax]},
        "step": {"x": dx, "y": dy},
    }


def _geo_transform(ref: Mapping[str, Any]) -> list[float]:
    return [float(v) for v in str(ref.get("GeoTransform", "0 1 0 0 0 -1")).split()]


def _dimensions(ds: xr.Dataset, grid: Mapping[str, Any]) -> dict[str, Any]:
    """The datacube dimensions of ``ds``: ``x``/``y`` spatial, datetimes temporal, others by their values."""
    import numpy as np
    from pystac.extensions.datacube import Dimension

    reference = grid["epsg"] if grid["epsg"] else grid["wkt"]
    dims: dict[str, Any] = {}
    for name in ds.dims:
        name = str(name)
        if name in ("x", "y"):
            dims[name] = {
                "type": "spatial",
                "axis": name,
                "extent": list(grid["extent"][name]),
                "step": grid["step"][name],
                "reference_system": reference,
            }
            continue
        values = np.asarray(ds[name].values) if name in ds.coords else np.arange(ds.sizes[name])
        if np.issubdtype(values.dtype, np.datetime64):
            iso = [str(np.datetime_as_string(v, unit="s")) + "Z" for v in (values.min(), values.max())]
            dims[name] = {
                "type": "temporal",
                "extent": iso,
                "values": [f"{v}Z" for v in values.astype("M8[s]").astype(str)],
            }
        elif np.issubdtype(values.dtype, np.number):
            dims[name] = {"type": name, "values": [v.item() for v in values]}
        else:
            dims[name] = {"type": name, "values": [str(v) for v in values]}
        long_name = ds[name].attrs.get("long_name") if name in ds.coords else None
        if long_name:
            dims[name]["description"] = str(long_name)
    return {k: Dimension.from_dict(v) for k, v in dims.items()}


def _variables(ds: xr.Dataset) -> dict[str, Any]:
    """The datacube variables of ``ds``: its data variables, and its labelled coordinates as auxiliary ones."""
    from pystac.extensions.datacube import Variable

    out: dict[str, Any] = {}
    for kind, names in (("data", list(ds.data_vars)), ("auxiliary", [c for c in ds.coords if c not in ds.dims])):
        for name in names:
            var = ds[name]
            if name == "spatial_ref" or not var.dims:
                continue
            entry: dict[str, Any] = {"dimensions": [str(d) for d in var.dims], "type": kind}
            if var.attrs.get("long_name"):
                entry["description"] = str(var.attrs["long_name"])
            if var.attrs.get("units"):
                entry["unit"] = str(var.attrs["units"])
            out[str(name)] = Variable.from_dict(entry)
    return out


def open_catalog(root: str, storage_options: Mapping[str, Any] | None = None) -> pystac.Collection:
    """The catalogue of ``root``: its collection with the items whose store (or year) is complete now.
    :class:`CatalogError` when ``root`` has none (``geoplantnet catalog --rebuild`` makes one)."""
    import pystac

    work = _root(root, storage_options)
    with service_errors(work.url(CATALOG)):
        if work.exists(CATALOG):
            _check_folder(work)
        data = _read_json(work, CATALOG, COLLECTION)
        if data is None:
            raise CatalogError(
                f"{shown(work.url(CATALOG, COLLECTION))}: no catalogue here (make it with `geoplantnet catalog "
                f"{shown(root)} --rebuild`)"
            )
        collection = pystac.Collection.from_dict(data, href=work.url(CATALOG, COLLECTION), migrate=False)
        collection.set_root(collection)  # itself, resolved: pystac never reads it again (its IO knows no s3://)
        collection.clear_items()
        attrs: dict[str, dict[str, Any] | None] = {}
        for n in _item_names(work):
            d = _read_json(work, CATALOG, ITEMS, n)
            if d is None:
                continue
            item = pystac.Item.from_dict(d, href=work.url(CATALOG, ITEMS, n), migrate=False)
            store = str(item.properties.get(f"{PREFIX}store", ""))
            if not _confined(item, store):
                where = shown(work.url(CATALOG, ITEMS, n))
                log.warning("%s: an item naming a store outside the root; not listed", where)
                continue
            # the store a reader opens is the one checked here, under the root, whatever the file's href says
            item.assets["zarr"].href = join(root, store)
            if store not in attrs:
                attrs[store] = _raw_attrs(join(root, store), storage_options) if store else None
            year = item.properties.get(f"{PREFIX}year")
            if _is_complete(attrs[store], None if year is None else int(year)):
                collection.add_item(item)
    return collection


def _confined(item: pystac.Item, store: str) -> bool:
    """Whether an item file names a store under its root the way :func:`publish` writes it: a relative name without
    ``..`` or a scheme, and the ``zarr`` asset's href ``../../<store>`` (a file edited, or synced in from elsewhere,
    must never make a reader open a store outside the root)."""
    parts = store.split("/")
    if not store or store.startswith("/") or "://" in store or any(p in ("", ".", "..") for p in parts):
        return False
    asset = item.assets.get("zarr")
    return asset is not None and asset.href.rstrip("/") == f"../../{store}"


def store_url(item: pystac.Item) -> str:
    """The absolute URL or path of an item's store (its ``zarr`` asset's href, resolved against the item file)."""
    return item.assets["zarr"].get_absolute_href() or item.assets["zarr"].href


def open_item(item: pystac.Item, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The dataset an item describes: its store opened by :func:`~geoplantnet.storage.store.open_store` (complete
    years only), then the item's year of a series."""
    from geoplantnet.storage.years import year_view

    year = item.properties.get(f"{PREFIX}year")
    ds = open_store(store_url(item), storage_options=storage_options)
    return year_view(ds, None if year is None else int(year))


def stores(root: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The geoplantnet stores directly under ``root`` (complete or not) and their root attrs, by name."""
    work = _root(root, storage_options)
    found = {}
    for name in work.names():
        if name.startswith(".") or name == CATALOG:
            continue
        attrs = _raw_attrs(join(root, name), storage_options)
        if attrs is not None and (COMPLETE in attrs or RUN_ATTR in attrs):
            found[name] = attrs
    return found


def rebuild(
    root: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    derived_from: Callable[[str], Sequence[str]] = lambda product: (),
    order: Sequence[str] = (),
) -> list[pystac.Item]:
    """(Re)publish every complete store (every complete year of a series) under ``root`` and withdraw the items of
    stores no longer complete or gone: the catalogue of a root written before catalogues existed, or repaired.
    ``derived_from(product)``: the store names a product is made from; ``order``: products in the order they are
    made (their inputs' items first, so the links find them)."""
    found = stores(root, storage_options)
    rank = {p: i for i, p in enumerate(order)}
    names = sorted(found, key=lambda n: (rank.get(str(found[n].get(PRODUCT_ATTR)), len(rank)), n))
    made: list[pystac.Item] = []
    for name in names:
        attrs = found[name]
        years = _complete_years(attrs) if YEARS_ATTR in attrs else [None]
        for year in years:
            item = publish(
                root, name, storage_options, year=year, derived_from=derived_from(str(attrs.get(PRODUCT_ATTR)))
            )
            if item is not None:
                made.append(item)
    keep = {item.id for item in made}
    work = _root(root, storage_options)
    stale = [n for n in _item_names(work) if n.removesuffix(".json") not in keep] if work.exists(CATALOG) else []
    if stale:
        with _rewriting(work):
            for n in stale:
                work.remove(CATALOG, ITEMS, n)
            _write_collection(work)
    elif not made and not work.exists(CATALOG, COLLECTION):
        with _rewriting(work):
            _write_collection(work)
    return made
