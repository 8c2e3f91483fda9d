"""The native decoder (iot_fastpath) gives exactly what the Python path gives.

The Python path - kafka-python's decoder + ``validate_reading`` - is the reference. The same
record batches go through both (``GuardedPartitionRecords`` vs ``NativePartitionRecords``,
then ``build_batch``), and everything the consumer writes must come out the same: the rows
(as PostgreSQL would parse them), the dead letters with their reasons, the new positions, the
days touched, the rollup buckets, the alert evaluation and where kafka-python's position moves.
Hypothesis generates readings in every form the validator knows (and bytes that are none);
a fuzz test mutates valid batches byte by byte.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import cramjam
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kafka import TopicPartition
from kafka import codec as kafka_codec
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c

from iot_common.schema import DEFAULT_LIMITS, ReadingLimits
from iot_consumer.alerts.engine import AlertEngine, AlertState, Evaluation
from iot_consumer.alerts.rules import RuleSet, SilenceRule, ThresholdRule
from iot_consumer.batch import MAX_OLD_DAYS_PER_BATCH, Batch, PositionUpdate, build_batch
from iot_consumer.decoding import (
    GuardedPartitionRecords,
    NativeDecoding,
    NativePartitionRecords,
    PartitionDecodeError,
    decoder_available,
    expand,
    fastpath,
    install_lenient_header_keys,
)
from iot_consumer.decompression import BatchTooLarge, decompress_records, install_bounded_decompression
from iot_consumer.readings import Reading
from iot_consumer.summary import BatchSummary, PythonSummary, from_micros, to_micros

if not decoder_available() and os.environ.get("IOT_REQUIRE_FASTPATH") == "1":
    pytest.fail("IOT_REQUIRE_FASTPATH=1 but iot_fastpath does not import (make dev builds it)", pytrace=False)
pytestmark = pytest.mark.skipif(not decoder_available(), reason="iot_fastpath is not built (make dev builds it)")

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TOPIC = "iot_sensores"
SENSORS = [str(uuid.UUID(int=n * 0x1234567890ABCDEF1234567 + 7)) for n in range(1, 6)]


# ---------------------------------------------------------------------- record batches
class RawHeaderKey(str):
    """A header key of any bytes: kafka-python's builder encodes keys with ``str.encode``, so this
    hands it the raw bytes (the wire allows any; kcat sends them)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawHeaderKey:
        key = super().__new__(cls, raw.hex())
        key.raw = raw
        return key

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


# Both paths read header keys of any bytes as the consumer does (decoding.install_lenient_header_keys).
install_lenient_header_keys()


@dataclass(frozen=True)
class Message:
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int = 1_764_300_000_000


def batches(messages: list[Message], per_batch: int, base_offset: int = 0, compression: int | list[int] = 0) -> bytes:
    """The messages as consecutive v2 record batches (what a fetch response carries); a list of
    codecs (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd) is used batch by batch, round and round."""
    out = b""
    offset = base_offset
    codecs = compression if isinstance(compression, list) else [compression]
    for number, start in enumerate(range(0, len(messages), per_batch)):
        codec = codecs[number % len(codecs)]
        builder = MemoryRecordsBuilder(magic=2, compression_type=codec, batch_size=1 << 30)
        for m in messages[start : start + per_batch]:
            builder.append(m.timestamp_ms, m.key, m.value, list(m.headers))
        builder.close()
        # the base offset is the broker's to set (outside the CRC)
        out += struct.pack(">q", offset) + bytes(builder.buffer())[8:]
        offset += len(messages[start : start + per_batch])
    return out


class Native(NativePartitionRecords):
    decoding = NativeDecoding(DEFAULT_LIMITS)


def take_all(records_class: type, buffer: bytes, fetch_offset: int, max_records: int, partition: int = 3) -> Any:
    """Drain one fetched partition as kafka-python's fetcher would (take until drained)."""
    tp = TopicPartition(TOPIC, partition)
    parts = records_class(fetch_offset, tp, MemoryRecords(buffer))
    taken: list[Any] = []
    counted = 0
    while parts:
        got = parts.take(max_records)
        assert len(got) <= max_records
        counted += len(got)
        taken.extend(got)
        if not got:
            break
    return tp, taken, counted, parts.next_fetch_offset


def native_bounds_at(now: datetime) -> Any:
    return lambda: NativeDecoding(DEFAULT_LIMITS).take_bounds(now)


# ---------------------------------------------------------------------- comparing results
def parse_copy_row(line: str) -> tuple[Any, ...]:
    """A sensores COPY row as PostgreSQL would read it (typed values, not text)."""
    sensor, stamp, t, h, partition, offset, extras = line.split("\t")
    return (
        uuid.UUID(sensor),
        datetime.fromisoformat(stamp),
        float(t),
        float(h),
        int(partition),
        int(offset),
        None if extras == "\\N" else json.loads(extras.replace("\\\\", "\\")),
    )


PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def parse_binary_rows(payload: bytes) -> list[tuple[Any, ...]]:
    """sensores rows in a COPY BINARY stream as PostgreSQL reads them (its documented format:
    signature, flags, extension, then per row a field count and length-prefixed fields, -1 at
    the end); the stream must hold nothing else."""
    assert payload[:11] == b"PGCOPY\n\xff\r\n\x00"
    assert struct.unpack_from(">ii", payload, 11) == (0, 0)
    pos, rows = 19, []
    while True:
        (count,) = struct.unpack_from(">h", payload, pos)
        pos += 2
        if count == -1:
            break
        assert count == 7
        fields: list[bytes | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", payload, pos)
            pos += 4
            fields.append(None if length == -1 else payload[pos : pos + length])
            pos += max(length, 0)
        assert all(f is not None for f in fields[:6]), "only extras may be NULL"
        sensor, stamp, t, h, partition, offset = (f or b"" for f in fields[:6])
        extras = fields[6]
        assert len(sensor) == 16
        rows.append(
            (
                uuid.UUID(bytes=sensor),
                PG_EPOCH + timedelta(microseconds=struct.unpack(">q", stamp)[0]),
                struct.unpack(">d", t)[0],
                struct.unpack(">d", h)[0],
                struct.unpack(">i", partition)[0],
                struct.unpack(">q", offset)[0],
                None if extras is None else json.loads(extras[1:]),
            )
        )
    assert pos == len(payload), "bytes after the end marker"
    return rows


def rows_of(batch: Batch) -> list[tuple[Any, ...]]:
    if batch.native_binary:
        python_text = batch.python_copy_payload().decode()
        rows = parse_binary_rows(batch.binary_payload()) + [parse_copy_row(line) for line in python_text.splitlines()]
        return sorted(rows, key=lambda r: r[5])
    text = batch.copy_payload().decode()
    return sorted((parse_copy_row(line) for line in text.splitlines()), key=lambda r: r[5])


def float_bits(rows: list[tuple[Any, ...]]) -> list[tuple[bytes, bytes]]:
    """Each row's two doubles as their IEEE bits (== would take -0.0 for 0.0)."""
    return [(struct.pack(">d", r[2]), struct.pack(">d", r[3])) for r in rows]


def letters_of(batch: Batch) -> list[tuple[Any, ...]]:
    return sorted(
        ((d.offset, d.reason, d.detail, d.key, d.payload, d.kafka_timestamp_ms) for d in batch.dead_letters),
        key=lambda d: d[0],
    )


def parse_buckets(text: bytes) -> dict[tuple[str, datetime], tuple[float, ...]]:
    out = {}
    for line in text.decode().splitlines():
        sensor, bucket, *values = line.split("\t")
        out[(sensor, datetime.fromisoformat(bucket))] = tuple(float(v) for v in values)
    return out


def readings_of(batch: Batch) -> list[Reading]:
    """Every valid reading of the batch, from its summary, in partition then offset order."""
    summary = batch.summary
    return [
        Reading(p, s, from_micros(stamp), t, h)
        for p, s, stamp, t, h in summary.readings_of([sensor for sensor, *_ in summary.sensors()])
    ]


def same_buckets(a: dict[Any, tuple[float, ...]], b: dict[Any, tuple[float, ...]]) -> bool:
    """Equal keys, counts, minima and maxima; sums equal up to the order of float additions."""
    return a.keys() == b.keys() and all(
        all(math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-9) for x, y in zip(a[k], b[k], strict=True)) for k in a
    )


def assert_same_batches(python: Batch, native: Batch) -> None:
    assert rows_of(native) == rows_of(python)
    assert letters_of(native) == letters_of(python)
    assert native.positions == python.positions
    assert native.days == python.days
    assert native.consumed == python.consumed
    assert native.rows == python.rows
    assert native.with_extras == python.with_extras
    assert native.last_by_offset == python.last_by_offset
    assert_same_summaries(python.summary, native.summary)


def assert_same_summaries(python: BatchSummary, native: BatchSummary) -> None:
    """The one batch interface, two implementations: the same rollups, sensor ranges, newest
    readings, clocks, days and readings (floats: the same doubles; sums up to addition order)."""
    for seconds in (60, 3600):
        assert same_buckets(parse_buckets(native.rollup_copy(seconds)), parse_buckets(python.rollup_copy(seconds)))
    assert native.rows == python.rows
    assert sorted(native.sensors()) == sorted(python.sensors())
    assert sorted(native.clocks()) == sorted(python.clocks())
    assert sorted(native.days()) == sorted(python.days())
    sensors = [sensor for sensor, *_ in python.sensors()]
    assert native.readings_of(sensors) == python.readings_of(sensors)
    assert native.readings_of(sensors[:1]) == python.readings_of(sensors[:1])


RULES = RuleSet(
    threshold=(
        ThresholdRule("hot", "critical", "temperatura", "above", 29.5, 29.0, 2.0, 2.0),
        ThresholdRule("dry", "warning", "umidade", "below", 32.0, 33.0, 0.0, 1.0),
    ),
    silence=(SilenceRule("silent", "warning", 30.0),),
    source="test",
)


def evaluation_key(ev: Evaluation) -> tuple[Any, ...]:
    return (
        {
            k: (None if s is None else (s.phase, s.since, s.peak, s.last_value, s.clear_since, s.partition))
            for k, s in ev.states.items()
        },
        # written as rows in one transaction: their order within a batch carries no meaning
        sorted((e.kind, e.state.sensor_id, e.state.rule, e.at) for e in ev.events),
        ev.peaks,
        ev.seen,
        ev.clocks,
    )


def engine_with_states(states: list[AlertState]) -> AlertEngine:
    engine = AlertEngine(RULES)
    engine.reset(range(16), states, {})
    return engine


# ---------------------------------------------------------------------- generated readings
stamps = st.datetimes(min_value=datetime(1999, 12, 31), max_value=datetime(2026, 11, 30), timezones=st.just(UTC))
sensor_ids = st.one_of(
    st.sampled_from(SENSORS),
    st.sampled_from(SENSORS).map(str.upper),
    st.sampled_from(["not-a-uuid", SENSORS[0].replace("-", ""), SENSORS[0][:35] + "g", ""]),
)


@st.composite
def stamp_texts(draw: st.DrawFn) -> str:
    when = draw(stamps)
    form = draw(st.sampled_from(["iso", "ms", "s", "Z", "msZ", "offset", "naive", "space", "bad", "7digits"]))
    if form == "iso":
        return when.isoformat()
    if form == "ms":
        return when.isoformat(timespec="milliseconds")
    if form == "s":
        return when.isoformat(timespec="seconds")
    if form == "Z":
        return when.isoformat().replace("+00:00", "Z")
    if form == "msZ":
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if form == "offset":
        return when.astimezone(UTC).replace(tzinfo=None).isoformat() + "+02:00"
    if form == "naive":
        return when.replace(tzinfo=None).isoformat()
    if form == "space":
        return when.isoformat(sep=" ")
    if form == "7digits":
        return when.replace(tzinfo=None).isoformat(timespec="microseconds") + "0+00:00"
    return draw(
        st.sampled_from(["2026-02-30T00:00:00+00:00", "2026-11-28T24:00:00+00:00", "yesterday", "2026-11-28T12:00:60Z"])
    )


