#!/usr/bin/env bash
KAFKA_LOG4J_CONFIG=/opt/kafka/config/log4j2.yaml exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$@"
