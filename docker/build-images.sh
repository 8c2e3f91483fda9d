#!/usr/bin/env bash
# Builds the four service images from the repository root.
#   docker/build-images.sh [TAG]                  (default tag: dev)
# PYTHON_IMAGE=... overrides the base (default: the Dockerfiles' python:3.11-slim);
# docker/local-base-image.sh makes one where no registry is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-dev}
args=(--network host)  # pip inside the build reaches PyPI like the host does
[[ -n ${PYTHON_IMAGE:-} ]] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
# The classic builder needs no buildx plugin (absent from some distributions' docker).
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
for service in producer consumer exporter dashboard; do
  echo "[images] building iot-$service:$TAG"
  docker build -q "${args[@]}" -f "$service/Dockerfile" -t "iot-$service:$TAG" . >/dev/null
done
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^iot-(producer|consumer|exporter|dashboard):$TAG "