numbers = st.one_of(
    st.floats(min_value=-50, max_value=110, allow_nan=False).map(repr),
    st.integers(min_value=-60, max_value=120).map(str),
    st.sampled_from(["-0", "-0.0", "0", "1e1", "2.5E+1", "25.000", "1e400", "NaN", '"25"', "true", "null", "01", ".5"]),
)
white = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


@st.composite
def values(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["reading"] * 8 + ["raw", "none", "empty", "not_utf8", "huge"]))
    if kind == "none":
        return None
    if kind == "empty":
        return b""
    if kind == "not_utf8":
        return b'{"sensor_id": "\xff"}'
    if kind == "huge":
        return b'{"sensor_id": "' + b"a" * 5000 + b'"}'
    if kind == "raw":
        return draw(st.binary(max_size=64))
    fields = {
        '"sensor_id"': json.dumps(draw(sensor_ids)),
        '"timestamp"': json.dumps(draw(stamp_texts())),
        '"temperatura"': draw(numbers),
        '"umidade"': draw(numbers),
    }
    if draw(st.integers(0, 9)) == 0:
        del fields[draw(st.sampled_from(sorted(fields)))]
    if draw(st.integers(0, 9)) == 0:
        fields['"bateria"'] = str(draw(st.integers(0, 100)))
    if draw(st.integers(0, 19)) == 0:
        fields['"sensor_\\u0069d"'] = json.dumps(SENSORS[0])  # an escaped key
    items = list(fields.items())
    order = draw(st.permutations(items))
    ws = draw(white)
    text = "{" + ws + ("," + ws).join(f"{k}{ws}:{ws}{v}" for k, v in order) + ws + "}"
    if draw(st.integers(0, 29)) == 0:
        text += draw(st.sampled_from([" x", "}", "\n"]))
    return text.encode()


messages = st.builds(
    Message,
    value=values(),
    key=st.one_of(st.none(), st.sampled_from([s.encode() for s in SENSORS])),
    headers=st.one_of(
        st.just(()),
        st.just((("source", b"gw-1"), ("trace", None))),
        st.lists(
            st.tuples(st.binary(max_size=6).map(RawHeaderKey), st.one_of(st.none(), st.binary(max_size=6))),
            max_size=4,
        ).map(tuple),
    ),
    timestamp_ms=st.one_of(st.integers(min_value=0, max_value=2_000_000_000_000), st.integers(-(2**62), 2**62)),
)


def python_and_native(
    buffer: bytes, fetch_offset: int, max_records: int, position: int, binary: bool = False
) -> tuple[Batch, Batch, Any]:
    tp, python_records, python_count, python_next = take_all(GuardedPartitionRecords, buffer, fetch_offset, max_records)
    Native.decoding = NativeDecoding(DEFAULT_LIMITS, binary)
    Native.decoding.take_bounds = native_bounds_at(NOW)  # type: ignore[method-assign]
    _, native_records, native_count, native_next = take_all(Native, buffer, fetch_offset, max_records)
    assert native_count == python_count
    assert native_next == python_next
    stored = {tp.partition: position - 7}
    positions = {tp.partition: position}
    python = build_batch({tp: python_records}, stored, positions, DEFAULT_LIMITS, now=NOW)
    native = build_batch({tp: native_records}, stored, positions, DEFAULT_LIMITS, now=NOW)
    return python, native, native_records


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msgs=st.lists(messages, min_size=1, max_size=40),
    per_batch=st.integers(1, 12),
    base=st.integers(0, 2**40),
    skip=st.integers(0, 5),
    max_records=st.integers(1, 50),
    codecs=st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 4]), min_size=1, max_size=4),
)
def test_native_and_python_paths_write_the_same(
    msgs: list[Message], per_batch: int, base: int, skip: int, max_records: int, codecs: list[int]
) -> None:
    """Rows, dead letters (reason and detail), positions, days, rollups: identical - whatever
    mix of plain and compressed batches (every codec) the fetch holds."""
    buffer = batches(msgs, per_batch, base, compression=codecs)
    fetch_offset = base + min(skip, len(msgs) - 1)
    python, native, _ = python_and_native(buffer, fetch_offset, max_records, fetch_offset)
    assert_same_batches(python, native)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msgs=st.lists(messages, min_size=1, max_size=40),
    per_batch=st.integers(1, 12),
    base=st.integers(0, 2**40),
    max_records=st.integers(1, 50),
    codecs=st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 4]), min_size=1, max_size=4),
)
def test_copy_binary_rows_are_the_text_rows_bit_for_bit(
    msgs: list[Message], per_batch: int, base: int, max_records: int, codecs: list[int]
) -> None:
    """The native path's COPY BINARY rows, read back by the format's rules, are the Python path's
    rows and the native text rows - every double to the bit (-0 as 0, -0.0 as -0.0), every
    instant to the microsecond, partition and offset; fallbacks stay text beside them; dead
    letters, positions and rollups as on the text path."""
    buffer = batches(msgs, per_batch, base, compression=codecs)
    python, binary, _ = python_and_native(buffer, base, max_records, base, binary=True)
    _, text, _ = python_and_native(buffer, base, max_records, base)
    assert_same_batches(python, binary)
    assert rows_of(binary) == rows_of(text)
    assert float_bits(rows_of(binary)) == float_bits(rows_of(text)) == float_bits(rows_of(python))
    assert binary.native_binary == bool(binary.native_rows)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    readings=st.lists(
        st.tuples(st.sampled_from(SENSORS), st.integers(0, 600), st.floats(20, 31), st.floats(29, 80)),
        min_size=1,
        max_size=60,
    ),
    existing=st.lists(st.sampled_from(SENSORS), max_size=3, unique=True),
    odd=st.lists(st.integers(0, 59), max_size=5),
)
def test_native_and_python_paths_raise_the_same_alerts(
    readings: list[tuple[str, int, float, float]], existing: list[str], odd: list[int]
) -> None:
    """The alert evaluation from a native summary equals the one from every reading: states,
    events, peaks, newest reading per sensor, partition clocks. ``odd`` readings carry an extra
    field, so the Python validator handles them between native rows (order matters for alerts)."""
    start = datetime(2026, 11, 28, 11, 0, tzinfo=UTC)
    msgs = []
    for index, (sensor, second, t, h) in enumerate(readings):
        body: dict[str, Any] = {
            "sensor_id": sensor,
            "timestamp": (start + timedelta(seconds=second)).isoformat(),
            "temperatura": t,
            "umidade": h,
        }
        if index in odd:
            body["bateria"] = 50
        msgs.append(Message(json.dumps(body).encode()))
    python, native, _ = python_and_native(batches(msgs, 7), 0, 1000, 0)
    assert_same_batches(python, native)
    states = [AlertState(s, "hot", 3, "firing", start, uuid.uuid4(), start, 30.0, 30.0) for s in existing]
    # the native path took every reading without an extra field (not all fell back to Python)
    assert native.native_rows == sum(1 for index in range(len(readings)) if index not in odd)
    expected = engine_with_states(states).evaluate_readings(readings_of(python))
    assert evaluation_key(engine_with_states(states).evaluate(native.summary)) == evaluation_key(expected)
    assert evaluation_key(engine_with_states(states).evaluate(python.summary)) == evaluation_key(expected)


