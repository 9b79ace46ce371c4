#!/usr/bin/env bash
# The main job on the embedded default: virtual region -> local STAC API -> lazy Sentinel-2 cube on a local Dask
# cluster -> seasonal composites in Zarr + a PNG quick-look, then the species model (trained once, cached) applied
# tile by tile -> species.zarr; then Pl@ntBERT on the region's plots (fill-mask pre-training, habitat fine-tuning, peers
# on spatial folds) and the habitat map from species.zarr -> habitat.zarr, scored against the region's true habitats;
# then the biodiversity indicators with their uncertainty -> indicators.zarr, scored against the region's truth.
# Extra arguments go to every command (e.g. --set cluster.n_workers=1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/geoplantnet run --config pipelines/default.yaml "$@"
.venv/bin/geoplantnet map --config pipelines/default.yaml "$@"
.venv/bin/geoplantnet habitats --config pipelines/default.yaml "$@"
.venv/bin/geoplantnet habitat-map --config pipelines/default.yaml --evaluate "$@"
exec .venv/bin/geoplantnet indicators --config pipelines/default.yaml --evaluate "$@"
