"""Turning one poll's records into one write: a COPY buffer, dead letters and new positions.

This is the per-message hot path: one validation and one formatted line per record, no
per-row objects beyond what validation returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import orjson

from iot_common.logging import get_logger
from iot_common.schema import InvalidReading, ReadingLimits, ValidReading, validate_reading
from iot_consumer.alerts.engine import Reading

log = get_logger(__name__)

MAX_STORED_PAYLOAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    kafka_timestamp_ms: int | None
    key: bytes | None
    payload: bytes | None
    reason: str
    detail: str

    @property
    def payload_size(self) -> int:
        return len(self.payload) if self.payload is not None else 0


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    """Partition ``partition`` moves from ``expected`` (None: no stored row yet) to ``next_offset``."""

    partition: int
    expected: int | None
    next_offset: int


@dataclass(slots=True)
class Batch:
    copy_lines: list[str] = field(default_factory=list)
    # The Kafka record behind each COPY line, to dead-letter a row PostgreSQL refuses.
    sources: list[Any] = field(default_factory=list)
    # The parsed reading behind each COPY line, for the alert rules: (partition, sensor, time, temp, hum).
    readings: list[Reading] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    positions: list[PositionUpdate] = field(default_factory=list)
    days: set[date] = field(default_factory=set)
    consumed: int = 0
    # Rows that carry fields beyond the four known ones (kept in sensores.extras).
    with_extras: int = 0
    # Per partition: the timestamp of its last reading by offset (end-to-end latency sample).
    last_by_offset: dict[int, datetime] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.copy_lines)

    def copy_payload(self) -> bytes:
        return "".join(self.copy_lines).encode()

    def reject_rows(self, rejected: list[tuple[int, str]]) -> None:
        """Move rows PostgreSQL refused from the COPY buffer to the dead letters."""
        for index, detail in sorted(rejected, reverse=True):
            record = self.sources.pop(index)
            del self.copy_lines[index]
            del self.readings[index]
            self.dead_letters.append(
                _dead_letter(record.topic, record.partition, record, "rejected_by_database", detail)
            )


def copy_text(value: str) -> str:
    """``value`` as a field of COPY's text format (JSON text never holds a raw tab or newline,
    but its escapes hold backslashes, which COPY would read as its own)."""
    return value.replace("\\", "\\\\")


def copy_line(reading: ValidReading, partition: int, offset: int) -> str:
    """One row of ``sensores`` in COPY's text format (the column order of ``sink.COPY_SQL``)."""
    extras = "\\N" if reading.extras is None else copy_text(orjson.dumps(reading.extras).decode())
    return (
        f"{reading.sensor_id}\t{reading.timestamp.isoformat()}\t{reading.temperatura!r}\t{reading.umidade!r}"
        f"\t{partition}\t{offset}\t{extras}\n"
    )


def _dead_letter(topic: str, partition: int, record: Any, reason: str, detail: str) -> DeadLetter:
    kafka_ms = record.timestamp if record.timestamp is not None and record.timestamp >= 0 else None
    return DeadLetter(topic, partition, record.offset, kafka_ms, record.key, record.value, reason, detail)


def build_batch(
    records_by_partition: Mapping[Any, Iterable[Any]],
    stored: Mapping[int, int | None],
    position: Mapping[int, int],
    limits: ReadingLimits,
) -> Batch:
    """Validate records and lay them out for one transaction.

    ``position`` is where each partition's consumption stands (the offset the next record
    must have at least); ``stored`` is what ``consumer_positions`` holds for it (the fence).
    Records of partitions not in ``position`` (positions not loaded yet) and records before
    the position (stale fetches after a seek) are skipped; they will be read again.
    """
    batch = Batch()
    now = datetime.now(UTC)
    append = batch.copy_lines.append
    remember = batch.sources.append
    keep = batch.readings.append
    days = batch.days
    for tp, records in records_by_partition.items():
        partition = tp.partition
        start = position.get(partition)
        if start is None:
            continue
        last_offset = -1
        last_stamp: datetime | None = None
        for record in records:
            offset = record.offset
            if offset < start:
                continue
            last_offset = offset
            batch.consumed += 1
            try:
                reading = validate_reading(record.value, limits, now)
            except InvalidReading as exc:
                batch.dead_letters.append(_dead_letter(tp.topic, partition, record, exc.reason.value, exc.detail))
                continue
            except Exception as exc:  # noqa: BLE001 - a validator bug must not turn one message into a crash loop
                log.error("validator_error", partition=partition, offset=offset, error=repr(exc))
                batch.dead_letters.append(_dead_letter(tp.topic, partition, record, "validator_error", repr(exc)))
                continue
            stamp = reading.timestamp
            last_stamp = stamp
            days.add(stamp.date())
            if reading.extras is not None:
                batch.with_extras += 1
            append(copy_line(reading, partition, offset))
            remember(record)
            keep((partition, reading.sensor_id, stamp, reading.temperatura, reading.umidade))
        if last_offset >= 0:
            batch.positions.append(PositionUpdate(partition, stored.get(partition), last_offset + 1))
            if last_stamp is not None:
                batch.last_by_offset[partition] = last_stamp
    return batch
