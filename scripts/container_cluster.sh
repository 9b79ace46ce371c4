#!/usr/bin/env bash
# A Dask cluster in containers, tested (issue 25; run by CI after pytest): builds the CPU image, starts an S3 server on
# the host, a scheduler and two worker containers with the rendered Kubernetes DaskCluster's own commands, runs a small
# `map` and `indicators` job from a driver container with its outputs on S3, and compares the stores with the same
# job on a local cluster (scripts/container_cluster.py). Exits non-zero on any difference or failure.
# Extra arguments go to container_cluster.py (--keep DIR, --job-timeout S).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
# One prefix for every container of this run: the trap removes exactly these, never another run's or user's.
export GEOPLANTNET_CI_PREFIX="gpn-ci-$$"
cleanup() {
  local ids
  ids=$(podman --runtime runc ps -a --filter "name=^${GEOPLANTNET_CI_PREFIX}-" --format '{{.Names}}' 2>/dev/null || true)
  [ -z "$ids" ] || podman --runtime runc rm -f -t 5 $ids >/dev/null 2>&1 || true
}
trap cleanup EXIT

start=$SECONDS
scripts/container_images.sh cpu
echo "[container-cluster] image: $((SECONDS - start)) s"
# In the background and waited for: bash runs a trap only once its foreground command ends, and a CI timeout's SIGTERM
# must stop the run now. The driver stops its S3 server and removes its containers on SIGTERM; the EXIT trap removes
# any container it left.
nice -n 5 "$PYTHON" scripts/container_cluster.py --image localhost/geoplantnet:cpu "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; exit 143' INT TERM
wait "$child"
