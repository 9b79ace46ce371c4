"""STAC search against real servers: bbox in any CRS, datetime, cloud cover, paging, sorting, errors."""

import pystac
import pytest

from geoplantnet.catalog import CatalogError, EmptySearchError, band_assets, items_table, lonlat_bbox, search
from geoplantnet.grid import Grid
from geoplantnet.stac_server import free_port

COLL = "test-s2"


def test_bbox_in_lonlat_and_epsg3035_give_the_same_items(stac_server, stac_collection):
    items = stac_collection[2]
    grid = Grid.from_lonlat(tuple(items[0].bbox), 10.0)
    by_3035 = search(stac_server.url, COLL, bbox=grid.bounds, bbox_crs=3035)
    by_lonlat = search(stac_server.url, COLL, bbox=items[0].bbox)
    assert [i.id for i in by_3035] == [i.id for i in by_lonlat] == [i.id for i in items]


def test_paging_follows_every_page(stac_server, stac_collection):
    found = search(stac_server.url, COLL, limit=7)
    assert len(found) == len(stac_collection[2]) == 30
    assert len({i.id for i in found}) == 30
    assert len(search(stac_server.url, COLL, limit=7, max_items=12)) == 12


def test_datetime_and_cloud_filters(stac_server, stac_collection):
    items = stac_collection[2]
    in_2023 = [i.id for i in items if i.datetime.year == 2023]
    assert [i.id for i in search(stac_server.url, COLL, datetime="2023-01-01/2023-12-31")] == in_2023
    clear = [i.id for i in items if i.properties["eo:cloud_cover"] <= 30]
    found = search(stac_server.url, COLL, max_cloud_cover=30)
    assert sorted(i.id for i in found) == sorted(clear)
    assert all(i.properties["eo:cloud_cover"] <= 30 for i in found)


@pytest.mark.pgstac
def test_pgstac_filters_and_sorts_on_the_server(pgstac_server, stac_collection):
    """The cloud filter must run on pgstac itself, not only in our client-side re-check."""
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
    expected = sorted((i.properties["eo:cloud_cover"] for i in stac_collection[2] if i.properties["eo:cloud_cover"]
                       <= 30), reverse=True)
    assert covers == expected


def test_empty_search_unknown_collection_unreachable_api(stac_server):
    with pytest.raises(EmptySearchError, match=r"no items in 'test-s2'.*datetime=1999"):
        search(stac_server.url, COLL, datetime="1999-01-01/1999-12-31")
    with pytest.raises(EmptySearchError):
        search(stac_server.url, COLL, bbox=(-10.0, 40.0, -9.9, 40.1))
    with pytest.raises(CatalogError, match="collection 'nope' does not exist"):
        search(stac_server.url, "nope")
    with pytest.raises(CatalogError, match="cannot open the STAC API"):
        search(f"http://127.0.0.1:{free_port()}", COLL)
    with pytest.raises(CatalogError, match="not lon/lat"):
        search(stac_server.url, COLL, bbox=(4_321_000, 2_970_000, 4_322_000, 2_981_000))


def test_items_table_and_lonlat_bbox(stac_collection):
    items = stac_collection[2]
    table = items_table(items)
    assert list(table.id) == [i.id for i in items]
    assert table.epsg.unique().tolist() == [3035] and table.cloud_cover.max() <= 99
    lon0, lat0, lon1, lat1 = lonlat_bbox((4_321_000, 2_980_000, 4_322_000, 2_981_000), 3035)
    assert 9 < lon0 < lon1 < 11 and 49 < lat0 < lat1 < 51


def test_band_assets_earth_search_v1_naming(stac_collection):
    item = stac_collection[2][0].clone()
    asset = item.assets.pop("B04")
    asset.extra_fields["eo:bands"] = [{"name": "red", "common_name": "red"}]
    item.add_asset("red", asset)
    item.add_asset("scl", pystac.Asset(href="scl.tif"))
    assert band_assets(item, ["B04", "SCL"]) == {"B04": "red", "SCL": "scl"}
    with pytest.raises(CatalogError, match=r"no asset for band\(s\) \['B08'\]"):
        band_assets(item, ["B04", "B08"])
