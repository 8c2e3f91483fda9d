"""The producer's native encoder writes exactly what kafka-python's send() path writes.

Differential: the same readings go into one kafka-python batch builder through its own
``append()`` (values from ``SensorReading.to_json()``) and into another through
``iot_producer.accumulator.encode_into`` (one C call for many readings); the closed batches must
be the same bytes, split at the same places by ``batch_size``, for every codec. The kafka-python
internals the appender writes to are pinned here too (kafka-python is pinned in
common/pyproject.toml).
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2 as python_murmur2
from kafka.producer.producer_batch import ProducerBatch
from kafka.producer.record_accumulator import RecordAccumulator
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from iot_common.schema import SensorReading
from iot_producer import accumulator
from iot_producer.accumulator import PartitionReadings, RecordAppender, Unencodable, encode_into, native_available
from iot_producer.simulation import SensorFleet, epoch_us, utc_from_us

if not native_available() and os.environ.get("IOT_REQUIRE_FASTPATH") == "1":
    pytest.fail("IOT_REQUIRE_FASTPATH=1 but iot_producer_fastpath does not import (make dev builds it)", pytrace=False)
pytestmark = pytest.mark.skipif(not native_available(), reason="iot_producer_fastpath is not built (make dev)")

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

instants = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)).map(
    lambda naive: naive.replace(tzinfo=UTC)
)
hundredths = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False).map(lambda x: round(x, 2))
any_floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e14, max_value=1e14)


def _readings(values: list[tuple[uuid.UUID, datetime, float, float]]) -> PartitionReadings:
    readings = PartitionReadings()
    for sensor_id, instant, temperature, humidity in values:
        readings.add(str(sensor_id).encode(), epoch_us(instant), temperature, humidity)
    return readings


def _value_of(sensor_id: uuid.UUID, instant: datetime, temperature: float, humidity: float) -> bytes:
    """The native encoder's JSON value for one reading (taken back out of its record)."""
    records = MemoryRecordsBuilder(2, 0, 1 << 20)
    assert encode_into(records, _readings([(sensor_id, instant, temperature, humidity)]), 0, at_least_one=True) == 1
    records.close()
    (record,) = list(next(iter(MemoryRecords(records.buffer()))))
    return bytes(record.value)


@settings(max_examples=400, deadline=None)
@given(st.uuids(), instants, hundredths, hundredths)
def test_the_value_is_byte_for_byte_sensor_reading_to_json(
    sensor_id: uuid.UUID, instant: datetime, temperature: float, humidity: float
) -> None:
    """Every UTC instant from year 1 to 9999 (with and without microseconds: isoformat drops a
    zero fraction) and every value in hundredths, as the simulation rounds them."""
    expected = SensorReading(sensor_id, instant, temperature, humidity).to_json()
    assert _value_of(sensor_id, instant, temperature, humidity) == expected


@settings(max_examples=300, deadline=None)
@given(any_floats, any_floats)
@example(0.0, 70368744177664.1)  # "%.2f" reads back as the same double: "…664.09", not shortest
def test_floats_of_any_precision_take_their_shortest_form_or_are_refused(temperature: float, humidity: float) -> None:
    """A value not in hundredths still gets repr's shortest round-trip form; one that form would
    print with an exponent (below 1e-4) is refused, never written differently."""
    sensor_id, instant = uuid.uuid4(), datetime(2026, 12, 3, 12, 0, 0, 5, tzinfo=UTC)
    expected = SensorReading(sensor_id, instant, temperature, humidity).to_json()
    if "e" in repr(temperature) + repr(humidity):
        with pytest.raises(ValueError, match="no exact native JSON form"):
            _value_of(sensor_id, instant, temperature, humidity)
    else:
        assert _value_of(sensor_id, instant, temperature, humidity) == expected


