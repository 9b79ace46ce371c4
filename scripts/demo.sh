#!/usr/bin/env bash
# The main job on the embedded default: virtual region -> local STAC API -> lazy Sentinel-2 cube on a local Dask
# cluster -> seasonal composites in Zarr + a PNG quick-look, then the species model (trained once, cached) applied
# tile by tile -> species.zarr; then Pl@ntBERT on the region's plots (fill-mask pre-training, habitat fine-tuning, peers
# on spatial folds) and the habitat map from species.zarr -> habitat.zarr, scored against the region's true habitats;
# then the biodiversity indicators with their uncertainty -> indicators.zarr, scored against the region's truth; then
# the biodiversity-value U-Net from the region's high/low value polygons -> value.zarr (10 m) + value_50m.zarr, an
# impact assessment of an example project (a quarry sealed inside its footprint) and an offset ranking of four
# candidate sites under a broadleaf woodland restoration, each scored against the region's truth under the same scenario.
# Extra arguments go to every command (e.g. --set cluster.n_workers=1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/geoplantnet run --config pipelines/default.yaml "$@"
.venv/bin/geoplantnet map --config pipelines/default.yaml "$@"
# --overwrite: a rerun replaces the earlier demo's habitat report and models (seeded: the same models again)
.venv/bin/geoplantnet habitats --config pipelines/default.yaml --overwrite "$@"
# the map's own model (habitats.map_model=auto): trained on the species model's cross-fitted assemblages and the point
# predictors at the plots, the best of three on spatial folds (README, Habitat maps)
.venv/bin/geoplantnet habitat-map --config pipelines/default.yaml --set habitats.map_model=auto --evaluate "$@"
.venv/bin/geoplantnet indicators --config pipelines/default.yaml --evaluate "$@"
.venv/bin/geoplantnet value --config pipelines/default.yaml --evaluate "$@"
# --overwrite replaces only the reports of an earlier demo run (outputs/virtual-demo/impact/, offsets/)
.venv/bin/geoplantnet impact --config pipelines/default.yaml --footprint pipelines/examples/impact/footprint.geojson \
    --scenario pipelines/examples/impact/sealed.yaml --evaluate --overwrite "$@"
exec .venv/bin/geoplantnet offsets --config pipelines/default.yaml \
    --sites pipelines/examples/impact/offset_sites.geojson --scenario pipelines/examples/impact/restore_woodland.yaml \
    --impact outputs/virtual-demo/impact/quarry-sealed --evaluate --overwrite "$@"
