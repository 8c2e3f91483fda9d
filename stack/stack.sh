#!/usr/bin/env bash
# Native local stack for iot-monitor: Apache Kafka 4.3.1 (KRaft, combined broker+controller
# nodes) from Maven Central jars, and a PostgreSQL server from the machine's packages. No Docker.
#
#   stack/stack.sh up     [kafka|postgres]   start (idempotent), create topic, role, database
#   stack/stack.sh down   [kafka|postgres]   stop; leaves no process behind
#   stack/stack.sh status                    what runs, where, and where its logs are
#   stack/stack.sh restart [kafka|postgres]
#   stack/stack.sh node   up|down|kill N     one Kafka node of a cluster: start, stop (SIGTERM), SIGKILL
#   stack/stack.sh jars                      resolve the Kafka jars only (from Maven Central, once)
#
# KAFKA_BROKERS=3 (make stack-up BROKERS=3) runs three nodes, as production does: replication
# factor 3 and min.insync.replicas 2 for the topics and the internal topics. Node N listens on
# KAFKA_PORT + 10*(N-1) (9092, 9102, 9112; controllers 9093, ...; SASL_SSL 9095, ...) on its
# entry of KAFKA_NODE_HOSTS (default localhost), and runs under KAFKA_NODE_EXEC with {node}
# replaced by N (the three-broker chaos test puts each node in its own network namespace; the
# prefix must exec the command in place, as `ip netns exec` does: the pid file holds its pid).
# Unset, KAFKA_BROKERS is the number of nodes this stack's cluster already has (status, node).
# The default stays one node with replication factor 1.
#
# Everything lives under $STACK_DIR (default: <repo>/.stack). Settings come from the
# environment with the same names the services read (KAFKA_*, POSTGRES_*).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=$(realpath -m "${STACK_DIR:-$REPO_DIR/.stack}")
KAFKA_VERSION=4.3.1
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_SASL_PORT=${KAFKA_SASL_PORT:-9095}
STACK_SCRAM_USER=${STACK_SCRAM_USER:-iot}
KAFKA_TOPIC=${KAFKA_TOPIC:-iot_sensores}
KAFKA_PARTITIONS=${KAFKA_PARTITIONS:-6}
KAFKA_ALERTS_TOPIC=${KAFKA_ALERTS_TOPIC:-iot_alertas}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}
# Unset: as many nodes as this stack's cluster has (node-N directories), else one.
if [[ -z ${KAFKA_BROKERS:-} ]]; then
  KAFKA_BROKERS=0
  [[ -d $STACK_DIR/kafka ]] && KAFKA_BROKERS=$(find "$STACK_DIR/kafka" -maxdepth 1 -name 'node-[1-9]' -type d | wc -l)
  ((KAFKA_BROKERS > 0)) || KAFKA_BROKERS=1
fi
KAFKA_NODE_HOSTS=${KAFKA_NODE_HOSTS:-}
KAFKA_NODE_EXEC=${KAFKA_NODE_EXEC:-}
POSTGRES_PORT=${POSTGRES_PORT:-5432}
POSTGRES_DB=${POSTGRES_DB:-iot}
POSTGRES_USER=${POSTGRES_USER:-iot}
# The passwords (owner, service roles, SCRAM user, dashboard sign-in) are generated once per
# checkout into $STACK_SECRETS by scripts/dev-secrets.sh - none is committed; a variable already
# set in the environment wins. Use them in a shell with: set -a; . .stack/secrets.env; set +a
STACK_SECRETS=$STACK_DIR/secrets.env

