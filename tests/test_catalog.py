"""STAC search against real servers: bbox in any CRS, datetime, cloud cover, paging, sorting, errors."""

import math

import pystac
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box, shape

from geoplantnet.core.grid import Grid
from geoplantnet.sim.stac_server import free_port
from geoplantnet.sources.catalog import (
    SEARCH_KEY,
    CatalogError,
    CatalogUnavailableError,
    EmptySearchError,
    band_assets,
    items_table,
    lonlat_bbox,
    search,
)

COLL = "test-s2"


def _ids(items) -> list[str]:
    return [i.id for i in items]


def test_bbox_in_lonlat_and_epsg3035_give_the_same_items(stac_server, stac_collection):
    items = stac_collection[2]
    grid = Grid.from_lonlat(tuple(items[0].bbox), 10.0)
    by_3035 = search(stac_server.url, COLL, bbox=grid.bounds, bbox_crs=3035)
    by_lonlat = search(stac_server.url, COLL, bbox=items[0].bbox)
    assert _ids(by_3035) == _ids(by_lonlat) == _ids(items)  # sorted by datetime


def test_projected_bbox_is_checked_against_its_exact_footprint(stac_server, stac_collection):
    """A polar-stereographic box just east of the items: its lon/lat envelope overlaps them, the box itself does not."""
    footprint = shape(stac_collection[2][0].geometry)
    to_3413 = Transformer.from_crs(4326, 3413, always_xy=True)
    x0, y0, x1, y1 = shapely.transform(footprint, lambda xy: list(zip(*to_3413.transform(*xy.T), strict=True))).bounds
    beside = (x1 + 1.0, y0, x1 + 1.0 + (x1 - x0), y1)
    assert box(*lonlat_bbox(beside, 3413)).intersects(footprint)  # the server alone would return every item
    with pytest.raises(EmptySearchError, match=r"bbox=\(3\d+\.\d+, -2\d+\.\d+, .*\) in EPSG:3413"):
        search(stac_server.url, COLL, bbox=beside, bbox_crs="EPSG:3413")


def test_paging_follows_every_page(stac_server, stac_collection):
    found = search(stac_server.url, COLL, limit=7)
    assert len(found) == len(stac_collection[2]) == 30
    assert len(set(_ids(found))) == 30
    assert found.extra_fields[SEARCH_KEY]["pages"] == math.ceil(30 / 7)
    assert len(search(stac_server.url, COLL, limit=7, max_items=12)) == 12


def test_datetime_ranges(stac_server, stac_collection):
    items = stac_collection[2]
    in_2023 = [i.id for i in items if i.datetime.year == 2023]
    assert _ids(search(stac_server.url, COLL, datetime="2023-01-01/2023-12-31")) == in_2023
    since = [i.id for i in items if i.datetime.year >= 2024]
    assert _ids(search(stac_server.url, COLL, datetime="2024-01-01T00:00:00Z/..")) == since


def test_cloud_filter_is_right_on_every_backend(stac_server, stac_collection):
    items = stac_collection[2]
    clear = [i.id for i in items if i.properties["eo:cloud_cover"] <= 30]
    found = search(stac_server.url, COLL, max_cloud_cover=30, limit=7)
    assert _ids(found) == clear
    stats = found.extra_fields[SEARCH_KEY]
    if stac_server.backend == "pgstac":  # filtered by pgstac itself: nothing left to drop here
        assert stats["server_filter"] == "filter" and stats["served"] == len(clear) and stats["dropped_here"] == 0
    else:  # rustac in memory answers `filter` with nothing, so it is not sent and the client filters
        assert stats["server_filter"] is None and stats["served"] == 30 and stats["dropped_here"] == 30 - len(clear)
    # max_items counts items that pass the filter, even when the filtering happens here.
    capped = _ids(search(stac_server.url, COLL, max_cloud_cover=30, max_items=4, limit=5))
    assert len(capped) == 4 and set(capped) <= set(clear)


def test_sortby_picks_the_clearest_scenes(stac_server, stac_collection):
    by_cloud = sorted(stac_collection[2], key=lambda i: i.properties["eo:cloud_cover"])
    found = search(stac_server.url, COLL, sortby="eo:cloud_cover", max_items=5, limit=4)
    assert _ids(found) == _ids(by_cloud[:5])
    newest = search(stac_server.url, COLL, sortby="-datetime", max_items=3)
    assert _ids(newest) == _ids(stac_collection[2][::-1][:3])


