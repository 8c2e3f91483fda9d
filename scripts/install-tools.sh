#!/usr/bin/env bash
# Tools the deployment tests need, built from the Go module proxy into .tools/bin (not
# system-wide; release downloads and registries are out of reach here):
#   scripts/install-tools.sh             helm (chart tests)
#   scripts/install-tools.sh compose     docker-compose v2 (tests/compose)       ~/.cache/iot-monitor/bin
#   scripts/install-tools.sh prometheus  pushgateway + prometheus for the Compose stand-in images (same)
#   scripts/install-tools.sh skaffold    skaffold v2 (skaffold diagnose/render/dev)           (same)
# A module whose go.mod has exclude/replace directives cannot be built with `go install
# pkg@version`; those are built inside a small module of ours that repeats the directives.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=${HELM_VERSION:-v3.22.0}
HELM_K8S_MINOR=${HELM_K8S_MINOR:-37}  # helm v3.22.0's go.mod: k8s.io/client-go v0.37.0
COMPOSE_VERSION=${COMPOSE_VERSION:-v2.40.3}
PUSHGATEWAY_VERSION=${PUSHGATEWAY_VERSION:-v1.11.1}
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.305.0}  # Prometheus v3.5.0
# The newest the module proxy serves here (its newest schema: skaffold/v4beta13, which ours declare).
SKAFFOLD_VERSION=${SKAFFOLD_VERSION:-v2.16.1}
mkdir -p .tools/bin
# The big ones are cached per machine, outside the clone, and rebuilt only for a new version.
TOOLS=${IOT_TOOLS_CACHE:-$HOME/.cache/iot-monitor/bin}
mkdir -p "$TOOLS"
# One build of a tool at a time: scripts/prebuild-tools.sh may be building it in the background,
# and then this waits for that build and finds the tool in place instead of compiling it again.
exec 9>"$TOOLS/.build-${1:-helm}.lock"
flock 9

# build_in_module NAME MODULE VERSION PACKAGE LDFLAGS DIRECTIVES: go build PACKAGE inside a module
# that requires MODULE@VERSION and repeats its go.mod DIRECTIVES.
build_in_module() {
  local name=$1 module=$2 version=$3 package=$4 ldflags=$5 directives=$6 dir
  dir=$(mktemp -d)
  printf 'module iot-monitor.local/tools/%s\n\ngo 1.24\n\nrequire %s %s\n\n%s\n' "$name" "$module" "$version" "$directives" >"$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" >"$dir/tools.go"
  (cd "$dir" && go mod tidy && go build -trimpath -ldflags "$ldflags" -o "$TOOLS/$name" "$package")
  rm -rf "$dir"
}

case "${1:-helm}" in
  compose)
    if [[ -x $TOOLS/docker-compose ]] && "$TOOLS/docker-compose" version --short 2>/dev/null | grep -q "${COMPOSE_VERSION#v}"; then
      exit 0
    fi
    echo "[tools] building docker-compose $COMPOSE_VERSION from the Go module proxy (minutes the first time)"
    build_in_module docker-compose github.com/docker/compose/v2 "$COMPOSE_VERSION" github.com/docker/compose/v2/cmd \
      "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
      "exclude (
	github.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc
	github.com/pmezard/go-difflib v1.0.1-0.20181226105442-5d4384ee4fb2
)"
    exit 0
    ;;
  prometheus)
    if ! "$TOOLS/pushgateway" --version 2>&1 | grep -q "${PUSHGATEWAY_VERSION#v}"; then
      echo "[tools] building pushgateway $PUSHGATEWAY_VERSION"
      build_in_module pushgateway github.com/prometheus/pushgateway "$PUSHGATEWAY_VERSION" \
        github.com/prometheus/pushgateway "-s -w -X github.com/prometheus/common/version.Version=${PUSHGATEWAY_VERSION#v}" ""
    fi
    if [[ ! -x $TOOLS/prometheus-$PROMETHEUS_MODULE_VERSION ]]; then
      echo "[tools] building prometheus (module $PROMETHEUS_MODULE_VERSION; many minutes the first time)"
      build_in_module prometheus github.com/prometheus/prometheus "$PROMETHEUS_MODULE_VERSION" \
        github.com/prometheus/prometheus/cmd/prometheus "-s -w" \
        "exclude github.com/linode/linodego v1.0.0
exclude (
	github.com/grpc-ecosystem/grpc-gateway v1.14.7
	google.golang.org/api v0.30.0
)
replace github.com/fsnotify/fsnotify v1.8.0 => github.com/fsnotify/fsnotify v1.7.0"
      mv "$TOOLS/prometheus" "$TOOLS/prometheus-$PROMETHEUS_MODULE_VERSION"
    fi
    exit 0
    ;;
  skaffold)
    if [[ -x $TOOLS/skaffold ]] && "$TOOLS/skaffold" version 2>/dev/null | grep -q "$SKAFFOLD_VERSION"; then
      exit 0
    fi
    echo "[tools] building skaffold $SKAFFOLD_VERSION from the Go module proxy (many minutes the first time)"
    # Its go.mod's directives, repeated (see its comments for why each is there).
    build_in_module skaffold github.com/GoogleContainerTools/skaffold/v2 "$SKAFFOLD_VERSION" \
      github.com/GoogleContainerTools/skaffold/v2/cmd/skaffold \
      "-s -w -X github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/version.version=$SKAFFOLD_VERSION" \
      "exclude github.com/karrick/godirwalk v1.17.0
replace github.com/alessio/shellescape => github.com/alessio/shellescape v1.4.2
replace github.com/imdario/mergo => github.com/imdario/mergo v0.3.16
replace github.com/docker/docker => github.com/docker/docker v27.5.1+incompatible
replace github.com/docker/cli => github.com/docker/cli v27.5.1+incompatible
replace github.com/spf13/viper => github.com/spf13/viper v1.19.0
replace github.com/buildpacks/lifecycle => github.com/buildpacks/lifecycle v0.20.5"
    exit 0
    ;;
  helm) ;;
  *) echo "usage: $0 [helm|compose|prometheus|skaffold]" >&2; exit 2 ;;
esac
# The full version in `helm version` says it was built with the ldflags below (a plain `go install`
# shows "v3.22" and tells charts it runs against Kubernetes v1.20: skaffold render then fails on
# our chart's kubeVersion).
if [[ -x .tools/bin/helm ]] && .tools/bin/helm version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  exit 0
fi
if command -v helm >/dev/null 2>&1; then
  ln -sf "$(command -v helm)" .tools/bin/helm
  exit 0
fi
command -v go >/dev/null || { echo "helm is missing and Go is not installed to build it (apt-get install golang-go, or install helm)" >&2; exit 1; }
echo "[tools] building helm $HELM_VERSION with go install (a few minutes the first time)"
# What helm's Makefile sets: its version, and the Kubernetes version of the client libraries it
# is built with (the default capabilities `helm template` assumes without --kube-version).
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
  helm_ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
GOBIN=$PWD/.tools/bin go install -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
