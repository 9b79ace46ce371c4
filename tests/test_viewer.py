"""The web map viewer (``geoplantnet serve``): confined to its catalogue, tiles whose colours are the stored values,
and the page in a real browser (Debian Chromium + ChromeDriver, driven by Selenium).

The fast tests serve a tiny catalogued root from a thread; the browser test (slow: it needs ``products_root``, every
product with a two-year series) starts ``geoplantnet serve`` as a process, as a user does."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pyproj import Transformer

from geoplantnet.core.grid import Grid
from geoplantnet.storage.catalog import open_catalog, open_item, publish
from geoplantnet.storage.store import write_store
from geoplantnet.testing.viewer import (
    CHROMEDRIVER,
    CHROMIUM,
    chromium,
    free_port,
    get,
    rgba,
    serve_process,
    tile_pixel,
    wait_until_up,
)
from geoplantnet.viewer import render
from geoplantnet.viewer.app import LEAFLET

ROOT = Path(__file__).resolve().parents[1]
GRID = Grid(20.0, 4_321_000.0, 2_981_000.0, 64, 48)
SECRET = "geoplantnet-viewer-secret-7f3a"  # the content of files outside the served root: never in a response
NAMES = ["Quercus robur", "Fagus sylvatica", "Quercus rubra"]
Z = 16  # a stored 20 m cell spans about 20 tile pixels here: the pixel over a cell's centre is that cell's


@pytest.fixture(scope="module", autouse=True)
def _built_page() -> None:
    """The bundled Leaflet (scripts/build_viewer.sh: npm ci from the lock file; scripts/bootstrap.sh runs it)."""
    if not LEAFLET.is_file():
        import subprocess

        subprocess.run([str(ROOT / "scripts" / "build_viewer.sh")], check=True)


def _tiny_root(tmp: Path) -> Path:
    """A catalogued root: species.zarr (3 species, known values) and indicators.zarr (a map, a class map); beside
    it, outside the root, files a request must never reach (a secret, an uncatalogued store)."""
    root = tmp / "root"
    rng = np.random.default_rng(0)
    p = np.round(rng.random((3, *GRID.shape)) * 254) / 254
    p[:, :4, :4] = np.nan  # no data: transparent
    species = xr.Dataset(
        {"probability": (("species", "y", "x"), p.astype("float32"), {"grid_mapping": "spatial_ref"})},
        coords={**GRID.coords(), "species": ["sp0001", "sp0002", "sp0003"], "species_name": ("species", NAMES)},
    )
    richness = np.linspace(0, 30, GRID.width)[None, :] * np.ones((GRID.height, 1))
    classes = (np.arange(GRID.width)[None, :] // 8 * np.ones((GRID.height, 1))) % 5
    indicators = xr.Dataset(
        {
            "richness_expected": (("y", "x"), richness.astype("float32"), {"grid_mapping": "spatial_ref"}),
            "habitat_red_list": (
                ("y", "x"),
                classes.astype("float32"),
                {"flag_values": [0, 1, 2, 3, 4], "flag_meanings": "LC NT VU EN CR"},
            ),
        },
        coords=GRID.coords(),
    )
    for name, ds in (("species.zarr", species), ("indicators.zarr", indicators)):
        write_store(ds, str(root / name), product=name.removesuffix(".zarr"), parts={"test": "viewer"})
        publish(str(root), name)
    write_store(indicators, str(tmp / "other.zarr"), product="indicators", parts={"test": "outside"})
    (tmp / "secret.txt").write_text(SECRET)
    (root / "secret.txt").write_text(SECRET)  # in the root but no catalogue item: unreachable too
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """The tiny root served by the viewer's app in a thread (uvicorn, 127.0.0.1, a free port)."""
    import uvicorn

    from geoplantnet.viewer.app import create_app

    root = _tiny_root(tmp_path_factory.mktemp("viewer"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(str(root)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until_up(port)
    yield root, port
    server.should_exit = True
    thread.join(timeout=10)


TRAVERSALS = [
    "/static/../secret.txt",
    "/static/..%2fsecret.txt",
    "/static/..%2f..%2f..%2fsecret.txt",
    "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "/static/%252e%252e%252f%252e%252e%252fsecret.txt",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/page/../../../etc/passwd",
    "/page/..%5c..%5csecret.txt",
    "/tiles/..%2fother/richness_expected/0/0/0.png",
    "/tiles/%2e%2e/richness_expected/0/0/0.png",
    "/tiles/..%252fother/richness_expected/0/0/0.png",
    "/tiles/%2Fetc%2Fpasswd/probability/0/0/0.png",
    "/tiles//etc/passwd/probability/0/0/0.png",
    "/tiles/secret.txt/probability/0/0/0.png",
    "/tiles/other/richness_expected/0/0/0.png",
    "/tiles/species/..%2f..%2fsecret.txt/0/0/0.png",
    "/tiles/species/probability/0/0/0.png?species=..%2f..%2fsecret.txt",
    "/api/legend/..%2f..%2fsecret.txt/probability",
    "/api/legend/species/%2e%2e%2fsecret.txt",
    "/../../secret.txt",
    "/%2e%2e/%2e%2e/secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_outside_the_catalogue_can_be_read(tiny, path):
    _, port = tiny
    status, body = get(port, path)
    assert 400 <= status < 500, (path, status, body[:200])
    assert SECRET.encode() not in body and b"root:x:" not in body


def test_catalogue_species_search_and_legend(tiny):
    _, port = tiny
    status, body = get(port, "/api/catalog")
    catalog = json.loads(body)
    assert status == 200 and {p["product"] for p in catalog["products"]} == {"species", "indicators"}
    variables = {v["name"]: v for p in catalog["products"] for i in p["items"] for v in i["variables"]}
    assert {n: v["kind"] for n, v in variables.items()} == {
        "probability": "species",
        "richness_expected": "map",
        "habitat_red_list": "class",
    }
    assert variables["habitat_red_list"]["classes"][:2] == [{"code": 0, "label": "LC"}, {"code": 1, "label": "NT"}]
    hits = json.loads(get(port, "/api/species?q=querc")[1])
    assert hits == [{"id": "sp0001", "name": "Quercus robur"}, {"id": "sp0003", "name": "Quercus rubra"}]
    assert json.loads(get(port, "/api/species?q=sp0002")[1]) == [{"id": "sp0002", "name": "Fagus sylvatica"}]
    legend = json.loads(get(port, "/api/legend/indicators/richness_expected")[1])
    assert (legend["min"], legend["max"]) == (0.0, 30.0) and legend["colors"][0] == "#440154"  # viridis' first


def _expected_colour(value: float, lo: float, hi: float, name: str = "viridis") -> np.ndarray:
    """The colour of a value, from matplotlib's colormap itself (not the server's table)."""
    from matplotlib import colormaps

    return np.round(np.asarray(colormaps[name](round((value - lo) / (hi - lo) * 255) / 255)) * 255).astype(np.uint8)


def _cells(n: int, seed: int = 1) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [
        (int(r), int(c)) for r, c in zip(rng.integers(6, GRID.height, n), rng.integers(6, GRID.width, n), strict=True)
    ]


def _lonlat(da: xr.DataArray, row: int, col: int) -> tuple[float, float]:
    to_wgs84 = Transformer.from_crs(da.rio.crs, "EPSG:4326", always_xy=True)
    return to_wgs84.transform(float(da["x"][col]), float(da["y"][row]))


def _check_tile_colours(port: int, url: str, da: xr.DataArray, cells, lo: float, hi: float) -> int:
    """Fetch the tiles over ``cells`` and compare each cell's centre pixel with the colour of its stored value."""
    checked = 0
    for row, col in cells:
        value = float(da.values[row, col])
        tx, ty, px, py = tile_pixel(*_lonlat(da, row, col), Z)
        status, png = get(port, url.replace("{z}", str(Z)).replace("{x}", str(tx)).replace("{y}", str(ty)))
        assert status == 200
        pixel = rgba(png)[py, px]
        if np.isnan(value):
            assert pixel[3] == 0
            continue
        np.testing.assert_array_equal(pixel, _expected_colour(value, lo, hi), err_msg=f"cell {row},{col} = {value}")
        checked += 1
    return checked


def test_tiles_are_the_stored_values_in_the_legend_colours(tiny):
    import rioxarray  # noqa: F401

    root, port = tiny
    species = open_item(next(i for i in open_catalog(str(root)).get_items() if i.id == "species"))
    da = species["probability"].sel(species="sp0002").load()
    cells = [*_cells(12), (1, 1)]  # (1, 1): no data
    assert _check_tile_colours(port, "/tiles/species/probability/{z}/{x}/{y}.png?species=sp0002", da, cells, 0, 1) == 12
    # by scientific name too, and a continuous indicator on its own range
    by_name = "/tiles/species/probability/{z}/{x}/{y}.png?species=Fagus%20sylvatica"
    assert _check_tile_colours(port, by_name, da, cells[:3], 0, 1) == 3
    richness = open_item(next(i for i in open_catalog(str(root)).get_items() if i.id == "indicators"))
    rich = richness["richness_expected"].load()
    assert _check_tile_colours(port, "/tiles/indicators/richness_expected/{z}/{x}/{y}.png", rich, _cells(5), 0, 30) == 5
    # a tile far from the map is transparent; an unknown species or colormap is a client error
    assert rgba(get(port, "/tiles/species/probability/3/0/0.png?species=sp0001")[1])[..., 3].max() == 0
    assert get(port, "/tiles/species/probability/3/0/0.png?species=sp9999")[0] == 404
    assert get(port, "/tiles/species/probability/3/0/0.png?species=sp0001&colormap=nope")[0] == 400
    assert get(port, "/tiles/species/probability/3/0/0.png?species=sp0001&vmin=1&vmax=0")[0] == 400
    assert get(port, "/api/point?lon=200&lat=0")[0] == 422


def test_a_low_zoom_reads_an_overview():
    # 10 m cells: zoom 10 (about 100 m pixels at 50°N) reads the x8 level, zoom 17 full resolution
    assert render.overview_factor(10, 355, 10.0, [2, 4, 8, 16, 32]) == 8
    assert render.overview_factor(17, 45_000, 10.0, [2, 4, 8]) is None
    assert render.overview_factor(5, 11, 10.0, []) is None


def test_serve_refuses_a_root_without_catalogue_in_one_line(tmp_path):
    from geoplantnet.testing.cli import run_cli

    proc = run_cli("serve", str(tmp_path / "nowhere"), "--port", str(free_port()), cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = run_cli("serve", str(tmp_path), "--port", str(free_port()), cwd=ROOT)
    assert proc.returncode == 2 and "catalog" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with socket.create_server(("127.0.0.1", 0)) as taken:
        proc = run_cli("serve", str(tmp_path), "--port", str(taken.getsockname()[1]), cwd=ROOT)
    assert proc.returncode == 2 and "cannot listen" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# -- the page in a real browser -----------------------------------------------------------------------------------


def _wait(driver, script: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{script!r} stayed false for {timeout:.0f} s")


def _map_colours(png: bytes) -> int:
    """How many distinct colours the screenshot's map area holds (a blank map: one or two)."""
    pixels = rgba(png)[:, 340:, :3].reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="scripts/install_browser.sh not run")
def test_the_page_in_chromium(products_root, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    items = {i.id: i for i in open_catalog(str(products_root)).get_items()}
    years = sorted(int(i.properties["geoplantnet:year"]) for i in items.values() if i.id.startswith("species-"))
    assert len(years) == 2, items
    with serve_process(products_root, ROOT, env) as port:
        driver = chromium(str(tmp_path / "chromium-profile"))
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            _wait(
                driver, "return document.body.dataset.ready === 'true' && Number(document.body.dataset.tilesLoaded) > 0"
            )
            # the species layer of the latest year: non-blank, its tiles the stored values' colours
            url = driver.execute_script("return document.body.dataset.tileUrl")
            assert url.startswith(f"/tiles/species-{years[-1]}/probability/"), url
            species = url.split("species=")[1]
            da = open_item(items[f"species-{years[-1]}"])["probability"].sel(species=species).load()
            valid = np.argwhere(np.isfinite(da.values))
            cells = [tuple(valid[i]) for i in np.linspace(0, len(valid) - 1, 8).astype(int)]
            assert _check_tile_colours(port, url, da, cells, 0, 1) == 8
            shot = driver.get_screenshot_as_png()
            assert _map_colours(shot) > 20, "the map looks blank"

            # the species search finds a name; choosing it redraws that species
            name = str(da["species_name"].values) if "species_name" in da.coords else species
            other = next(
                n for n in map(str, open_item(items[f"species-{years[-1]}"])["species_name"].values) if n != name
            )
            box = driver.find_element(By.ID, "species-search")
            box.send_keys(other[:6])
            _wait(
                driver,
                f"return document.getElementById('species-results').dataset.q === {json.dumps(other[:6])} && "
                "[...document.querySelectorAll('#species-results li')]"
                f".some(li => li.textContent.startsWith({json.dumps(other)}))",
            )
            hit = next(
                li for li in driver.find_elements(By.CSS_SELECTOR, "#species-results li") if li.text.startswith(other)
            )
            chosen = hit.get_attribute("data-id")
            hit.click()
            _wait(driver, f"return document.body.dataset.tileUrl.endsWith('species={chosen}')")

            # a click shows the pixel's assemblage: the store's top probabilities there
            row, col = cells[3]
            lon, lat = _lonlat(da, row, col)
            point = driver.execute_script(f"return viewer.map.latLngToContainerPoint([{lat}, {lon}])")
            mapbox = driver.find_element(By.ID, "map")
            ActionChains(driver).move_to_element_with_offset(
                mapbox, point["x"] - mapbox.size["width"] / 2, point["y"] - mapbox.size["height"] / 2
            ).click().perform()
            shown = json.loads(_wait(driver, "return document.getElementById('panel').dataset.point"))
            # the cell under the point the page asked about, read from the store itself
            x, y = Transformer.from_crs("EPSG:4326", da.rio.crs, always_xy=True).transform(shown["x"], shown["y"])
            at = open_item(items[f"species-{years[-1]}"])["probability"].sel(x=x, y=y, method="nearest").load()
            stored = dict(zip(map(str, at["species"].values), at.values.astype(float), strict=True))
            top = sorted((v for v in stored.values() if np.isfinite(v)), reverse=True)[: len(shown["species"])]
            assert [s["probability"] for s in shown["species"]] == pytest.approx(top, abs=1e-6)
            assert all(stored[s["id"]] == pytest.approx(s["probability"], abs=1e-6) for s in shown["species"])
            panel = driver.find_element(By.ID, "panel").text
            assert shown["species"][0]["name"] in panel and "Habitat" in panel and "Indicators" in panel
            time.sleep(0.5)
            screenshot = tmp_path / "viewer.png"
            driver.save_screenshot(str(screenshot))
            print(f"viewer screenshot: {screenshot}")

            # the year switch changes the tiles
            before = driver.execute_script("return document.body.dataset.tileUrl")
            Select(driver.find_element(By.ID, "year")).select_by_value(str(years[0]))
            after = _wait(
                driver,
                f"return document.body.dataset.tileUrl !== {json.dumps(before)} && document.body.dataset.tileUrl",
            )
            assert f"/species-{years[0]}/" in after
            tx, ty, _, _ = tile_pixel(lon, lat, Z)
            tiles = [
                get(port, u.replace("{z}", str(Z)).replace("{x}", str(tx)).replace("{y}", str(ty)))[1]
                for u in (before, after)
            ]
            assert tiles[0] != tiles[1]

            # the change map of the latest year
            Select(driver.find_element(By.ID, "year")).select_by_value(str(years[-1]))
            Select(driver.find_element(By.ID, "product")).select_by_value("changes")
            changes = _wait(
                driver,
                f"const u = document.body.dataset.tileUrl; return u.startsWith('/tiles/changes-{years[-1]}/') && u",
            )
            status, png = get(port, changes.replace("{z}", str(Z)).replace("{x}", str(tx)).replace("{y}", str(ty)))
            assert status == 200 and rgba(png)[..., 3].max() > 0
            if "/changed/" in changes:  # its legend names the classes (flag_meanings)
                _wait(driver, "return document.getElementById('legend').textContent.includes('unchanged')")
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
        finally:
            driver.quit()


@pytest.mark.slow
def test_a_low_zoom_tile_is_drawn_from_an_overview(products_root):
    from geoplantnet.storage.overviews import levels, open_overview
    from geoplantnet.viewer.render import overview_factor, render_tile

    item = next(i for i in open_catalog(str(products_root)).get_items() if i.id.startswith("species-"))
    year, url = int(item.properties["geoplantnet:year"]), str(products_root / "species.zarr")
    full = open_item(item)["probability"].sel(species="sp0001")
    resolution = abs(float(full["x"][1] - full["x"][0]))
    lon, lat = _lonlat(full, full.sizes["y"] // 2, full.sizes["x"] // 2)
    z = next(z for z in range(14, 0, -1) if overview_factor(z, tile_pixel(lon, lat, z)[1], resolution, levels(url)))
    tx, ty, _, _ = tile_pixel(lon, lat, z)
    factor = overview_factor(z, ty, resolution, levels(url))
    level = open_overview(url, factor=factor, year=year)["probability"].sel(species="sp0001")
    level = level.rio.write_crs(full.rio.crs)
    with serve_process(products_root, ROOT, {**os.environ, "PYTHONPATH": str(ROOT)}) as port:
        status, png = get(port, f"/tiles/{item.id}/probability/{z}/{tx}/{ty}.png?species=sp0001")
    assert status == 200 and rgba(png)[..., 3].max() > 0
    drawn = {f: render_tile(da, z, tx, ty, colormap="viridis", lo=0, hi=1) for f, da in ((1, full), (factor, level))}
    assert png == drawn[factor] and png != drawn[1], f"zoom {z} should read the x{factor} level"
