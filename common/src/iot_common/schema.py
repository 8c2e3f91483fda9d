"""The ``SensorReading`` message: its JSON form on the topic and its validation.

A reading on the wire is a JSON object with at least these fields::

    {"sensor_id": "6f1c...-...", "timestamp": "2026-11-27T21:30:00.123456+00:00",
     "temperatura": 24.17, "umidade": 55.02}

Further fields (a newer firmware's ``"bateria": 91``) are accepted and kept, as ``extras``;
docs/READINGS.md states the accepted format precisely.

Validation never raises anything but :class:`InvalidReading`, whose ``reason`` is one of a
small fixed set (used as a metric label and stored with the dead letter) and whose
``detail`` says exactly what was wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple
from uuid import UUID

import orjson

FIELDS = ("sensor_id", "timestamp", "temperatura", "umidade")
_FIELD_SET = frozenset(FIELDS)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_MATCH = _UUID_RE.fullmatch
_ZERO = timedelta(0)


class RejectReason(StrEnum):
    """Why a message is not a valid reading (bounded set: safe as a metric label)."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    EXTRA_FIELD = "extra_field"  # no longer produced (extra fields are kept); old dead letters carry it
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_UUID = "bad_uuid"
    BAD_TIMESTAMP = "bad_timestamp"
    NAIVE_TIMESTAMP = "naive_timestamp"
    # Outside the acceptance window (a device with a dead clock, or one set to the future).
    TOO_OLD = "too_old"
    FUTURE = "future"
    # A NUL character (``\u0000``) in a field kept as jsonb: PostgreSQL cannot store it.
    NUL_CHARACTER = "nul_character"
    # A compressed record batch that decompresses to more than the consumer's limit (a crafted
    # "decompression bomb", or a producer batching far past the norm): dead-lettered whole, one
    # dead letter for all its offsets, so that it cannot exhaust the consumer's memory.
    BATCH_TOO_LARGE = "batch_too_large"