@pytest.mark.pgstac
def test_pgstac_filters_and_sorts_on_the_server(pgstac_server, stac_collection):
    """Raw requests: pgstac applies filter and sortby itself (sortby needs the registered queryables)."""
    from pystac_client import Client

    # rustac does not advertise the sort conformance class, but passes sortby through to pgstac, which sorts.
    client = Client.open(pgstac_server.url)
    client.add_conforms_to("SORT")
    raw = client.search(
        collections=[COLL],
        filter={"op": "<=", "args": [{"property": "eo:cloud_cover"}, 30]},
        filter_lang="cql2-json",
        sortby="-eo:cloud_cover",
        limit=100,
    )
    covers = [i.properties["eo:cloud_cover"] for i in raw.items()]
    expected = sorted((c for i in stac_collection[2] if (c := i.properties["eo:cloud_cover"]) <= 30), reverse=True)
    assert covers == expected


def test_empty_search_unknown_collection_unreachable_api(stac_server):
    with pytest.raises(EmptySearchError, match=r"no items in 'test-s2' at http://127\.0\.0\.1:\d+ .*datetime=1999"):
        search(stac_server.url, COLL, datetime="1999-01-01/1999-12-31")
    with pytest.raises(EmptySearchError, match=r"bbox=\(-10\.0, 40\.0, -9\.9, 40\.1\) in EPSG:4326"):
        search(stac_server.url, COLL, bbox=(-10.0, 40.0, -9.9, 40.1))
    with pytest.raises(CatalogError, match="collection 'nope' does not exist"):
        search(stac_server.url, "nope")
    with pytest.raises(CatalogUnavailableError, match=r"STAC API at http://127\.0\.0\.1:\d+ could not be reached"):
        search(f"http://127.0.0.1:{free_port()}", COLL, retries=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bbox": (4_321_000, 2_970_000, 4_322_000, 2_981_000)}, "not lon/lat"),
        ({"bbox": (1, 2, 3)}, "bbox must be 4 numbers"),
        ({"bbox": (11, 50, 10, 51)}, "xmin > xmax"),
        ({"bbox": (0, 0, 1, 1), "bbox_crs": "EPSG:99999"}, "bbox_crs='EPSG:99999' is not a CRS"),
        ({"limit": 0}, "limit=0"),
        ({"max_cloud_cover": 150}, "max_cloud_cover=150"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(CatalogError, match=message):
        search("http://127.0.0.1:9", COLL, **kwargs)


def test_items_table_and_lonlat_bbox(stac_collection):
    items = stac_collection[2]
    table = items_table(items)
    assert list(table.id) == _ids(items)
    assert table.epsg.unique().tolist() == [3035] and table.cloud_cover.max() <= 99
    assert table.assets.map(tuple).unique().tolist() == [("B04",)]
    lon0, lat0, lon1, lat1 = lonlat_bbox((4_321_000, 2_980_000, 4_322_000, 2_981_000), 3035)
    assert 9 < lon0 < lon1 < 11 and 49 < lat0 < lat1 < 51


def test_band_assets_naming_conventions(stac_collection):
    item = stac_collection[2][0].clone()
    red = item.assets.pop("B04")
    # Earth Search v1: common names as keys.
    item.add_asset("red", red)
    item.add_asset("scl", pystac.Asset(href="scl.tif"))
    assert band_assets(item, ["B04", "SCL"]) == {"B04": "red", "SCL": "scl"}
    with pytest.raises(CatalogError, match=r"item S2_T00_\d+ has no asset for band\(s\) \['B08'\]"):
        band_assets(item, ["B04", "B08"])
    # CDSE: resolution suffixes, the finest wins.
    cdse = item.clone()
    cdse.assets = {"B04_60m": red, "B04_10m": red, "B04_20m": red, "SCL_20m": red}
    assert band_assets(cdse, ["B04", "SCL"]) == {"B04": "B04_10m", "SCL": "SCL_20m"}
    # Arbitrary keys: the eo:bands name decides; an ambiguous "rededge" common name never does.
    odd = item.clone()
    odd.assets = {
        "band_1": pystac.Asset("a.tif", extra_fields={"eo:bands": [{"name": "B8A", "common_name": "rededge"}]}),
        "band_2": pystac.Asset("b.tif", extra_fields={"eo:bands": [{"name": "x", "common_name": "rededge"}]}),
    }
    assert band_assets(odd) == {"B8A": "band_1"}
