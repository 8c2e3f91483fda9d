"""Appending natively encoded readings to kafka-python's record accumulator, many at a time.

kafka-python's ``send()`` spends ~35 µs of Python per record (argument checks, partitioner,
locks, a record built field by field, a future and two callbacks per record). The producer's
fast path encodes the readings of one partition in one C call (``iot_producer_fastpath``) and
appends them to that partition's open batch the way ``RecordAccumulator.append`` appends one
record: under the partition's lock, into the last batch while it is open and has room, else into
a new batch. From there everything is kafka-python's own: the sender drains the batch when it
is full or ``linger_ms`` has passed, sets the producer id, epoch and sequence (idempotence),
compresses, writes the CRC, retries, and expires it after ``delivery_timeout_ms``.

The outcome is reported per append (one callback per partition and chunk), not per record, and
a batch holds either natively appended readings or ``send()`` records, never both. A batch the
broker refuses as too large (a topic whose ``max.message.bytes`` is below ``batch_size``) is
split by kafka-python into smaller ones that only carry ``send()``'s per-record futures over:
the appender wraps that split so each part reports the readings it holds.

This reaches into kafka-python's private attributes, pinned with kafka-python 3.0.12 in
common/pyproject.toml; tests/unit/test_kafka_hooks.py fails loudly if one moves.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import IllegalStateError
from kafka.partitioner.default import murmur2 as python_murmur2
from kafka.producer.producer_batch import ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import TopicPartition

# (readings in the append, seconds since it was appended, the error or None)
AppendDone = Callable[[int, float, BaseException | None], None]

EncodeRecords = Callable[
    [list[bytes], list[int], list[float], list[float], int, int, int, int, bool], tuple[bytes, int, int]
]

encode_records: EncodeRecords | None
native_murmur2: Callable[[bytes], int] | None
try:
    from iot_producer_fastpath import encode_records
    from iot_producer_fastpath import murmur2 as native_murmur2
except ImportError:  # no C compiler where it was installed: ReadingPublisher uses send()
    encode_records = native_murmur2 = None

# Kafka's murmur2, as the default partitioner hashes keys (kafka-python's copy is pure Python).
key_hash: Callable[[bytes], int] = native_murmur2 if native_murmur2 is not None else python_murmur2


def native_available() -> bool:
    """True when the native encoder (iot_producer_fastpath) is importable."""
    return encode_records is not None


class Unencodable(ValueError):
    """A reading has no exact native form; ``appended`` readings before it went in."""

    def __init__(self, appended: int) -> None:
        super().__init__(f"reading {appended} has no exact native JSON form")
        self.appended = appended


class PartitionReadings:
    """One partition's readings waiting to be appended, column by column (what the encoder takes)."""

    __slots__ = ("humidities", "keys", "stamps_us", "temperatures")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.stamps_us: list[int] = []
        self.temperatures: list[float] = []
        self.humidities: list[float] = []

    def add(self, key: bytes, stamp_us: int, temperature: float, humidity: float) -> None:
        self.keys.append(key)
        self.stamps_us.append(stamp_us)
        self.temperatures.append(temperature)
        self.humidities.append(humidity)

    def __len__(self) -> int:
        return len(self.keys)

    def clear(self) -> None:
        self.keys.clear()
        self.stamps_us.clear()
        self.temperatures.clear()
        self.humidities.clear()