# ---------------------------------------------------------------------- fuzzed batches
VALID = [
    Message(
        json.dumps(
            {
                "sensor_id": SENSORS[i % 5],
                "timestamp": f"2026-11-28T10:00:{i:02d}.123456+00:00",
                "temperatura": 20 + i / 7,
                "umidade": 50 + i / 3,
            }
        ).encode(),
        key=SENSORS[i % 5].encode(),
    )
    for i in range(30)
]
VALID_BUFFER = batches(VALID, 10, 1000)


def outcome(records_class: type, buffer: bytes) -> tuple[str, Any]:
    try:
        tp, records, _count, next_offset = take_all(records_class, buffer, 1000, 25)
    except PartitionDecodeError as exc:
        return "error", exc.offset
    batch = build_batch({tp: records}, {3: None}, {3: 1000}, DEFAULT_LIMITS, now=NOW)
    return "records", (rows_of(batch), letters_of(batch), batch.positions, next_offset)


@settings(max_examples=400, deadline=None)
@given(position=st.integers(0, len(VALID_BUFFER) - 1), byte=st.integers(0, 255), cut=st.booleans())
def test_a_corrupted_fetch_gives_the_same_outcome_on_both_paths(position: int, byte: int, cut: bool) -> None:
    """A flipped byte anywhere (or the fetch cut there): both paths fail at the same offset,
    or both return the same records."""
    data = bytearray(VALID_BUFFER)
    if cut:
        data = data[:position]
    else:
        assume(data[position] != byte)
        data[position] = byte
    buffer = bytes(data)
    Native.decoding = NativeDecoding(DEFAULT_LIMITS)
    Native.decoding.take_bounds = native_bounds_at(NOW)  # type: ignore[method-assign]
    assert outcome(Native, buffer) == outcome(GuardedPartitionRecords, buffer)


# ---------------------------------------------------------------------- specific shapes
def test_strict_readings_take_the_native_path_and_others_fall_back() -> None:
    """The common form becomes NativeRows; extras, offsets and nulls come back as records (the
    item holding the take's last record is listed last: the new position follows it)."""
    strict = VALID[0]
    extra = Message(
        b'{"sensor_id": "%s", "timestamp": "2026-11-28T10:00:00+02:00", "temperatura": 20, "umidade": 50}'
        % SENSORS[1].encode()
    )
    _, records, count, _ = take_all(Native, batches([strict, extra, Message(None), strict], 2, 10), 10, 100)
    assert count == 4
    kinds = [type(r).__name__ for r in records]
    assert kinds == ["ConsumerRecord", "ConsumerRecord", "NativeRows"]
    assert records[-1].rows.offsets() == [10, 13]


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_decompressed_and_decoded_natively(codec: int) -> None:
    """Batches of each codec between plain ones: every strict reading decoded natively (the
    records decompressed by kafka-python's own codec, one call per batch), the same batch as
    the Python path's, every reading once."""
    buffer = batches(VALID[:10], 5, 0) + batches(VALID[10:20], 5, 10, compression=codec) + batches(VALID[20:], 5, 20)
    python, native, _records = python_and_native(buffer, 0, 1000, 0)
    assert_same_batches(python, native)
    assert native.rows == 30
    assert native.native_rows == 30


def test_without_a_decompressor_compressed_batches_continue_on_kafka_pythons_decoder() -> None:
    """A Cursor given no decompress function leaves a compressed batch, and the rest of that
    fetch, to kafka-python - what the extension did before it decompressed."""
    assert fastpath is not None
    buffer = batches(VALID[:10], 5, 0) + batches(VALID[10:20], 5, 10, compression=3)
    cursor = fastpath.Cursor(buffer, 0)
    rows, _fallbacks, status, taken, _last = cursor.take(1000, 3, *NativeDecoding(DEFAULT_LIMITS).take_bounds(NOW))
    assert (status, taken) == ("python", 10)
    assert rows is not None
    assert rows.count == 10


# ---------------------------------------------------------------------- batches that expand too far
BOMB_LIMIT = 1 << 20
CODECS = pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])


def bomb(codec: int, expands_to: int) -> bytes:
    """``expands_to`` zero bytes in ``codec``'s framing, as kafka-python's producer writes it."""
    encode = {1: kafka_codec.gzip_encode, 2: kafka_codec.snappy_encode, 3: kafka_codec.lz4_encode}
    return bytes(encode.get(codec, kafka_codec.zstd_encode)(bytes(expands_to)))


