#!/usr/bin/env bash
# System packages for the viewer's browser test (tests/test_viewer.py): Debian's Chromium and ChromeDriver
# (/usr/bin/chromium, /usr/bin/chromedriver; Selenium is pointed at them and never downloads a browser or driver).
# Idempotent and quiet: does nothing when they are there; otherwise needs root (as on CI machines; no sudo).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_browser: chromium + chromium-driver are missing; as root run: $0" >&2
  exit 1
fi
echo "install_browser: installing Debian's chromium + chromium-driver (once)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { echo "install_browser: install failed" >&2; exit 1; }
