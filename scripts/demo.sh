#!/usr/bin/env bash
# The main job on the embedded default: virtual region -> local STAC API -> lazy Sentinel-2 cube on a local Dask
# cluster -> seasonal composites in Zarr + a PNG quick-look. Extra arguments go to `geoplantnet run`
# (e.g. --set cube.resolution=10).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/geoplantnet run --config pipelines/default.yaml "$@"
