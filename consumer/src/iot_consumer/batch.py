"""Turning one poll's records into one write: COPY rows, a summary, dead letters and new positions.

This is the per-message hot path. Records the native decoder already turned into rows arrive as
one :class:`~iot_consumer.decoding.NativeRows` per take (COPY text + compact values); every
other record gets one validation and one formatted line here, as on the Python path. Either
way, every valid reading also goes into the batch's :class:`~iot_consumer.summary.BatchSummary`
(rollup buckets, per-sensor ranges, alert inputs, days): ``iot_fastpath.Summary`` when the poll
was decoded natively, :class:`~iot_consumer.summary.PythonSummary` otherwise. What the batch
holds is the same kind of object either way; nothing after this module asks which decoder ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from iot_common.logging import get_logger
from iot_common.schema import InvalidReading, ReadingLimits, ValidReading, validate_reading
from iot_consumer.decoding import BatchDeadLetter, NativeRows, expand, fastpath
from iot_consumer.summary import BatchSummary, PythonSummary, from_micros, to_micros

EPOCH_DAY = date(1970, 1, 1)

log = get_logger(__name__)

MAX_STORED_PAYLOAD = 64 * 1024
MAX_STORED_KEY = 1024
# Each UTC day a batch touches costs locks in its transaction (that day's partitions of sensores
# and both rollups, and their indexes) and perhaps a CREATE TABLE: a device with a dead clock can
# stamp every reading with another day (3,000 days in one transaction ran PostgreSQL out of lock
# memory). Days outside the recent window (yesterday .. the days created ahead) are therefore
# bounded per batch; a batch that would touch more stops its partition at that record, and the
# partition is read again from there (``Batch.cuts``).
MAX_OLD_DAYS_PER_BATCH = 8
RECENT_DAYS_BEHIND = 1
RECENT_DAYS_AHEAD = 2


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
    # A dead letter that stands for a whole record batch (decoding.BatchDeadLetter): the batch's
    # last offset; None for one message.
    last_offset: int | None = None

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
    # Every valid reading of the batch, summarised for rollups and alerts (summary.py).
    summary: BatchSummary = field(default_factory=PythonSummary)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    positions: list[PositionUpdate] = field(default_factory=list)
    days: set[date] = field(default_factory=set)
    consumed: int = 0
    # Rows that carry fields beyond the four known ones (kept in sensores.extras).
    with_extras: int = 0
    # Per partition: the timestamp of its last reading by offset (end-to-end latency sample).
    last_by_offset: dict[int, datetime] = field(default_factory=dict)
    # Native path: the rows' COPY text per take, or their COPY BINARY rows (native_binary).
    native_copy: list[bytes] = field(default_factory=list)
    native_rows: int = 0
    native_binary: bool = False
    # Native path: the same batch built by the Python path (to find a row PostgreSQL refuses).
    rebuild: Callable[[], Batch] | None = None
    # Partition → offset of its first record left out (the day budget ran out): read again from there.
    cuts: dict[int, int] = field(default_factory=dict)
    # Set by the sink under --on-duplicate drop: rows not stored (sensor and timestamp already were).
    duplicates_dropped: int = 0

    @property
    def rows(self) -> int:
        return len(self.copy_lines) + self.native_rows

    def copy_payload(self) -> bytes:
        """Every row in COPY text (``sink.COPY_SQL``)."""
        assert not self.native_binary, "binary native rows: binary_payload() and python_copy_payload()"
        python_rows = self.python_copy_payload()
        if not self.native_copy:
            return python_rows
        return b"".join([*self.native_copy, python_rows])

    def python_copy_payload(self) -> bytes:
        """The Python path's rows in COPY text."""
        return "".join(self.copy_lines).encode()

    def binary_payload(self) -> bytes:
        """The native rows as one COPY BINARY stream (``sink.COPY_BINARY_SQL``)."""
        assert self.native_binary, "text native rows: copy_payload()"
        return b"".join([COPY_BINARY_HEADER, *self.native_copy, COPY_BINARY_TRAILER])

    def add_reading(self, reading: ValidReading, partition: int, offset: int, record: Any = None) -> None:
        """One valid reading as a row of the batch: its COPY line, its summary entry, its day."""
        stamp = reading.timestamp
        self.copy_lines.append(copy_line(reading, partition, offset))
        self.sources.append(record)
        self.summary.add_reading(
            partition, offset, reading.sensor_id, to_micros(stamp), reading.temperatura, reading.umidade
        )
        self.days.add(stamp.date())
        if reading.extras is not None:
            self.with_extras += 1

    def reject_rows(self, rejected: list[tuple[int, str]]) -> None:
        """Move rows PostgreSQL refused from the COPY buffer (and the summary) to the dead letters."""
        # Rows are probed one by one on the Python path only (``rebuild`` gives that batch).
        assert isinstance(self.summary, PythonSummary), "reject rows of a rebuilt batch"
        assert not self.native_rows, "reject rows of a rebuilt batch"
        refused: set[tuple[int, int]] = set()
        for index, detail in sorted(rejected, reverse=True):
            record = self.sources.pop(index)
            del self.copy_lines[index]
            refused.add((record.partition, record.offset))
            self.dead_letters.append(
                _dead_letter(record.topic, record.partition, record, "rejected_by_database", detail)
            )
        self.summary = self.summary.without(refused)


# PostgreSQL's COPY BINARY stream: signature, flags (none), header extension length (0); and
# the end marker (a field count of -1). The rows between are iot_fastpath's (copy_binary.h).
COPY_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_BINARY_TRAILER = b"\xff\xff"


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


