"""Real-world STAC item JSON (Earth Search, Planetary Computer, Landsat C2): parsing, band names, pgstac search."""

import json
from pathlib import Path

import pystac
import pytest

from geoplantnet.catalog import band_assets, items_table, search
from geoplantnet.stac_items import collection_for, write_collection
from geoplantnet.stac_server import StacServer

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "stac_items_s2_landsat"
pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not REAL.is_dir(), reason=f"real data folder {REAL} is absent"),
]


def _items() -> dict[str, pystac.Item]:
    return {p.stem: pystac.Item.from_file(str(p)) for p in sorted(REAL.glob("*.json")) if "collection" not in p.name}


def test_real_items_parse_and_map_bands():
    items = _items()
    assert len(items) == 4
    s2 = [i for name, i in items.items() if name.startswith("S2")]
    for item in s2:
        assert set(band_assets(item, ["B02", "B04", "B08", "B8A", "B11", "SCL"]).values()) <= set(item.assets)
    landsat = items["LC08_L2SP_028030_20200114_20200824_02_T1_SR"]
    assert band_assets(landsat, ["B02", "B03", "B04"]) == {"B02": "blue", "B03": "green", "B04": "red"}
    table = items_table(items.values())
    assert set(table.epsg) == {32615, 32628, 32606}
    assert table.cloud_cover.notna().all()
    raster = items["S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531_raster_ext"]
    assert raster.assets["B04"].extra_fields["raster:bands"][0] == {"nodata": 0, "data_type": "uint16"}


@pytest.mark.pgstac
def test_real_items_searched_on_pgstac(tmp_path):
    items = list(_items().values())[:3]  # the raster_ext variant repeats an id
    for item in items:
        item.collection_id = "real-mixed"
    coll_path, items_path = write_collection(collection_for("real-mixed", items, "real item metadata"), items, tmp_path)
    json.loads(coll_path.read_text())
    with StacServer("pgstac").start([(coll_path, items_path)]) as server:
        assert len(search(server.url, "real-mixed")) == 3
        in_2020 = search(server.url, "real-mixed", datetime="2020-01-01/2020-12-31", bbox=(-180, -90, 180, 90))
        assert sorted(i.id for i in in_2020) == sorted(i.id for i in items if i.datetime.year == 2020)
        landsat_bbox = next(i for i in items if i.id.startswith("LC08")).bbox
        assert [i.id for i in search(server.url, "real-mixed", bbox=landsat_bbox)] == [
            "LC08_L2SP_028030_20200114_20200824_02_T1_SR"
        ]
