#!/usr/bin/env bash
# Builds the geoplantnet container images from deploy/containers/Containerfile with podman:
#   scripts/container_images.sh            the CPU image, localhost/geoplantnet:cpu
#   scripts/container_images.sh cuda       the CUDA image, localhost/geoplantnet:cuda (torch's CUDA wheel)
#   scripts/container_images.sh cuda --dry-run   prints the build command and checks the CUDA torch wheel resolves
# Idempotent and cached: the tools are installed and the base image made only when missing; podman's layer cache
# makes a rebuild after a code edit reinstall only the package, not the pinned stack.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${1:-cpu}
DRY_RUN=${2:-}
BASE=localhost/debian-base:bookworm
IMAGE=${GEOPLANTNET_IMAGE:-localhost/geoplantnet:$VARIANT}
# podman needs runc here (crun refuses this machine's hybrid cgroups) and explicit ulimits (its defaults fail
# setrlimit); --network=host lets a build reach the package index (no bridge networking on these machines).
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
# 1.x: the torch wheel index of each variant; the CUDA build is PyTorch's cu126 index, as PyTorch documents.
case "$VARIANT" in
  cpu) TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu} ;;
  cuda) TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cu126} ;;
  *) echo "usage: $0 [cpu|cuda] [--dry-run]" >&2; exit 2 ;;
esac
TORCH_VARIANT=${TORCH_VARIANT:-$([ "$VARIANT" = cpu ] && echo cpu || echo cu126)}

tools() {
  # CI starts from a fresh machine like this one: install what is missing, once (we are root there).
  local missing=()
  for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
}

base_image() {
  # No registry is reachable: the base is a Debian rootfs from Debian's own packages, imported once. A lock, since
  # other builds on this machine (or a concurrent CI step) may make it at the same time.
  exec 9>/tmp/geoplantnet-debian-base.lock
  flock -w 600 9
  if ! "${PODMAN[@]}" image exists "$BASE"; then
    local tar
    tar=$(mktemp --suffix=.tar)
    echo "making $BASE with mmdebstrap (about 2 minutes, once)"
    # python3-venv for the builder stage; ca-certificates for HTTPS object stores (GDAL's curl, botocore).
    nice -n 5 mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tar"
    "${PODMAN[@]}" import --quiet "$tar" "$BASE" >/dev/null
    rm -f "$tar"
  fi
  flock -u 9
}

reachable() {
  timeout 15 python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" "$1/" 2>/dev/null
}

build_args() {
  BUILD=(build --network=host "${LIMITS[@]}" -f deploy/containers/Containerfile -t "$IMAGE"
    --build-arg "BASE=$BASE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
    --build-arg "TORCH_VARIANT=$TORCH_VARIANT")
  # This machine's own wheel folder and package mirrors (pip.conf: find-links, extra-index-url), when present: the CPU
  # torch wheel lies there, and PyTorch's index is not reachable. Mounted for the build only, never into the image.
  local links=()
  for dir in /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -d "$dir" ] && BUILD+=(--volume "$dir:$dir:ro") && links+=("$dir")
  done
  # The host's CA bundle for the build's pip: on these machines HTTPS goes through a proxy whose CA only the host
  # trusts (pip.conf: cert). Mounted, not copied: the image keeps Debian's own bundle.
  local ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  if [ -f "$ca" ]; then
    BUILD+=(--volume "$ca:/run/host-ca.crt:ro" --build-arg "PIP_CERT=/run/host-ca.crt")
  fi
  if [ ${#links[@]} -gt 0 ]; then
    BUILD+=(--build-arg "PIP_EXTRA_INDEX_URL=file:///opt/pypi/simple file:///opt/pypi-more/simple")
  fi
  if [ "$VARIANT" = cpu ] && [ -d /opt/wheels ]; then
    # the CPU torch wheel lies there (and only for the CPU image: the CUDA one must not find it)
    BUILD+=(--build-arg "PIP_FIND_LINKS=/opt/wheels")
    if ! reachable "$TORCH_INDEX_URL"; then
      BUILD+=(--build-arg "TORCH_INDEX_URL=")  # unreachable: pip would retry it for minutes
    fi
  fi
  BUILD+=(.)
}

tools
build_args
if [ "$DRY_RUN" = --dry-run ]; then
  # What can be checked without building: the command, and which torch the build's first heavy step would get
  # (resolved from the index, metadata only, nothing installed).
  echo "${PODMAN[*]} ${BUILD[*]}"
  index=$TORCH_INDEX_URL
  if [ -n "$index" ] && ! reachable "$index"; then
    echo "dry run: $index is not reachable from here, so the $VARIANT image is not built here; PyPI's wheel instead"
    index=""
  fi
  pip install --isolated --disable-pip-version-check --cert "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" \
    --dry-run --quiet --no-deps --ignore-installed --report - ${index:+--index-url "$index"} "$(grep -E '^torch==' requirements.lock.txt)" |
    python3 -c "import json, sys; i = json.load(sys.stdin)['install'][0]; m = i['metadata']
cuda = [d.split(';')[0] for d in m.get('requires_dist', []) if d.startswith('cuda-toolkit')]
print('dry run: torch', m['version'], 'from', i['download_info']['url'].rsplit('/', 1)[-1], 'CUDA:', cuda or 'none')"
  exit 0
fi
base_image
start=$SECONDS
# pip's notes about projects the local mirrors lack are noise here; podman's status still decides (pipefail)
nice -n 5 "${PODMAN[@]}" "${BUILD[@]}" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
echo "built $IMAGE in $((SECONDS - start)) s"