class InvalidReading(ValueError):
    """A message that is not a valid reading, with a machine-readable reason."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ReadingLimits:
    """Physical sanity bounds; readings outside are dead-lettered, not stored.

    The defaults are the operating range of common temperature/humidity sensors, far wider
    than the simulator's 20-30 °C / 30-80 % so that real anomalies (a 45 °C spike) are kept.
    """

    temperature_min: float = -40.0
    temperature_max: float = 85.0
    humidity_min: float = 0.0
    humidity_max: float = 100.0
    max_payload_bytes: int = 4096
    # The acceptance window: readings stamped before ``earliest``, more than ``max_age`` ago
    # (None: no such bound) or more than ``max_clock_skew`` ahead of "now" are dead letters.
    earliest: datetime = field(default_factory=lambda: datetime(2000, 1, 1, tzinfo=UTC))
    max_clock_skew: timedelta = timedelta(days=1)
    max_age: timedelta | None = None
    # The most one compressed record batch may decompress to (its compressed size is the fetch's
    # to bound, not what it expands to): 32x the 1 MiB a broker accepts per batch by default.
    max_batch_bytes: int = 32 * 1024 * 1024

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """The oldest and newest timestamps accepted at ``now``."""
        earliest = self.earliest
        if self.max_age is not None:
            earliest = max(earliest, now - self.max_age)
        return earliest, now + self.max_clock_skew

    def at(self, now: datetime) -> ReadingLimits:
        """These limits with the window fixed at ``now`` (once per batch, not per message)."""
        if self.max_age is None:
            return self
        return replace(self, earliest=self.window(now)[0], max_age=None)


DEFAULT_LIMITS = ReadingLimits()


class ValidReading(NamedTuple):
    """A validated reading in the form the consumer writes: canonical UUID text, UTC time,
    and the fields beyond the four known ones (None when there are none)."""

    sensor_id: str
    timestamp: datetime
    temperatura: float
    umidade: float
    extras: dict[str, Any] | None = None


def _number(obj: dict[str, Any], name: str, low: float, high: float) -> float:
    value = obj[name]
    kind = type(value)
    if kind is not float and kind is not int:  # bool is an int subclass: excluded by `is`
        raise InvalidReading(RejectReason.WRONG_TYPE, f"{name} must be a number, got {kind.__name__}")
    if not math.isfinite(value):
        raise InvalidReading(RejectReason.NOT_FINITE, f"{name} is {value}")
    if not low <= value <= high:
        raise InvalidReading(RejectReason.OUT_OF_RANGE, f"{name}={value} outside [{low}, {high}]")
    return float(value)


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf_exc:
            raise InvalidReading(RejectReason.NOT_UTF8, str(utf_exc)) from None
        raise InvalidReading(RejectReason.NOT_JSON, str(exc)) from None


def validate_reading(
    raw: bytes | None, limits: ReadingLimits = DEFAULT_LIMITS, now: datetime | None = None
) -> ValidReading:
    """Decode and check one message value; raise :class:`InvalidReading` on any defect.

    ``now`` bounds how far in the future a timestamp may be (callers validating a batch pass
    one value for the whole batch). The common case - a well-formed reading stamped in UTC -
    takes one straight path of cheap checks (this runs once per message); anything else goes
    through :func:`_explain`, which finds the exact reason.
    """
    try:
        if raw and len(raw) <= limits.max_payload_bytes:
            obj = orjson.loads(raw)
            if type(obj) is dict and obj.keys() == _FIELD_SET:
                sensor_id = obj["sensor_id"]
                stamp = obj["timestamp"]
                temperature = obj["temperatura"]
                humidity = obj["umidade"]
                t_type = type(temperature)
                h_type = type(humidity)
                if (
                    type(sensor_id) is str
                    and len(sensor_id) == 36
                    and _UUID_MATCH(sensor_id) is not None
                    and type(stamp) is str
                    and (t_type is float or t_type is int)
                    and (h_type is float or h_type is int)
                    and limits.temperature_min <= temperature <= limits.temperature_max
                    and limits.humidity_min <= humidity <= limits.humidity_max
                ):
                    when = datetime.fromisoformat(stamp)
                    if (
                        when.tzinfo is UTC
                        and limits.max_age is None
                        and limits.earliest <= when <= (now or datetime.now(UTC)) + limits.max_clock_skew
                    ):
                        return ValidReading(sensor_id.lower(), when, float(temperature), float(humidity))
    except (orjson.JSONDecodeError, ValueError, OverflowError):
        pass  # the slow path below names the defect
    return _explain(raw, limits, now)


def _explain(raw: bytes | None, limits: ReadingLimits = DEFAULT_LIMITS, now: datetime | None = None) -> ValidReading:
    """The slow, exhaustive check: the precise reason for a defect, or the converted reading
    (e.g. a timestamp with a non-UTC offset)."""
    if not raw:
        raise InvalidReading(RejectReason.EMPTY, "empty message value")
    if len(raw) > limits.max_payload_bytes:
        raise InvalidReading(RejectReason.TOO_LARGE, f"{len(raw)} bytes > {limits.max_payload_bytes}")
    obj = _parse_json(raw)
    if type(obj) is not dict:
        raise InvalidReading(RejectReason.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    missing = sorted(_FIELD_SET - obj.keys())
    if missing:
        raise InvalidReading(RejectReason.MISSING_FIELD, f"missing {', '.join(missing)}")
    extras = {k: v for k, v in obj.items() if k not in _FIELD_SET} or None

    sensor_id = obj["sensor_id"]
    if type(sensor_id) is not str:
        raise InvalidReading(RejectReason.WRONG_TYPE, f"sensor_id must be a string, got {type(sensor_id).__name__}")
    if len(sensor_id) != 36 or _UUID_RE.fullmatch(sensor_id) is None:
        raise InvalidReading(RejectReason.BAD_UUID, f"sensor_id {sensor_id[:64]!r} is not a UUID")

    stamp = obj["timestamp"]
    if type(stamp) is not str:
        raise InvalidReading(RejectReason.WRONG_TYPE, f"timestamp must be a string, got {type(stamp).__name__}")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        raise InvalidReading(RejectReason.BAD_TIMESTAMP, f"timestamp {stamp[:64]!r} is not ISO-8601") from None
    offset = when.utcoffset()
    if offset is None:
        raise InvalidReading(RejectReason.NAIVE_TIMESTAMP, f"timestamp {stamp[:64]!r} has no UTC offset")
    if offset != _ZERO or when.tzinfo is not UTC:
        try:
            when = when.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+02:00 is before year 1 in UTC
            raise InvalidReading(RejectReason.OUT_OF_RANGE, f"timestamp {stamp[:64]!r} out of range") from None
    earliest, latest = limits.window(now or datetime.now(UTC))
    if when < earliest:
        raise InvalidReading(RejectReason.TOO_OLD, f"timestamp {stamp[:64]} before {earliest.isoformat()}")
    if when > latest:
        raise InvalidReading(RejectReason.FUTURE, f"timestamp {stamp[:64]} after {latest.isoformat()}")
    if extras is not None and b"\\u0000" in raw and _holds_nul(extras):
        raise InvalidReading(
            RejectReason.NUL_CHARACTER, "a field beyond the four holds a NUL character (jsonb cannot store it)"
        )

    return ValidReading(
        sensor_id.lower(),
        when,
        _number(obj, "temperatura", limits.temperature_min, limits.temperature_max),
        _number(obj, "umidade", limits.humidity_min, limits.humidity_max),
        extras,
    )


def _holds_nul(value: Any) -> bool:
    """True when a JSON value holds a NUL character in a string or a key (jsonb refuses both)."""
    if type(value) is str:
        return "\x00" in value
    if type(value) is dict:
        return any("\x00" in k or _holds_nul(v) for k, v in value.items())
    if type(value) is list:
        return any(_holds_nul(v) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class SensorReading:
    """One measurement of one sensor at one instant (timestamps are timezone-aware UTC)."""

    sensor_id: UUID
    timestamp: datetime
    temperatura: float
    umidade: float

    def __post_init__(self) -> None:
        if self.timestamp.utcoffset() is None:
            raise ValueError("SensorReading.timestamp must be timezone-aware")

    def to_dict(self) -> dict[str, Any]:
        return {
            "sensor_id": str(self.sensor_id),
            "timestamp": self.timestamp.astimezone(UTC).isoformat(),
            "temperatura": self.temperatura,
            "umidade": self.umidade,
        }

    def to_json(self) -> bytes:
        """The message value as it goes on the topic."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(
        cls, raw: bytes, limits: ReadingLimits = DEFAULT_LIMITS, now: datetime | None = None
    ) -> SensorReading:
        """Decode and validate a message value (raises :class:`InvalidReading`)."""
        valid = validate_reading(raw, limits, now)
        return cls(UUID(valid.sensor_id), valid.timestamp, valid.temperatura, valid.umidade)
