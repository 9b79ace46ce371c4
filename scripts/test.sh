#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests included, after the same set-up a new machine needs:
# the virtual environment, PostgreSQL + PostGIS for the pgstac-backed STAC API, then lint, the import layering
# contracts and pytest.
# Extra arguments go to pytest (e.g. -m "not slow" for a quick pass).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/install_postgis.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache  # the layering (pyproject.toml)
exec .venv/bin/pytest "$@"