@pytest.mark.parametrize(
    ("key", "stamp_us", "temperature"),
    [
        (b'quote"d', 0, 20.0),
        (b"back\\slash", 0, 20.0),
        (b"new\nline", 0, 20.0),
        ("ü".encode(), 0, 20.0),
        (b"k" * 65, 0, 20.0),
        (b"ok", 0, math.nan),
        (b"ok", 0, math.inf),
        (b"ok", 0, 1e16),
        (b"ok", epoch_us(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) + 1, 20.0),
        (b"ok", -(2**63), 20.0),
        (b"ok", 2**70, 20.0),
        (b"ok", 0, 20),  # an int: orjson writes 20, not 20.0
    ],
)
def test_what_has_no_exact_native_form_is_refused_not_written(key: bytes, stamp_us: int, temperature: float) -> None:
    """A key that would need a JSON escape (or is not a sensor id's length), a float orjson
    would write otherwise, an int value, a year outside 1..9999 or past 64 bits: ValueError,
    and the publisher sends those through send() (tests/integration/test_producer.py)."""
    readings = PartitionReadings()
    readings.add(key, stamp_us, temperature, 50.0)
    with pytest.raises(ValueError, match="no exact native JSON form"):
        encode_into(MemoryRecordsBuilder(2, 0, 1 << 20), readings, 0, at_least_one=True)


def _kafka_python_batches(
    values: list[tuple[uuid.UUID, datetime, float, float]], codec: int, batch_size: int
) -> list[bytes]:
    batches, records = [], MemoryRecordsBuilder(2, codec, batch_size)
    for sensor_id, instant, temperature, humidity in values:
        value = SensorReading(sensor_id, instant, temperature, humidity).to_json()
        key, timestamp_ms = str(sensor_id).encode(), epoch_us(instant) // 1000
        if records.append(timestamp_ms, key, value) is None:
            batches.append(records)
            records = MemoryRecordsBuilder(2, codec, batch_size)
            assert records.append(timestamp_ms, key, value) is not None
    batches.append(records)
    return [_closed(records) for records in batches]


def _native_batches(values: list[tuple[uuid.UUID, datetime, float, float]], codec: int, batch_size: int) -> list[bytes]:
    readings, batches, start = _readings(values), [], 0
    records = MemoryRecordsBuilder(2, codec, batch_size)
    fresh = True
    while start < len(readings):
        count = encode_into(records, readings, start, at_least_one=fresh)
        start += count
        fresh = False
        if start < len(readings):
            batches.append(records)
            records, fresh = MemoryRecordsBuilder(2, codec, batch_size), True
    batches.append(records)
    return [_closed(records) for records in batches]


