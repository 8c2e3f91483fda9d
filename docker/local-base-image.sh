#!/usr/bin/env bash
# Makes a stand-in for python:3.11-slim on machines that cannot pull from a registry:
# Debian bookworm (minbase) + python3 (3.11) + venv, imported as a local image.
#   docker/local-base-image.sh [IMAGE_NAME]        (default: iot-monitor/python-base:bookworm)
# The machine's CA bundle is copied in and pip told to use it, so builds that download
# from PyPI through a TLS-intercepting proxy work too.
set -euo pipefail
IMAGE=${1:-iot-monitor/python-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "[base] $IMAGE exists"; exit 0
fi
command -v debootstrap >/dev/null || { echo "[base] debootstrap is required: apt-get install debootstrap" >&2; exit 1; }
ROOTFS=$(mktemp -d /var/tmp/iot-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "[base] debootstrap bookworm into $ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
  || { tail -20 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
echo "[base] importing as $IMAGE"
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "[base] $IMAGE ready"
