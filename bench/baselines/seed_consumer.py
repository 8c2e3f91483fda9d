"""The seed project's consumer, as users start: kafka-python, json.loads, one INSERT and one
COMMIT per message. A baseline for bench/consumer_bench.py, not product code.

usage: python -m bench.baselines.seed_consumer TOPIC DATABASE GROUP MAX_MESSAGES MAX_SECONDS
"""

from __future__ import annotations

import json
import sys
import time

import psycopg2
from kafka import KafkaConsumer

from bench.common import STACK

DDL = """CREATE TABLE IF NOT EXISTS sensores (
    sensor_id uuid NOT NULL, "timestamp" timestamptz NOT NULL,
    temperatura double precision NOT NULL, umidade double precision NOT NULL)"""


def main() -> None:
    topic, database, group, max_messages, max_seconds = sys.argv[1:6]
    conn = psycopg2.connect(
        host="localhost", port=STACK.postgres_port, user=STACK.pg_user, password=STACK.pg_password, dbname=database
    )
    with conn.cursor() as cur:
        cur.execute(DDL)
    conn.commit()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=STACK.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        value_deserializer=json.loads,
    )
    done, deadline = 0, time.monotonic() + float(max_seconds)
    cur = conn.cursor()
    for message in consumer:
        r = message.value
        cur.execute(
            'INSERT INTO sensores (sensor_id, "timestamp", temperatura, umidade) VALUES (%s, %s, %s, %s)',
            (r["sensor_id"], r["timestamp"], r["temperatura"], r["umidade"]),
        )
        conn.commit()
        done += 1
        if done >= int(max_messages) or time.monotonic() > deadline:
            break
    consumer.close()
    conn.close()
    print(json.dumps({"messages": done}))


if __name__ == "__main__":
    main()
