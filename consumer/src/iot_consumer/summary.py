"""What one batch derives from its valid readings, for everything written beside the rows.

A batch's summary holds the sensor-minute rollup buckets (as ``rollup_stage`` COPY text; the
sink stages the minutes and sums the hours from them in SQL, rollups.py), each sensor's range
and newest reading, each partition's newest timestamp (its alert clock), the UTC days touched,
and the readings themselves for the alert rules of the few sensors that can change state. The sink's rollups and the alert engine use
only this interface (:class:`BatchSummary`), whichever decoder produced the batch.

Two implementations: ``iot_fastpath.Summary`` (C, filled by the native decoder in the same pass
that writes the rows) and :class:`PythonSummary` here (the Python path, and the reference the
differential tests compare the C one with: tests/unit/test_fastpath.py). They agree exactly on
what they return, up to the text of a float (C writes ``%.17g``, Python ``repr``: the same
double once PostgreSQL parses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from iot_consumer.readings import Reading

MINUTE_US = 60_000_000
HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (sensor, temperatura min, max, umidade min, max, newest timestamp µs, partition of the newest)
SensorRange = tuple[str, float, float, float, float, int, int]
# (partition, sensor, timestamp µs, temperatura, umidade)
SummaryReading = tuple[int, str, int, float, float]


class BatchSummary(Protocol):
    """One batch's derived values (see the module docstring); ``stamp_us`` is µs since the epoch, UTC."""

    @property
    def rows(self) -> int:
        """Readings added."""

    def add_reading(self, partition: int, offset: int, sensor: str, stamp_us: int, t: float, h: float) -> None:
        """Add one valid reading (``sensor`` in canonical lower-case form)."""

    def rollup_copy(self, seconds: int) -> bytes:
        """``rollup_stage`` rows in COPY text: per minute (60, what the sink stages) or per hour
        (3600: the minutes merged, which the unit tests hold to a GROUP BY by hour)."""

    def sensors(self) -> list[SensorRange]:
        """Every sensor of the batch, in first-seen order: its ranges and newest reading by
        (timestamp, partition), which does not depend on the order the readings came in."""

    def clocks(self) -> list[tuple[int, int]]:
        """Every partition of the batch, in first-seen order, with its newest timestamp."""

    def readings_of(self, sensors: Iterable[str]) -> list[SummaryReading]:
        """The readings of ``sensors``, in partition (first-seen) then offset order."""

    def days(self) -> list[int]:
        """The UTC days touched, as days since 1970-01-01, in first-seen order."""


