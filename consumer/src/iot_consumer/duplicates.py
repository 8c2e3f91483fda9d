"""Re-sent readings: what the consumer does with a (sensor, timestamp) it has already stored.

Gateways and firmware re-send after a reconnect: the same sensor and timestamp arrive again at a
new Kafka offset (with the same values, or not). Exactly-once delivery stores each *Kafka record*
once, so by default (``keep``) a re-sent reading is a second row and the rollups count both -
each stored row exactly once. With ``drop``, a reading whose sensor and timestamp are already in
``sensores`` (or earlier in the same batch) is not stored, and the rollups count only the rows
that were: the batch is COPYed into a staging table and moved on by one ``INSERT … SELECT …
WHERE NOT EXISTS`` (an index probe per row on ``sensores_sensor_time_idx``), whose inserted
rows feed the rollups. docs/RELIABILITY.md gives the measured cost and why ``keep`` is the
default.

A sensor's readings share a partition (the key is the sensor id), and one replica owns a
partition at a time, so the check sees every earlier copy. A producer that spreads one sensor
over partitions could race two copies stamped with the same instant into two replicas' open
transactions; both would be stored.
"""

from __future__ import annotations

import io
from enum import StrEnum

import psycopg2.extensions

from iot_consumer.rollups import COLUMNS as ROLLUP_COLUMNS
from iot_consumer.rollups import STAGE_SQL, add_stage_to_rollups


class DuplicatePolicy(StrEnum):
    """CONSUMER_ON_DUPLICATE: what a reading already stored (same sensor and timestamp) becomes."""

    KEEP = "keep"
    DROP = "drop"


READING_COLUMNS = 'sensor_id, "timestamp", temperatura, umidade, kafka_partition, kafka_offset, extras'
_READING_STAGE = """CREATE TEMP TABLE IF NOT EXISTS reading_stage (
    sensor_id uuid, "timestamp" timestamptz, temperatura double precision, umidade double precision,
    kafka_partition integer, kafka_offset bigint, extras jsonb) ON COMMIT DELETE ROWS"""
# The first copy of each (sensor, timestamp) in Kafka order, when sensores has none yet; those rows
# are inserted and become the minute buckets of the rollups (rollup_stage), in the same statement.
# (Aggregated from the CTE, not from RETURNING: the consumer's role may not read values back.)
_INSERT_NEW = f"""
    WITH fresh AS MATERIALIZED (
        SELECT DISTINCT ON (s.sensor_id, s."timestamp") s.*
        FROM reading_stage s
        WHERE NOT EXISTS (
            SELECT 1 FROM sensores x WHERE x.sensor_id = s.sensor_id AND x."timestamp" = s."timestamp")
        ORDER BY s.sensor_id, s."timestamp", s.kafka_partition, s.kafka_offset
    ), inserted AS (
        INSERT INTO sensores ({READING_COLUMNS}) SELECT {READING_COLUMNS} FROM fresh
    ), minutes AS (
        INSERT INTO rollup_stage ({ROLLUP_COLUMNS})
        SELECT sensor_id, date_trunc('minute', "timestamp", 'UTC'), count(*), sum(temperatura), min(temperatura),
               max(temperatura), sum(umidade), min(umidade), max(umidade)
        FROM fresh GROUP BY 1, 2
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM fresh), (SELECT count(*) FROM minutes)
"""


def insert_new_readings(cur: psycopg2.extensions.cursor, copy_payload: bytes, offered: int, slot: int) -> int:
    """Store the rows of ``copy_payload`` (``sink.COPY_SQL``'s text format) whose sensor and
    timestamp are new, with their rollups (fleet rows under ``slot``), in the caller's
    transaction; the number dropped."""
    cur.execute(_READING_STAGE)
    cur.execute(STAGE_SQL)
    cur.copy_expert(f"COPY reading_stage ({READING_COLUMNS}) FROM STDIN", io.BytesIO(copy_payload), size=1 << 20)
    cur.execute(_INSERT_NEW)
    row = cur.fetchone()
    inserted = int(row[0]) if row else 0
    if inserted:
        add_stage_to_rollups(cur, slot)  # empties rollup_stage (it holds nothing when none was new)
    cur.execute("DELETE FROM reading_stage")
    return offered - inserted
