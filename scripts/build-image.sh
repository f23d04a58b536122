#!/usr/bin/env bash
# Build the Dockerfile with buildah: no Docker engine, no daemon, no registry push.
# Usage: scripts/build-image.sh [TAG]      (default localhost/sniproxy:ci)
# Where no registry image can be pulled (CI), the Dockerfile's base `python:3.11-slim` is stood in by a Debian 12
# rootfs made with debootstrap from the Debian mirror apt already uses (python3 3.11, venv, pip), tagged under that
# name. The stand-in and the layers (`--layers`: the dependency layer is reused until requirements.lock changes)
# are cached in $IMGBUILD_DIR between runs on the same machine. Prints `buildah inspect` of the result.
# Env: IMGBUILD_DIR (default /var/cache/sniproxy-imgbuild), BASE_NAME (default docker.io/library/python:3.11-slim),
# STORAGE_DRIVER (default overlay: layers are diffs; vfs, a full copy of the root per layer, took minutes to copy
# and delete them and filled gigabytes).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/sniproxy:ci}
BASE_NAME=${BASE_NAME:-docker.io/library/python:3.11-slim}
WORK=${IMGBUILD_DIR:-/var/cache/sniproxy-imgbuild}
mkdir -p "$WORK"
command -v buildah >/dev/null || ./scripts/install-deploy-tools.sh
DRIVER=${STORAGE_DRIVER:-overlay}
B=(buildah --root "$WORK/storage-$DRIVER" --runroot "$WORK/run-$DRIVER" --storage-driver "$DRIVER")

debian_mirror() {
    grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1
}

if ! "${B[@]}" inspect --type image "$BASE_NAME" >/dev/null 2>&1; then
    if [[ ! -f $WORK/rootfs.tar ]]; then
        echo "build-image: making the stand-in base (debootstrap bookworm)"
        rm -rf "$WORK/rootfs"
        timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$WORK/rootfs" "$(debian_mirror)" >/dev/null
        tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar.tmp" . && mv "$WORK/rootfs.tar.tmp" "$WORK/rootfs.tar"
        rm -rf "$WORK/rootfs"
    fi
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' >"$WORK/Dockerfile.base"
    "${B[@]}" bud --isolation chroot -f "$WORK/Dockerfile.base" -t localhost/ci-base:bookworm "$WORK"
    "${B[@]}" tag localhost/ci-base:bookworm "$BASE_NAME"
fi
# --format docker: the OCI image format has no HEALTHCHECK (buildah would drop it with a warning).
# The host CA bundle is mounted so RUN pip works behind a TLS-intercepting egress proxy, where there is one.
"${B[@]}" bud --isolation chroot --pull=never --layers --format docker \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    -f Dockerfile -t "$TAG" .
# drop the images a rebuild left without a tag (the layers of the new one stay cached)
"${B[@]}" rmi --prune >/dev/null 2>&1 || true
"${B[@]}" inspect --type image "$TAG"