# Kafka timestamps a dead letter can store (timestamptz ends in year 294276, Python's datetime in 9999).
MAX_KAFKA_TIMESTAMP_MS = (
    int((datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1000
)


def _dead_letter(topic: str, partition: int, record: Any, reason: str, detail: str) -> DeadLetter:
    stamp = record.timestamp
    kafka_ms = stamp if stamp is not None and 0 <= stamp <= MAX_KAFKA_TIMESTAMP_MS else None
    return DeadLetter(topic, partition, record.offset, kafka_ms, record.key, record.value, reason, detail)


def _batch_dead_letter(letter: BatchDeadLetter, start: int) -> DeadLetter:
    """A whole batch's dead letter, for its offsets from ``start`` on: a fetch that began inside
    the batch (its first records written before the limit was lowered) must not claim those again."""
    stamp = letter.timestamp
    kafka_ms = stamp if stamp is not None and 0 <= stamp <= MAX_KAFKA_TIMESTAMP_MS else None
    return DeadLetter(
        letter.topic, letter.partition, max(letter.first_offset, start), kafka_ms, None, letter.value,
        letter.reason, letter.detail, last_offset=letter.offset,
    )  # fmt: skip


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
    limits = limits.at(now)
    native = fastpath is not None and _has_native_rows(records_by_partition)
    if native:
        assert fastpath is not None
        by_partition = {tp: list(records) for tp, records in records_by_partition.items()}
        if _stale_native_rows(by_partition, position):
            # Rows before the position (a stale fetch after a seek): the Python path skips them one by one.
            return build_batch(expand(by_partition), stored, position, limits, now)
        batch.summary = fastpath.Summary()
        batch.rebuild = lambda: build_batch(expand(by_partition), stored, position, limits, now)
        records_by_partition = by_partition
    # The Python path cuts a partition at the first record over the day budget as it goes; the
    # native path learns its days from the summary afterwards, and is rebuilt if over.
    budget = DayBudget(now.date(), cut=not native)
    for tp, records in records_by_partition.items():
        start = position.get(tp.partition)
        if start is not None:
            _add_partition(batch, tp, records, start, stored.get(tp.partition), limits, now, budget)
    if native:
        batch.days.update(EPOCH_DAY + timedelta(days=day) for day in batch.summary.days())
        if budget.exceeded_by(batch.days):
            # A dead clock's days: the Python path cuts the batch at the first record over the budget.
            return build_batch(expand(by_partition), stored, position, limits, now)
    return batch


class DayBudget:
    """The days one batch may touch: the recent ones freely, :data:`MAX_OLD_DAYS_PER_BATCH` others."""

    def __init__(self, today: date, cut: bool = True) -> None:
        self.recent = {today + timedelta(days=d) for d in range(-RECENT_DAYS_BEHIND, RECENT_DAYS_AHEAD + 1)}
        self.cut = cut  # False: every day is allowed while adding (checked afterwards, ``exceeded_by``)

    def allows(self, days: set[date], day: date) -> bool:
        """``day`` may join a batch that touches ``days``."""
        return not self.cut or day in days or day in self.recent or len(days - self.recent) < MAX_OLD_DAYS_PER_BATCH

    def exceeded_by(self, days: set[date]) -> bool:
        return len(days - self.recent) > MAX_OLD_DAYS_PER_BATCH


def _add_partition(
    batch: Batch,
    tp: Any,
    records: Iterable[Any],
    start: int,
    stored: int | None,
    limits: ReadingLimits,
    now: datetime,
    budget: DayBudget,
) -> None:
    """One partition's records into ``batch`` (records before ``start`` are skipped; on the
    Python path, the partition stops at a record whose day the budget has no room for)."""
    partition = tp.partition
    days = batch.days
    add = batch.add_reading
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
        if type(record) is BatchDeadLetter:  # a whole batch too large to decompress
            last_offset = offset
            batch.consumed += 1
            batch.dead_letters.append(_batch_dead_letter(record, start))
            continue
        reading = _judge(record, tp.topic, partition, limits, now)
        if type(reading) is DeadLetter:
            last_offset = offset
            batch.consumed += 1
            batch.dead_letters.append(reading)
            continue
        assert type(reading) is ValidReading
        stamp = reading.timestamp
        day = stamp.date()
        if not budget.allows(days, day):
            batch.cuts[partition] = offset
            break
        last_offset = offset  # a native take lists the item with its last record last (decoding.NativeTake)
        batch.consumed += 1
        add(reading, partition, offset, record)
        if offset > last_valid:
            last_valid = offset
            last_stamp = stamp
    if last_offset >= 0:
        batch.positions.append(PositionUpdate(partition, stored, last_offset + 1))
        if last_stamp is not None:
            batch.last_by_offset[partition] = last_stamp


def _judge(record: Any, topic: str, partition: int, limits: ReadingLimits, now: datetime) -> ValidReading | DeadLetter:
    """The record as a valid reading, or as the dead letter that says why it is not one."""
    try:
        return validate_reading(record.value, limits, now)
    except InvalidReading as exc:
        return _dead_letter(topic, partition, record, exc.reason.value, exc.detail)
    except Exception as exc:  # noqa: BLE001 - a validator bug must not turn one message into a crash loop
        log.error("validator_error", partition=partition, offset=record.offset, error=repr(exc))
        return _dead_letter(topic, partition, record, "validator_error", repr(exc))


def _add_native_rows(batch: Batch, native: NativeRows, partition: int) -> Any:
    rows = native.rows
    batch.summary.add(rows, partition)  # type: ignore[attr-defined]  # an iot_fastpath.Summary (build_batch)
    if batch.native_copy and rows.binary != batch.native_binary:
        raise AssertionError("one batch's native rows in two COPY formats")
    batch.native_binary = rows.binary
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
