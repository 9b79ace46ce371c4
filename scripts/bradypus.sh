#!/usr/bin/env bash
# The bring-your-own-data example end to end on real data (MaxEnt tutorial set: Bradypus variegatus, 9 WorldClim
# layers, South America at 25 km): cross-validate CNN, MaxEnt and a random forest (sdm, which also fits final models
# on all the data), map the CNN and MaxEnt over the whole grid, and plot both maps side by side.
# Usage: scripts/bradypus.sh [DATA_DIR] [extra --set ...]   (DATA_DIR default: ../shared/data/real/predicts_bradypus_bioclim)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
data=${1:-../shared/data/real/predicts_bradypus_bioclim}
shift || true
out=outputs/bradypus
gpn=(.venv/bin/geoplantnet)
"${gpn[@]}" sdm -q -c pipelines/bradypus.yaml --observations "$data/bradypus.csv" --rasters "$data/bio.tif" \
    --out "$out/sdm" "$@" > /dev/null
for model in cnn.pt maxent.peer; do
  "${gpn[@]}" map -q -c pipelines/bradypus.yaml --model "$out/sdm/models/$model" --rasters "$data/bio.tif" \
      --out "$out/${model%.*}.zarr" --overwrite "$@" > /dev/null
done
"${gpn[@]}" plot "$out/cnn.zarr" "$out/maxent.zarr" --species "Bradypus variegatus" --out "$out/bradypus.png" \
    --title "Bradypus variegatus: CNN vs MaxEnt (trained on all records, 25 km)"
