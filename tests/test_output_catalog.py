"""The catalogue of a store root (``storage/catalog.py``): a real small run's stores (a species map, two years of a
series) published by the runs themselves, validated, opened through their items; rewritten years, incomplete stores,
a foreign ``stac/``, an S3 root, concurrent publishers and the ``catalog`` command.

(tests/test_catalog.py is the STAC *search* client's: sources/catalog.py.)

Validation is offline: pystac's validator with its bundled core schemas (Item, Collection, GeoJSON) checks every
object; the extension schemas (projection, datacube, xarray-assets) would be downloaded, so they are checked here
through pystac's extension classes and the fields' own rules instead (:func:`_check_extensions`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pystac
import pytest
import xarray as xr
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from geoplantnet.core.errors import RefusedError
from geoplantnet.core.grid import Grid
from geoplantnet.storage import catalog
from geoplantnet.storage.store import COMPLETE, YEARS_COMPLETE_ATTR, open_store, update_attrs, write_store
from geoplantnet.storage.years import year_view
from geoplantnet.testing.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"
GRID = Grid(20.0, 4_321_000.0, 2_981_000.0, 64, 48)


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator on its bundled core schemas; the extensions checked by
    :func:`_check_extensions` (their schemas are not bundled and the tests never use the network)."""

    checked: ClassVar[list[str]] = []

    def validate_extension(self, stac_dict, stac_object_type, stac_version, extension_id, href=None):
        self.checked.append(extension_id)
        return None


@pytest.fixture(autouse=True)
def _offline_validation():
    pystac.validation.set_validator(OfflineValidator())
    yield
    pystac.validation.set_validator(JsonSchemaSTACValidator())


def _check_extensions(item: pystac.Item) -> None:
    """The projection and datacube fields as their specifications state them, read through pystac's classes."""
    assert ProjectionExtension.has_extension(item) and DatacubeExtension.has_extension(item)
    proj = ProjectionExtension.ext(item)
    assert proj.code is not None and proj.code.startswith("EPSG:")
    assert len(proj.shape) == 2 and all(isinstance(n, int) and n > 0 for n in proj.shape)
    assert len(proj.transform) == 6 and all(isinstance(v, float) for v in proj.transform)
    cube = DatacubeExtension.ext(item)
    for name, dim in cube.dimensions.items():
        assert dim.dim_type
        if dim.dim_type == "spatial":
            assert name in ("x", "y") and dim.to_dict()["axis"] == name
            lo, hi = dim.to_dict()["extent"]
            assert lo < hi and dim.to_dict()["reference_system"] == int(proj.code.split(":")[1])
        else:
            assert dim.to_dict().get("values") or dim.to_dict().get("extent")
    for var in cube.variables.values():
        assert set(var.dimensions) <= set(cube.dimensions) and var.var_type in ("data", "auxiliary")
    assert item.assets["zarr"].media_type == catalog.ZARR_MEDIA_TYPE
    assert item.assets["zarr"].extra_fields["xarray:open_kwargs"] == {"engine": "zarr", "consolidated": True}


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory, small_map, shared_cluster_sets) -> Path:
    """A store root written by the runs: ``species.zarr`` and a two-year ``series.zarr`` (2024, 2025) of the small
    map's model, each published by RunContext as it completed."""
    from geoplantnet.core.config import load_config
    from geoplantnet.jobs.mapping import produce_map
    from geoplantnet.runtime.cluster import connect

    root = tmp_path_factory.mktemp("catalogued") / "out"
    cfg = load_config(CONFIG, [*small_map.overrides, f"store.root={root}"])
    with connect(load_config(CONFIG, [*small_map.overrides, *shared_cluster_sets]).cluster) as client:
        produce_map(client, cfg, small_map.model, small_map.sources, str(root / "species.zarr"), progress=False)
        for year in (2024, 2025):
            url = str(root / "series.zarr")
            produce_map(client, cfg, small_map.model, small_map.sources, url, progress=False, year=year)
    return root


def _ids(collection: pystac.Collection) -> set[str]:
    return {item.id for item in collection.get_items()}


