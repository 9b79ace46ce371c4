#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests included, after the same set-up a new machine needs:
# the virtual environment (and the viewer's bundled page library), PostgreSQL + PostGIS for the pgstac-backed STAC
# API, Chromium + ChromeDriver for the viewer's browser test, then lint, the import layering
# contracts and pytest.
# Then, on a full run (no arguments), the cluster in containers: the CPU image built, a scheduler and two workers started
# with the Kubernetes manifests' own commands, a map and indicators job with no shared disk, compared with a local run
# (scripts/container_cluster.sh; podman, runc and mmdebstrap installed when missing; GEOPLANTNET_CONTAINERS=0 skips it,
# saying so).
# Extra arguments go to pytest alone (e.g. -m "not slow" for a quick pass).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/install_postgis.sh
scripts/install_browser.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache  # the layering (pyproject.toml)
.venv/bin/pytest "$@"
if [ $# -eq 0 ]; then
  if [ "${GEOPLANTNET_CONTAINERS:-1}" = 0 ]; then
    echo "test.sh: GEOPLANTNET_CONTAINERS=0: the cluster in containers was NOT run" >&2
  else
    scripts/container_cluster.sh
  fi
fi
