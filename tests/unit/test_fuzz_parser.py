"""Property-based fuzzing of the reading parser and the COPY line builder (hypothesis).

Whatever bytes arrive, validation either returns a well-formed reading or raises
InvalidReading with a known reason - never another exception - and the COPY buffer only
ever contains canonical UUIDs, ISO timestamps and numbers: no message content reaches SQL.
"""

from __future__ import annotations

import json
import math
import re
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_common.schema import DEFAULT_LIMITS, FIELDS, InvalidReading, RejectReason, validate_reading
from iot_consumer.batch import build_batch

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
Record = namedtuple("Record", "topic partition offset timestamp key value")
TP = namedtuple("TP", "topic partition")
COPY_LINE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\t"
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00\t"
    r"-?\d+(\.\d+)?(e[-+]\d+)?\t-?\d+(\.\d+)?(e[-+]\d+)?\t\d+\t\d+\t"
    # extras: \N, or JSON text with no raw tab/newline and every backslash doubled for COPY
    r"(\\N|\{(?:[^\t\n\\]|\\\\)*\})\n"
)

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
near_valid = st.fixed_dictionaries(
    {
        "sensor_id": st.uuids().map(str) | st.text(max_size=40) | json_scalars,
        "timestamp": st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat())
        | st.text(max_size=40)
        | json_scalars,
        "temperatura": st.floats(allow_nan=False, allow_infinity=False) | json_scalars,
        "umidade": st.floats(allow_nan=False, allow_infinity=False) | json_scalars,
    },
    optional={"extra": json_scalars},
)


def dumps(value: object) -> bytes:
    """Any JSON, including integers beyond 64 bits (which orjson itself would refuse to write)."""
    return json.dumps(value).encode()


def _check(raw: bytes | None) -> None:
    try:
        reading = validate_reading(raw, DEFAULT_LIMITS, NOW)
    except InvalidReading as exc:
        rejection: InvalidReading | None = exc
    else:
        rejection = None
    if rejection is not None:
        assert isinstance(rejection.reason, RejectReason)
        assert rejection.detail
        return
    assert reading.timestamp.tzinfo is UTC
    assert DEFAULT_LIMITS.earliest <= reading.timestamp <= NOW + DEFAULT_LIMITS.max_clock_skew
    assert math.isfinite(reading.temperatura)
    assert DEFAULT_LIMITS.temperature_min <= reading.temperatura <= DEFAULT_LIMITS.temperature_max
    assert DEFAULT_LIMITS.humidity_min <= reading.umidade <= DEFAULT_LIMITS.humidity_max
    assert re.fullmatch(r"[0-9a-f-]{36}", reading.sensor_id)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    """Any bytes: a valid reading or InvalidReading with a known reason, never another exception."""
    _check(raw)


@settings(max_examples=600)
@given(json_values)
def test_arbitrary_json_never_crashes_the_parser(value: object) -> None:
    """Any JSON value: a valid reading or InvalidReading with a known reason, never another exception."""
    _check(dumps(value))


@settings(max_examples=800)
@given(near_valid)
def test_near_valid_readings_are_accepted_or_rejected_with_a_reason(body: dict[str, object]) -> None:
    """Readings with one field perturbed are accepted or rejected with a known reason, never crash."""
    _check(dumps(body))


@settings(max_examples=300)
@given(
    st.uuids(),
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2026, 11, 27), timezones=st.timezones()),
    st.floats(min_value=-40, max_value=85),
    st.floats(min_value=0, max_value=100),
)
def test_every_valid_reading_is_accepted_unchanged(
    sensor: object, when: datetime, temperature: float, humidity: float
) -> None:
    """Every valid reading, in any time zone, is accepted with the same instant in UTC and the same values."""
    body = {"sensor_id": str(sensor), "timestamp": when.isoformat(), "temperatura": temperature, "umidade": humidity}
    reading = validate_reading(orjson.dumps(body), DEFAULT_LIMITS, NOW)
    # Same instant as the text says (comparing with `when` itself is False inside a DST gap, PEP 495).
    assert reading.timestamp == datetime.fromisoformat(when.isoformat()).astimezone(UTC)
    assert (reading.temperatura, reading.umidade) == (temperature, humidity)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200) | near_valid.map(dumps), min_size=1, max_size=30))