class PythonSummary:
    """:class:`BatchSummary` in Python: the same comparisons, in the same order, as the C one."""

    __slots__ = ("_days", "_minutes", "_partitions", "_readings", "_sensors")

    def __init__(self) -> None:
        # (partition, offset, sensor, stamp_us, t, h) in the order added
        self._readings: list[tuple[int, int, str, int, float, float]] = []
        # sensor -> [t_min, t_max, h_min, h_max, newest_us, newest_partition]
        self._sensors: dict[str, list[float]] = {}
        # (sensor, minute µs) -> [count, t_sum, t_min, t_max, h_sum, h_min, h_max]
        self._minutes: dict[tuple[str, int], list[float]] = {}
        self._partitions: dict[int, int] = {}  # partition -> newest stamp_us
        self._days: dict[int, None] = {}  # an ordered set

    @property
    def rows(self) -> int:
        return len(self._readings)

    @property
    def buckets(self) -> int:
        return len(self._minutes)

    def add_reading(self, partition: int, offset: int, sensor: str, stamp_us: int, t: float, h: float) -> None:
        self._readings.append((partition, offset, sensor, stamp_us, t, h))
        newest = self._partitions.get(partition)
        if newest is None or stamp_us > newest:
            self._partitions[partition] = stamp_us
        self._days[stamp_us // DAY_US] = None
        ranges = self._sensors.get(sensor)
        if ranges is None:
            self._sensors[sensor] = [t, t, h, h, stamp_us, partition]
        else:
            ranges[0] = min(ranges[0], t)
            ranges[1] = max(ranges[1], t)
            ranges[2] = min(ranges[2], h)
            ranges[3] = max(ranges[3], h)
            # newest by (timestamp, partition): the same whatever order the rows arrive in
            if stamp_us > ranges[4] or (stamp_us == ranges[4] and partition > ranges[5]):
                ranges[4] = stamp_us
                ranges[5] = partition
        key = (sensor, stamp_us - stamp_us % MINUTE_US)
        agg = self._minutes.get(key)
        if agg is None:
            self._minutes[key] = [1, t, t, t, h, h, h]
            return
        agg[0] += 1
        agg[1] += t
        if t < agg[2]:
            agg[2] = t
        elif t > agg[3]:
            agg[3] = t
        agg[4] += h
        if h < agg[5]:
            agg[5] = h
        elif h > agg[6]:
            agg[6] = h

    def rollup_copy(self, seconds: int) -> bytes:
        if seconds == 60:
            buckets = self._minutes
        elif seconds == 3600:
            buckets = self._hours()
        else:
            raise ValueError("seconds must be 60 or 3600")
        return "".join(
            f"{sensor}\t{_bucket_text(bucket_us)}\t{int(a[0])}\t{a[1]!r}\t{a[2]!r}\t{a[3]!r}\t{a[4]!r}\t{a[5]!r}\t{a[6]!r}\n"
            for (sensor, bucket_us), a in buckets.items()
        ).encode()

    def _hours(self) -> dict[tuple[str, int], list[float]]:
        hours: dict[tuple[str, int], list[float]] = {}
        for (sensor, minute_us), agg in self._minutes.items():
            key = (sensor, minute_us - minute_us % HOUR_US)
            into = hours.get(key)
            if into is None:
                hours[key] = list(agg)
                continue
            into[0] += agg[0]
            into[1] += agg[1]
            into[2] = min(into[2], agg[2])
            into[3] = max(into[3], agg[3])
            into[4] += agg[4]
            into[5] = min(into[5], agg[5])
            into[6] = max(into[6], agg[6])
        return hours

    def sensors(self) -> list[SensorRange]:
        return [(s, r[0], r[1], r[2], r[3], int(r[4]), int(r[5])) for s, r in self._sensors.items()]

    def clocks(self) -> list[tuple[int, int]]:
        return list(self._partitions.items())

    def readings_of(self, sensors: Iterable[str]) -> list[SummaryReading]:
        wanted = set(sensors)
        order = {partition: seq for seq, partition in enumerate(self._partitions)}
        picked = sorted((r for r in self._readings if r[2] in wanted), key=lambda r: (order[r[0]], r[1]))
        return [(p, s, stamp, t, h) for p, _offset, s, stamp, t, h in picked]

    def days(self) -> list[int]:
        return list(self._days)

    def without(self, readings: set[tuple[int, int]]) -> PythonSummary:
        """The same summary without the readings at these (partition, offset): rows PostgreSQL refused."""
        kept = PythonSummary()
        for reading in self._readings:
            if (reading[0], reading[1]) not in readings:
                kept.add_reading(*reading)
        return kept


def summary_of(readings: Iterable[Reading]) -> PythonSummary:
    """A summary of ``readings`` in the order given (each partition's readings numbered as offsets)."""
    summary = PythonSummary()
    offsets: dict[int, int] = {}
    for partition, sensor, stamp, t, h in readings:
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        summary.add_reading(partition, offset, sensor, to_micros(stamp), t, h)
    return summary


def to_micros(stamp: datetime) -> int:
    return (stamp - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _bucket_text(bucket_us: int) -> str:
    """A bucket's start as the C writer prints it: ``YYYY-MM-DD HH:MM:00+00``."""
    return from_micros(bucket_us).strftime("%Y-%m-%d %H:%M:00+00")