class RecordAppender:
    """Appends encoded readings to a KafkaProducer's accumulator and wakes its sender."""

    def __init__(self, producer: KafkaProducer) -> None:
        if encode_records is None:
            raise RuntimeError("iot_producer_fastpath is not installed")
        self._accumulator: Any = producer._accumulator
        self._sender: Any = producer._sender
        config = self._accumulator.config
        self._message_version: int = config["message_version"]
        self._compression: int = config["compression_attrs"]
        self._batch_size: int = config["batch_size"]
        # The batches this appender made (and so holds readings of), with whom to tell and since
        # when; kafka-python drops a batch once it is done, and the entry goes with it.
        self._native: weakref.WeakKeyDictionary[ProducerBatch, tuple[AppendDone, float]] = weakref.WeakKeyDictionary()
        self._split = self._accumulator.split_and_reenqueue
        self._accumulator.split_and_reenqueue = self._split_and_reenqueue

    def append(self, tp: TopicPartition, readings: PartitionReadings, on_done: AppendDone) -> None:
        """Append all of ``readings`` to ``tp``'s batches; ``on_done`` runs on kafka-python's I/O
        thread once per batch they went into, when the broker answered for it (or it expired).

        Raises :class:`Unencodable` when a reading has no exact native form: the readings from
        its chunk on were not appended (the caller sends those through ``send()``, after
        :meth:`close_open_batch`)."""
        accumulator = self._accumulator
        if accumulator._closed:
            raise IllegalStateError("RecordAccumulator is closed")
        total = len(readings)
        start = 0
        wake = False
        now = time.monotonic()
        accumulator._appends_in_progress.increment()
        try:
            with accumulator._tp_lock(tp):
                queue = accumulator._batches[tp]
                while start < total:
                    last = queue[-1] if queue else None
                    batch = last if last is not None and last in self._native and not last.records.is_full() else None
                    fresh = batch is None
                    if batch is None:
                        batch = self._new_batch(tp, now)
                    try:
                        count = encode_into(batch.records, readings, start, at_least_one=fresh)
                    except ValueError:
                        raise Unencodable(start) from None
                    if fresh:  # only now: an empty batch never reaches the queue
                        queue.append(batch)
                        accumulator._incomplete.add(batch)
                        self._native[batch] = (on_done, now)
                        wake = True
                    elif count == 0:  # the next reading does not fit: this batch is done
                        _close_off(batch)
                        continue
                    batch.last_append = now
                    batch.produce_future.add_callback(_report, on_done, count, now)
                    start += count
                wake = wake or len(queue) > 1 or queue[-1].records.is_full()
        finally:
            accumulator._appends_in_progress.decrement()
            if wake:
                self._sender.wakeup()

    def close_open_batch(self, tp: TopicPartition) -> None:
        """Let nothing more into ``tp``'s open native batch (before readings of it go through
        ``send()``, which would otherwise append to it: a batch stays of one kind)."""
        with self._accumulator._tp_lock(tp):
            queue = self._accumulator._batches[tp]
            if queue and queue[-1] in self._native:
                _close_off(queue[-1])

    def _new_batch(self, tp: TopicPartition, now: float) -> ProducerBatch:
        records = MemoryRecordsBuilder(self._message_version, self._compression, self._batch_size)
        return ProducerBatch(tp, records, now=now)

    def _split_and_reenqueue(self, batch: ProducerBatch, now: float | None = None) -> int:
        """kafka-python's split of a batch the broker found too large (its I/O thread), then, for
        a native batch, one callback on each part for the readings the part holds: the parts
        carry only send()'s per-record futures over, and the batch itself never completes."""
        native = self._native.pop(batch, None)
        parts: int = self._split(batch, now=now)
        if native is not None:
            on_done, appended = native
            tp = batch.topic_partition
            with self._accumulator._tp_lock(tp):
                for part in list(self._accumulator._batches[tp])[:parts]:  # they went in at the front
                    _close_off(part)  # its count is final: nothing more goes in
                    part.produce_future.add_callback(_report, on_done, part.record_count, appended)
        return parts


def _close_off(batch: ProducerBatch) -> None:
    """Mark an open batch full, for our appends (``is_full``) and for kafka-python's ``append``."""
    records: Any = batch.records
    records._batch_size = 0
    if records._builder is not None:
        records._builder._batch_size = 0


def encode_into(records: MemoryRecordsBuilder, readings: PartitionReadings, start: int, *, at_least_one: bool) -> int:
    """Encode readings from ``start`` into an open kafka-python batch builder, as many as its
    ``batch_size`` has room for by kafka-python's own rule (a record goes in if the batch stays
    within batch_size, and the first always does); returns how many went in."""
    assert encode_records is not None
    raw: Any = records
    builder: Any = raw._builder
    buffer: bytearray = builder._buffer
    first_timestamp = builder._first_timestamp
    if first_timestamp is None:
        first_timestamp = readings.stamps_us[start] // 1000
    encoded, count, max_timestamp = encode_records(
        readings.keys,
        readings.stamps_us,
        readings.temperatures,
        readings.humidities,
        start,
        first_timestamp,
        raw._next_offset,
        builder._batch_size - len(buffer),
        at_least_one,
    )
    if count:
        buffer += encoded
        if builder._first_timestamp is None:
            builder._first_timestamp = first_timestamp
            builder._max_timestamp = max_timestamp
        elif max_timestamp > builder._max_timestamp:
            builder._max_timestamp = max_timestamp
        builder._num_records += count
        raw._next_offset += count
        builder._last_offset = raw._next_offset - 1
    return int(count)


def _report(on_done: AppendDone, count: int, appended: float, result: tuple[int, int, Any]) -> None:
    """kafka-python completes a batch's future with (base offset, log append time, a function
    giving each record's error, or None when all were written)."""
    record_errors = result[2]
    on_done(count, time.monotonic() - appended, record_errors(0) if record_errors is not None else None)
