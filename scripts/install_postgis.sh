#!/usr/bin/env bash
# System packages for the pgstac-backed STAC API the tests start: PostgreSQL 15 with PostGIS 3 (Debian 12).
# Idempotent and quiet: does nothing when they are there; otherwise needs root (as on CI machines; no sudo).
# The tests run their own throwaway cluster (geoplantnet.sim.stac_server), so no system cluster is created or started.
set -euo pipefail
PG_BIN=/usr/lib/postgresql/15/bin
POSTGIS=/usr/share/postgresql/15/extension/postgis.control
if [ -x "$PG_BIN/initdb" ] && [ -f "$POSTGIS" ] && id -u postgres >/dev/null 2>&1 && command -v runuser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_postgis: PostgreSQL 15 + PostGIS 3 are missing; as root run: $0" >&2
  exit 1
fi
echo "install_postgis: installing PostgreSQL 15 + PostGIS 3 (once)"
# The packages would create and start a 'main' cluster on port 5432 that nothing here uses.
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/geoplantnet-no-main.conf
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-15-postgis-3 util-linux >/dev/null
[ -x "$PG_BIN/initdb" ] && [ -f "$POSTGIS" ] || { echo "install_postgis: install failed" >&2; exit 1; }
