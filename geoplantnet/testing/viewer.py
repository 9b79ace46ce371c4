"""Helpers for the viewer's tests (tests/test_viewer.py): a server on a free loopback port, raw HTTP requests (paths
sent exactly as written, never normalised by a client), the tile pixel over a stored cell, and headless Chromium.

Chromium and ChromeDriver are Debian's (``scripts/install_browser.sh``); Selenium is pointed at them, so Selenium
Manager never looks for (or downloads) a browser or a driver."""

from __future__ import annotations

import contextlib
import http.client
import io
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from geoplantnet.sim.stac_server import free_port  # the one free-port finder of the loopback servers

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# the flags a closed network needs (no background connections, updates, sync) and a fresh profile each run
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1280,860",
)
ORIGIN_SHIFT = 20037508.342789244  # half of Web Mercator's world width, metres


def get(port: int, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """``GET path`` on 127.0.0.1:port with the path sent as written (``..``, ``%2f`` and ``//`` untouched)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until_up(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait for the server's page to answer (a process that exited first fails with its output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {proc.stdout.read() if proc.stdout else ''}")
        with contextlib.suppress(OSError):
            if get(port, "/api/catalog", timeout=30)[0] == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"no viewer on 127.0.0.1:{port} after {timeout:.0f} s")


@contextlib.contextmanager
def serve_process(root: Path, cwd: Path, env: dict[str, str]) -> Iterator[int]:
    """``geoplantnet serve ROOT`` as a user starts it (a process, 127.0.0.1, a free port); its port; stopped after."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoplantnet", "serve", str(root), "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(port, proc=proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tile_pixel(lon: float, lat: float, z: int) -> tuple[int, int, int, int]:
    """The XYZ tile (x, y) at zoom ``z`` holding (lon, lat) and the pixel (column, row) within it."""
    mx = math.radians(lon) * 6378137.0
    my = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * 6378137.0
    size = 2 * ORIGIN_SHIFT / (256 * 2**z)
    px, py = (mx + ORIGIN_SHIFT) / size, (ORIGIN_SHIFT - my) / size
    return int(px // 256), int(py // 256), int(px % 256), int(py % 256)


def rgba(png: bytes) -> np.ndarray:
    """A PNG's pixels as (h, w, 4) uint8."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def chromium(user_data_dir: str | None = None):  # -> selenium.webdriver.Chrome
    """Headless Debian Chromium driven by Debian's ChromeDriver, reading the page's console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir or tempfile.mkdtemp(prefix='chromium-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
