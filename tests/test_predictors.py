"""Environmental predictors on the grid: lazy reprojection from EPSG:4326, categorical land cover, units, errors."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from geoplantnet.core.grid import Grid
from geoplantnet.sources.cog import write_cog
from geoplantnet.sources.cube import CubeError
from geoplantnet.sources.predictors import STATIC_DATETIME as STATIC
from geoplantnet.sources.predictors import PredictorError, environment_stack, from_geotiffs, model_stack, one_hot
from geoplantnet.sources.stac_items import AssetSpec, item_from_cogs
from geoplantnet.testing.fixtures import ORIGIN

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

GRID = Grid.from_origin(*ORIGIN, 50, 60, 60)  # 3 km x 3 km at 50 m
DEG = 0.0005  # ~35 x 55 m lon/lat pixels
CLASSES = (1, 2, 3, 5, 7)


def elevation(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return 300.0 + 1000.0 * (lon - 10.0) + 2000.0 * (lat - 50.0)


def temperature(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return 12.0 - 40.0 * (lat - 50.0) + 10.0 * (lon - 10.0)


def write_lonlat(path: Path, func: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Path:
    lon0, lat0, lon1, lat1 = GRID.lonlat_bounds()
    lon0, lat1 = np.floor(lon0 / DEG) * DEG - 10 * DEG, np.ceil(lat1 / DEG) * DEG + 10 * DEG
    width, height = int((lon1 - lon0) / DEG) + 20, int((lat1 - lat0) / DEG) + 20
    lon = lon0 + (np.arange(width) + 0.5) * DEG
    lat = lat1 - (np.arange(height) + 0.5) * DEG
    arr = func(*np.meshgrid(lon, lat)).astype("float32")
    return write_cog(path, arr, Affine(DEG, 0, lon0, 0, -DEG, lat1), 4326, nodata=-9999.0)


def land_cover_codes(shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.indices(shape)
    codes = np.array(CLASSES, dtype="uint8")[(rows // 3 + 2 * (cols // 4)) % len(CLASSES)]
    codes[0, :5] = 0  # nodata
    return codes


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Path]:
    folder = tmp_path_factory.mktemp("env")
    elev = write_lonlat(folder / "elevation.tif", elevation)
    temp = write_lonlat(folder / "temperature.tif", temperature)
    lc_grid = GRID.at_resolution(100)
    lc = write_cog(folder / "land_cover.tif", land_cover_codes(lc_grid.shape), lc_grid.transform, 3035, nodata=0)
    climate = item_from_cogs(
        "climate", STATIC, [AssetSpec("elevation", str(elev)), AssetSpec("temperature", str(temp))]
    )
    land = item_from_cogs("corine", STATIC, [AssetSpec("land_cover", str(lc))])
    # the STAC classification extension: the layer declares its classes, which makes it categorical
    land.assets["land_cover"].extra_fields["classification:classes"] = [
        {"value": c, "name": f"class {c}"} for c in CLASSES
    ]
    return [climate, land], folder


def centres_lonlat(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.meshgrid(grid.x, grid.y)
    return Transformer.from_crs(3035, 4326, always_xy=True).transform(x, y)


def test_lonlat_rasters_reprojected_lazily_onto_grid(layers: tuple[list, Path]) -> None:
    items, _ = layers
    stack = environment_stack(items, GRID, chunk=32)
    assert stack.dims == ("var", "y", "x") and stack.dtype == np.float32
    assert stack.chunks == ((1, 1, 1), (32, 28), (32, 28))
    assert list(stack["var"].values) == ["elevation", "temperature", "land_cover"]
    assert np.array_equal(stack.x.values, GRID.x) and np.array_equal(stack.y.values, GRID.y)
    assert "spatial_ref" in stack.coords
    lon, lat = centres_lonlat(GRID)
    values = stack.sel(var=["elevation", "temperature"]).values
    # Bilinear on a linear field is exact up to GDAL's approximate warp transformer (1/8 px): sub-metre here.
    np.testing.assert_allclose(values[0], elevation(lon, lat), atol=0.1)
    np.testing.assert_allclose(values[1], temperature(lon, lat), atol=0.01)


def test_build_does_not_read(tmp_path: Path) -> None:
    items = from_geotiffs([write_lonlat(tmp_path / "elevation.tif", elevation)])
    stack = environment_stack(items, GRID, chunk=32)
    shutil.rmtree(tmp_path)
    with pytest.raises(CubeError, match=r"cannot read asset .*elevation\.tif"):
        stack.compute()


def test_land_cover_stays_classes(layers: tuple[list, Path]) -> None:
    items, _ = layers
    lc = environment_stack(items, GRID, variables=["land_cover"], chunk=32)
    assert list(lc.resampling.values) == ["mode"]
    values = lc.values[0]
    rows, cols = np.indices(GRID.shape)
    expect = land_cover_codes((30, 30))[rows // 2, cols // 2].astype("float32")
    expect[expect == 0] = np.nan
    np.testing.assert_array_equal(values, expect)
    # Forcing bilinear on class codes is what the default avoids: it invents codes between classes.
    smeared = environment_stack(items, GRID, variables=["land_cover"], resampling={"land_cover": "bilinear"}).values
    assert not set(np.unique(smeared[np.isfinite(smeared)])) <= set(CLASSES)


def test_land_cover_from_other_crs_keeps_codes(tmp_path: Path) -> None:
    # The same codes written in UTM 32N by a user: warped onto the grid, still only class codes.
    e0, n0, _, _ = Transformer.from_crs(3035, 32632, always_xy=True).transform_bounds(*GRID.bounds)
    codes = land_cover_codes((40, 40))
    path = write_cog(
        tmp_path / "lc.tif", codes, Affine(100, 0, np.floor(e0) - 500, 0, -100, np.floor(n0) + 3500), 32632, nodata=0
    )
    items = from_geotiffs({"land_cover": path}, categorical={"land_cover"})
    values = environment_stack(items, GRID, chunk=32).values
    assert set(np.unique(values[np.isfinite(values)])) <= set(CLASSES)
    # its classes were read from the file (nodata 0 left out) and become one indicator layer each
    model = model_stack(items, GRID, chunk=32)
    assert list(model["var"].values) == [f"land_cover_{c}" for c in CLASSES]
    # a class raster nobody declared is just numbers: averaged, as any continuous layer
    plain = environment_stack(from_geotiffs({"land_cover": path}), GRID, chunk=32)
    assert list(plain.resampling.values) == ["bilinear"]
    with pytest.raises(PredictorError, match=r"categorical layers \['soil'\] are not among the rasters"):
        from_geotiffs({"land_cover": path}, categorical={"soil"})


def test_units_and_user_geotiffs(layers: tuple[list, Path], tmp_path: Path) -> None:
    items, folder = layers
    stack = environment_stack(items, GRID)
    assert dict(zip(stack["var"].values, stack.units.values, strict=True)) == {
        "elevation": "m",
        "temperature": "degC",
        "land_cover": "class",
    }
    user = from_geotiffs({"ph": folder / "temperature.tif"}, units={"ph": "pH"})
    assert user[0].assets["ph"].extra_fields["proj:epsg"] == 4326
    ph = environment_stack(user, GRID)
    assert list(ph.units.values) == ["pH"] and list(ph.resampling.values) == ["bilinear"]
    np.testing.assert_allclose(ph.values[0], stack.sel(var="temperature").values)


def test_one_hot(layers: tuple[list, Path]) -> None:
    items, _ = layers
    lc = environment_stack(items, GRID, variables=["land_cover"]).sel(var="land_cover")
    hot = one_hot(lc, CLASSES)
    assert list(hot["var"].values) == [f"land_cover_{c}" for c in CLASSES]
    values, codes = hot.values, lc.values
    valid = np.isfinite(codes)
    np.testing.assert_array_equal(np.nansum(values, axis=0)[valid], 1.0)
    assert np.isnan(values[:, ~valid]).all()
    np.testing.assert_array_equal(values[2][valid], (codes[valid] == 3).astype("float32"))


def test_errors(layers: tuple[list, Path], tmp_path: Path) -> None:
    items, _ = layers
    with pytest.raises(PredictorError, match="no item has an asset for variable 'soil_ph'"):
        environment_stack(items, GRID, variables=["soil_ph"])
    with pytest.raises(PredictorError, match="returned no items"):
        environment_stack([], GRID)
    with pytest.raises(PredictorError, match="resampling given for"):
        environment_stack(items, GRID, variables=["elevation"], resampling={"land_cover": "mode"})
    far = Grid.from_origin(3_000_000, 2_000_000, 50, 10, 10)
    with pytest.raises(CubeError, match=r"overlap none of the 1 item footprints .* variable 'elevation'"):
        environment_stack(items, far, variables=["elevation"])
    rgb = write_cog(tmp_path / "rgb.tif", np.ones((3, 8, 8), "uint8"), GRID.transform, 3035)
    with pytest.raises(PredictorError, match=r"rgb\.tif: 3 bands"):
        from_geotiffs([rgb])
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(PredictorError, match=r"junk\.tif: cannot open"):
        from_geotiffs([tmp_path / "junk.tif"])


def _stack_file(path: Path, values: np.ndarray, crs: str | None = "EPSG:4326") -> Path:
    """A multi-band GeoTIFF with band descriptions, like a user's bioclim stack."""
    import rasterio

    profile = {
        "driver": "GTiff",
        "width": values.shape[2],
        "height": values.shape[1],
        "count": values.shape[0],
        "dtype": "float32",
        "transform": Affine(0.01, 0, 10.0, 0, -0.01, 50.0),
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(values.astype("float32"))
        ds.descriptions = tuple(f"bio{i + 1}" for i in range(values.shape[0]))
    return path


def test_split_bands_never_reuses_another_rasters_layers(tmp_path: Path) -> None:
    import rasterio

    from geoplantnet.sources.predictors import split_bands

    cache = tmp_path / "work" / "predictors"
    first = split_bands(_stack_file(tmp_path / "bio.tif", np.ones((2, 8, 8))), cache)
    with rasterio.open(first["bio1"]) as ds:
        assert ds.read(1).max() == 1.0
    # another raster under the same name and band names, the same workdir: its own layers, not the first one's
    second = split_bands(_stack_file(tmp_path / "bio.tif", np.full((2, 8, 8), 7.0)), cache)
    assert second["bio1"] != first["bio1"]
    with rasterio.open(second["bio1"]) as ds:
        assert ds.read(1).max() == 7.0
    assert split_bands(tmp_path / "bio.tif", cache) == second  # the same content is reused
    assert not list(cache.rglob(".*tmp*")), "temporary files left behind"


def test_split_bands_without_crs_or_file_is_one_clear_error(tmp_path: Path) -> None:
    from geoplantnet.sources.predictors import split_bands

    path = _stack_file(tmp_path / "nocrs.tif", np.ones((2, 4, 4)), crs=None)
    with pytest.raises(PredictorError, match=r"nocrs\.tif: the raster has no CRS"):
        split_bands(path, tmp_path / "cache")
    with pytest.raises(PredictorError, match=r"missing\.tif: no such raster file"):
        split_bands(tmp_path / "missing.tif", tmp_path / "cache")


def test_class_layers_take_the_majority_class_under_a_coarser_cell(tmp_path: Path) -> None:
    # 10 m classes under the 50 m grid: in every 5 x 5 block, 13 pixels of class 2 around a centre of class 7
    block = np.full((5, 5), 2, dtype="uint8")
    block[2, 2] = 7
    block[0, :] = 7
    block[4, :3] = 7
    block[1, 0] = 7
    block[3, 0] = 7
    block[3, 4] = 7
    assert (block == 2).sum() == 13  # the majority; nearest neighbour would take the centre's 7
    fine = GRID.at_resolution(10)
    codes = np.tile(block, (fine.height // 5, fine.width // 5))
    path = write_cog(tmp_path / "lc.tif", codes, fine.transform, 3035, nodata=0)
    items = from_geotiffs({"land_cover": path}, categorical={"land_cover"})
    values = environment_stack(items, GRID, chunk=32).values[0]
    assert (values == 2).all()
