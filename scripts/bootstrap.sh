#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment: the pinned stack (one pip call, so the resolver sees every
# pin; torch==2.13.0 is the CPU wheel on these machines) and this package, editable. Re-runs only when the pins change.
# Then the web viewer's page library (scripts/build_viewer.sh: npm ci, copied into geoplantnet/viewer/static/).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GEOPLANTNET_VENV:-.venv}
PYTHON=${PYTHON:-python3}
want=$(cat requirements.lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)
stamp="$VENV/.geoplantnet-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setting up $VENV (about 2 minutes, once)"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  log=$(mktemp)
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -r requirements.lock.txt -e . ; } >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -40
    echo "bootstrap: pip install failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" >"$stamp"
fi
# The viewer's JavaScript library (npm ci from its lock file) copied into the package: `geoplantnet serve` and the
# wheel need it; idempotent.
scripts/build_viewer.sh
