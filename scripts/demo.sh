#!/usr/bin/env bash
# The main job on the embedded default: virtual region -> local STAC API -> lazy Sentinel-2 cube on a local Dask
# cluster -> seasonal composites in Zarr + a PNG quick-look, then the species model (trained once, cached) applied
# tile by tile -> species.zarr. Extra arguments go to both commands (e.g. --set cluster.n_workers=1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/geoplantnet run --config pipelines/default.yaml "$@"
exec .venv/bin/geoplantnet map --config pipelines/default.yaml "$@"