def test_the_runs_publish_a_valid_collection_whose_items_open_their_stores(run_root: Path) -> None:
    collection = catalog.open_catalog(str(run_root))
    assert _ids(collection) == {"species", "series-2024", "series-2025"}
    assert collection.validate_all() == 3  # the collection and its three items (core schemas); items counted
    assert {catalog.XARRAY_ASSETS, ProjectionExtension.get_schema_uri()} <= set(OfflineValidator.checked)
    for item in collection.get_items():
        _check_extensions(item)
        store = item.properties["geoplantnet:store"]
        opened = catalog.open_item(item)
        year = item.properties.get("geoplantnet:year")
        expected = year_view(open_store(str(run_root / store)), year)
        xr.testing.assert_identical(opened, expected)
        assert list(ProjectionExtension.ext(item).shape) == [opened.sizes["y"], opened.sizes["x"]]
        assert item.properties["geoplantnet:species"] == opened.sizes["species"]
        assert item.properties["geoplantnet:product"] == "species"
        assert str(item.properties["geoplantnet:model_version"]).startswith(("species-net", "maxent", "{"))
        west, south, east, north = item.bbox
        assert -180 <= west < east <= 180 and -90 <= south < north <= 90
        if year is not None:
            assert item.datetime.year == year and item.properties["end_datetime"].startswith(f"{year}-12-31")
    # the collection's extent is the union of its items'; its files' hrefs are relative (a copied root still opens)
    boxes = np.asarray([i.bbox for i in collection.get_items()])
    assert collection.extent.spatial.bboxes[0] == pytest.approx([*boxes[:, :2].min(0), *boxes[:, 2:].max(0)])
    raw = json.loads((run_root / "stac" / "collection.json").read_text())
    assert {link["href"] for link in raw["links"] if link["rel"] == "item"} == {
        "./items/species.json",
        "./items/series-2024.json",
        "./items/series-2025.json",
    }
    item_file = json.loads((run_root / "stac" / "items" / "series-2024.json").read_text())
    assert item_file["assets"]["zarr"]["href"] == "../../series.zarr"


def test_a_year_claimed_for_rewriting_is_withdrawn_first_and_a_hidden_year_is_never_listed(run_root: Path) -> None:
    from geoplantnet.core.config import load_config
    from geoplantnet.runs.context import RunContext

    root, url = str(run_root), str(run_root / "series.zarr")
    ctx = RunContext(load_config(CONFIG, [f"store.root={root}"]), overwrite=True, year=2025)
    with ctx.cataloguing(url, "species"):  # what a run replacing 2025 holds while it writes
        assert not (run_root / "stac" / "items" / "series-2025.json").exists()
        assert _ids(catalog.open_catalog(root)) == {"species", "series-2024"}
    assert _ids(catalog.open_catalog(root)) == {"species", "series-2024", "series-2025"}  # published again
    # a year hidden by a replacement (out of the complete years) is left out even while its item file is there
    before = open_store(url).attrs[YEARS_COMPLETE_ATTR]
    update_attrs(url, None, {YEARS_COMPLETE_ATTR: [2024]})
    try:
        assert _ids(catalog.open_catalog(root)) == {"species", "series-2024"}
        assert catalog.publish(root, "series.zarr", year=2025) is None
    finally:
        update_attrs(url, None, {YEARS_COMPLETE_ATTR: before})


def _small(values: float = 0.5) -> xr.Dataset:
    prob = np.full((2, *GRID.shape), values, dtype="float32")
    return xr.Dataset(
        {"probability": (("species", "y", "x"), prob, {"long_name": "probability of presence", "units": "1"})},
        coords={**GRID.coords(), "species": ["sp0001", "sp0002"], "species_name": ("species", ["Aa aa", "Bb bb"])},
    )


def _write(url: str, options: dict[str, Any] | None = None, **attrs: Any) -> None:
    write_store(_small(), url, product="species", parts={"test": url}, attrs=attrs, storage_options=options)


def test_an_incomplete_store_is_not_listed_and_links_follow_what_a_product_was_made_from(tmp_path: Path) -> None:
    root = str(tmp_path)
    _write(f"{root}/species.zarr", model_version="species-net/1/abc")
    _write(f"{root}/derived.zarr")
    assert catalog.publish(root, "species.zarr") is not None
    item = catalog.publish(root, "derived.zarr", derived_from=["species.zarr", "absent.zarr"])
    assert [(link.rel, link.href) for link in item.links if link.rel == "derived_from"] == [
        ("derived_from", "./species.json")
    ]
    update_attrs(f"{root}/derived.zarr", None, {COMPLETE: "false"})  # e.g. a run of an older version rewriting it
    assert _ids(catalog.open_catalog(root)) == {"species"}
    assert catalog.publish(root, "derived.zarr") is None
    _write(f"{root}/derived-2030.zarr")  # a store whose id reads like a year of derived.zarr's: kept
    catalog.publish(root, "derived-2030.zarr")
    catalog.withdraw(root, "derived.zarr")
    assert not (tmp_path / "stac" / "items" / "derived.json").exists()
    assert _ids(catalog.open_catalog(root)) == {"species", "derived-2030"}
    assert catalog.open_catalog(root).validate_all() == 2


def test_concurrent_publishers_keep_each_others_items(tmp_path: Path) -> None:
    root = str(tmp_path)
    names = [f"s{i}.zarr" for i in range(4)]
    for name in names:
        _write(f"{root}/{name}")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: catalog.publish(root, n), names))
    raw = json.loads((tmp_path / "stac" / "collection.json").read_text())
    assert sorted(link["title"] for link in raw["links"] if link["rel"] == "item") == [f"s{i}" for i in range(4)]


