"""Real STAC API servers on loopback: start, answer, reload, stop without leftovers, clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from geoplantnet import stac_server
from geoplantnet.stac_server import StacServer, StacServerError, free_port


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _processes(pattern: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if pattern in line and "ps -eo" not in line]


def test_servers_answer_with_the_collection(stac_server, stac_collection):
    assert stac_server.url.startswith("http://127.0.0.1:") and stac_server.running
    ids = [c["id"] for c in _get(f"{stac_server.url}/collections")["collections"]]
    assert "test-s2" in ids  # the real-items test may have added its own to the shared pgstac server
    page = _get(f"{stac_server.url}/collections/test-s2/items?limit=100")
    assert len(page["features"]) == len(stac_collection[2])


@pytest.mark.parametrize("backend", ["memory", pytest.param("pgstac", marks=pytest.mark.pgstac)])
def test_start_reload_stop_leaves_nothing_running(backend, stac_collection):
    coll, items, _ = stac_collection
    port = free_port()
    t0 = time.monotonic()
    server = stac_server.start_server(backend, "127.0.0.1", port, [(coll, items)])
    started = time.monotonic() - t0
    workdir = str(server.workdir)
    try:
        assert server.port == port
        server.load(coll, items)  # loading twice is an upsert, not a duplicate
        page = _get(f"{server.url}/collections/test-s2/items?limit=100")
        assert len(page["features"]) == len(stac_collection[2])
    finally:
        server.stop()
    assert not _processes(f"127.0.0.1:{port}"), "rustac still running"
    assert not _processes(workdir), "postgres still running"
    assert not os.path.exists(workdir)
    assert started < (10 if backend == "pgstac" else 5), f"{backend} took {started:.1f} s to start"


def test_bad_input_is_a_clear_error(tmp_path, stac_collection):
    coll, items, _ = stac_collection
    with pytest.raises(StacServerError, match=r"missing\.json: no such file"):
        StacServer("memory").start([(tmp_path / "missing.json", items)])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(StacServerError, match=r"bad\.json is not a STAC collection"):
        StacServer("memory").start([(bad, items)])
    with pytest.raises(StacServerError, match="unknown STAC backend 'sqlite'"):
        StacServer("sqlite")  # type: ignore[arg-type]
    broken = tmp_path / "broken.ndjson"
    broken.write_text('{"type": "Feature", "id": \n')
    # rustac exits on a broken file: the error carries its log, and nothing is left running.
    with pytest.raises(StacServerError, match="rustac serve exited"):
        StacServer("memory").start([(coll, broken)])
    assert not _processes(str(broken))


@pytest.mark.pgstac
def test_pgstac_load_error_names_the_file(pgstac_server, tmp_path):
    broken = tmp_path / "broken.ndjson"
    broken.write_text('{"type": "Feature", "id": \n')
    coll = tmp_path / "collection.json"
    extent = {"spatial": {"bbox": [[0, 0, 1, 1]]}, "temporal": {"interval": [[None, None]]}}
    fields = {"stac_version": "1.0.0", "description": "x", "license": "CC0-1.0", "links": [], "extent": extent}
    coll.write_text(json.dumps({"type": "Collection", "id": "broken", **fields}))
    with pytest.raises(StacServerError, match=r"loading .*broken\.ndjson into pgstac failed"):
        pgstac_server.load(coll, broken)


def test_missing_postgres_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(stac_server, "PG_BIN", tmp_path)
    with pytest.raises(StacServerError, match=r"scripts/install_postgis\.sh"):
        StacServer("pgstac").start()


def test_serve_forever_prints_the_url_and_stops_on_sigterm(stac_collection):
    coll, items, _ = stac_collection
    port = free_port()
    code = (
        "import sys; from geoplantnet.stac_server import serve_forever; "
        f"serve_forever('memory', '127.0.0.1', {port}, [(sys.argv[1], sys.argv[2])])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(coll), str(items)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        assert _get(f"http://127.0.0.1:{port}/collections")["collections"][0]["id"] == "test-s2"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
    assert not _processes(f"127.0.0.1:{port}")
