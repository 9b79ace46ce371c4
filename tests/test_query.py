"""The analysts' query API (geoplantnet.query) on real stores: the session's small species and habitat maps, a value
store and a two-year series written with the storage functions. Values against the stores read directly, points and
polygons in lon/lat, points off the grid, unknown products/species/years, the chunks a query reads (counted by a
zarr LoggingStore around the real store), the JSON of a click, and the Danube polygons as a format test."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import xarray as xr
import zarr
from zarr.storage import LocalStore, LoggingStore

from geoplantnet import query
from geoplantnet.core.encoding import SCALE
from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import Grid
from geoplantnet.products.species_map import species_template
from geoplantnet.query.stores import grid_of
from geoplantnet.storage.selection import UnknownSpeciesError
from geoplantnet.storage.store import inspect_target, open_store, run_id, write_store
from geoplantnet.storage.years import claim_year, finish_year, prepare_year, series_parts, year_parts
from geoplantnet.testing.fixtures import small_grid

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "danube_dike_vegetation_eunis"


class CountingStore(LoggingStore):
    """zarr's LoggingStore that also keeps every key read (whole or byte ranges), shared by the copies zarr makes."""

    def __init__(self, store, reads: list[str] | None = None) -> None:
        super().__init__(store, log_level="WARNING")  # count, do not print
        self.reads = [] if reads is None else reads

    def _with_store(self, store):
        return type(self)(store, self.reads)

    async def get(self, key, prototype, byte_range=None):
        self.reads.append(key)
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        self.reads.extend(k for k, _ in key_ranges)
        return await super().get_partial_values(prototype, key_ranges)

    def chunks_read(self, variable: str) -> set[str]:
        return {k for k in self.reads if k.startswith(f"{variable}/c/")}


def counted(url: str) -> tuple[xr.Dataset, CountingStore]:
    """A store opened as query users open it (open_store), every read counted; the reads of opening forgotten."""
    store = CountingStore(LocalStore(url, read_only=True))
    ds = open_store(store)
    store.reads.clear()
    return ds, store


