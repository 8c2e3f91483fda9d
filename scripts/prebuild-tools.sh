#!/usr/bin/env bash
# Builds the Go tools the deployment tests need (docker-compose, the Prometheus stand-ins, helm,
# the single-node Kubernetes of tests/k8s, skaffold) at the lowest CPU and I/O priority, so that
# a cold machine compiles them in the time the test suite leaves idle (waiting on Kafka,
# PostgreSQL, docker builds and the chaos tests' faults) instead of one after another when each
# test first needs its tool. .ci/run starts it in the background before `make test`.
#
# Purely a head start: each build script holds a lock per tool, so a test that needs a tool the
# head start is still building waits for that build instead of repeating it; a tool that failed
# here is built again, in the foreground and with its error, by the test that needs it.
#   scripts/prebuild-tools.sh [LOG]     (LOG: where the builds' output goes; default stdout)
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${1:-} ]]; then exec >"$1" 2>&1; fi
command -v go >/dev/null || { echo "[prebuild] Go is not installed: nothing to build ahead"; exit 0; }
run() {
  local started=$SECONDS
  if nice -n 19 ionice -c 3 "$@"; then
    echo "[prebuild] $* done in $((SECONDS - started)) s"
  else
    echo "[prebuild] $* failed after $((SECONDS - started)) s (the test that needs it builds it again)"
  fi
}
# In the order the tests first need them (tests/compose, tests/deploy, tests/k8s, tests/skaffold).
run scripts/install-tools.sh compose
run scripts/install-tools.sh prometheus
run scripts/install-tools.sh helm
run tests/k8s/build-binaries.sh
run scripts/install-tools.sh skaffold
echo "[prebuild] finished after $SECONDS s"
