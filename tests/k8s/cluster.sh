#!/usr/bin/env bash
# Test-only: a real single-node Kubernetes (v1.37, built from source by build-binaries.sh) that
# lives entirely inside a network + mount namespace of its own, for tests/k8s.
#
#   tests/k8s/cluster.sh up          build what is missing (cached), start the node, wait until Ready
#   tests/k8s/cluster.sh down        stop everything and remove every trace (processes, cgroups, state)
#   tests/k8s/cluster.sh leftovers   print what `down` would have to remove (nothing: exit 0)
#   tests/k8s/cluster.sh import IMG  copy a Docker image into the node's containerd
#   tests/k8s/cluster.sh kubectl ... / helm ... / exec CMD...   run a client inside the namespace
#   tests/k8s/cluster.sh env         print IOT_K8S_* variables (state dir, pid of the namespace)
#
# Isolation (the machine's network rule and "leave the host as found"): etcd, the API server,
# controller-manager, scheduler, containerd, kubelet, kube-proxy, CoreDNS and kube-router's
# NetworkPolicy firewall (iptables + ipset, so the chart's policies are enforced) run in a private
# network namespace (node IP 10.200.0.1 on a veth pair, pods 10.244.0.0/24, Services
# 10.96.0.0/16; no route leaves it) and a private mount namespace in which /run is a tmpfs and
# /var/lib and /var/log are the state directory's own. Host iptables, sysctls and mounts are never
# touched. Every daemon (and every containerd shim) is put in the cgroup `iot-monitor-k8s`;
# kubelet puts pods under `kubepods`; `down` kills both cgroups' processes and removes them.
# Sandbox quirks handled (see the README's Development section): cgroup v1 (failCgroupV1: false,
# cgroupfs), no CAP_SYS_RESOURCE (containerd restrict_oom_score_adj), no dummy interface (veth),
# no IPVS (kube-proxy iptables mode, conntrack maxPerCore 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
STATE=${IOT_K8S_STATE:-/var/tmp/iot-monitor-k8s}
CGROUP=iot-monitor-k8s
NODE_NAME=iot-node
NODE_IP=10.200.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS_IP=10.96.0.10
PAUSE_IMAGE=iot-monitor/pause:3.10
K8S_VERSION=${K8S_VERSION:-v1.37.2}
PKI=$STATE/pki
KUBECONFIG_ADMIN=$PKI/admin.kubeconfig

log() { echo "[k8s] $*" >&2; }
die() { echo "[k8s] error: $*" >&2; exit 1; }

holder_pid() { [[ -s $STATE/pid/holder ]] && kill -0 "$(cat "$STATE/pid/holder")" 2>/dev/null && cat "$STATE/pid/holder"; }
in_net() { nsenter -t "$(holder_pid)" --net -- "$@"; }
in_node() { nsenter -t "$(holder_pid)" --net --mount -- "$@"; }
bin_dir() { "$REPO/tests/k8s/build-binaries.sh"; }

kubectl_() { in_net "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

require_root() {
  [[ $(id -u) == 0 ]] || die "needs root (network namespace, cgroups, containerd)"
  local tool
  for tool in unshare nsenter ip iptables ipset containerd ctr runc openssl docker gcc conntrack; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install containerd runc iptables ipset containernetworking-plugins conntrack socat docker.io gcc)"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
    || die "CNI plugins are missing: apt-get install containernetworking-plugins"
  [[ -d /sys/fs/cgroup/pids ]] || die "expected cgroup v1 with a pids hierarchy (this harness targets the CI machines)"
}