def _closed(records: MemoryRecordsBuilder) -> bytes:
    records.set_producer_state(4242, 7, 1000, False)  # what the sender does on drain (idempotence)
    records.close()
    return bytes(records.buffer())


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("batch_size", [1024, 64 * 1024])
def test_batches_are_the_bytes_kafka_pythons_own_append_builds(codec: str, batch_size: int) -> None:
    """2,000 simulated readings (clock steps back and forth by up to a second, so timestamp deltas
    go negative too): the same batches, the same split points, the same header (producer id,
    epoch, sequence, CRC); compressed ones decode to the same records."""
    fleet = SensorFleet(50, seed=7)
    base = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)
    values = []
    for k in range(2000):
        sensor = fleet.sensors[k % 50]
        instant = base + timedelta(microseconds=(k * 7919) % 2_000_000 - 1_000_000 + k * 500)
        reading = fleet.next_reading(sensor, instant)
        assert reading is not None
        values.append((reading.sensor_id, reading.timestamp, reading.temperatura, reading.umidade))
    ours, theirs = (
        _native_batches(values, CODECS[codec], batch_size),
        _kafka_python_batches(values, CODECS[codec], batch_size),
    )
    assert len(ours) == len(theirs) > (1 if batch_size == 1024 else 0)
    if codec == "none":
        assert ours == theirs
    for native, reference in zip(ours, theirs, strict=True):
        assert native[:12] == reference[:12]  # base offset, length
        ours_records = [(r.offset, r.timestamp, r.key, r.value) for b in MemoryRecords(native) for r in b]
        their_records = [(r.offset, r.timestamp, r.key, r.value) for b in MemoryRecords(reference) for r in b]
        assert ours_records == their_records
        batch = next(iter(MemoryRecords(native)))
        batch.validate_crc()
        assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (4242, 7, 1000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_murmur2_is_kafkas(key: bytes) -> None:
    """The native key hash gives the Java client's (and kafka-python's) partitions."""
    assert accumulator.key_hash(key) == python_murmur2(key)


def test_simulated_values_round_trip_through_microseconds() -> None:
    """next_values (the hot loop's) and next_reading (datetime in and out) are one simulation."""
    a, b = SensorFleet(3, seed=11), SensorFleet(3, seed=11)
    instant = datetime(2026, 12, 3, 23, 59, 59, 999999, tzinfo=UTC)
    for k in range(30):
        reading = a.next_reading(a.sensors[k % 3], instant)
        values = b.next_values(b.sensors[k % 3], epoch_us(instant))
        assert reading is not None
        assert values is not None
        assert (epoch_us(reading.timestamp), reading.temperatura, reading.umidade) == values
        assert utc_from_us(values[0]) == reading.timestamp


def test_kafka_python_internals_the_appender_writes_to_are_there() -> None:
    """iot_producer.accumulator appends to open batches the way RecordAccumulator.append does:
    through these private attributes of kafka-python 3.0.12. A new version must be re-read."""
    for name in ("_builder", "_next_offset", "_batch_size", "_closed"):
        assert name in MemoryRecordsBuilder.__slots__
    for name in ("_buffer", "_first_timestamp", "_max_timestamp", "_num_records", "_last_offset", "_batch_size"):
        assert name in DefaultRecordBatchBuilder.__slots__
    assert DefaultRecordBatchBuilder.HEADER_STRUCT.size == 61
    producer = KafkaProducer(bootstrap_servers="127.0.0.1:1", api_version=(2, 8, 0), enable_idempotence=True)
    try:
        acc = producer._accumulator
        assert isinstance(acc, RecordAccumulator)
        for name in ("_batches", "_incomplete", "_appends_in_progress", "_closed", "config"):
            assert hasattr(acc, name), name
        assert callable(acc._tp_lock)
        assert callable(producer._sender.wakeup)
        assert {"message_version", "compression_attrs", "batch_size"} <= set(acc.config)
        assert acc.config["message_version"] == 2
    finally:
        producer.close(timeout=1)


# ---------------------------------------------------------------- RecordAppender on a real accumulator
# A KafkaProducer with no broker: its accumulator and sender are real, nothing is ever drained, so
# the test drains, closes and completes batches itself, as the sender would.


@pytest.fixture
def producer() -> Iterator[KafkaProducer]:
    producer = KafkaProducer(
        bootstrap_servers="127.0.0.1:1",
        api_version=(2, 8),
        batch_size=2048,
        linger_ms=60_000,
        delivery_timeout_ms=600_000,
    )
    yield producer
    producer.close(timeout=0)


TP = TopicPartition("readings", 0)


def _simulated(count: int) -> list[tuple[uuid.UUID, datetime, float, float]]:
    fleet = SensorFleet(20, seed=3)
    base = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)
    values = []
    for k in range(count):
        reading = fleet.next_reading(fleet.sensors[k % 20], base + timedelta(milliseconds=k))
        assert reading is not None
        values.append((reading.sensor_id, reading.timestamp, reading.temperatura, reading.umidade))
    return values


def _drain(producer: KafkaProducer) -> list[ProducerBatch]:
    """Take every queued batch of TP and close it as the sender does on drain."""
    accumulator = producer._accumulator
    with accumulator._tp_lock(TP):
        batches = list(accumulator._batches[TP])
        accumulator._batches[TP].clear()
    for sequence, batch in enumerate(batches):
        batch.records.set_producer_state(4242, 7, sequence * 1000, False)
        batch.records.close()
    return batches