def test_copy_buffer_holds_only_canonical_values(values: list[bytes]) -> None:
    """Hostile payloads (SQL, tabs, newlines, backslashes) never reach the COPY text raw,
    also not through the extra fields a reading may carry."""
    records = [Record("t", 0, i, 0, None, v) for i, v in enumerate(values)]
    batch = build_batch({TP("t", 0): records}, {0: None}, {0: 0}, DEFAULT_LIMITS)
    assert batch.rows + len(batch.dead_letters) == len(values)
    for line in batch.copy_lines:
        assert COPY_LINE.fullmatch(line), line
    assert batch.positions[0].next_offset == len(values)


def test_sql_looking_content_is_dead_lettered() -> None:
    """SQL in a field never reaches a COPY line: the message is a dead letter (bad_uuid)."""
    body = {
        "sensor_id": "1'); DROP TABLE sensores; --",
        "timestamp": (NOW - timedelta(hours=1)).isoformat(),
        "temperatura": 20.0,
        "umidade": 50.0,
    }
    records = [Record("t", 0, 0, 0, None, orjson.dumps(body))]
    batch = build_batch({TP("t", 0): records}, {0: None}, {0: 0}, DEFAULT_LIMITS)
    assert batch.rows == 0
    assert batch.dead_letters[0].reason == "bad_uuid"


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.text(max_size=20), st.text(max_size=40) | st.integers(-(2**63), 2**63 - 1) | st.booleans(), max_size=5
    )
)
def test_extra_fields_survive_the_copy_text_format(extras: dict[str, object]) -> None:
    """Any extra fields (keys and values with tabs, newlines, backslashes, quotes) come back
    from COPY's text format as the JSON they were: unescaping the column gives the same object.
    A NUL character anywhere in them (jsonb cannot store it) is a ``nul_character`` dead letter
    up front, never a batch PostgreSQL refuses."""
    extras = {k: v for k, v in extras.items() if k not in FIELDS}
    holds_nul = any("\x00" in k or (isinstance(v, str) and "\x00" in v) for k, v in extras.items())
    body = {
        "sensor_id": "6f1c0000-0000-4000-8000-000000000001",
        "timestamp": "2026-11-27T12:00:00+00:00",
        "temperatura": 21.5,
        "umidade": 40.0,
        **extras,
    }
    batch = build_batch(
        {TP("t", 0): [Record("t", 0, 0, 0, None, orjson.dumps(body))]}, {0: None}, {0: 0}, DEFAULT_LIMITS
    )
    if holds_nul:
        assert batch.rows == 0
        assert [d.reason for d in batch.dead_letters] == ["nul_character"]
        return
    assert batch.rows == 1
    assert not batch.dead_letters
    column = batch.copy_lines[0].rstrip("\n").split("\t")[6]
    if not extras:
        assert column == "\\N"
    else:
        assert orjson.loads(column.replace("\\\\", "\\")) == extras
        assert batch.with_extras == 1


@settings(max_examples=100)
@given(st.integers(-(2**70), 2**70))
def test_any_kafka_timestamp_on_a_dead_letter_is_stored_or_left_out(stamp: int) -> None:
    """A record's CreateTime is whatever the producer said (year 10000, negative, past 64 bits):
    its dead letter keeps it when a timestamptz can hold it and leaves it out otherwise - it
    never raises (a ValueError there ended the consumer's loop)."""
    batch = build_batch({TP("t", 0): [Record("t", 0, 0, stamp, None, b"not json")]}, {0: None}, {0: 0}, DEFAULT_LIMITS)
    (letter,) = batch.dead_letters
    if letter.kafka_timestamp_ms is not None:
        assert letter.kafka_timestamp_ms == stamp
        datetime.fromtimestamp(letter.kafka_timestamp_ms / 1000, UTC)  # what the sink stores
    else:
        assert stamp < 0 or stamp > 253_402_214_400_000
