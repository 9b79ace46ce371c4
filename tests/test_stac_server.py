"""Real STAC API servers on loopback: start, answer, reload, stop without leftovers, clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from geoplantnet.sim import stac_server
from geoplantnet.sim.stac_server import StacServer, StacServerError, free_port


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
    with pytest.raises(StacServerError, match=r"loading .*broken\.ndjson into pgstac failed") as info:
        pgstac_server.load(coll, broken)
    assert urlsplit(pgstac_server.pgstac_dsn).password not in str(info.value)


@pytest.mark.pgstac
def test_pgstac_needs_its_password_which_is_never_written_down(pgstac_server, monkeypatch):
    import psycopg

    from geoplantnet.sources.catalog import search

    # libpq would otherwise take a password from the environment or ~/.pgpass.
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    dsn = pgstac_server.pgstac_dsn
    parts = urlsplit(dsn)
    password, port = parts.password, parts.port
    assert parts.hostname == "127.0.0.1" and len(password) >= 24
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/stac", connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"postgresql://postgres:wrong@127.0.0.1:{port}/postgres", connect_timeout=5)
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
    assert len(search(pgstac_server.url, "test-s2", timeout=10, retries=0)) == 30
    # Not in the logs, not in the database files (only its SCRAM verifier is), not left in a password file ...
    workdir = Path(pgstac_server.workdir)
    files = [p for p in workdir.rglob("*") if p.is_file()]
    assert {"postgres.log", "rustac.log"} <= {p.name for p in files} and not (workdir / "pwfile").exists()
    assert [p for p in files if password.encode() in p.read_bytes()] == []
    # ... and not on any command line (rustac reaches the database through the private socket instead).
    cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if _readable(p)]
    assert cmdlines and not any(password.encode() in c for c in cmdlines)


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:  # processes that ended meanwhile
        return False
    return True


def test_missing_postgres_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(stac_server, "PG_BIN", tmp_path)
    with pytest.raises(StacServerError, match=r"scripts/install_postgis\.sh"):
        StacServer("pgstac").start()


def test_serve_forever_prints_the_url_and_stops_on_sigterm(stac_collection):
    coll, items, _ = stac_collection
    port = free_port()
    code = (
        "import sys; from geoplantnet.sim.stac_server import serve_forever; "
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
