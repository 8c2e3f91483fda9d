#!/usr/bin/env bash
# kafka-run-class.sh CLASS ARGS...: Kafka's classpath, heap from KAFKA_HEAP_OPTS, log4j2 config.
exec java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m} -XX:+UseG1GC \
  -Dkafka.logs.dir=/opt/kafka/logs \
  -Dlog4j2.configurationFile="${KAFKA_LOG4J_CONFIG:-/opt/kafka/config/tools-log4j2.yaml}" \
  -cp "/opt/kafka/libs/*" "$@"
