"""Real-world STAC item JSON (Earth Search v0, Planetary Computer, Landsat C2): parsing, band names, pgstac search.

The items come from odc-stac's test data (see PROVENANCE.md there): metadata only, hrefs point at cloud storage.
"""

from pathlib import Path

import pystac
import pytest

from geoplantnet.sources.catalog import S2_BANDS, CatalogError, band_assets, items_table, search
from geoplantnet.sources.stac_items import collection_for, write_collection

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "stac_items_s2_landsat"
pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not REAL.is_dir(), reason=f"real data folder {REAL} is absent"),
]
EARTH_SEARCH = "S2A_28QCH_20200714_0_L2A"
PLANETARY = "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531"
LANDSAT = "LC08_L2SP_028030_20200114_20200824_02_T1_SR"


@pytest.fixture(scope="module")
def real_items() -> dict[str, pystac.Item]:
    """File stem -> item, for the four item files (the collection file left out)."""
    return {p.stem: pystac.Item.from_file(str(p)) for p in sorted(REAL.glob("*.json")) if "collection" not in p.name}


def test_sentinel2_items_map_every_band_to_its_own_asset(real_items):
    for name in (EARTH_SEARCH, PLANETARY, f"{PLANETARY}_raster_ext"):
        assert band_assets(real_items[name], list(S2_BANDS)) == {b: b for b in S2_BANDS}, name
    raster = real_items[f"{PLANETARY}_raster_ext"]
    assert raster.assets["B04"].extra_fields["raster:bands"][0] == {"nodata": 0, "data_type": "uint16"}


def test_earth_search_v1_naming_on_a_real_item(real_items):
    """Earth Search v1 keys its assets by common name (red, nir, nir08, scl): rename the real v0 item's keys so."""
    item = real_items[EARTH_SEARCH].clone()
    renames = {"B02": "blue", "B04": "red", "B08": "nir", "B8A": "nir08", "B11": "swir16", "SCL": "scl"}
    item.assets = {renames.get(k, k): a for k, a in item.assets.items()}
    assert band_assets(item, ["B02", "B04", "B08", "B8A", "B11", "SCL"]) == {
        "B02": "blue",
        "B04": "red",
        "B08": "nir",
        "B8A": "nir08",
        "B11": "swir16",
        "SCL": "scl",
    }


def test_landsat_common_names(real_items):
    landsat = real_items[LANDSAT]
    assert band_assets(landsat, ["B02", "B03", "B04", "B08", "B8A", "B11", "B12"]) == {
        "B02": "blue",
        "B03": "green",
        "B04": "red",
        "B08": "nir08",
        "B8A": "nir08",
        "B11": "swir16",
        "B12": "swir22",
    }
    with pytest.raises(CatalogError, match=rf"item {LANDSAT} has no asset for band\(s\) \['B05', 'SCL'\]"):
        band_assets(landsat, ["B04", "B05", "SCL"])


def test_items_table_of_real_items(real_items):
    table = items_table(real_items.values())
    assert len(table) == 4 and table.cloud_cover.notna().all()
    assert set(table.epsg) == {32615, 32628, 32606}
    assert set(table.platform) == {"LANDSAT_8", "sentinel-2a", "Sentinel-2B"}
    assert table.datetime.dt.year.tolist() == [2020, 2020, 2019, 2019]


@pytest.mark.pgstac
def test_real_items_searched_on_pgstac(real_items, pgstac_server, tmp_path):
    """Load the real metadata into the shared pgstac server (hrefs stay remote) and search it."""
    items = [real_items[n].clone() for n in (EARTH_SEARCH, PLANETARY, LANDSAT)]  # the raster_ext variant repeats an id
    for item in items:
        item.collection_id = "real-mixed"
    pgstac_server.load(*write_collection(collection_for("real-mixed", items, "real item metadata"), items, tmp_path))
    url = pgstac_server.url
    assert [i.id for i in search(url, "real-mixed")] == [items[1].id, items[2].id, items[0].id]  # by datetime
    in_2020 = search(url, "real-mixed", datetime="2020-01-01/2020-12-31", bbox=(-180, -90, 180, 90))
    assert {i.id for i in in_2020} == {items[0].id, LANDSAT}
    assert [i.id for i in search(url, "real-mixed", bbox=items[2].bbox)] == [LANDSAT]
    # The Landsat scene's centre, as a 10 km box in its own UTM zone.
    _, _, x0, _, _, y1 = items[2].properties["proj:transform"][:6]
    utm_box = (x0 + 100_000, y1 - 110_000, x0 + 110_000, y1 - 100_000)
    assert [i.id for i in search(url, "real-mixed", bbox=utm_box, bbox_crs=32615)] == [LANDSAT]
    assert [i.id for i in search(url, "real-mixed", max_cloud_cover=1.0)] == [PLANETARY]
