#!/usr/bin/env bash
# Test-only: builds local stand-ins for the third-party images docker-compose.yml pulls
# (apache/kafka, postgres, prom/pushgateway, prom/prometheus cannot be pulled here) and prints
# the variables that select them. Each honours the upstream image's contract: see its Dockerfile.
#   tests/compose/standins/build.sh            (needs dockerd, debootstrap, the local stack's Kafka
#                                                jars in .stack/kafka/libs, Go for the Prometheus tools)
set -euo pipefail
cd "$(dirname "$0")/../../.."
BASE=${BASE_IMAGE:-iot-monitor/python-base:bookworm}
docker/local-base-image.sh "$BASE" >&2
[[ -d .stack/kafka/libs ]] || stack/stack.sh up >&2  # resolves Kafka 4.3.1's jars from Maven Central
scripts/install-tools.sh prometheus >&2             # pushgateway + prometheus built with Go
tools=${IOT_TOOLS_CACHE:-$HOME/.cache/iot-monitor/bin}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
build() {  # build NAME DIR [FILES TO ADD...]
  local name=$1 dir=$2
  shift 2
  rm -rf "$ctx/$name" && mkdir -p "$ctx/$name" && cp -r "$dir/." "$ctx/$name/"
  for extra in "$@"; do cp -r "$extra" "$ctx/$name/"; done
  if ! docker image inspect "$name" >/dev/null 2>&1 || [[ -n ${REBUILD:-} ]]; then
    echo "[standins] building $name" >&2
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "BASE_IMAGE=$BASE" -t "$name" "$ctx/$name" >/dev/null
  fi
}
build iot-monitor/standin-kafka:4.3.1 tests/compose/standins/kafka .stack/kafka/libs
# Debian bookworm's PostgreSQL (15) behind the official image's entrypoint contract: the tag says what it holds.
build iot-monitor/standin-postgres:15 tests/compose/standins/postgres
build iot-monitor/standin-pushgateway:v1.11.1 tests/compose/standins/pushgateway "$tools/pushgateway"
cp "$tools/prometheus-v0.305.0" "$ctx/prometheus-bin"
build iot-monitor/standin-prometheus:v3.5.0 tests/compose/standins/prometheus "$ctx/prometheus-bin"
cat <<VARS
KAFKA_IMAGE=iot-monitor/standin-kafka:4.3.1
POSTGRES_IMAGE=iot-monitor/standin-postgres:15
PUSHGATEWAY_IMAGE=iot-monitor/standin-pushgateway:v1.11.1
PROMETHEUS_IMAGE=iot-monitor/standin-prometheus:v3.5.0
PYTHON_IMAGE=$BASE
VARS