# ---------------------------------------------------------------------------------------------
# certificates and kubeconfigs (plain openssl, regenerated for each cluster)
# ---------------------------------------------------------------------------------------------
make_pki() {
  mkdir -p "$PKI" && cd "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=iot-monitor-test-ca" 2>/dev/null
  cert() {  # cert NAME SUBJECT [SAN]
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    local ext=()
    if [[ -n ${3:-} ]]; then printf 'subjectAltName=%s\n' "$3" >"$1.ext"; ext=(-extfile "$1.ext"); fi
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 2 "${ext[@]}" 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=admin"
  cert node "/O=system:nodes/CN=system:node:$NODE_NAME"
  openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  kubeconfig() {  # kubeconfig FILE CERT
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: iot
  cluster: {server: "https://$NODE_IP:6443", certificate-authority: $PKI/ca.crt}
users:
- name: $2
  user: {client-certificate: $PKI/$2.crt, client-key: $PKI/$2.key}
contexts:
- name: iot
  context: {cluster: iot, user: $2}
current-context: iot
EOF
  }
  kubeconfig admin.kubeconfig admin
  kubeconfig node.kubeconfig node
  cd "$REPO"
}

write_configs() {
  mkdir -p "$STATE/config" "$STATE/cni/net.d" "$STATE/cni/ipam"
  cat >"$STATE/config/containerd.toml" <<EOF
version = 2
root = "$STATE/varlib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$STATE/run/containerd.sock"
[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE in this sandbox: runc may not lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  cat >"$STATE/cni/net.d/10-iot.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "iot", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$STATE/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
  # Pods resolve through CoreDNS, which runs as kind runs it (cluster_dns); nothing is forwarded
  # out of the namespace. Inside the namespace these replace /etc/resolv.conf and /etc/hosts too:
  # no lookup leaves it.
  printf 'nameserver %s\n' "$CLUSTER_DNS_IP" >"$STATE/config/resolv.conf"
  printf '127.0.0.1 localhost\n%s %s\n' "$NODE_IP" "$NODE_NAME" >"$STATE/config/hosts"
  cat >"$STATE/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$STATE/run/containerd.sock
address: $NODE_IP
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS_IP]
resolvConf: $STATE/config/resolv.conf
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  cat >"$STATE/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG_ADMIN}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0}
EOF
}

# ---------------------------------------------------------------------------------------------
# namespace, cgroup and daemons
# ---------------------------------------------------------------------------------------------
start_namespace() {
  mkdir -p "$STATE/pid" "$STATE/logs" "$STATE/run" "$STATE/varlib" "$STATE/varlog"
  for h in /sys/fs/cgroup/pids; do mkdir -p "$h/$CGROUP"; done
  # The holder: creates both namespaces, sets them up from inside, then only keeps them alive.
  sh -c "echo \$\$ > /sys/fs/cgroup/pids/$CGROUP/cgroup.procs; exec unshare --net --mount --propagation private -- sh -ec '
    mount -t tmpfs -o mode=0755 iot-run /run
    mount --bind $STATE/varlib /var/lib
    mount --bind $STATE/varlog /var/log
    mount --bind $STATE/config/resolv.conf /etc/resolv.conf
    mount --bind $STATE/config/hosts /etc/hosts
    ip link set lo up
    ip link add node0 type veth peer name node0-peer
    ip addr add $NODE_IP/24 dev node0
    ip link set node0 up
    ip link set node0-peer up
    ip route add default dev node0
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
    exec sleep infinity'" >"$STATE/logs/holder.log" 2>&1 &
  echo $! >"$STATE/pid/holder"
  for _ in $(seq 50); do
    in_net ip -4 addr show node0 2>/dev/null | grep -q "$NODE_IP" && return 0
    sleep 0.1
  done
  cat "$STATE/logs/holder.log" >&2
  die "the network namespace did not come up"
}

start_daemon() {  # start_daemon NAME CMD...  (inside both namespaces, in our cgroup)
  local name=$1
  shift
  nsenter -t "$(holder_pid)" --net --mount -- sh -c \
    "echo \$\$ > /sys/fs/cgroup/pids/$CGROUP/cgroup.procs; exec \"\$@\"" sh "$@" \
    >"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pid/$name"
}

wait_for() {  # wait_for WHAT SECONDS CMD...
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what did not come up in ${seconds}s (logs: $STATE/logs)"
    sleep 1
  done
}

pause_image() {
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
  local src ctx
  src="$(go env GOMODCACHE 2>/dev/null)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
  [[ -f $src ]] || die "pause.c not found at $src (run tests/k8s/build-binaries.sh first)"
  ctx=$(mktemp -d)
  gcc -Os -static -o "$ctx/pause" "$src"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$PAUSE_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
}

# CoreDNS's own image cannot be pulled here: the binary build-binaries.sh made, with the C
# library it links, in an image of its own (the pod runs what kind's CoreDNS pod runs).
coredns_image() {
  COREDNS_IMAGE=iot-monitor/coredns:$("$BIN/coredns" -version | sed -n 's/^CoreDNS-//p')
  docker image inspect "$COREDNS_IMAGE" >/dev/null 2>&1 && return 0
  local ctx lib
  ctx=$(mktemp -d)
  cp "$BIN/coredns" "$ctx/coredns"
  for lib in $(ldd "$BIN/coredns" | grep -o '/[^ ]*'); do cp --parents "$lib" "$ctx/"; done
  printf 'FROM scratch\nCOPY . /\nENTRYPOINT ["/coredns"]\n' >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$COREDNS_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
}

# Cluster DNS as kind (kubeadm) deploys it: a CoreDNS Deployment labelled k8s-app=kube-dns in
# kube-system behind the Service kube-dns, so the chart's default NetworkPolicy DNS peer (those
# pods, port 53) is the one that is enforced here too.
cluster_dns() {
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 5
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      priorityClassName: system-cluster-critical
      containers:
        - name: coredns
          image: $COREDNS_IMAGE
          imagePullPolicy: Never
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
          readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
          livenessProbe: {httpGet: {path: /health, port: 8080}}
          volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: $CLUSTER_DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
EOF
  wait_for "CoreDNS (deployment kube-system/coredns)" 120 in_net "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" \
    -n kube-system rollout status deployment/coredns --timeout=5s
}

import_image() {  # import_image IMAGE...   (docker → the node's containerd, namespace k8s.io)
  local image
  for image in "$@"; do
    docker image inspect "$image" >/dev/null 2>&1 || die "image $image is not in Docker"
  done
  log "importing $*"
  # One archive for all: the layers they share (the base image) are copied once.
  docker save "$@" | ctr --address "$STATE/run/containerd.sock" -n k8s.io images import - >/dev/null
}

up() {
  require_root
  if holder_pid >/dev/null; then log "already running ($STATE)"; return 0; fi
  [[ -e $STATE ]] && down
  BIN=$(bin_dir)
  export PATH=$BIN:$PATH
  pause_image
  make_pki
  write_configs
  start_namespace
  start_daemon etcd "$BIN/etcd" --name iot --data-dir "$STATE/etcd" --unsafe-no-fsync \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster iot=http://127.0.0.1:2380 --log-level warn
  start_daemon containerd containerd --config "$STATE/config/containerd.toml"
  start_daemon kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --advertise-address "$NODE_IP" --secure-port 6443 --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --profiling=false
  wait_for "the API server" 120 in_net "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" get --raw /readyz
  start_daemon kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_ADMIN" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" --use-service-account-credentials \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  start_daemon kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$KUBECONFIG_ADMIN" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  wait_for containerd 60 ctr --address "$STATE/run/containerd.sock" version
  start_daemon kubelet "$BIN/kubelet" --config "$STATE/config/kubelet.yaml" --kubeconfig "$PKI/node.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  start_daemon kube-proxy "$BIN/kube-proxy" --config "$STATE/config/kube-proxy.yaml"
  coredns_image
  import_image "$PAUSE_IMAGE" "$COREDNS_IMAGE"
  wait_for "node $NODE_NAME Ready" 180 in_net "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" \
    wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
  # NetworkPolicy enforcement: the firewall part of kube-router only (no routing, no proxy, no
  # CNI of its own); its iptables rules and ipsets live in the node's network namespace. It
  # needs the Node object, so it starts once the node is registered, and must be running.
  start_daemon kube-router "$BIN/kube-router-v2.1.0" --run-firewall=true --run-router=false \
    --run-service-proxy=false --enable-cni=false --kubeconfig "$KUBECONFIG_ADMIN" \
    --hostname-override "$NODE_NAME" --service-cluster-ip-range "$SERVICE_CIDR" --health-port 0
  wait_for "kube-router's NetworkPolicy firewall" 60 in_net iptables -S KUBE-ROUTER-FORWARD
  # Storage the way kind offers it: a default class, here backed by pre-made hostPath volumes.
  storage
  cluster_dns
  log "node Ready: $(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}')"
}

storage() {
  local i manifest
  manifest=$'apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: standard\n'
  manifest+=$'  annotations: {storageclass.kubernetes.io/is-default-class: "true"}\n'
  manifest+=$'provisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\nreclaimPolicy: Retain\n'
  for i in $(seq 0 7); do
    mkdir -p "$STATE/volumes/pv-$i" && chmod 0777 "$STATE/volumes/pv-$i"
    manifest+=$'---\napiVersion: v1\nkind: PersistentVolume\nmetadata:\n'
    manifest+="  name: pv-$i"$'\nspec:\n  capacity: {storage: 10Gi}\n  accessModes: [ReadWriteOnce]\n'
    manifest+=$'  storageClassName: standard\n  persistentVolumeReclaimPolicy: Retain\n'
    manifest+="  hostPath: {path: $STATE/volumes/pv-$i, type: Directory}"$'\n'
  done
  kubectl_ apply -f - <<<"$manifest" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# teardown: processes, cgroups, namespaces (with them: mounts, interfaces, iptables), state
# ---------------------------------------------------------------------------------------------
cgroup_pids() {  # every pid in our cgroup and under kubepods (pids hierarchy), recursively
  local dir
  for dir in /sys/fs/cgroup/pids/$CGROUP /sys/fs/cgroup/pids/kubepods; do
    [[ -d $dir ]] && find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  return 0
}

down() {
  if [[ -s $STATE/pid/kubelet ]]; then  # first the kubelet, so that nothing restarts containers
    kill "$(cat "$STATE/pid/kubelet")" 2>/dev/null || true
  fi
  local round pids
  for round in $(seq 1 30); do
    pids=$(cgroup_pids | tr '\n' ' ')
    [[ -z ${pids// /} ]] && break
    # Polite first (etcd and containerd flush), then SIGKILL for whatever is left.
    if ((round == 1)); then kill -TERM $pids 2>/dev/null || true; else kill -KILL $pids 2>/dev/null || true; fi
    sleep 0.5
  done
  [[ -z $(cgroup_pids) ]] || die "processes survived teardown: $(cgroup_pids | tr '\n' ' ')"
  # Killed daemons are reaped by whoever adopted them (PID 1 here): give that a moment.
  local pidfile
  for pidfile in "$STATE"/pid/*; do
    [[ -s $pidfile ]] || continue
    for _ in $(seq 50); do [[ -e /proc/$(cat "$pidfile") ]] || break; sleep 0.1; done
  done
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    for dir in "$hierarchy"kubepods "$hierarchy$CGROUP"; do
      [[ -d $dir ]] && find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
      [[ -d $dir ]] && log "warning: could not remove cgroup $dir"
    done
  done
  if [[ -e $STATE ]]; then
    grep -q " $STATE" /proc/self/mountinfo && die "mounts under $STATE are still present"
    rm -rf "$STATE"
  fi
  log "down: no process, cgroup, mount or state left"
}

leftovers() {  # prints what the cluster left behind; exit 1 if anything
  local found=0
  [[ -n $(cgroup_pids) ]] && { echo "processes: $(cgroup_pids | tr '\n' ' ')"; found=1; }
  compgen -G "/sys/fs/cgroup/*/kubepods" >/dev/null && { echo "cgroups: $(echo /sys/fs/cgroup/*/kubepods)"; found=1; }
  compgen -G "/sys/fs/cgroup/*/$CGROUP" >/dev/null && { echo "cgroups: $(echo /sys/fs/cgroup/*/$CGROUP)"; found=1; }
  grep -E "iot-run|$STATE" /proc/self/mountinfo && found=1
  ip -o link show | grep -E "cni0|node0" && found=1
  iptables-save 2>/dev/null | grep -E "KUBE-|CNI-" | head -3 && found=1
  ipset list -n 2>/dev/null | grep -E "^KUBE-" | head -3 && found=1  # kube-router's, if they leaked out
  ps -eo pid=,stat=,args= | awk -v state="$STATE" \
    '$2 !~ /^Z/ && (index($0, state) || /kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy|kube-router|kubelet --config/)' |
    grep -v awk && found=1
  [[ -e $STATE ]] && { echo "state: $STATE"; found=1; }
  return $found
}

cmd=${1:-}
shift || true
case $cmd in
  up) up ;;
  down) down ;;
  leftovers) leftovers ;;
  import) import_image "$@" ;;
  kubectl) BIN=$(bin_dir); holder_pid >/dev/null || die "cluster is not running"; kubectl_ "$@" ;;
  helm) holder_pid >/dev/null || die "cluster is not running"; in_net env KUBECONFIG="$KUBECONFIG_ADMIN" "${HELM:-helm}" "$@" ;;
  exec) holder_pid >/dev/null || die "cluster is not running"; in_net "$@" ;;
  env) printf 'IOT_K8S_STATE=%s\nIOT_K8S_KUBECONFIG=%s\nIOT_K8S_HOLDER_PID=%s\nIOT_K8S_BIN=%s\n' \
    "$STATE" "$KUBECONFIG_ADMIN" "$(holder_pid || true)" "$(bin_dir)" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
