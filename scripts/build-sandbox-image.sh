#!/usr/bin/env bash
# Builds the default image of codeyard's docker sandbox, codeyard-sandbox:bookworm, without any
# image registry: debootstrap makes a minimal Debian bookworm with python3 and pytest from the
# Debian mirrors, and `docker import` turns that directory into an image.
#
#   DOCKER_HOST=unix:///run/codeyard-docker/docker.sock scripts/build-sandbox-image.sh [IMAGE]
#
# Idempotent: does nothing when the image exists (`docker image rm IMAGE` to rebuild). Needs
# root (debootstrap does) and a Docker engine (scripts/docker-engine.sh starts one). Installs
# debootstrap with apt-get when it is missing. CODEYARD_DEBIAN_MIRROR picks another mirror.
set -euo pipefail

IMAGE="${1:-${CODEYARD_SANDBOX_IMAGE:-codeyard-sandbox:bookworm}}"
SUITE=bookworm
MIRROR="${CODEYARD_DEBIAN_MIRROR:-}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "sandbox image: $IMAGE (already built)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "build-sandbox-image.sh: debootstrap needs root; run it as root" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi

ROOTFS="$(mktemp -d /var/tmp/codeyard-sandbox-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "building $IMAGE: debootstrap $SUITE into $ROOTFS (a few minutes)"
# shellcheck disable=SC2086  # an empty MIRROR is no argument: debootstrap's default mirror
debootstrap --variant=minbase --include=python3,python3-pytest "$SUITE" "$ROOTFS" $MIRROR
# Nothing of the build host or of apt's caches belongs in the image.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
# python3 is all a repository's `python -m pytest` needs: make `python` name it too.
ln -sf python3 "$ROOTFS/usr/bin/python"
tar --numeric-owner -C "$ROOTFS" -c . |
    docker import \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$IMAGE"
echo "sandbox image: $IMAGE (built)"
