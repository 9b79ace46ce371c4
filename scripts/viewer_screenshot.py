#!/usr/bin/env python
"""docs/img/viewer.png: the viewer over a store root (default: the demo's outputs) in headless Chromium, its first
view with one pixel clicked. Needs a catalogued root (`geoplantnet catalog ROOT --rebuild`) and
scripts/install_browser.sh. Usage: scripts/viewer_screenshot.py [ROOT] [OUT.png]"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from geoplantnet.testing.viewer import chromium, serve_process

REPO = Path(__file__).resolve().parents[1]


def _wait(driver, script: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise TimeoutError(script)
        time.sleep(0.2)


def main(root: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with serve_process(root, REPO, env) as port:
        driver = chromium()
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            _wait(
                driver, "return document.body.dataset.ready === 'true' && Number(document.body.dataset.tilesLoaded) > 0"
            )
            ActionChains(driver).move_to_element_with_offset(
                driver.find_element(By.ID, "map"), 60, 40
            ).click().perform()
            _wait(driver, "return document.getElementById('panel').dataset.point")
            time.sleep(1.0)  # the marker and the panel drawn
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    print(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        Path(args[0] if args else REPO / "outputs" / "virtual-demo"),
        Path(args[1] if len(args) > 1 else REPO / "docs" / "img" / "viewer.png"),
    )
