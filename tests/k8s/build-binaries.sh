#!/usr/bin/env bash
# Test-only: builds the binaries of a single-node Kubernetes from the Go module proxy (kind,
# k3s and release downloads are out of reach here), once, into a cache outside the clone:
#   ~/.cache/iot-monitor/k8s-<version>/bin   (rebuilt only when a version below changes)
# kube-apiserver, kubelet, kube-controller-manager, kube-scheduler, kube-proxy, kubectl, etcd,
# coredns, and kube-router (only its NetworkPolicy firewall runs: the node's CNI, the bridge
# plugin, enforces no policy itself). Kubernetes' own go.mod replaces its staging modules with local paths, so it cannot be
# built with `go install pkg@version`: a small module of ours requires it and replaces each
# staging module by its published version instead.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.37.2}
STAGING_VERSION=${STAGING_VERSION:-v0.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.0}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.6}
# The only version the module proxy serves here. Reported flaws concern its BGP router and service
# proxy, which this harness never starts; it runs in the test node's private network namespace.
KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0}
# Parallel package builds: every core by default (the tests wait for this anyway); K8S_BUILD_JOBS=1
# leaves a core free for other work.
JOBS=${K8S_BUILD_JOBS:-$(nproc)}
OUT=${IOT_K8S_CACHE:-$HOME/.cache/iot-monitor}/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-coredns-$COREDNS_VERSION/bin
declare -A PACKAGES=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [etcd]=go.etcd.io/etcd/server/v3
  [coredns]=github.com/coredns/coredns
)
# One build at a time (scripts/prebuild-tools.sh may be running this in the background): a second
# caller waits here, then finds the binaries built.
mkdir -p "$OUT"
exec 9>"$OUT/../.build.lock"
flock 9
missing=()
for name in "${!PACKAGES[@]}"; do [[ -x $OUT/$name ]] || missing+=("$name"); done
kube_router=$OUT/kube-router-$KUBE_ROUTER_VERSION
if ((${#missing[@]} == 0)) && [[ -x $kube_router ]]; then echo "$OUT"; exit 0; fi
command -v go >/dev/null || { echo "[k8s] Go is required to build Kubernetes" >&2; exit 1; }
if [[ ! -x $kube_router ]]; then
  # Its own module (no replace directives): `go install` builds it with the versions it pins.
  echo "[k8s] building kube-router $KUBE_ROUTER_VERSION" >&2
  mkdir -p "$OUT"
  gobin=$(mktemp -d)
  GOBIN=$gobin go install -trimpath -ldflags "-s -w" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION" >&2
  mv "$gobin/kube-router" "$kube_router"
  rm -rf "$gobin"
fi
if ((${#missing[@]} == 0)); then echo "$OUT"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go mod download "k8s.io/kubernetes@$K8S_VERSION" >&2
upstream_mod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
{
  printf 'module iot-monitor.local/tests/k8s\n\ngo 1.24\n\n'
  printf 'require (\n\tk8s.io/kubernetes %s\n\tgo.etcd.io/etcd/server/v3 %s\n\tgithub.com/coredns/coredns %s\n)\n\n' \
    "$K8S_VERSION" "$ETCD_VERSION" "$COREDNS_VERSION"
  grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream_mod" |
    awk -v v="$STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
} >"$work/go.mod"
{
  printf '//go:build tools\n\npackage tools\n\nimport (\n'
  for name in "${!PACKAGES[@]}"; do printf '\t_ "%s"\n' "${PACKAGES[$name]}"; done
  printf ')\n'
} >"$work/tools.go"
echo "[k8s] resolving modules ($(grep -c '^replace' "$work/go.mod") staging replacements)" >&2
(cd "$work" && go mod tidy) >&2
mkdir -p "$OUT"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION")"
for name in "${missing[@]}"; do
  echo "[k8s] building $name (minutes; $JOBS packages at a time)" >&2
  started=$SECONDS
  (cd "$work" && go build -p "$JOBS" -trimpath -ldflags "$ldflags" -o "$OUT/$name.tmp" "${PACKAGES[$name]}") >&2
  mv "$OUT/$name.tmp" "$OUT/$name"
  echo "[k8s] $name built in $((SECONDS - started)) s" >&2
done
echo "$OUT"