# Run in a process of its own, so that its peak resident memory (the libraries' own allocations
# included, which tracemalloc does not see) is the decompression's alone.
_BOMB_RSS = """
import resource, sys
from iot_consumer.decompression import BatchTooLarge, decompress_records
data = open(sys.argv[2], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decompress_records(int(sys.argv[1]), data, int(sys.argv[3]))
    outcome = "decompressed"
except BatchTooLarge:
    outcome = "too_large"
print(outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@CODECS
def test_a_decompression_bomb_costs_a_small_multiple_of_the_limit(codec: int, tmp_path: Path) -> None:
    """A batch that expands 64x past the limit (gzip, lz4 and zstd: ~1,000x its own size) raises
    BatchTooLarge, the process's peak memory growing by a few times the limit at most (the output
    so far, one step, the codec's window) - where kafka-python's own decoder holds all 64 - and
    one at the limit decompresses whole."""
    path = tmp_path / "bomb"
    path.write_bytes(bomb(codec, 64 * BOMB_LIMIT))
    run = subprocess.run(
        [sys.executable, "-c", _BOMB_RSS, str(codec), str(path), str(BOMB_LIMIT)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    outcome, grew = run.stdout.split()
    assert outcome == "too_large"
    assert int(grew) < 8 * BOMB_LIMIT, f"peak RSS grew by {int(grew):,} bytes"
    with pytest.raises(BatchTooLarge) as raised:
        decompress_records(codec, path.read_bytes(), BOMB_LIMIT)
    assert raised.value.limit == BOMB_LIMIT
    assert f"{path.stat().st_size:,} bytes" in str(raised.value)
    assert decompress_records(codec, bomb(codec, BOMB_LIMIT), BOMB_LIMIT) == bytes(BOMB_LIMIT)


KAFKA_DECODERS = {
    1: kafka_codec.gzip_decode,
    2: kafka_codec.snappy_decode,
    3: kafka_codec.lz4_decode,
    4: kafka_codec.zstd_decode,
}
PAYLOADS = {codec: batches(VALID, 30)[61:] for codec in KAFKA_DECODERS}  # records as a batch holds them


def codec_outcome(decode: Any, data: bytes) -> tuple[str, bytes]:
    try:
        return "ok", bytes(decode(data))
    except Exception:  # noqa: BLE001 - any failure: both sides' batches become corrupt alike
        return "error", b""


@settings(max_examples=500, deadline=None)
@given(
    codec=st.sampled_from([1, 2, 3, 4]),
    where=st.floats(0, 1, exclude_max=True),
    byte=st.integers(0, 255),
    how=st.sampled_from(["flip", "cut", "append", "repeat"]),
)
def test_bounded_decompression_agrees_with_kafka_pythons_codecs(codec: int, where: float, byte: int, how: str) -> None:
    """Under the limit, decompress_records gives what kafka-python's codec function gives - the
    same bytes, or a failure on both - for a payload with a byte changed, cut, something
    appended, or a second copy after it (xerial snappy's block sizes and every frame header
    included), and it ends: a negative or zero block size fails at once."""
    encode = {1: kafka_codec.gzip_encode, 2: kafka_codec.snappy_encode, 3: kafka_codec.lz4_encode}
    data = bytearray(encode.get(codec, kafka_codec.zstd_encode)(PAYLOADS[codec]))
    position = int(where * len(data))
    if how == "flip":
        data[position] ^= byte or 1
    elif how == "cut":
        del data[position:]
    elif how == "append":
        data += bytes([byte]) * (position % 9 + 1)
    else:
        data += bytes(data)
    mutated = bytes(data)
    ours = codec_outcome(lambda d: decompress_records(codec, d, 1 << 24), mutated)
    assert ours == codec_outcome(KAFKA_DECODERS[codec], mutated)


@pytest.mark.parametrize("block_size", [-4, -(2**31), 0, 1 << 30])
def test_crafted_xerial_snappy_block_sizes_fail_at_once_as_in_kafka_python(block_size: int) -> None:
    """A xerial snappy block size that is negative or zero fails on both sides (kafka-python
    decompresses an empty block) - it does not walk back and forth for ever - and one past the
    end reads what is left, on both sides alike."""
    good = kafka_codec.snappy_encode(PAYLOADS[2])
    crafted = good[:16] + struct.pack("!i", block_size) + good[20:]
    ours = codec_outcome(lambda d: decompress_records(2, d, 1 << 24), crafted)
    assert ours == codec_outcome(KAFKA_DECODERS[2], crafted)
    if block_size <= 0:
        assert ours[0] == "error"


def test_a_snappy_length_written_with_padded_varint_bytes_is_still_held_to_the_limit() -> None:
    """snappy's preamble declares the block's length as a varint; written with redundant bytes
    (0x80 continuations, which the library accepts) it still counts against the limit."""
    raw = bytes(cramjam.snappy.compress_raw(bytes(8 * BOMB_LIMIT)))
    length = 8 * BOMB_LIMIT
    groups = []
    while True:
        groups.append(length & 0x7F)
        length >>= 7
        if not length:
            break
    padded = bytes([g | 0x80 for g in groups] + [0x80] * (6 - len(groups)) + [0x00])
    crafted = padded + raw[len(groups) :]
    assert len(kafka_codec.snappy_decode(crafted)) == 8 * BOMB_LIMIT  # what the library accepts
    with pytest.raises(BatchTooLarge):
        decompress_records(2, crafted, BOMB_LIMIT)


def oversized_fetch(codec: int) -> bytes:
    """Offsets 0-4 plain, 5-7 one ``codec`` batch whose values expand past BOMB_LIMIT, 8-12 plain."""
    huge = [Message(bytes(BOMB_LIMIT // 2)), Message(bytes(BOMB_LIMIT // 2)), Message(b"{}")]
    return batches(VALID[:5], 5, 0) + batches(huge, 3, 5, compression=codec) + batches(VALID[5:10], 5, 8)


@CODECS
def test_a_batch_past_the_limit_is_dead_lettered_whole_and_the_partition_goes_on(codec: int) -> None:
    """Both decoders: the readings before it are stored, the batch becomes one batch_too_large
    dead letter for offsets 5..7 (its raw bytes, its newest timestamp), the partition's position
    moves past it, and the fetch goes on from offset 8 - nothing held, nothing skipped silently."""
    buffer = oversized_fetch(codec)
    limits = replace(DEFAULT_LIMITS, max_batch_bytes=BOMB_LIMIT)
    install_bounded_decompression(BOMB_LIMIT)  # kafka-python's decoder (the Python path)
    try:
        tp, python_records, _, python_next = take_all(GuardedPartitionRecords, buffer, 0, 1000)
        Native.decoding = NativeDecoding(limits)
        Native.decoding.take_bounds = native_bounds_at(NOW)  # type: ignore[method-assign]
        _, native_records, _, native_next = take_all(Native, buffer, 0, 1000)
    finally:
        install_bounded_decompression(DEFAULT_LIMITS.max_batch_bytes)
        Native.decoding = NativeDecoding(DEFAULT_LIMITS)
    assert python_next == native_next == 8
    python = build_batch({tp: python_records}, {3: None}, {3: 0}, limits, now=NOW)
    native = build_batch({tp: native_records}, {3: None}, {3: 0}, limits, now=NOW)
    assert_same_batches(python, native)
    assert python.rows == 5
    assert native.positions == [PositionUpdate(3, None, 8)]
    (letter,) = native.dead_letters
    assert (letter.offset, letter.last_offset, letter.reason) == (5, 7, "batch_too_large")
    assert "offsets 5..7" in letter.detail
    assert f"more than {BOMB_LIMIT:,}" in letter.detail
    assert letter.kafka_timestamp_ms == VALID[0].timestamp_ms
    assert letter.payload is not None
    assert letter.payload in buffer
    assert struct.unpack_from(">q", letter.payload)[0] == 5  # the whole batch, header first
    assert [d.last_offset for d in python.dead_letters] == [7]
    # a position inside the batch (its first records stored before the limit was lowered): the
    # dead letter claims only the offsets from there
    inside = build_batch({tp: native_records}, {3: 6}, {3: 6}, limits, now=NOW)
    assert [(d.offset, d.last_offset) for d in inside.dead_letters] == [(6, 7)]
    assert inside.positions == [PositionUpdate(3, 6, 8)]
    # the fetch from offset 8 (kafka-python fetches again from the new position) reads the rest
    rest = batches(VALID[5:10], 5, 8)
    _, records, _, _ = take_all(Native, rest, 8, 1000)
    after = build_batch({tp: records}, {3: 8}, {3: 8}, limits, now=NOW)
    assert after.rows == 5
    assert after.positions == [PositionUpdate(3, 8, 13)]


COMPRESSED_BUFFERS = {codec: batches(VALID, 10, 1000, compression=codec) for codec in (1, 2, 3, 4)}


@settings(max_examples=300, deadline=None)
@given(
    codec=st.sampled_from([1, 2, 3, 4]),
    where=st.floats(0, 1, exclude_max=True),
    byte=st.integers(0, 255),
    cut=st.booleans(),
    fix_crc=st.booleans(),
)
def test_a_corrupted_compressed_fetch_gives_the_same_outcome_on_both_paths(
    codec: int, where: float, byte: int, cut: bool, fix_crc: bool
) -> None:
    """Compressed batches of each codec with a byte flipped anywhere or the fetch cut there - and,
    so the decompressor itself meets the damage, with the CRC made right again: both paths fail
    at the same offset or return the same records."""
    data = bytearray(COMPRESSED_BUFFERS[codec])
    position = int(where * len(data))
    if cut:
        data = data[:position]
    else:
        assume(data[position] != byte)
        data[position] = byte
        if fix_crc:
            start = 0  # the batch holding the byte: its CRC covers attributes .. end
            while start + 12 <= len(data):
                size = struct.unpack_from(">i", data, start + 8)[0] + 12
                if size <= 12 or start + size > len(data) or start + size > position:
                    break
                start += size
            if start + 61 <= len(data):
                size = struct.unpack_from(">i", data, start + 8)[0] + 12
                if size >= 61 and start + size <= len(data):
                    struct.pack_into(">I", data, start + 17, calc_crc32c(bytes(data[start + 21 : start + size])))
    buffer = bytes(data)
    Native.decoding = NativeDecoding(DEFAULT_LIMITS)
    Native.decoding.take_bounds = native_bounds_at(NOW)  # type: ignore[method-assign]
    assert outcome(Native, buffer) == outcome(GuardedPartitionRecords, buffer)


def test_rebuild_gives_the_python_paths_batch() -> None:
    """To find a row PostgreSQL refuses, a native batch is rebuilt on the Python path: same content."""
    python, native, records = python_and_native(VALID_BUFFER, 1000, 1000, 1000)
    assert native.rebuild is not None
    rebuilt = native.rebuild()
    assert isinstance(rebuilt.summary, PythonSummary)  # rows can be probed one by one (reject_rows)
    assert rows_of(rebuilt) == rows_of(python)
    assert [r.offset for r in rebuilt.sources] == [r.offset for r in python.sources]
    tp = TopicPartition(TOPIC, 3)
    assert [r.offset for r in expand({tp: records})[tp]] == list(range(1000, 1030))


def test_rows_before_the_position_are_skipped_like_the_python_path() -> None:
    """A stale fetch (position moved past its start): the batch is built on the Python path."""
    python, native, _ = python_and_native(VALID_BUFFER, 1000, 1000, 1012)
    assert_same_batches(python, native)
    assert python.consumed == 18


def test_days_and_timestamps_are_utc() -> None:
    """Readings across midnight touch two UTC days; native timestamps decode to the same instants."""
    msgs = [
        Message(json.dumps({"sensor_id": SENSORS[0], "timestamp": stamp, "temperatura": 21.5, "umidade": 40}).encode())
        for stamp in ("2026-11-27T23:59:59.999999+00:00", "2026-11-28T00:00:00Z")
    ]
    python, native, _ = python_and_native(batches(msgs, 2), 0, 10, 0)
    assert_same_batches(python, native)
    assert native.days == {date(2026, 11, 27), date(2026, 11, 28)}
    assert native.last_by_offset == {3: datetime(2026, 11, 28, tzinfo=UTC)}
    assert from_micros(0) == datetime(1970, 1, 1, tzinfo=UTC)


def test_limits_are_the_configured_ones() -> None:
    """A narrower temperature range applies natively too (out of range -> the validator's dead letter)."""
    narrow = ReadingLimits(temperature_min=0.0, temperature_max=22.0)

    class NarrowNative(NativePartitionRecords):
        decoding = NativeDecoding(narrow)

    tp, records, _, _ = take_all(NarrowNative, VALID_BUFFER, 1000, 100)
    native = build_batch({tp: records}, {3: None}, {3: 1000}, narrow)
    tp, records, _, _ = take_all(GuardedPartitionRecords, VALID_BUFFER, 1000, 100)
    python = build_batch({tp: records}, {3: None}, {3: 1000}, narrow)
    assert rows_of(native) == rows_of(python)
    assert {d.reason for d in native.dead_letters} == {"out_of_range"}
    assert letters_of(native) == letters_of(python)


def test_a_corrupt_batch_is_named_with_its_offset() -> None:
    """A CRC failure in the second batch: the first batch's records come first, then the error."""
    data = bytearray(VALID_BUFFER)
    second = len(batches(VALID[:10], 10))
    data[second + 70] ^= 0xFF
    parts = Native(1000, TopicPartition(TOPIC, 3), MemoryRecords(bytes(data)))
    first = parts.take(100)
    assert len(first) == 10
    with pytest.raises(PartitionDecodeError) as caught:
        parts.take(100)
    assert caught.value.offset == 1010
    assert "crc" in str(caught.value.cause)
    assert not parts


def test_every_header_byte_of_two_batches_corrupted_gives_the_same_outcome() -> None:
    """Deterministic companion of the fuzz test: each byte of the first two batch headers (offset,
    length, epoch, magic, CRC, attributes, timestamps, producer fields, count) set to the values
    that break parsers (0, 1, 0x7f, 0x80, 0xff, one bit flipped): same error or same records."""
    Native.decoding = NativeDecoding(DEFAULT_LIMITS)
    Native.decoding.take_bounds = native_bounds_at(NOW)  # type: ignore[method-assign]
    second = len(batches(VALID[:10], 10))
    for position in [*range(61), *range(second, second + 61)]:
        for byte in {0, 1, 0x7F, 0x80, 0xFF, VALID_BUFFER[position] ^ 1, VALID_BUFFER[position] ^ 0x80}:
            if byte == VALID_BUFFER[position]:
                continue
            data = bytearray(VALID_BUFFER)
            data[position] = byte
            assert outcome(Native, bytes(data)) == outcome(GuardedPartitionRecords, bytes(data)), (position, byte)


@settings(max_examples=200, deadline=None)
@given(
    readings=st.lists(
        st.tuples(
            st.integers(0, 5),  # partition
            st.integers(0, 50),  # offset (any order: a batch's partitions interleave)
            st.sampled_from(SENSORS),
            # 2000-01-01 .. 2100-01-01: minutes, hours and days at their edges
            st.integers(946_684_800_000_000, 4_102_444_800_000_000),
            st.floats(-1e6, 1e6, allow_nan=False),
            st.floats(-1e6, 1e6, allow_nan=False),
        ),
        max_size=80,
    )
)
def test_the_python_summary_is_the_c_summary(readings: list[tuple[int, int, str, int, float, float]]) -> None:
    """The one batch interface has two implementations; fed the same readings in the same order
    they return the same rollup rows, ranges, newest readings, clocks, days and readings."""
    assert fastpath is not None
    native, python = fastpath.Summary(), PythonSummary()
    for reading in readings:
        native.add_reading(*reading)
        python.add_reading(*reading)
    assert_same_summaries(python, native)
    for seconds in (60, 3600):  # not only the same values: the same rows, bucket texts included
        assert [line.split(b"\t")[:3] for line in native.rollup_copy(seconds).splitlines()] == [
            line.split(b"\t")[:3] for line in python.rollup_copy(seconds).splitlines()
        ]


def test_a_summary_spanning_a_year_and_many_partitions_keeps_every_day() -> None:
    """400 distinct UTC days and 1,500 partitions in one summary (more than fixed arrays would
    hold): every day is reported, every partition has its clock - nothing dropped past a size."""
    assert fastpath is not None
    summary = fastpath.Summary()
    first_us = to_micros(datetime(2025, 6, 1, 12, tzinfo=UTC))
    for day in range(400):
        summary.add_reading(3, day, SENSORS[day % 5], first_us + day * 86_400_000_000, 21.0, 50.0)
    for partition in range(100, 1600):
        summary.add_reading(partition, 0, SENSORS[0], partition, 20.0, 50.0)
    assert len(summary.days()) == 401  # 400 days of partition 3, plus 1970-01-01 of the others
    assert len(summary.clocks()) == 1501


def test_a_dead_clock_backfill_is_cut_at_the_day_budget_on_both_paths() -> None:
    """400 readings, each on another UTC day (a device whose clock battery died): both paths stop
    the batch at the same record once MAX_OLD_DAYS_PER_BATCH old days are in it, so one
    transaction never locks hundreds of partitions; the rest is read again from the cut."""
    first = datetime(2025, 6, 1, 12, tzinfo=UTC)
    msgs = [
        Message(
            json.dumps(
                {
                    "sensor_id": SENSORS[day % 5],
                    "timestamp": (first + timedelta(days=day)).isoformat(),
                    "temperatura": 21.0,
                    "umidade": 50.0,
                }
            ).encode()
        )
        for day in range(400)
    ]
    python, native, _ = python_and_native(batches(msgs, 50), 0, 1000, 0)
    assert_same_batches(python, native)
    assert python.cuts == native.cuts == {3: MAX_OLD_DAYS_PER_BATCH}
    assert len(native.days) == MAX_OLD_DAYS_PER_BATCH
    assert [u.next_offset for u in native.positions] == [MAX_OLD_DAYS_PER_BATCH]


def _probes(sensor_ids: list[str]) -> int:
    assert fastpath is not None
    summary = fastpath.Summary()
    stamp = to_micros(NOW)
    for i, sensor in enumerate(sensor_ids):
        summary.add_reading(0, i, sensor, stamp, 21.0, 50.0)
    return int(summary.probes)


def test_crafted_sensor_ids_do_not_collide_in_the_native_summary() -> None:
    """5,000 sensor ids crafted so that the old, unkeyed hash (a ^ b*K) gave every one the same
    value (all in one probe chain: a quadratic batch) cost no more hash-table probes than random
    ids, within 2x: the summary's hash is keyed per process."""
    k, constant, mask = 0x9E3779B97F4A7C15, 0x0123456789ABCDEF, (1 << 64) - 1
    crafted = []
    for b in range(1, 5001):
        a = constant ^ ((b * k) & mask)
        crafted.append(str(uuid.UUID(bytes=a.to_bytes(8, "little") + b.to_bytes(8, "little"))))
    random_ids = [str(uuid.uuid4()) for _ in range(5000)]
    assert _probes(crafted) <= 2 * _probes(random_ids) + 1000


def test_a_record_with_half_a_million_headers_costs_no_python_objects_natively() -> None:
    """A fallback record (a reading with an extra field) carrying 500,000 empty headers: the
    native decoder builds none of them (the consumer never reads headers) and both paths store
    the same row."""
    reading = (
        b'{"sensor_id": "%s", "timestamp": "2026-11-28T10:00:00+00:00", "temperatura": 20, "umidade": 50, "x": 1}'
        % SENSORS[0].encode()
    )
    buffer = batches([Message(reading, headers=tuple((RawHeaderKey(b""), None) for _ in range(500_000)))], 1)
    python, native, records = python_and_native(buffer, 0, 10, 0)
    assert_same_batches(python, native)
    assert python.rows == native.rows == 1
    assert [r.headers for r in records] == [[]]


def control_batch(offset: int, commit: bool = True) -> bytes:
    """A transaction marker as the broker writes it: a transactional batch with the control bit
    and one control record (key: version 0 + type 1 commit / 0 abort)."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=1, producer_id=7, producer_epoch=0, base_sequence=-1,
        batch_size=1 << 20,
    )  # fmt: skip
    builder.append(0, 1_764_300_000_000, struct.pack(">hh", 0, 1 if commit else 0), struct.pack(">hi", 0, 0), [])
    data = bytearray(builder.build())
    data[0:8] = struct.pack(">q", offset)
    attributes = struct.unpack(">h", data[21:23])[0] | 0x20
    data[21:23] = struct.pack(">h", attributes)
    data[17:21] = struct.pack(">I", calc_crc32c(bytes(data[21:])))
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msgs=st.lists(messages, min_size=1, max_size=30),
    per_batch=st.integers(1, 8),
    markers=st.lists(st.tuples(st.integers(0, 10), st.booleans()), max_size=4),
    trailing=st.booleans(),
    max_records=st.integers(1, 40),
)
def test_transaction_markers_are_skipped_alike_and_the_position_moves_past_them(
    msgs: list[Message], per_batch: int, markers: list[tuple[int, bool]], trailing: bool, max_records: int
) -> None:
    """Commit and abort markers between (and after) record batches: both paths return the same
    rows, dead letters and positions, and kafka-python's next fetch offset - which the consumer
    stores once the partition is idle - is past a trailing marker on both."""
    chunks = [batches(msgs[i : i + per_batch], per_batch, i) for i in range(0, len(msgs), per_batch)]
    offset, pieces = 0, []
    for index, chunk in enumerate(chunks):
        shifted = bytearray(chunk)
        shifted[0:8] = struct.pack(">q", offset)
        pieces.append(bytes(shifted))
        offset += min(per_batch, len(msgs) - index * per_batch)
        for after, commit in markers:
            if after == index:
                pieces.append(control_batch(offset, commit))
                offset += 1
    if trailing:
        pieces.append(control_batch(offset))
        offset += 1
    python, native, _ = python_and_native(b"".join(pieces), 0, max_records, 0)
    assert_same_batches(python, native)
    _, _, _, python_next = take_all(GuardedPartitionRecords, b"".join(pieces), 0, max_records)
    assert python_next == offset  # past every marker, the trailing one included


strict_readings = st.builds(
    lambda sensor, upper, micros, t, h: json.dumps(
        {
            "sensor_id": str(sensor).upper() if upper else str(sensor),
            "timestamp": (datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)).isoformat(),
            "temperatura": t,
            "umidade": h,
        }
    ).encode(),
    st.uuids(),
    st.booleans(),
    st.integers(0, int((NOW - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)),
    st.floats(-40.0, 85.0),
    st.floats(0.0, 100.0),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(strict_readings, min_size=1, max_size=40), per_batch=st.integers(1, 12))
def test_every_strict_reading_takes_the_native_path(values: list[bytes], per_batch: int) -> None:
    """Readings in the strict form - ids in either case, any instant from 2000 to now, values
    anywhere inside the limits - are all decoded natively (not one left to the Python path), and
    the rows equal the Python path's."""
    python, native, _ = python_and_native(batches([Message(v) for v in values], per_batch), 0, 1000, 0)
    assert_same_batches(python, native)
    assert native.native_rows == len(values)
    assert native.copy_lines == []
    _, binary, _ = python_and_native(batches([Message(v) for v in values], per_batch), 0, 1000, 0, binary=True)
    assert rows_of(binary) == rows_of(python)
    assert float_bits(rows_of(binary)) == float_bits(rows_of(python))
