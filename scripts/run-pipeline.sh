#!/usr/bin/env bash
# Runs the pipeline in the foreground: iot-consumer and iot-producer against the local stack.
# Ctrl-C (or SIGTERM) stops both cleanly: the producer flushes, the consumer commits its batch.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PRODUCER_METRICS_PORT=${PRODUCER_METRICS_PORT:-8001}
CONSUMER_METRICS_PORT=${CONSUMER_METRICS_PORT:-8002}
POSTGRES_USER=${POSTGRES_USER:-iot}
POSTGRES_DB=${POSTGRES_DB:-iot}

cat <<INFO
──────────────────────────────────────────────────────────────────────────────
 iot-monitor pipeline: iot-producer → Kafka localhost:9092 (iot_sensores) → iot-consumer → PostgreSQL
 rows arriving:   PGPASSWORD=iot psql -h localhost -U $POSTGRES_USER -d $POSTGRES_DB -c 'SELECT count(*), max("timestamp") FROM sensores'
 dead letters:    PGPASSWORD=iot psql -h localhost -U $POSTGRES_USER -d $POSTGRES_DB -c 'SELECT reason, count(*) FROM dead_letters GROUP BY 1'
 metrics:         http://localhost:$PRODUCER_METRICS_PORT/metrics (producer)   http://localhost:$CONSUMER_METRICS_PORT/metrics (consumer)
 health:          http://localhost:$CONSUMER_METRICS_PORT/readyz
 alerts:          PGPASSWORD=iot psql -h localhost -U $POSTGRES_USER -d $POSTGRES_DB -c 'SELECT sensor_id, rule, opened_at, closed_at, peak_value FROM alertas ORDER BY opened_at DESC LIMIT 10'
 dashboard:       'make dashboard' in another terminal, then http://localhost:8501
 stack logs:      stack/stack.sh status
 Ctrl-C stops both services (the stack keeps running; 'make stack-down' stops it).
──────────────────────────────────────────────────────────────────────────────
INFO

pids=()
stop() {
  trap - INT TERM
  echo "stopping pipeline..." >&2
  kill -TERM "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
  exit 0
}
trap stop INT TERM

# The schema's owner migrates; the consumer then runs as its own least-privilege role (the
# local stack's development password, unless CONSUMER_DB_PASSWORD says otherwise).
$BIN/iot-consumer migrate >/dev/null || exit 1
POSTGRES_USER=iot_consumer POSTGRES_PASSWORD=${CONSUMER_DB_PASSWORD:-iot_consumer} \
  METRICS_PORT=$CONSUMER_METRICS_PORT $BIN/iot-consumer run &
pids+=($!)
METRICS_PORT=$PRODUCER_METRICS_PORT $BIN/iot-producer "$@" &
pids+=($!)

# If either service exits on its own (bad config, ...), stop the other and report it.
wait -n "${pids[@]}"
rc=$?
echo "a service exited (code $rc); stopping the pipeline" >&2
kill -TERM "${pids[@]}" 2>/dev/null
wait "${pids[@]}" 2>/dev/null
exit $rc
