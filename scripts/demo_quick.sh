#!/usr/bin/env bash
# The demo's commands at a small size (few epochs, small draws), into ROOT (outputs and work folders): a quick check
# that a change of the code leaves every product the same (compare two ROOTs with scripts/compare_outputs.py).
#   scripts/demo_quick.sh ROOT [extra --set ...]
set -euo pipefail
root=$(realpath -m "$1"); shift
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
set -- --config pipelines/default.yaml --set workdir="$root/work" --set store.root="$root/outputs" \
    --set train.epochs=3 --set habitats.train.pretrain_epochs=2 --set habitats.train.finetune_epochs=2 \
    --set value.epochs=2 --set value.draws=2 --set indicators.draws=8 --set impact.draws=4 "$@"
$py -m geoplantnet run "$@"
$py -m geoplantnet map "$@"
$py -m geoplantnet habitats "$@"
$py -m geoplantnet habitat-map --evaluate "$@"
$py -m geoplantnet indicators --evaluate "$@"
$py -m geoplantnet value --evaluate "$@"
$py -m geoplantnet impact --footprint pipelines/examples/impact/footprint.geojson \
    --scenario pipelines/examples/impact/sealed.yaml --evaluate "$@"
$py -m geoplantnet offsets --sites pipelines/examples/impact/offset_sites.geojson \
    --scenario pipelines/examples/impact/restore_woodland.yaml --impact "$root/outputs/impact/quarry-sealed" --evaluate "$@"