def shard_keys(url: str, variable: str, rows: Iterable[int], cols: Iterable[int]) -> set[str]:
    """The keys of the shards (chunks where unsharded) of ``variable`` holding pixels rows x cols, every leading
    index (species) included: what a query of those pixels must read, and all it may read."""
    array = zarr.open_array(url, path=variable, mode="r")
    block = array.shards or array.chunks
    lead = [range(-(-n // b)) for n, b in zip(array.shape[:-2], block[:-2], strict=True)]
    ys = sorted({r // block[-2] for r in rows})
    xs = sorted({c // block[-1] for c in cols})
    keys = set()
    for index in np.ndindex(*[len(r) for r in lead]) if lead else [()]:
        for y in ys:
            for x in xs:
                keys.add("/".join([variable, "c", *map(str, index), str(y), str(x)]))
    return keys


def lonlat(grid: Grid, x: float, y: float) -> tuple[float, float]:
    from pyproj import Transformer

    return Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(x, y)


# --- stores ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(small_map, small_habitats, tmp_path_factory) -> Path:
    """A products root as a run leaves it: the session's species and habitat maps (linked, read only) and a value
    store on their grid with known values."""
    out = tmp_path_factory.mktemp("query-root")
    (out / "species.zarr").symlink_to(small_map.reference)
    (out / "habitat.zarr").symlink_to(small_habitats.store)
    species = open_store(small_map.reference)
    grid = grid_of(species)
    rng = np.random.default_rng(0)
    value = np.round(rng.uniform(0, 1, grid.shape) * SCALE) / SCALE
    value[:3, :5] = np.nan  # no data
    ds = xr.Dataset(
        {"biodiversity_value": (("y", "x"), value), "biodiversity_value_sd": (("y", "x"), value / 10)},
        coords=grid.coords(),
    )
    code = {"dtype": "uint8", "scale_factor": 1 / SCALE, "add_offset": 0.0, "_FillValue": 255, "fill_value": 255}
    write_store(ds, str(out / "value.zarr"), product="value", parts={"test": "query"}, encoding=dict.fromkeys(ds, code))
    richness = rng.uniform(10, 30, grid.shape).astype("float32")
    indicators = xr.Dataset(
        {
            "richness_expected": (("y", "x"), richness),
            "richness_lower": (("y", "x"), richness - 5),
            "richness_upper": (("y", "x"), richness + 5),
            "habitat_set_size": (("y", "x"), rng.integers(1, 4, grid.shape).astype("float32")),
        },
        coords=grid.coords(),
    )
    sizes = {"habitat_set_size": {"dtype": "int16", "_FillValue": -1, "fill_value": -1}}
    write_store(indicators, str(out / "indicators.zarr"), product="indicators", parts={"test": "q"}, encoding=sizes)
    return out


SERIES_SPECIES = ["sp0001", "sp0002", "sp0003"]
SERIES_NAMES = ["Quercus robur", "Fagus sylvatica", "Quercus robur"]  # a name two ids share


def _year_values(year: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(year)
    values = np.round(rng.uniform(0, 1, shape) * SCALE) / SCALE
    values[:, -2:, :] = np.nan  # the last rows: no data
    return values.astype("float32")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, dict[int, np.ndarray]]:
    """A species series written year by year with the storage functions: 2024 and 2025 complete, 2026 begun and
    never finished (hidden)."""
    out = tmp_path_factory.mktemp("query-series")
    url = str(out / "species.zarr")
    grid = small_grid(10.0, 32)
    template, encoding = species_template(grid, SERIES_SPECIES, SERIES_NAMES, tile=16, species_chunk=2)
    identity = series_parts(template, encoding, "species")
    values = {}
    for year in (2024, 2025, 2026):
        values[year] = _year_values(year, template["probability"].shape)
        layout = template.assign(probability=(template["probability"].dims, values[year], template.probability.attrs))
        parts = year_parts({"test": "query-series"}, year)
        target = inspect_target(url)
        decision = claim_year(target, product="species", series=identity, parts=parts, year=year, overwrite=False)
        prepare_year(url, layout, encoding, decision=decision, target=target, product="species", parts=parts, year=year)
        if year < 2026:
            finish_year(url, run_id(parts))
    return out, values


# --- the registry's names ------------------------------------------------------------------------------------------


def test_store_names_are_the_registrys():
    from geoplantnet.products.base import load, products

    load()
    registered = {p.name: p.store for p in products()}
    assert {name: store for name, store in query.STORES.items() if name in registered} == registered


# --- points ------------------------------------------------------------------------------------------------------


def test_values_at_points_in_lonlat_are_the_stored_values_and_off_grid_points_are_nan(root):
    ds = open_store(str(root / "species.zarr"))
    grid = grid_of(ds)
    cells = [(3, 4), (20, 31), (39, 0)]
    points = [lonlat(grid, float(ds.x[c]), float(ds.y[r])) for r, c in cells] + [(-30.0, 10.0)]  # last: off the grid
    ids = [str(s) for s in ds.species.values[:2]]
    name = str(ds.species_name.values[5])
    frame = query.values_at(root, points, product="species", species=[*ids, name])
    assert len(frame) == 4 * 3
    assert list(frame.columns[:5]) == ["point", "x", "y", "species", "species_name"]
    asked = [*ids, str(ds.species.values[5])]
    for point, (r, c) in enumerate(cells):
        rows = frame[frame.point == point].set_index("species")
        expected = ds.probability.sel(species=asked).isel(y=r, x=c).values
        np.testing.assert_allclose(rows.loc[asked, "probability"].to_numpy(), expected)
        assert rows.loc[asked[2], "species_name"] == name
    assert frame[frame.point == 3].probability.isna().all()
    assert np.allclose(frame[frame.point == 3][["x", "y"]].to_numpy()[0], points[3])


def test_points_of_a_geodataframe_keep_its_index_and_crs(root):
    ds = open_store(str(root / "habitat.zarr"))
    grid = grid_of(ds)
    gdf = gpd.GeoDataFrame(
        {"site": ["a", "b"]},
        geometry=[shapely.Point(float(ds.x[7]), float(ds.y[9])), shapely.Point(0, 0)],
        index=["plot-7", "plot-far"],
        crs=grid.epsg,
    )
    frame = query.values_at(root, gdf, product="habitat").set_index("point")
    code = float(ds.habitat.isel(y=9, x=7))
    assert frame.loc["plot-7", "habitat"] == code
    labels = ds.habitat.attrs["flag_meanings"].split()
    assert frame.loc["plot-7", "habitat_label"] == labels[int(code)]
    assert np.isnan(frame.loc["plot-far", "habitat"]) and frame.loc["plot-far", "habitat_label"] is None


def test_unknown_product_species_variable_and_year_are_one_clear_error(root, series):
    with pytest.raises(query.QueryError, match=r"unknown product 'specie'.*species"):
        query.values_at(root, [(10.0, 50.0)], product="specie")
    with pytest.raises(query.MissingProductError, match="no changes store"):
        query.open_product(root, "changes")
    ds = open_store(str(root / "species.zarr"))
    name = str(ds.species_name.values[0])
    with pytest.raises(UnknownSpeciesError, match=r"close matches: .*" + re.escape(name[:5])) as caught:
        query.values_at(root, [(10.0, 50.0)], product="species", species=name[:-1])
    assert isinstance(caught.value, InputError)
    with pytest.raises(query.QueryError, match=r"unknown variable 'richness'.*biodiversity_value"):
        query.values_at(root, [(10.0, 50.0)], product="value", variables="richness")
    with pytest.raises(query.MissingProductError, match=r"no complete year 2026.*2024, 2025"):
        query.values_at(series[0], [(10.0, 50.0)], product="species", year=2026)


def test_a_point_across_all_species_reads_only_its_shard(small_map):
    ds, store = counted(small_map.reference)
    r, c = 21, 6
    frame = query.values_at(ds, [(float(ds.x[c]), float(ds.y[r]))], crs=ds.spatial_ref.attrs["crs_wkt"])
    read = store.chunks_read("probability")
    assert len(frame) == ds.sizes["species"]
    np.testing.assert_allclose(frame.probability, ds.probability.isel(y=r, x=c).values)
    assert read == shard_keys(small_map.reference, "probability", [r], [c])
    assert len(read) == 1  # a pixel's whole assemblage is one shard
    store.reads.clear()
    query.values_at(ds, [(-30.0, 10.0)])  # off the grid: nothing read
    assert not store.chunks_read("probability")


# --- boxes -------------------------------------------------------------------------------------------------------


def test_values_in_a_lonlat_box_is_a_lazy_decoded_window(root):
    ds = open_store(str(root / "value.zarr"))
    grid = grid_of(ds)
    x0, y0 = lonlat(grid, float(ds.x[2]) - 1, float(ds.y[12]) - 1)
    x1, y1 = lonlat(grid, float(ds.x[14]) + 1, float(ds.y[2]) + 1)
    window = query.values_in(root, (x0, y0, x1, y1), product="value")
    assert window.biodiversity_value.chunks is not None  # lazy
    inner = window.sel(x=slice(float(ds.x[2]), float(ds.x[14])), y=slice(float(ds.y[2]), float(ds.y[12])))
    np.testing.assert_array_equal(inner.biodiversity_value.values, ds.biodiversity_value.values[2:13, 2:15])
    assert np.isnan(window.biodiversity_value.values).any()  # the no-data corner, as NaN
    empty = query.values_in(root, (-31.0, 9.0, -30.0, 10.0), product="value")
    assert empty.sizes["x"] == 0 and empty.sizes["y"] == 0


# --- polygons ----------------------------------------------------------------------------------------------------


def _polygon(grid: Grid) -> shapely.Polygon:
    """A triangle over a few tiles of the small map, its vertices off the pixel centres."""
    r = grid.resolution
    return shapely.Polygon(
        [
            (grid.left + 3.3 * r, grid.top - 2.6 * r),
            (grid.left + 29.7 * r, grid.top - 7.2 * r),
            (grid.left + 11.4 * r, grid.top - 22.8 * r),
        ]
    )


def _inside(grid: Grid, polygon: shapely.Polygon) -> np.ndarray:
    xs, ys = np.meshgrid(grid.x, grid.y)
    return shapely.contains_xy(polygon, xs, ys)


def test_zonal_means_equal_a_direct_numpy_computation_and_read_only_the_polygons_window(small_map):
    ds, store = counted(small_map.reference)
    grid = grid_of(ds)
    polygon = _polygon(grid)
    polygons = gpd.GeoDataFrame(geometry=[polygon], crs=grid.epsg).to_crs(4326)
    frame = query.zonal(polygons, ds)
    read = store.chunks_read("probability")
    inside = _inside(grid, polygon)
    rows, cols = np.nonzero(inside)
    assert frame.loc[0, "pixels"] == inside.sum() > 50
    values = ds.probability.values
    expected = np.nanmean(values[:, inside], axis=1)
    got = frame.loc[0, [f"probability:{s}" for s in ds.species.values]].to_numpy(float)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    richness = np.nanmean(np.nansum(values[:, inside], axis=0))
    assert frame.loc[0, "richness_expected"] == pytest.approx(richness)
    assert frame.loc[0, "richness_source"] == "species"
    window_rows = range(rows.min(), rows.max() + 1)
    window_cols = range(cols.min(), cols.max() + 1)
    assert read == shard_keys(small_map.reference, "probability", window_rows, window_cols)
    every = shard_keys(small_map.reference, "probability", range(grid.height), range(grid.width))
    assert len(read) < len(every)  # the polygon's window, not the map


def test_zonal_habitat_shares_value_hectares_and_polygons_off_the_grid(root):
    habitat = open_store(str(root / "habitat.zarr"))
    value = open_store(str(root / "value.zarr"))
    grid = grid_of(habitat)
    polygon = _polygon(grid)
    far = shapely.box(0, 0, 100, 100)
    polygons = gpd.GeoDataFrame({"name": ["here", "far"]}, geometry=[polygon, far], crs=grid.epsg, index=[7, 8])
    frame = query.zonal(polygons, root, product=["habitat", "value"])
    inside = _inside(grid, polygon)
    codes = habitat.habitat.values[inside]
    codes = codes[~np.isnan(codes)]
    for code, label in enumerate(habitat.habitat.attrs["flag_meanings"].split()):
        assert frame.loc[7, f"habitat.habitat_share:{label}"] == pytest.approx((codes == code).mean())
    v = value.biodiversity_value.values[inside]
    assert frame.loc[7, "value.value_ha"] == pytest.approx(np.nansum(v) * grid.resolution**2 / 10_000)
    assert frame.loc[7, "value.biodiversity_value"] == pytest.approx(np.nanmean(v))
    assert frame.loc[8, "habitat.pixels"] == 0 and frame.loc[8, "value.pixels"] == 0
    assert frame.loc[8].drop(["habitat.pixels", "value.pixels"]).isna().all()
    every = query.zonal(polygons, root)  # every map product of the root
    indicators = open_store(str(root / "indicators.zarr"))
    assert every.loc[7, "richness_expected"] == pytest.approx(np.nanmean(indicators.richness_expected.values[inside]))
    assert every.loc[7, "richness_source"] == "indicators"
    assert {"species.pixels", "habitat.pixels", "indicators.pixels", "value.value_ha"} <= set(every.columns)


@pytest.mark.real_data
def test_the_danube_reserve_polygons_are_read_reprojected_and_give_empty_rows(root):
    shapes = REAL / "spatial" / "conservation_area_epsg4326.shp"
    if not shapes.exists():
        pytest.skip(f"{REAL} is absent (../shared/data/real: the Danube dike survey's reserve polygons)")
    reserves = gpd.read_file(shapes)
    assert reserves.crs.to_epsg() == 4326 and len(reserves) > 500
    frame = query.zonal(reserves, root, product="value")  # Bavaria: far from the virtual region
    assert list(frame.index) == list(reserves.index)
    assert (frame.pixels == 0).all() and frame.biodiversity_value.isna().all() and frame.value_ha.isna().all()
    sites = gpd.read_file(REAL / "spatial" / "sites_epsg4326.shp")
    points = query.values_at(root, sites, product="habitat")
    assert len(points) == len(sites) and points.habitat.isna().all()


# --- a series ----------------------------------------------------------------------------------------------------


def test_a_series_gives_its_complete_years_and_species_by_shared_name(series):
    out, values = series
    ds = query.open_product(out, "species")
    assert list(ds.year.values) == [2024, 2025]  # 2026 never finished: hidden
    grid = grid_of(ds)
    point = lonlat(grid, float(ds.x[4]), float(ds.y[9]))
    frame = query.values_at(out, [point], product="species", species="Quercus robur")
    assert sorted(frame.species.unique()) == ["sp0001", "sp0003"]  # the name two ids share
    for year in (2024, 2025):
        got = frame[frame.year == year].set_index("species").probability
        np.testing.assert_allclose(got[["sp0001", "sp0003"]], values[year][[0, 2], 9, 4], rtol=1e-6)
    one = query.values_at(out, [point], product="species", year=2025, species="sp0002")
    assert list(one.year) == [2025] and one.probability.iloc[0] == pytest.approx(values[2025][1, 9, 4], rel=1e-6)
    view = query.open_product(out, "species", year=2024)
    assert "year" not in view.dims
    latest = query.open_product(out, "species", year="latest")  # the latest complete year, not the unfinished 2026
    assert "year" not in latest.dims and int(latest.year) == 2025
    polygons = gpd.GeoDataFrame(geometry=[shapely.box(*grid.bounds).buffer(-grid.resolution * 10)], crs=grid.epsg)
    zones = query.zonal(polygons, out, product="species")
    assert list(zones.index.names) == ["polygon", "year"] and len(zones) == 2
    inside = _inside(grid, polygons.geometry[0])
    assert zones.loc[(0, 2025), "probability:sp0002"] == pytest.approx(np.nanmean(values[2025][1][inside]), rel=1e-6)


# --- a click -----------------------------------------------------------------------------------------------------


def test_describe_point_is_the_pixels_assemblage_habitat_and_value_as_json(root):
    species = open_store(str(root / "species.zarr"))
    habitat = open_store(str(root / "habitat.zarr"))
    indicators = open_store(str(root / "indicators.zarr"))
    grid = grid_of(species)
    r, c = 14, 25
    lon, lat = lonlat(grid, float(species.x[c]), float(species.y[r]))
    click = query.describe_point(root, lon, lat, top=5)
    json.dumps(click, allow_nan=False)
    assert {"species", "habitat", "indicators", "value"} <= set(click) and "changes" not in click
    probabilities = species.probability.isel(y=r, x=c).values
    top = np.argsort(-probabilities, kind="stable")[:5]
    assert [s["probability"] for s in click["species"]] == pytest.approx(probabilities[top].tolist())
    assert click["species"][0]["name"] == str(species.species_name.values[top[0]])
    code = int(habitat.habitat.isel(y=r, x=c))
    assert click["habitat"]["class"] == habitat.habitat.attrs["flag_meanings"].split()[code]
    assert click["habitat"]["probability"] == pytest.approx(float(habitat.habitat_probability.isel(y=r, x=c)))
    size = int(indicators.habitat_set_size.isel(y=r, x=c))
    ranked = habitat.top_k.isel(y=r, x=c).values[:size].astype(int)
    labels = habitat.habitat.attrs["flag_meanings"].split()
    assert [entry["class"] for entry in click["habitat"]["set"]] == [labels[k] for k in ranked]
    richness = click["indicators"]["richness_expected"]
    expected = float(indicators.richness_expected.isel(y=r, x=c))
    assert richness == pytest.approx({"value": expected, "lower": expected - 5, "upper": expected + 5})
    assert click["value"]["resolution_m"] == grid.resolution
    off = query.describe_point(root, -30.0, 10.0)
    json.dumps(off, allow_nan=False)
    assert off["species"] == [] and off["habitat"]["class"] is None and off["value"]["value"] is None


def test_describe_point_of_a_series_year(series):
    out, values = series
    ds = query.open_product(out, "species")
    grid = grid_of(ds)
    lon, lat = lonlat(grid, float(ds.x[3]), float(ds.y[5]))
    latest = query.describe_point(out, lon, lat)
    assert latest["year"] == 2025
    first = query.describe_point(out, lon, lat, year=2024)
    got = {s["id"]: s["probability"] for s in first["species"]}
    assert got == pytest.approx(dict(zip(SERIES_SPECIES, values[2024][:, 5, 3].tolist(), strict=True)), rel=1e-6)
    assert "species" not in query.describe_point(out, lon, lat, year=2023)


# --- through the catalogue ---------------------------------------------------------------------------------------


def test_a_root_with_a_catalogue_is_read_through_it(series, tmp_path):
    from geoplantnet.storage.catalog import publish

    out = tmp_path / "copied-root"
    shutil.copytree(series[0], out)  # hrefs are relative: a root copied elsewhere still opens
    assert publish(str(out), "species.zarr") is not None
    assert query.product_url(out, "species") == str(out / "species.zarr")
    assert list(query.open_product(out, "species").year.values) == [2024, 2025]
    shutil.copytree(out / "species.zarr", out / "indicators.zarr")  # a store the catalogue does not list
    with pytest.raises(query.MissingProductError, match="catalogue lists no complete indicators store"):
        query.open_product(out, "indicators")
