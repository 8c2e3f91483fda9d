"""Turning one poll's records into one write: a COPY buffer, dead letters and new positions.

This is the per-message hot path. Records the native decoder already turned into rows arrive as
one :class:`~iot_consumer.decoding.NativeRows` per take (COPY text + compact values, summarised
per batch in C by an ``iot_fastpath.Summary``: rollup buckets, per-sensor ranges, alert inputs);
every other record gets one validation and one formatted line here, as on the Python path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from iot_common.logging import get_logger
from iot_common.schema import InvalidReading, ReadingLimits, ValidReading, validate_reading
from iot_consumer.alerts.engine import Reading
from iot_consumer.decoding import NativeRows, expand, fastpath, from_micros, to_micros

EPOCH_DAY = date(1970, 1, 1)

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
    # Native path: the rows' COPY text per take, and the batch's iot_fastpath.Summary (which then
    # holds every valid reading of the batch, for rollups and alerts; ``readings`` does not).
    native_copy: list[bytes] = field(default_factory=list)
    native_rows: int = 0
    summary: Any = None
    # Native path: the same batch built by the Python path (to find a row PostgreSQL refuses).
    rebuild: Callable[[], Batch] | None = None

    @property
    def rows(self) -> int:
        return len(self.copy_lines) + self.native_rows

    def copy_payload(self) -> bytes:
        python_rows = "".join(self.copy_lines).encode()
        if not self.native_copy:
            return python_rows
        return b"".join([*self.native_copy, python_rows])

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


def _has_native_rows(records_by_partition: Mapping[Any, Iterable[Any]]) -> bool:
    return any(type(record) is NativeRows for records in records_by_partition.values() for record in records)


def build_batch(
    records_by_partition: Mapping[Any, Iterable[Any]],
    stored: Mapping[int, int | None],
    position: Mapping[int, int],
    limits: ReadingLimits,
    now: datetime | None = None,
) -> Batch:
    """Validate records and lay them out for one transaction.

    ``position`` is where each partition's consumption stands (the offset the next record
    must have at least); ``stored`` is what ``consumer_positions`` holds for it (the fence).
    Records of partitions not in ``position`` (positions not loaded yet) and records before
    the position (stale fetches after a seek) are skipped; they will be read again. ``now``
    bounds future timestamps (default: the clock).
    """
    batch = Batch()
    now = now or datetime.now(UTC)
    days = batch.days
    summary = None
    if fastpath is not None and _has_native_rows(records_by_partition):
        by_partition = {tp: list(records) for tp, records in records_by_partition.items()}
        if _stale_native_rows(by_partition, position):
            # Rows before the position (a stale fetch after a seek): the Python path skips them one by one.
            return build_batch(expand(by_partition), stored, position, limits, now)
        summary = batch.summary = fastpath.Summary()
        batch.rebuild = lambda: build_batch(expand(by_partition), stored, position, limits, now)
        records_by_partition = by_partition
    for tp, records in records_by_partition.items():
        start = position.get(tp.partition)
        if start is not None:
            _add_partition(batch, tp, records, start, stored.get(tp.partition), limits, now)
    if summary is not None:
        days.update(EPOCH_DAY + timedelta(days=day) for day in summary.days())
    return batch


def _add_partition(
    batch: Batch, tp: Any, records: Iterable[Any], start: int, stored: int | None, limits: ReadingLimits, now: datetime
) -> None:
    """One partition's records into ``batch`` (records before ``start`` are skipped)."""
    partition = tp.partition
    append = batch.copy_lines.append
    remember = batch.sources.append
    keep = batch.readings.append
    days = batch.days
    summary = batch.summary
    last_offset = -1  # of the last record consumed (the new position follows it)
    last_valid = -1  # of the valid reading with the highest offset, and its timestamp (latency sample)
    last_stamp: datetime | None = None
    for record in records:
        if type(record) is NativeRows:
            rows = _add_native_rows(batch, record, partition)
            last_offset = rows.last_offset
            if rows.last_offset > last_valid:
                last_valid, last_stamp = rows.last_offset, from_micros(rows.last_stamp_us)
            continue
        offset = record.offset
        if offset < start:
            continue
        last_offset = offset  # a native take lists the item with its last record last (decoding.NativeTake)
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
        days.add(stamp.date())
        if reading.extras is not None:
            batch.with_extras += 1
        append(copy_line(reading, partition, offset))
        remember(record)
        keep((partition, reading.sensor_id, stamp, reading.temperatura, reading.umidade))
        if summary is not None:
            summary.add_reading(
                partition, offset, reading.sensor_id, to_micros(stamp), reading.temperatura, reading.umidade
            )
        if offset > last_valid:
            last_valid = offset
            last_stamp = stamp
    if last_offset >= 0:
        batch.positions.append(PositionUpdate(partition, stored, last_offset + 1))
        if last_stamp is not None:
            batch.last_by_offset[partition] = last_stamp


def _add_native_rows(batch: Batch, native: NativeRows, partition: int) -> Any:
    rows = native.rows
    batch.summary.add(rows, partition)
    batch.native_copy.append(rows.copy)
    batch.native_rows += rows.count
    batch.consumed += rows.count
    return rows


def _stale_native_rows(records_by_partition: Mapping[Any, list[Any]], position: Mapping[int, int]) -> bool:
    for tp, records in records_by_partition.items():
        start = position.get(tp.partition)
        for record in records:
            if type(record) is NativeRows and start is not None and record.rows.first_offset < start:
                return True
    return False
