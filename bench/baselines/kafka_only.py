"""Limit: kafka-python reading a topic with no database at all (the client's own ceiling).

usage: python -m bench.baselines.kafka_only TOPIC MESSAGES
"""

from __future__ import annotations

import json
import sys

from kafka import KafkaConsumer, TopicPartition

from bench.common import STACK


def main() -> None:
    topic, wanted = sys.argv[1], int(sys.argv[2])
    consumer = KafkaConsumer(
        bootstrap_servers=STACK.bootstrap,
        enable_auto_commit=False,
        metrics_enabled=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        max_poll_records=10_000,
    )
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen = 0
    while seen < wanted:
        for records in consumer.poll(timeout_ms=1000).values():
            seen += len(records)
    consumer.close()
    print(json.dumps({"messages": seen}))


if __name__ == "__main__":
    main()
