#!/usr/bin/env bash
# System packages for the pgstac-backed STAC API used by the tests: PostgreSQL 15 with PostGIS 3 (Debian 12).
# Idempotent and quiet; needs root (as on the CI machines) only when something is missing.
set -euo pipefail
if [ -f /usr/share/postgresql/15/extension/postgis.control ] && [ -x /usr/lib/postgresql/15/bin/initdb ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_postgis: PostgreSQL 15 + PostGIS missing; run as root: apt-get install postgresql-15-postgis-3" >&2
  exit 1
fi
echo "installing PostgreSQL 15 + PostGIS 3 (once)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-15-postgis-3 >/dev/null
