"""Reconciliation: does PostgreSQL hold every Kafka message exactly once?

For each partition of the topic, compare Kafka's offsets with the stored position and with
what the tables hold (rows + dead letters, by Kafka offset):

- ``missing``: offsets below the stored position that are neither a row nor a dead letter;
- ``duplicates``: offsets stored more than once;
- ``ahead``: offsets at or beyond the stored position (written without moving the position);
- ``lag``: messages in Kafka not consumed yet (end offset − stored position).

A replayed dead letter counts once, as its row (``iot-consumer dead-letters replay``).
A healthy pipeline shows 0 missing, 0 duplicates, 0 ahead; lag falls to 0 when idle.
Assumes one topic per database (``sensores`` has no topic column).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass

import psycopg2.extensions
from kafka import KafkaConsumer, TopicPartition

from iot_common.settings import KafkaSettings
from iot_consumer.positions import topic_id_of


@dataclass
class PartitionReport:
    partition: int
    kafka_start: int
    kafka_end: int
    stored: int | None
    first_offset: int | None
    written: int
    missing: int
    duplicates: int
    ahead: int

    @property
    def lag(self) -> int:
        return self.kafka_end - (self.stored if self.stored is not None else self.kafka_start)

    def as_dict(self) -> dict[str, int | None]:
        return {**asdict(self), "lag": self.lag}


@dataclass
class Reconciliation:
    topic: str
    group: str
    partitions: list[PartitionReport]

    @property
    def missing(self) -> int:
        return sum(p.missing for p in self.partitions)

    @property
    def duplicates(self) -> int:
        return sum(p.duplicates for p in self.partitions)

    @property
    def ahead(self) -> int:
        return sum(p.ahead for p in self.partitions)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    def consistent(self, expect_caught_up: bool = False) -> bool:
        return (
            self.missing == 0 and self.duplicates == 0 and self.ahead == 0 and (not expect_caught_up or self.lag == 0)
        )


def kafka_log(settings: KafkaSettings) -> tuple[dict[int, tuple[int, int]], uuid.UUID | None]:
    """partition → (beginning offset, end offset), and the topic's id."""
    consumer = KafkaConsumer(**settings.client_options(), enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(settings.topic, p) for p in sorted(consumer.partitions_for_topic(settings.topic) or ())
        ]
        if not partitions:
            raise ValueError(f"topic {settings.topic!r} not found")
        starts = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        bounds = {tp.partition: (int(starts[tp]), int(ends[tp])) for tp in partitions}
        return bounds, topic_id_of(consumer, settings.topic)
    finally:
        consumer.close()


def kafka_offsets(settings: KafkaSettings) -> dict[int, tuple[int, int]]:
    """partition → (beginning offset, end offset)."""
    return kafka_log(settings)[0]


def reconcile(conn: psycopg2.extensions.connection, settings: KafkaSettings, group: str) -> Reconciliation:
    offsets = kafka_offsets(settings)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT kafka_partition, next_offset FROM consumer_positions WHERE consumer_group = %s AND topic = %s",
            (group, settings.topic),
        )
        stored = {int(p): int(o) for p, o in cur.fetchall()}
        cur.execute(
            """WITH written AS (
                   SELECT kafka_partition AS p, kafka_offset AS o FROM sensores
                   UNION ALL
                   -- a dead letter for a whole batch accounts for each of its offsets
                   SELECT kafka_partition, generate_series(kafka_offset, coalesce(kafka_last_offset, kafka_offset))
                   FROM dead_letters
                   WHERE consumer_group = %(g)s AND topic = %(t)s AND replayed_at IS NULL)
               SELECT w.p, count(*), count(DISTINCT w.o), min(w.o),
                      count(*) FILTER (WHERE w.o >= coalesce(cp.next_offset, 0))
               FROM written w
               LEFT JOIN consumer_positions cp
                 ON cp.consumer_group = %(g)s AND cp.topic = %(t)s AND cp.kafka_partition = w.p
               GROUP BY w.p""",
            {"g": group, "t": settings.topic},
        )
        written = {
            int(p): (int(total), int(distinct), int(first), int(ahead))
            for p, total, distinct, first, ahead in cur.fetchall()
        }
    conn.rollback()
    reports = []
    for partition, (start, end) in sorted(offsets.items()):
        total, distinct, first, ahead = written.get(partition, (0, 0, None, 0))
        position = stored.get(partition)
        origin = min(first, start) if first is not None else start
        expected = max(0, position - origin) if position is not None else 0
        reports.append(
            PartitionReport(
                partition=partition,
                kafka_start=start,
                kafka_end=end,
                stored=position,
                first_offset=first,
                written=distinct,
                missing=max(0, expected - (distinct - ahead)),
                duplicates=total - distinct,
                ahead=ahead,
            )
        )
    return Reconciliation(settings.topic, group, reports)
