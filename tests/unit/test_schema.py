"""The reading schema: what is accepted, and the reason given for every rejection."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from iot_common.schema import (
    DEFAULT_LIMITS,
    InvalidReading,
    RejectReason,
    SensorReading,
    validate_reading,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SENSOR = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"


def payload(**changes: object) -> bytes:
    body: dict[str, object] = {
        "sensor_id": SENSOR,
        "timestamp": "2026-11-27T11:59:59.123456+00:00",
        "temperatura": 24.17,
        "umidade": 55.02,
    }
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return orjson.dumps(body)


def test_valid_reading_round_trips_through_json() -> None:
    """A SensorReading encodes to the wire format and decodes back to an equal value."""
    reading = SensorReading(uuid.UUID(SENSOR), datetime(2026, 11, 27, 11, 0, tzinfo=UTC), 24.17, 55.02)
    assert SensorReading.from_json(reading.to_json(), now=NOW) == reading
    assert orjson.loads(reading.to_json()) == {
        "sensor_id": SENSOR,
        "timestamp": "2026-11-27T11:00:00+00:00",
        "temperatura": 24.17,
        "umidade": 55.02,
    }


def test_non_utc_offset_is_converted_to_utc() -> None:
    """A reading stamped in another zone keeps its instant and comes out in UTC."""
    valid = validate_reading(payload(timestamp="2026-11-27T08:00:00-03:00"), now=NOW)
    assert valid.timestamp == datetime(2026, 11, 27, 11, 0, tzinfo=UTC)
    assert valid.timestamp.tzinfo is UTC


def test_z_suffix_and_integers_are_accepted() -> None:
    """'Z' means UTC and integral numbers are numbers."""
    valid = validate_reading(payload(timestamp="2026-11-27T11:00:00Z", temperatura=25, umidade=50), now=NOW)
    assert valid.temperatura == 25.0
    assert isinstance(valid.temperatura, float)


def test_uppercase_uuid_is_canonicalised() -> None:
    """Upper-case sensor ids are stored in the canonical lower-case form."""
    assert validate_reading(payload(sensor_id=SENSOR.upper()), now=NOW).sensor_id == SENSOR


REJECTIONS = [
    (b"", RejectReason.EMPTY),
    (None, RejectReason.EMPTY),
    (b"x" * (DEFAULT_LIMITS.max_payload_bytes + 1), RejectReason.TOO_LARGE),
    (b'{"sensor_id": "\xff\xfe"}', RejectReason.NOT_UTF8),
    (b"not json at all", RejectReason.NOT_JSON),
    (b'{"sensor_id": NaN}', RejectReason.NOT_JSON),
    (b"[" * 2000 + b"]" * 2000, RejectReason.NOT_JSON),  # nesting deeper than the parser allows
    (b"[1, 2, 3]", RejectReason.NOT_OBJECT),
    (b'"a string"', RejectReason.NOT_OBJECT),
    (payload(umidade=...), RejectReason.MISSING_FIELD),
    (payload(temperatura="24.1"), RejectReason.WRONG_TYPE),
    (payload(temperatura=True), RejectReason.WRONG_TYPE),
    (payload(umidade=None), RejectReason.WRONG_TYPE),
    (payload(sensor_id=12345), RejectReason.WRONG_TYPE),
    (payload(timestamp=1732700000), RejectReason.WRONG_TYPE),
    (payload(temperatura=400.0), RejectReason.OUT_OF_RANGE),
    (payload(umidade=-1), RejectReason.OUT_OF_RANGE),
    (payload(sensor_id="not-a-uuid"), RejectReason.BAD_UUID),
    (payload(sensor_id="'; DROP TABLE sensores; --"), RejectReason.BAD_UUID),
    (payload(timestamp="yesterday"), RejectReason.BAD_TIMESTAMP),
    (payload(timestamp="2026-11-27T11:00:00"), RejectReason.NAIVE_TIMESTAMP),
    (payload(timestamp="1970-01-01T00:00:00+00:00"), RejectReason.TOO_OLD),
    (payload(timestamp="2030-01-01T00:00:00+00:00"), RejectReason.FUTURE),
    (payload(timestamp="0001-01-01T00:00:00+02:34:48"), RejectReason.OUT_OF_RANGE),  # found by hypothesis
]


@pytest.mark.parametrize(("raw", "reason"), REJECTIONS)
def test_every_defect_has_its_reason(raw: bytes | None, reason: RejectReason) -> None:
    """Each kind of bad message is rejected with InvalidReading and the matching reason."""
    with pytest.raises(InvalidReading) as caught:
        validate_reading(raw, now=NOW)
    assert caught.value.reason is reason
    assert caught.value.detail


def test_newer_firmware_fields_are_kept_not_rejected() -> None:
    """Schema evolution: fields beyond the four known ones are accepted and returned as
    extras (nested values too); the known fields are validated exactly as before."""
    valid = validate_reading(payload(bateria=91, firmware={"versao": "2.1", "canais": [1, 2]}), now=NOW)
    assert valid.extras == {"bateria": 91, "firmware": {"versao": "2.1", "canais": [1, 2]}}
    assert (valid.temperatura, valid.umidade) == (24.17, 55.02)
    assert validate_reading(payload(), now=NOW).extras is None


def test_extra_fields_do_not_excuse_a_missing_or_wrong_known_field() -> None:
    """A reading with extras still needs all four fields, with the right types."""
    with pytest.raises(InvalidReading) as caught:
        validate_reading(payload(umidade=..., bateria=91), now=NOW)
    assert caught.value.reason is RejectReason.MISSING_FIELD
    with pytest.raises(InvalidReading) as caught:
        validate_reading(payload(temperatura="24.1", bateria=91), now=NOW)
    assert caught.value.reason is RejectReason.WRONG_TYPE


ACCEPTED_TIMESTAMPS = [
    ("2026-11-27T11:00:00+00:00", "2026-11-27T11:00:00+00:00"),
    ("2026-11-27T11:00:00Z", "2026-11-27T11:00:00+00:00"),
    ("2026-11-27T11:00:00.123456Z", "2026-11-27T11:00:00.123456+00:00"),
    ("2026-11-27T11:00:00.123+00:00", "2026-11-27T11:00:00.123000+00:00"),
    ("2026-11-27T08:00:00-03:00", "2026-11-27T11:00:00+00:00"),
    ("2026-11-27 11:00:00+00:00", "2026-11-27T11:00:00+00:00"),
    ("20261127T110000Z", "2026-11-27T11:00:00+00:00"),
]


@pytest.mark.parametrize(("given", "stored"), ACCEPTED_TIMESTAMPS)
def test_documented_timestamp_forms_are_accepted_as_utc(given: str, stored: str) -> None:
    """The timestamp forms docs/READINGS.md lists are accepted and stored as the same instant in UTC."""
    assert validate_reading(payload(timestamp=given), now=NOW).timestamp.isoformat() == stored


def test_overflowing_number_is_not_json() -> None:
    """1e999 would be infinity: the strict parser refuses it, so no inf reaches the table."""
    raw = payload(temperatura=1.5).replace(b"1.5", b"1e999")
    with pytest.raises(InvalidReading) as caught:
        validate_reading(raw, now=NOW)
    assert caught.value.reason is RejectReason.NOT_JSON
    assert "infinity" in caught.value.detail


def test_naive_sensor_reading_cannot_be_built() -> None:
    """Timestamps are timezone-aware by construction."""
    with pytest.raises(ValueError, match="timezone-aware"):
        SensorReading(uuid.UUID(SENSOR), datetime(2026, 1, 1), 20.0, 50.0)


def test_small_clock_skew_is_tolerated() -> None:
    """A sensor clock a few minutes ahead is not an error (the bound is one day)."""
    ahead = (NOW + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert validate_reading(payload(timestamp=ahead), now=NOW).timestamp == NOW + timedelta(minutes=5)
