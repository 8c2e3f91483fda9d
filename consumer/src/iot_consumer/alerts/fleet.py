"""The fleet as the silence rule sees it: when each known sensor was last heard, and a timer
wheel per partition that hands over the sensors whose deadline has passed - so finding the
silent ones costs what they are, not what the fleet is.

Memory is what bounds a fleet of a million sensors, so a known sensor costs one dict entry (its
id and one int: the newest timestamp in microseconds and the partition, packed together) and
one slot in a bucket list per silence rule: no object per sensor, none per sensor per rule.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from datetime import datetime

from iot_consumer.summary import from_micros

_PARTITION_BITS = 24  # Kafka partitions of one topic stay far below 16.7 million
_PARTITION_MASK = (1 << _PARTITION_BITS) - 1
BUCKET_US = 1_000_000  # a wheel's bucket: deadlines in the same second share one list


class LastSeen(Mapping[str, tuple[int, datetime]]):
    """Sensor → (partition, newest reading timestamp), stored packed in one int per sensor."""

    __slots__ = ("packed",)

    def __init__(self) -> None:
        self.packed: dict[str, int] = {}

    def __getitem__(self, sensor: str) -> tuple[int, datetime]:
        value = self.packed[sensor]
        return value & _PARTITION_MASK, from_micros(value >> _PARTITION_BITS)

    def __iter__(self) -> Iterator[str]:
        return iter(self.packed)

    def __len__(self) -> int:
        return len(self.packed)

    def __contains__(self, sensor: object) -> bool:
        return sensor in self.packed

    def note(self, sensor: str, partition: int, stamp_us: int) -> bool:
        """Remember the sensor's newest reading; True when the sensor was not known before."""
        if not 0 <= partition <= _PARTITION_MASK:
            raise ValueError(f"partition {partition} out of range")
        new = sensor not in self.packed
        self.packed[sensor] = (stamp_us << _PARTITION_BITS) | partition
        return new

    def entries(self) -> Iterator[tuple[str, int, int]]:
        """(sensor, partition, timestamp in µs) of every known sensor."""
        for sensor, value in self.packed.items():
            yield sensor, value & _PARTITION_MASK, value >> _PARTITION_BITS

    def of(self, sensor: str) -> tuple[int, int] | None:
        """(partition, timestamp in µs), or None for a sensor not known."""
        value = self.packed.get(sensor)
        if value is None:
            return None
        return value & _PARTITION_MASK, value >> _PARTITION_BITS


class SilenceWheel:
    """Per partition, the sensors armed for one silence rule, bucketed by the second their
    deadline falls in. Lazy: an entry's deadline is never later than the sensor's true one (a
    reading moves the true one later without touching the wheel), so whoever takes an entry
    checks it and pushes back what is not due. A sensor has at most one entry per partition."""

    __slots__ = ("_buckets", "_seconds", "entries", "taken")

    def __init__(self) -> None:
        self._buckets: dict[int, dict[int, list[str]]] = {}  # partition → second → sensors
        self._seconds: dict[int, list[int]] = {}  # partition → heap of seconds that have a bucket
        self.entries = 0
        self.taken = 0  # entries handed over so far (what finding silence has looked at)

    def push(self, partition: int, deadline_us: int, sensor: str) -> None:
        second = deadline_us // BUCKET_US
        buckets = self._buckets.setdefault(partition, {})
        bucket = buckets.get(second)
        if bucket is None:
            buckets[second] = bucket = []
            heapq.heappush(self._seconds.setdefault(partition, []), second)
        bucket.append(sensor)
        self.entries += 1

    def take_due(self, partition: int, clock_us: int) -> list[str]:
        """Remove and return the entries of every bucket whose deadlines have all passed at
        ``clock_us`` (a bucket is taken whole once its last microsecond is due, so a busy
        second is never re-scanned: silence is noticed up to one second after its deadline,
        and the alert is stamped with the deadline itself)."""
        seconds = self._seconds.get(partition)
        if not seconds:
            return []
        buckets = self._buckets[partition]
        last_due = (clock_us + 1) // BUCKET_US - 1
        taken: list[str] = []
        while seconds and seconds[0] <= last_due:
            taken += buckets.pop(heapq.heappop(seconds))
        self.entries -= len(taken)
        self.taken += len(taken)
        return taken

    def clear(self) -> None:
        self._buckets.clear()
        self._seconds.clear()
        self.entries = 0