def test_a_stac_folder_that_is_not_geoplantnets_is_never_written_into(tmp_path: Path) -> None:
    from geoplantnet.core.config import load_config
    from geoplantnet.runs.context import RunContext

    root = str(tmp_path)
    _write(f"{root}/species.zarr")
    (tmp_path / "stac").mkdir()
    (tmp_path / "stac" / "catalog.json").write_text('{"theirs": true}')
    with pytest.raises(RefusedError, match="did not write"):
        catalog.publish(root, "species.zarr")
    with pytest.raises(RefusedError, match="did not write"):  # a run is refused before any work
        RunContext(load_config(CONFIG, [f"store.root={root}"])).output("species.zarr", "species")
    assert sorted(p.name for p in (tmp_path / "stac").iterdir()) == ["catalog.json"]
    assert run_cli("catalog", root).returncode == 2


def test_an_object_store_root(s3_server) -> None:
    endpoint = {"client_kwargs": {"endpoint_url": s3_server.endpoint}}
    options = {"key": s3_server.key, "secret": s3_server.secret, **endpoint}
    root = f"s3://{s3_server.bucket}/catalogued"
    _write(f"{root}/species.zarr", options)
    catalog.publish(root, "species.zarr", options)
    collection = catalog.open_catalog(root, options)
    (item,) = collection.get_items()
    assert catalog.store_url(item) == f"{root}/species.zarr"
    xr.testing.assert_identical(
        catalog.open_item(item, options), open_store(f"{root}/species.zarr", storage_options=options)
    )
    assert collection.validate_all() == 1
    _check_extensions(item)


def test_the_catalog_command_lists_rebuilds_and_refuses_bad_input(run_root: Path, tmp_path: Path) -> None:
    listed = run_cli("catalog", run_root, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in json.loads(listed.stdout)["items"]}
    assert set(rows) == {"species", "series-2024", "series-2025"}
    assert rows["series-2025"]["year"] == 2025 and rows["species"]["species"] > 0 and rows["species"]["run"]
    # a root made before catalogues: nothing listed until --rebuild
    _write(f"{tmp_path}/species.zarr")
    assert run_cli("catalog", tmp_path).returncode == 2
    rebuilt = run_cli("catalog", tmp_path, "--rebuild")
    assert rebuilt.returncode == 0 and "species.zarr" in rebuilt.stdout, rebuilt.stderr
    # bad input: one line, exit 2, before the array stack is imported (a fresh process)
    (tmp_path / "notes.txt").write_text("mine")
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (tmp_path / "missing", tmp_path / "notes.txt", empty):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "geoplantnet", "catalog", str(bad)], capture_output=True, text=True, cwd=ROOT
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert time.perf_counter() - t0 < 10


def test_an_item_naming_a_store_outside_the_root_is_never_listed(tmp_path: Path) -> None:
    # an item file edited, or synced in from elsewhere, must not make a reader (the viewer, open_item, the query API)
    # open a store outside the root: neither through its href nor through the store it names
    root = tmp_path / "root"
    _write(f"{root}/species.zarr")
    _write(f"{tmp_path}/outside.zarr")
    item = catalog.publish(str(root), "species.zarr")
    raw = json.loads((root / "stac" / "items" / "species.json").read_text())
    for store, href in [("species.zarr", "../../../outside.zarr"), ("../outside.zarr", "../../../outside.zarr"),
                        (str(tmp_path / "outside.zarr"), str(tmp_path / "outside.zarr"))]:
        raw["properties"]["geoplantnet:store"], raw["assets"]["zarr"]["href"] = store, href
        (root / "stac" / "items" / "evil.json").write_text(json.dumps({**raw, "id": "evil"}))
        assert _ids(catalog.open_catalog(str(root))) == {item.id}
    listed = next(iter(catalog.open_catalog(str(root)).get_items()))
    assert catalog.store_url(listed) == f"{root}/species.zarr"


def test_a_store_named_like_a_year_of_another_keeps_its_own_item(tmp_path: Path) -> None:
    root = str(tmp_path)
    _write(f"{root}/derived-2030.zarr")
    first = catalog.publish(root, "derived-2030.zarr")
    # an item with the same id describing another store (a year 2030 of derived.zarr) is not replaced
    raw = json.loads((tmp_path / "stac" / "items" / f"{first.id}.json").read_text())
    raw["properties"]["geoplantnet:store"] = "other.zarr"
    (tmp_path / "stac" / "items" / f"{first.id}.json").write_text(json.dumps(raw))
    second = catalog.publish(root, "derived-2030.zarr")
    assert second.id != first.id and second.id.startswith("derived-2030-")
    assert json.loads((tmp_path / "stac" / "items" / f"{first.id}.json").read_text())["properties"][
        "geoplantnet:store"
    ] == "other.zarr"