def _complete(producer: KafkaProducer, batch: ProducerBatch, error: KafkaError | None = None) -> None:
    """The broker's answer for a batch, handled as the sender handles it."""
    if error is None:
        batch.complete(0, -1)
    else:
        batch.complete_exceptionally(error, lambda _index: error)
    producer._accumulator.deallocate(batch)


class Outcomes:
    """What on_done was told, call by call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, BaseException | None]] = []

    def __call__(self, count: int, _latency_s: float, error: BaseException | None) -> None:
        self.calls.append((count, error))


@pytest.mark.parametrize("chunks", [[1] * 40, [7, 85, 1, 300, 207], [600]])
def test_chunks_fill_the_open_batch_and_roll_over_where_kafka_pythons_append_would(
    producer: KafkaProducer, chunks: list[int]
) -> None:
    """600 readings appended in chunks of any size (later chunks into the open batch): the
    batches are the bytes kafka-python's own append() builds from the same records, split at
    the same points, and each batch reports exactly the readings it holds once completed."""
    values = _simulated(sum(chunks))
    appender, outcomes, start = RecordAppender(producer), Outcomes(), 0
    for size in chunks:
        appender.append(TP, _readings(values[start : start + size]), outcomes)
        start += size
    batches = _drain(producer)
    reference = _kafka_python_batches(values, 0, 2048)
    ours = [bytes(b.records.buffer()) for b in batches]
    assert len(ours) == len(reference) > 1
    for sequence, (native, theirs) in enumerate(zip(ours, reference, strict=True)):
        theirs_batch = next(iter(MemoryRecords(theirs)))
        native_batch = next(iter(MemoryRecords(native)))
        assert native_batch.base_sequence == sequence * 1000
        assert [(r.offset, r.timestamp, r.key, r.value) for r in native_batch] == [
            (r.offset, r.timestamp, r.key, r.value) for r in theirs_batch
        ]
        assert native[61:] == theirs[61:]  # the records, byte for byte
    for index, batch in enumerate(batches):
        _complete(producer, batch, KafkaError("refused") if index % 2 else None)
    told = [count for count, error in outcomes.calls if error is None]
    failed = [count for count, error in outcomes.calls if error is not None]
    assert sum(told) + sum(failed) == len(values)
    assert sum(told) == sum(b.record_count for i, b in enumerate(batches) if i % 2 == 0)


def test_a_batch_the_broker_finds_too_large_is_split_and_each_part_reports_its_readings(
    producer: KafkaProducer,
) -> None:
    """MESSAGE_TOO_LARGE: kafka-python splits the batch into parts that carry only send()'s
    per-record futures; the appender's wrapper gives each part a callback for its readings, so
    every reading is still counted once (before, none of them ever was)."""
    appender, outcomes = RecordAppender(producer), Outcomes()
    appender.append(TP, _readings(_simulated(10)), outcomes)
    (batch,) = _drain(producer)
    assert producer._accumulator.split_and_reenqueue(batch) == 2
    producer._accumulator.deallocate(batch)  # as the sender does after a split
    parts = _drain(producer)
    assert [p.record_count for p in parts] == [5, 5]
    for part in parts:
        _complete(producer, part)
    assert outcomes.calls == [(5, None), (5, None)]


def test_after_an_unencodable_reading_the_open_batch_takes_no_send_records(producer: KafkaProducer) -> None:
    """A chunk with a NaN: Unencodable names how many readings went in before its failing call;
    close_open_batch then keeps send()'s records out of the native batch (a batch is of one kind:
    kafka-python's split matches futures to records by position)."""
    appender, outcomes = RecordAppender(producer), Outcomes()
    appender.append(TP, _readings(_simulated(3)), outcomes)
    bad = _readings(_simulated(2))
    bad.temperatures[1] = math.nan
    with pytest.raises(Unencodable) as raised:
        appender.append(TP, bad, outcomes)
    assert raised.value.appended == 0
    appender.close_open_batch(TP)
    producer._accumulator.append(TP, 0, b"k", b"{}", [])  # what send() does once it has metadata
    batches = _drain(producer)
    assert [b.record_count for b in batches] == [3, 1]
    for batch in batches:
        _complete(producer, batch)
