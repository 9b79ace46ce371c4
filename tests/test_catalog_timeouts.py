"""Bounded STAC waits: a hung API fails in bounded time naming its URL, 5xx/429 are retried, other 4xx are not."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from geoplantnet.core.errors import ServiceError
from geoplantnet.sources.catalog import CatalogError, CatalogUnavailableError, search
from geoplantnet.testing.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


class _Hung:
    """A TCP server on loopback that accepts connections, reads nothing and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.settimeout(0.2)  # so the accept loop sees the stop flag
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def hung() -> Iterator[_Hung]:
    server = _Hung()
    try:
        yield server
    finally:
        server.close()


Seen = list[tuple[str, str, int]]  # (method, path, status) of each request the proxy answered


def _proxy(upstream: str, answer: Callable[[str, str, Seen], int | None]) -> tuple[ThreadingHTTPServer, Seen]:
    """A loopback HTTP proxy to ``upstream``: ``answer(method, path, seen)`` returns a status to send instead of
    forwarding (or None to forward). Upstream URLs in bodies are rewritten so every link comes back here."""
    seen: Seen = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            status = answer(self.command, self.path, seen)
            if status is not None:
                seen.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"code": "test", "description": "injected"}')
                return
            req = urllib.request.Request(upstream + self.path, data=body, method=self.command)
            req.add_header("Content-Type", self.headers.get("Content-Type") or "application/json")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    code, data = resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                code, data = exc.code, exc.read()
            data = data.replace(upstream.encode(), f"http://127.0.0.1:{self.server.server_port}".encode())
            seen.append((self.command, self.path, code))
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, seen


@pytest.fixture
def proxy(memory_server):
    started: list[ThreadingHTTPServer] = []

    def make(answer):
        server, seen = _proxy(memory_server.url, answer)
        started.append(server)
        return f"http://127.0.0.1:{server.server_port}", seen

    yield make
    for server in started:
        server.shutdown()
        server.server_close()


def test_hung_api_fails_in_bounded_time_naming_the_url(hung):
    t0 = time.monotonic()
    with pytest.raises(CatalogUnavailableError) as info:
        search(hung.url, "test-s2", timeout=1, retries=1)
    took = time.monotonic() - t0
    message = str(info.value)
    assert f"the STAC API at {hung.url} did not answer within 1 s after 2 attempts" in message
    assert "stac.timeout" in message and "\n" not in message
    assert isinstance(info.value, ServiceError) and isinstance(info.value, CatalogError)
    assert 1.9 < took < 5, f"took {took:.1f} s"
    assert len(hung.accepted) == 2  # one retry, then it gave up


def test_refused_connection_is_unavailable_too():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(CatalogUnavailableError, match=rf"127\.0\.0\.1:{port} could not be reached after 1 attempt"):
        search(f"http://127.0.0.1:{port}", "test-s2", timeout=1, retries=0)


def test_503_once_then_200_is_retried(proxy, memory_server):
    def once(method, path, seen):  # the first request to each endpoint (landing page, collection, search) fails
        return 503 if not any(m == method and p == path for m, p, _ in seen) else None

    url, seen = proxy(once)
    found = search(url, "test-s2", limit=7, timeout=5, retries=1)
    direct = search(memory_server.url, "test-s2", limit=7)
    assert [i.id for i in found] == [i.id for i in direct] and len(found) == 30
    failed = [(m, p) for m, p, code in seen if code == 503]
    assert ("GET", "/") in failed and any(p.startswith("/search") for _, p in failed) and len(failed) >= 3


def test_429_is_retried_and_persistent_503_is_unavailable(proxy):
    url, seen = proxy(lambda method, path, seen: 429 if len(seen) < 2 else None)
    assert len(search(url, "test-s2", timeout=5, retries=2)) == 30
    url, seen = proxy(lambda method, path, seen: 503)
    with pytest.raises(CatalogUnavailableError, match=r"answered HTTP 503 after 3 attempts"):
        search(url, "test-s2", timeout=5, retries=2)
    assert len(seen) == 3


def test_4xx_is_never_retried(proxy):
    url, seen = proxy(lambda method, path, seen: 400 if path.startswith("/search") else None)
    with pytest.raises(CatalogError, match=r"search of 'test-s2' at .* failed") as info:
        search(url, "test-s2", timeout=5, retries=3)
    assert not isinstance(info.value, ServiceError)
    assert [p for _, p, code in seen if code == 400] == ["/search"]


def test_bad_timeout_or_retries():
    with pytest.raises(CatalogError, match=r"timeout=0 must be positive and retries=-1"):
        search("http://127.0.0.1:9", "test-s2", timeout=0, retries=-1)


def test_cli_run_against_a_hung_api_is_one_line_and_status_2(hung, tmp_path):
    cmd = [
        "run", "-q",
        "--set", f"stac.url={hung.url}", "--set", "stac.timeout=1", "--set", "stac.retries=0",
        "--set", f"workdir={tmp_path}", "--set", f"store.root={tmp_path / 'out'}",
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = run_cli(*cmd, cwd=tmp_path)  # in-process: the refusal is tested, not a process
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert hung.url in lines[0] and "did not answer within 1 s after 1 attempt" in lines[0]
    assert took < 60
