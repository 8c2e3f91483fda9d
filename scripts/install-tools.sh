#!/usr/bin/env bash
# Tools the offline deployment checks need, installed into .tools/bin (not system-wide):
#   helm — built from source with `go install` (the Go module proxy is reachable where
#          helm's release downloads are not).
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=${HELM_VERSION:-v3.22.0}
mkdir -p .tools/bin
if [[ -x .tools/bin/helm ]] && .tools/bin/helm version --short 2>/dev/null | grep -q "${HELM_VERSION%.*}"; then
  exit 0
fi
if command -v helm >/dev/null 2>&1; then
  ln -sf "$(command -v helm)" .tools/bin/helm
  exit 0
fi
command -v go >/dev/null || { echo "helm is missing and Go is not installed to build it (apt-get install golang-go, or install helm)" >&2; exit 1; }
echo "[tools] building helm $HELM_VERSION with go install (a few minutes the first time)"
GOBIN=$PWD/.tools/bin go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
