#!/usr/bin/env bash
# The three-broker chaos test's network, all on this machine and apart from its host namespace:
# each Kafka node runs in a network namespace of its own (10.201.0.1N), and the test with its
# clients and its own PostgreSQL runs in a hub namespace (10.201.0.1) that reaches the nodes over
# a bridge. Cutting one node off from the others is then a firewall rule inside that node's
# namespace: the clients still reach it, the other nodes do not (a leader that still believes
# it leads). The host's interfaces, routes, iptables and sysctls are never touched.
#
#   tests/harness/kafka_cluster.sh run CMD...   namespaces up, stack up inside (3 Kafka nodes,
#                                               PostgreSQL), CMD in the hub, everything torn down
#   tests/harness/kafka_cluster.sh isolate N    drop node N's traffic to and from the other nodes
#   tests/harness/kafka_cluster.sh heal N       and let it through again
#   tests/harness/kafka_cluster.sh down         stop what runs inside, delete the namespaces
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NET=${IOT_CLUSTER_NET:-iotk}
NODES=3
SUBNET=10.201.0
HUB=$NET-hub

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

node_ns() { echo "$NET-$1"; }
node_ip() { echo "$SUBNET.1$1"; }
in_hub() { ip netns exec "$HUB" "$@"; }

cluster_env() {
  local hosts="" n
  for n in $(seq 1 $NODES); do hosts+="${hosts:+ }$(node_ip "$n")"; done
  export STACK_DIR=${CLUSTER_STACK_DIR:-$REPO_DIR/.stack/cluster}
  export KAFKA_BROKERS=$NODES KAFKA_NODE_HOSTS=$hosts
  export KAFKA_NODE_EXEC="ip netns exec $NET-{node}"
  # Fixed ports (the namespaces are private): whatever KAFKA_PORT the caller's shell exports.
  export KAFKA_PORT=9092 KAFKA_CONTROLLER_PORT=9093 KAFKA_SASL_PORT=9095 POSTGRES_PORT=5432
  # The main stack's jars: the hub has no route out, so Maven could not resolve them in there.
  export KAFKA_LIBS=${KAFKA_LIBS:-$REPO_DIR/.stack/kafka/libs}
  export KAFKA_BOOTSTRAP_SERVERS
  # stack/stack.sh's ports: node N listens on KAFKA_PORT + 10*(N-1).
  KAFKA_BOOTSTRAP_SERVERS=$(for n in $(seq 1 $NODES); do printf '%s:%d,' "$(node_ip "$n")" $((KAFKA_PORT + 10 * (n - 1))); done)
  KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS%,}
  export IOT_CLUSTER_HARNESS=$REPO_DIR/tests/harness/kafka_cluster.sh IOT_CLUSTER_NET=$NET
}

net_up() {
  [[ $(id -u) == 0 ]] || die "needs root (network namespaces, iptables inside them)"
  command -v iptables >/dev/null || die "iptables is required: apt-get install iptables"
  net_down
  ip netns add "$HUB"
  in_hub ip link set lo up
  in_hub ip link add br0 type bridge
  in_hub ip addr add "$SUBNET.1/24" dev br0
  in_hub ip link set br0 up
  local n ns
  for n in $(seq 1 $NODES); do
    ns=$(node_ns "$n")
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    # The pair is born in the hub; one end moves into the node's namespace.
    in_hub ip link add "veth$n" type veth peer name eth0 netns "$ns"
    in_hub ip link set "veth$n" master br0 up
    ip netns exec "$ns" ip addr add "$(node_ip "$n")/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
  done
  log "namespaces up: hub $HUB ($SUBNET.1), nodes $(for n in $(seq 1 $NODES); do printf '%s=%s ' "$(node_ns "$n")" "$(node_ip "$n")"; done)"
}

net_down() {
  local ns pid
  for ns in "$HUB" $(for n in $(seq 1 $NODES); do node_ns "$n"; done); do
    [[ -e /run/netns/$ns ]] || continue
    # Nothing may outlive its namespace (the stack stops its own first; this is the backstop).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
}

isolate() {
  local n=$1 other ns
  ns=$(node_ns "$n")
  for other in $(seq 1 $NODES); do
    ((other == n)) && continue
    ip netns exec "$ns" iptables -w -I INPUT -s "$(node_ip "$other")" -j DROP
    ip netns exec "$ns" iptables -w -I OUTPUT -d "$(node_ip "$other")" -j DROP
  done
  log "node $n isolated from the other nodes (clients still reach it)"
}

heal() {
  local ns
  ns=$(node_ns "$1")
  ip netns exec "$ns" iptables -w -F INPUT
  ip netns exec "$ns" iptables -w -F OUTPUT
  log "node $1 reachable again"
}

run() {
  (($# > 0)) || die "usage: $0 run CMD..."
  cluster_env
  "$REPO_DIR/stack/stack.sh" jars  # on the host, where Maven Central is reachable
  local rc=0
  # The stack's own pids stop it (Kafka nodes, PostgreSQL), then the namespaces go - also when
  # setting them up fails half-way.
  trap '[[ -e /run/netns/$HUB ]] && { in_hub "$REPO_DIR/stack/stack.sh" down >&2 || true; }; net_down' EXIT
  net_up
  in_hub "$REPO_DIR/stack/stack.sh" up
  in_hub "$@" || rc=$?
  return $rc
}

cmd=${1:-}; shift || true
case $cmd in
  run)     run "$@" ;;
  isolate) isolate "${1:?node}" ;;
  heal)    heal "${1:?node}" ;;
  down)    cluster_env; [[ -e /run/netns/$HUB ]] && { in_hub "$REPO_DIR/stack/stack.sh" down || true; }; net_down ;;
  env)     cluster_env; env | grep -E '^(STACK_DIR|KAFKA_BROKERS|KAFKA_NODE_HOSTS|KAFKA_NODE_EXEC|KAFKA_BOOTSTRAP_SERVERS|IOT_CLUSTER_)=' ;;
  *)       die "usage: $0 run CMD... | isolate N | heal N | down | env" ;;
esac
