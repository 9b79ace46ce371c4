"""STAC items and collections for COG files: the metadata stackstac and pgstac need, read from the files themselves.

Every item carries ``proj:epsg`` (stackstac 0.5 reads only that), ``proj:code``, ``proj:transform``, ``proj:shape``,
``proj:bbox``, per-asset ``raster:bands`` and ``eo:bands``, and ``eo:cloud_cover`` where known.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pystac
import rasterio
from shapely.geometry import box, mapping

from geoplantnet.core.grid import LONLAT, transform_bounds

EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


@dataclass(frozen=True)
class AssetSpec:
    """One COG asset of an item: its file, key and optional band description."""

    key: str
    href: str
    common_name: str | None = None
    center_wavelength: float | None = None
    scale: float | None = None
    offset: float | None = None
    roles: tuple[str, ...] = ("data",)


def asset_href(href: str) -> str:
    """A local path as an absolute ``file://`` URI; URLs unchanged.

    A bare absolute path is a relative reference in URL terms: a STAC API (rustac) resolves it against its own
    address and serves ``http://host/tmp/...``, which no reader can open. A file URI survives every server.
    """
    if "://" in href:
        return href
    return Path(href).resolve().as_uri()


def local_path(href: str) -> Path:
    """The filesystem path of a local asset href (a ``file://`` URI or a plain path)."""
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(href).path)) if href.startswith("file:") else Path(href)


def _raster_meta(href: str) -> dict[str, object]:
    with rasterio.open(href) as ds:
        epsg = ds.crs.to_epsg() if ds.crs else None
        if epsg is None:
            raise ValueError(f"{href}: raster has no EPSG-coded CRS ({ds.crs}); STAC items need proj:epsg")
        return {
            "epsg": epsg,
            "transform": list(ds.transform)[:6],
            "shape": [ds.height, ds.width],
            "bbox": list(ds.bounds),
            "dtype": ds.dtypes[0],
            "nodata": ds.nodata,
            "res": abs(ds.transform.a),
        }


def _lonlat_footprint(epsg: int, bounds: list[float]) -> tuple[list[float], dict]:
    lon0, lat0, lon1, lat1 = transform_bounds(bounds, epsg, LONLAT)
    return [lon0, lat0, lon1, lat1], mapping(box(lon0, lat0, lon1, lat1))


def item_from_cogs(
    item_id: str,
    when: datetime,
    assets: Iterable[AssetSpec],
    *,
    collection: str | None = None,
    properties: Mapping[str, object] | None = None,
) -> pystac.Item:
    """Build an item whose assets are COGs; geometry, proj and raster fields come from the files' headers.

    The item-level ``proj:*`` fields describe the finest asset; assets on other grids carry their own.
    """
    specs = list(assets)
    if not specs:
        raise ValueError(f"item {item_id}: no assets")
    metas = {s.key: _raster_meta(s.href) for s in specs}
    finest = min(metas.values(), key=lambda m: m["res"])
    bbox, geometry = _lonlat_footprint(finest["epsg"], finest["bbox"])
    props: dict[str, object] = {
        "proj:epsg": finest["epsg"],
        "proj:code": f"EPSG:{finest['epsg']}",
        "proj:transform": finest["transform"],
        "proj:shape": finest["shape"],
        "proj:bbox": finest["bbox"],
    }
    props.update(properties or {})
    item = pystac.Item(item_id, geometry, bbox, when, props, collection=collection)
    item.stac_extensions = [EO, PROJ, RASTER]
    for spec in specs:
        meta = metas[spec.key]
        band: dict[str, object] = {"data_type": meta["dtype"], "spatial_resolution": meta["res"]}
        if meta["nodata"] is not None:
            band["nodata"] = meta["nodata"]
        if spec.scale is not None:
            band["scale"] = spec.scale
        if spec.offset is not None:
            band["offset"] = spec.offset
        extra: dict[str, object] = {
            "proj:epsg": meta["epsg"],
            "proj:code": f"EPSG:{meta['epsg']}",
            "proj:transform": meta["transform"],
            "proj:shape": meta["shape"],
            "proj:bbox": meta["bbox"],
            "raster:bands": [band],
        }
        if spec.common_name or spec.center_wavelength:
            eo: dict[str, object] = {"name": spec.key}
            if spec.common_name:
                eo["common_name"] = spec.common_name
            if spec.center_wavelength:
                eo["center_wavelength"] = spec.center_wavelength
            extra["eo:bands"] = [eo]
        item.add_asset(
            spec.key,
            pystac.Asset(
                href=asset_href(str(spec.href)),
                media_type=pystac.MediaType.COG,
                roles=list(spec.roles),
                title=spec.key,
                extra_fields=extra,
            ),
        )
    return item


def collection_for(
    collection_id: str, items: list[pystac.Item], description: str, *, license: str = "CC-BY-4.0"
) -> pystac.Collection:
    """A collection whose spatial and temporal extent cover ``items``."""
    if not items:
        raise ValueError(f"collection {collection_id}: no items")
    xs0, ys0, xs1, ys1 = zip(*(it.bbox for it in items), strict=True)
    times = sorted(it.datetime for it in items)
    extent = pystac.Extent(
        pystac.SpatialExtent([[min(xs0), min(ys0), max(xs1), max(ys1)]]),
        pystac.TemporalExtent([[times[0], times[-1]]]),
    )
    coll = pystac.Collection(collection_id, description, extent, license=license)
    coll.stac_extensions = [EO, PROJ, RASTER]
    return coll


def write_ndjson(items: Iterable[pystac.Item], path: str | os.PathLike[str]) -> Path:
    """Items as newline-delimited JSON (the bulk-load format of pgstac and rustac)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        for item in items:
            fh.write(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False)) + "\n")
    os.replace(tmp, path)
    return path


def write_collection(
    collection: pystac.Collection, items: list[pystac.Item], folder: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Write ``collection.json`` and ``items.ndjson`` into ``folder``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    coll_path = folder / "collection.json"
    coll_path.write_text(json.dumps(collection.to_dict(include_self_link=False, transform_hrefs=False), indent=1))
    return coll_path, write_ndjson(items, folder / "items.ndjson")


def read_ndjson(path: str | os.PathLike[str]) -> list[pystac.Item]:
    """Items from a newline-delimited JSON file."""
    with open(path) as fh:
        return [pystac.Item.from_dict(json.loads(line)) for line in fh if line.strip()]


def rehome_hrefs(path: str | os.PathLike[str], folder: str | os.PathLike[str], url: str) -> int:
    """Rewrite, in the items file ``path`` (ndjson, in place and atomically), every asset href inside the local
    ``folder`` (a ``file://`` URI or a bare path) to the same name under ``url`` (files published from that folder to
    an object store); returns how many hrefs changed. Raw JSON, so nothing else of an item changes."""
    root = Path(folder).resolve()
    prefixes = (root.as_uri() + "/", f"{root}/")
    base = url.rstrip("/") + "/"
    path = Path(path)
    lines, changed = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        for asset in item.get("assets", {}).values():
            href = asset.get("href", "")
            prefix = next((p for p in prefixes if href.startswith(p)), None)
            if prefix is not None:
                asset["href"] = base + href[len(prefix) :]
                changed += 1
        lines.append(json.dumps(item))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)
    return changed
