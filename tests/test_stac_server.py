"""Real STAC API servers on loopback: start, answer, reload, stop without leftovers."""

import json
import subprocess
import time
import urllib.request

import pytest

from geoplantnet.stac_server import StacServer, StacServerError


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _processes(pattern: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if pattern in line and "ps -eo" not in line]


def test_servers_answer_with_the_collection(stac_server, stac_collection):
    assert stac_server.url.startswith("http://127.0.0.1:")
    ids = [c["id"] for c in _get(f"{stac_server.url}/collections")["collections"]]
    assert ids == ["test-s2"]
    page = _get(f"{stac_server.url}/collections/test-s2/items?limit=100")
    assert len(page["features"]) == len(stac_collection[2])


@pytest.mark.parametrize("backend", ["memory", pytest.param("pgstac", marks=pytest.mark.pgstac)])
def test_start_reload_stop_leaves_nothing_running(backend, stac_collection):
    coll, items, _ = stac_collection
    t0 = time.monotonic()
    server = StacServer(backend).start([(coll, items)])
    started = time.monotonic() - t0
    port, workdir = server.port, str(server.workdir)
    try:
        server.load(coll, items)  # loading twice is an upsert, not a duplicate
        page = _get(f"{server.url}/collections/test-s2/items?limit=100")
        assert len(page["features"]) == len(stac_collection[2])
    finally:
        server.stop()
    assert not _processes(f"127.0.0.1:{port}"), "rustac still running"
    if backend == "pgstac":
        assert not _processes(workdir), "postgres still running"
    assert started < 60


def test_bad_collection_file_is_a_clear_error(tmp_path, stac_collection):
    _, items, _ = stac_collection
    with pytest.raises(StacServerError, match="no such file"):
        StacServer("memory").start([(tmp_path / "missing.json", items)])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(StacServerError, match="not a STAC collection"):
        StacServer("memory").start([(bad, items)])
    with pytest.raises(StacServerError, match="unknown STAC backend"):
        StacServer("sqlite")