KAFKA_HOME=$STACK_DIR/kafka
# The jars may be shared between stacks (a test stack reuses the main one's; a stamp keeps them current).
KAFKA_LIBS=${KAFKA_LIBS:-$KAFKA_HOME/libs}
KAFKA_LOGS=$KAFKA_HOME/logs
KAFKA_TLS=$KAFKA_HOME/tls
PG_HOME=$STACK_DIR/postgres

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=../scripts/lib/env-file.sh
. "$REPO_DIR/scripts/lib/env-file.sh"
load_secrets() {
  "$REPO_DIR/scripts/dev-secrets.sh" "$STACK_SECRETS"
  export_missing_from "$STACK_SECRETS"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- Kafka
require_java() {
  command -v java >/dev/null || die "Java 17+ is required for Kafka: apt-get install openjdk-17-jre-headless"
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
  [[ ${major%%.*} -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+, found Java $major: apt-get install openjdk-17-jre-headless"
}

kafka_classpath() {
  # The jars are resolved once; a stamp of the pom says whether they are still current.
  local stamp
  stamp=$(sha256sum "$REPO_DIR/stack/kafka/pom.xml" | cut -c1-16)
  if [[ -f $KAFKA_LIBS/.stamp && $(cat "$KAFKA_LIBS/.stamp") == "$stamp" ]]; then return; fi
  command -v mvn >/dev/null || die "Maven is required to fetch Kafka $KAFKA_VERSION from Maven Central: apt-get install maven"
  log "resolving Kafka $KAFKA_VERSION jars from Maven Central (cached in ~/.m2 afterwards)"
  rm -rf "$KAFKA_LIBS"
  mvn -q -B -f "$REPO_DIR/stack/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >&2 \
    || die "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (is Maven Central reachable?)"
  echo "$stamp" >"$KAFKA_LIBS/.stamp"
}

kafka_tool() {
  # Runs one Kafka command-line tool (StorageTool, TopicCommand, ...) on the stack's classpath.
  java -Xmx256m -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$REPO_DIR/stack/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$KAFKA_LOGS/tools" "$@"
}

# ---- the nodes: one (the default, in $KAFKA_HOME as it always was) or a cluster of N
[[ $KAFKA_BROKERS =~ ^[1-9]$ ]] || die "KAFKA_BROKERS must be a number of nodes from 1 to 9, not '$KAFKA_BROKERS'"
read -r -a NODE_HOSTS <<<"$KAFKA_NODE_HOSTS"
if ((${#NODE_HOSTS[@]} > 0 && ${#NODE_HOSTS[@]} != KAFKA_BROKERS)); then
  die "KAFKA_NODE_HOSTS lists ${#NODE_HOSTS[@]} hosts for $KAFKA_BROKERS nodes"
fi
# Replication as production runs it once there are three nodes: RF 3, min ISR 2 (acks=all then
# survives one node down); with two, RF 2 and min ISR 1; with one, RF 1.
KAFKA_REPLICATION=$((KAFKA_BROKERS < 3 ? KAFKA_BROKERS : 3))
KAFKA_MIN_ISR=$((KAFKA_REPLICATION > 1 ? KAFKA_REPLICATION - 1 : 1))

nodes() { seq 1 "$KAFKA_BROKERS"; }
node_host() { echo "${NODE_HOSTS[$(($1 - 1))]:-localhost}"; }
node_port() { echo $((KAFKA_PORT + 10 * ($1 - 1))); }
node_controller_port() { echo $((KAFKA_CONTROLLER_PORT + 10 * ($1 - 1))); }
node_sasl_port() { echo $((KAFKA_SASL_PORT + 10 * ($1 - 1))); }
node_home() { if ((KAFKA_BROKERS == 1)); then echo "$KAFKA_HOME"; else echo "$KAFKA_HOME/node-$1"; fi; }
node_pidfile() { echo "$(node_home "$1")/kafka.pid"; }
node_logs() { if ((KAFKA_BROKERS == 1)); then echo "$KAFKA_LOGS"; else echo "$(node_home "$1")/logs"; fi; }
node_open() { (exec 3<>"/dev/tcp/$(node_host "$1")/$(node_port "$1")") 2>/dev/null; }
bootstrap() {
  local n out=()
  for n in $(nodes); do out+=("$(node_host "$n"):$(node_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}
any_node_open() { local n; for n in $(nodes); do node_open "$n" && return 0; done; return 1; }
# The bootstrap of a node that answers (the tools need one that is up).
live_bootstrap() {
  local n
  for n in $(nodes); do node_open "$n" && { echo "$(node_host "$n"):$(node_port "$n")"; return; }; done
  bootstrap
}

kafka_tls() {
  # A private CA and a broker certificate for localhost, for the SASL_SSL listener.
  [[ -f $KAFKA_TLS/broker-keystore.pem && -f $KAFKA_TLS/ca.pem ]] && return
  command -v openssl >/dev/null || die "openssl is required for the SASL_SSL listener: apt-get install openssl"
  mkdir -p "$KAFKA_TLS"
  local san="DNS:localhost,IP:127.0.0.1" host
  for host in "${NODE_HOSTS[@]}"; do
    if [[ $host =~ ^[0-9.]+$ ]]; then san+=",IP:$host"; elif [[ $host != localhost ]]; then san+=",DNS:$host"; fi
  done
  (
    umask 077  # the CA's and the broker's private keys
    cd "$KAFKA_TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=iot-monitor local CA" \
      -keyout ca.key -out ca.pem >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key -out broker.csr >/dev/null 2>&1
    printf 'subjectAltName=%s\n' "$san" >san.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.ext -out broker.pem >/dev/null 2>&1
    openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.pk8
    cat broker.pk8 broker.pem ca.pem >broker-keystore.pem
    chmod 0644 ca.pem  # what clients trust
  ) || die "could not create TLS material in $KAFKA_TLS"
  log "TLS material for the SASL_SSL listener in $KAFKA_TLS (clients trust ca.pem)"
}

kafka_scram_user() {
  # SCRAM credentials live in the cluster metadata; (re)setting them is idempotent.
  # The password reaches the tool in a 0600 file, not in its argv (which anyone may read in ps).
  local config=$KAFKA_HOME/scram.properties
  # (In a file the value has no brackets: --add-config-file reads a properties file.)
  (umask 077 && printf 'SCRAM-SHA-512=iterations=4096,password=%s\n' "$STACK_SCRAM_PASSWORD" >"$config")
  kafka_tool kafka.admin.ConfigCommand --bootstrap-server "$(live_bootstrap)" --alter \
    --add-config-file "$config" --entity-type users --entity-name "$STACK_SCRAM_USER" >/dev/null \
    2>/dev/null || { rm -f "$config"; die "could not create SCRAM user $STACK_SCRAM_USER (the tool's message would show the password)"; }
  rm -f "$config"
  log "SASL_SSL listener on $(node_host 1):$KAFKA_SASL_PORT (SCRAM-SHA-512 user $STACK_SCRAM_USER, CA $KAFKA_TLS/ca.pem)"
}

kafka_cluster_id() {
  # One id for every node of the cluster, kept beside them.
  local file=$KAFKA_HOME/cluster-id-$KAFKA_BROKERS
  [[ -s $file ]] || kafka_tool kafka.tools.StorageTool random-uuid >"$file"
  cat "$file"
}

node_config() {  # node_config N: render node N's server.properties
  local n=$1 voters="" v home
  home=$(node_home "$n")
  for v in $(nodes); do voters+="${voters:+,}$v@$(node_host "$v"):$(node_controller_port "$v")"; done
  sed -e "s|@NODE_ID@|$n|g" -e "s|@HOST@|$(node_host "$n")|g" -e "s|@VOTERS@|$voters|g" \
      -e "s|@KAFKA_PORT@|$(node_port "$n")|g" -e "s|@CONTROLLER_PORT@|$(node_controller_port "$n")|g" \
      -e "s|@KAFKA_SASL_PORT@|$(node_sasl_port "$n")|g" -e "s|@TLS_DIR@|$KAFKA_TLS|g" \
      -e "s|@DATA_DIR@|$home/data|g" -e "s|@PARTITIONS@|$KAFKA_PARTITIONS|g" \
      -e "s|@REPLICATION@|$KAFKA_REPLICATION|g" -e "s|@MIN_ISR@|$KAFKA_MIN_ISR|g" \
      "$REPO_DIR/stack/kafka/server.properties.template" >"$home/server.properties"
}

node_start() {  # node_start N: launch node N unless it runs (does not wait for it)
  local n=$1 home logs pidfile
  home=$(node_home "$n"); logs=$(node_logs "$n"); pidfile=$(node_pidfile "$n")
  mkdir -p "$home/data" "$logs"
  if pid_alive "$pidfile"; then return; fi
  if node_open "$n"; then
    local other
    for other in "$KAFKA_HOME/kafka.pid" "$KAFKA_HOME"/node-*/kafka.pid; do
      if [[ $other != "$pidfile" ]] && pid_alive "$other"; then
        die "this stack's Kafka already runs with another number of nodes ($other): make stack-down, then KAFKA_BROKERS=$KAFKA_BROKERS (make stack-up BROKERS=$KAFKA_BROKERS)"
      fi
    done
    die "port $(node_host "$n"):$(node_port "$n") is taken by another process (not this stack's Kafka); set KAFKA_PORT"
  fi
  node_config "$n"
  if [[ ! -f $home/data/meta.properties ]]; then
    log "formatting KRaft storage of node $n in $home/data"
    kafka_tool kafka.tools.StorageTool format --cluster-id "$(kafka_cluster_id)" \
      --config "$home/server.properties" --ignore-formatted >&2
  fi
  log "starting Kafka $KAFKA_VERSION (KRaft) node $n on $(node_host "$n"):$(node_port "$n"), logs in $logs"
  local prefix=()
  [[ -n $KAFKA_NODE_EXEC ]] && read -r -a prefix <<<"${KAFKA_NODE_EXEC//\{node\}/$n}"
  # setsid: the broker outlives this script and is not killed by the caller's Ctrl-C.
  # shellcheck disable=SC2086  # the heap options are words
  setsid nohup "${prefix[@]}" java $KAFKA_HEAP_OPTS -XX:+UseG1GC -cp "$KAFKA_LIBS/*" \
    -Dlog4j2.configurationFile="$REPO_DIR/stack/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$logs" kafka.Kafka "$home/server.properties" \
    >"$logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

node_wait() {  # node_wait N: until node N accepts clients (a cluster's node waits for its quorum)
  local n=$1 waited=0 pidfile logs
  pidfile=$(node_pidfile "$n"); logs=$(node_logs "$n")
  until node_open "$n"; do
    pid_alive "$pidfile" || die "Kafka node $n exited during start; see $logs/server.log and $logs/stdout.log"
    ((waited++ < 360)) || die "Kafka node $n did not open $(node_host "$n"):$(node_port "$n") within 180 s; see $logs/server.log"
    sleep 0.5
  done
}

kafka_up() {
  require_java
  mkdir -p "$KAFKA_HOME" "$KAFKA_LOGS"
  kafka_classpath
  kafka_tls
  local n
  # Every node first, then the wait: a cluster's node serves only once a quorum of voters runs.
  for n in $(nodes); do
    if pid_alive "$(node_pidfile "$n")"; then
      log "kafka node $n already running (pid $(cat "$(node_pidfile "$n")")) on $(node_host "$n"):$(node_port "$n")"
    else
      node_start "$n"
    fi
  done
  for n in $(nodes); do node_wait "$n"; done
  kafka_ensure_topic "$KAFKA_TOPIC"
  kafka_ensure_topic "$KAFKA_ALERTS_TOPIC"
  kafka_scram_user
  ((KAFKA_BROKERS == 1)) || log "cluster of $KAFKA_BROKERS nodes: KAFKA_BOOTSTRAP_SERVERS=$(bootstrap) (replication factor $KAFKA_REPLICATION, min.insync.replicas $KAFKA_MIN_ISR)"
}

kafka_ensure_topic() {
  local topic=$1 attempt out
  for attempt in $(seq 1 30); do
    if out=$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(live_bootstrap)" \
        --create --if-not-exists --topic "$topic" --partitions "$KAFKA_PARTITIONS" \
        --replication-factor "$KAFKA_REPLICATION" 2>&1); then
      break
    fi
    ((attempt < 30)) || die "could not create topic $topic: $out"
    sleep 1
  done
  local partitions
  partitions=$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(live_bootstrap)" \
    --describe --topic "$topic" 2>/dev/null | grep -o 'PartitionCount: [0-9]*' | grep -o '[0-9]*' || true)
  if [[ -n $partitions && $partitions -lt $KAFKA_PARTITIONS ]]; then
    log "topic $topic has $partitions partitions; raising to $KAFKA_PARTITIONS"
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(live_bootstrap)" \
      --alter --topic "$topic" --partitions "$KAFKA_PARTITIONS" >&2
    partitions=$KAFKA_PARTITIONS
  fi
  log "topic $topic ready ($partitions partitions, replication factor $KAFKA_REPLICATION)"
}

stop_pid() {
  # SIGTERM, wait for a clean exit, SIGKILL as a last resort.
  local pidfile=$1 name=$2 pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop within 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
}

kafka_down() {
  # Every node this stack runs, whatever KAFKA_BROKERS says now; a cluster's nodes stop together
  # (one by one, the last would wait for a quorum that left before it).
  local pidfile
  for pidfile in "$KAFKA_HOME/kafka.pid" "$KAFKA_HOME"/node-*/kafka.pid; do
    [[ -f $pidfile ]] && stop_pid "$pidfile" "kafka $(basename "$(dirname "$pidfile")")" &
  done
  wait
}

node_command() {  # node up|down|kill N
  local action=${1:-} n=${2:-}
  [[ $n =~ ^[1-9]$ ]] && ((n <= KAFKA_BROKERS)) || die "usage: stack/stack.sh node up|down|kill N (1..$KAFKA_BROKERS)"
  case $action in
    up)   require_java; kafka_classpath; kafka_tls; node_start "$n"; node_wait "$n" ;;
    down) stop_pid "$(node_pidfile "$n")" "kafka node $n" ;;
    kill) if pid_alive "$(node_pidfile "$n")"; then
            log "SIGKILL kafka node $n (pid $(cat "$(node_pidfile "$n")"))"
            kill -KILL "$(cat "$(node_pidfile "$n")")" || true
          fi
          rm -f "$(node_pidfile "$n")" ;;
    *)    die "usage: stack/stack.sh node up|down|kill N" ;;
  esac
}

# ---------------------------------------------------------------- PostgreSQL
pg_bindir() {
  local dir
  for dir in ${POSTGRES_BINDIR:-} $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
    [[ -x $dir/postgres && -x $dir/initdb && -x $dir/pg_ctl ]] && { echo "$dir"; return; }
  done
  die "no PostgreSQL server found (looked in /usr/lib/postgresql/*/bin): apt-get install postgresql"
}

# PostgreSQL refuses to run as root; as root we run it as the 'postgres' user that
# Debian's package creates, from / (it may not be allowed into the working directory).
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

pg_data_home() {
  # The data directory must be reachable by the user that runs the server. If the
  # repository's path is not (e.g. /root/...), keep the data in /var/tmp and link to it.
  if [[ -L $PG_HOME || -d $PG_HOME ]]; then return; fi
  mkdir -p "$STACK_DIR"
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "user 'postgres' is missing: apt-get install postgresql"
    if runuser -u postgres -- test -x "$STACK_DIR"; then
      mkdir -p "$PG_HOME"
    else
      local elsewhere
      elsewhere=/var/tmp/iot-monitor-pg-$(echo "$STACK_DIR" | sha256sum | cut -c1-8)
      mkdir -p "$elsewhere"
      ln -s "$elsewhere" "$PG_HOME"
    fi
    chown postgres: "$PG_HOME/"
  else
    mkdir -p "$PG_HOME"
  fi
}

# The server and its tools run as 'postgres', which may not traverse the checkout: give them
# the real path behind the link pg_data_home made.
resolve_pg_home() {
  if [[ -e $PG_HOME ]]; then PG_HOME=$(readlink -f "$PG_HOME"); fi
}

pg_up() {
  local bin
  bin=$(pg_bindir)
  pg_data_home
  resolve_pg_home
  local data=$PG_HOME/data
  if [[ ! -f $data/PG_VERSION ]]; then
    log "initialising PostgreSQL $("$bin/postgres" --version | awk '{print $3}') cluster in $data"
    as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$PG_HOME/initdb.log" 2>&1 \
      || die "initdb failed; see $PG_HOME/initdb.log"
    cat >>"$data/postgresql.conf" <<EOF
# iot-monitor local stack
listen_addresses = 'localhost'
unix_socket_directories = '$PG_HOME'
timezone = 'UTC'
log_timezone = 'UTC'
shared_buffers = 256MB
max_wal_size = 4GB
max_connections = 200
EOF
  fi
  sed -i "s/^#\?port = .*/port = $POSTGRES_PORT/" "$data/postgresql.conf"
  # bench.compare times every pipeline's rows by their transactions' commits (a cluster made
  # before this line gets it too; a running server takes it at its next restart).
  grep -q '^track_commit_timestamp' "$data/postgresql.conf" \
    || echo "track_commit_timestamp = on  # iot-monitor: bench.compare's clock" >>"$data/postgresql.conf"
  if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "postgres already running on localhost:$POSTGRES_PORT"
  else
    port_open "$POSTGRES_PORT" && die "port $POSTGRES_PORT is taken by another process; set POSTGRES_PORT"
    log "starting PostgreSQL on localhost:$POSTGRES_PORT, log in $PG_HOME/postgres.log"
    as_pg "$bin/pg_ctl" -D "$data" -l "$PG_HOME/postgres.log" -w -t 60 start >/dev/null \
      || die "PostgreSQL did not start; see $PG_HOME/postgres.log"
  fi
  pg_ensure_database
}

pg_superuser_psql() {
  as_pg "$(pg_bindir)/psql" -h "$PG_HOME" -p "$POSTGRES_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"
}

pg_ensure_database() {
  # Passwords reach psql in its environment (\getenv), never in its argv.
  pg_superuser_psql -d postgres -v role="$POSTGRES_USER" >/dev/null <<'SQL'
\getenv pw POSTGRES_PASSWORD
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'role') \gexec
SQL
  if [[ $POSTGRES_DB != "$POSTGRES_USER" ]]; then
    pg_superuser_psql -d postgres -v db="$POSTGRES_DB" -v role="$POSTGRES_USER" >/dev/null <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
  fi
  # Least-privilege login roles for the services (the schema's owner grants them on migrate).
  pg_superuser_psql -d postgres >/dev/null <<'SQL'
\getenv consumer_pw CONSUMER_DB_PASSWORD
\getenv exporter_pw EXPORTER_DB_PASSWORD
\getenv dashboard_pw DASHBOARD_DB_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', r) FROM unnest(ARRAY['iot_consumer', 'iot_exporter', 'iot_dashboard']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
SELECT format('ALTER ROLE iot_consumer LOGIN PASSWORD %L', :'consumer_pw') \gexec
SELECT format('ALTER ROLE iot_exporter LOGIN PASSWORD %L', :'exporter_pw') \gexec
SELECT format('ALTER ROLE iot_dashboard LOGIN PASSWORD %L', :'dashboard_pw') \gexec
-- The dashboard only reads: even a bug in it cannot write.
ALTER ROLE iot_dashboard SET default_transaction_read_only = on;
SQL
  # The owner manages the service roles (`iot-consumer migrate` sets their passwords), as the
  # chart's migration Job does on a cluster: CREATEROLE, and on PostgreSQL 16+ (where a
  # CREATEROLE role manages only roles it administers) ADMIN on these three - without
  # inheriting their privileges or becoming them (the owner's own privileges stay its own).
  pg_superuser_psql -d postgres -v role="$POSTGRES_USER" >/dev/null <<'SQL'
SELECT format('ALTER ROLE %I CREATEROLE', :'role') \gexec
SELECT format('GRANT iot_consumer, iot_exporter, iot_dashboard TO %I WITH ADMIN TRUE, INHERIT FALSE, SET FALSE', :'role')
WHERE current_setting('server_version_num')::int >= 160000 \gexec
SQL
  # For psql by hand: PGPASSFILE=.stack/pgpass psql -h localhost -U iot -d iot (no password typed or in argv).
  (
    umask 077
    {
      printf 'localhost:%s:*:%s:%s\n' "$POSTGRES_PORT" "$POSTGRES_USER" "$POSTGRES_PASSWORD"
      printf 'localhost:%s:*:iot_consumer:%s\n' "$POSTGRES_PORT" "$CONSUMER_DB_PASSWORD"
      printf 'localhost:%s:*:iot_exporter:%s\n' "$POSTGRES_PORT" "$EXPORTER_DB_PASSWORD"
      printf 'localhost:%s:*:iot_dashboard:%s\n' "$POSTGRES_PORT" "$DASHBOARD_DB_PASSWORD"
    } >"$STACK_DIR/pgpass.tmp"
    chmod 0600 "$STACK_DIR/pgpass.tmp"
    mv "$STACK_DIR/pgpass.tmp" "$STACK_DIR/pgpass"
  )
  log "database $POSTGRES_DB ready (owner role $POSTGRES_USER; service roles iot_consumer, iot_exporter, iot_dashboard; passwords in $STACK_SECRETS, psql: PGPASSFILE=$STACK_DIR/pgpass)"
}

pg_down() {
  [[ -e $PG_HOME/data/PG_VERSION ]] || return 0
  local bin
  bin=$(pg_bindir)
  if as_pg "$bin/pg_ctl" -D "$PG_HOME/data" status >/dev/null 2>&1; then
    log "stopping postgres"
    as_pg "$bin/pg_ctl" -D "$PG_HOME/data" -m fast -w -t 60 stop >/dev/null
  fi
}

# ---------------------------------------------------------------- status
status() {
  local rc=0 n
  for n in $(nodes); do
    if pid_alive "$(node_pidfile "$n")" && node_open "$n"; then
      echo "kafka     running  pid $(cat "$(node_pidfile "$n")")  $(node_host "$n"):$(node_port "$n")  logs $(node_logs "$n")/server.log"
    else
      echo "kafka     stopped  $(node_host "$n"):$(node_port "$n")"; rc=1
    fi
  done
  if [[ -e $PG_HOME/data/PG_VERSION ]] && as_pg "$(pg_bindir)/pg_ctl" -D "$PG_HOME/data" status >/dev/null 2>&1; then
    echo "postgres  running  pid $(head -1 "$PG_HOME/data/postmaster.pid")  localhost:$POSTGRES_PORT  db $POSTGRES_DB  log $PG_HOME/postgres.log"
  else
    echo "postgres  stopped"; rc=1
  fi
  if any_node_open; then
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(live_bootstrap)" \
      --describe --topic "$KAFKA_TOPIC" 2>/dev/null | head -1 | sed 's/^/topic     /' || true
  fi
  return $rc
}

components() { if [[ $# -eq 0 ]]; then echo "postgres kafka"; else echo "$@"; fi; }

cmd=${1:-}; shift || true
case $cmd in
  up)      load_secrets; for c in $(components "$@"); do case $c in kafka) kafka_up ;; postgres) pg_up ;; *) die "unknown component '$c' (kafka|postgres)";; esac; done ;;
  down)    resolve_pg_home; for c in $(components "$@"); do case $c in kafka) kafka_down ;; postgres) pg_down ;; *) die "unknown component '$c' (kafka|postgres)";; esac; done ;;
  restart) "$0" down "$@"; "$0" up "$@" ;;
  status)  resolve_pg_home; status ;;
  node)    node_command "$@" ;;
  jars)    require_java; mkdir -p "$KAFKA_LOGS"; kafka_classpath ;;
  *)       die "usage: stack/stack.sh up|down|restart [kafka|postgres] | status | node up|down|kill N" ;;
esac
