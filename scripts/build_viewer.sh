#!/usr/bin/env bash
# The viewer's JavaScript library (geoplantnet/viewer/web: Leaflet, pinned in package-lock.json) installed with `npm ci`
# and copied into the package (geoplantnet/viewer/static/, build output, gitignored; packaged with the wheel), so the
# page fetches nothing from the internet at run time. Idempotent: does nothing when the copy matches the lock file.
set -euo pipefail
cd "$(dirname "$0")/../geoplantnet/viewer"
want=$(sha256sum web/package-lock.json | cut -d' ' -f1)
stamp=static/.built-from
if [ -f static/leaflet/leaflet.js ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "build_viewer: npm is missing (Node.js 18+ with npm is needed to build the viewer)" >&2; exit 1; }
(cd web && npm ci --no-audit --no-fund --silent)
rm -rf static/leaflet
mkdir -p static/leaflet
cp -r web/node_modules/leaflet/dist/leaflet.js web/node_modules/leaflet/dist/leaflet.css \
  web/node_modules/leaflet/dist/images web/node_modules/leaflet/LICENSE static/leaflet/
echo "$want" >"$stamp"
