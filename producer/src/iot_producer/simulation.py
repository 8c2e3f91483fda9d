"""Simulated sensors: smooth, bounded values with a daily cycle, and optional anomalies.

Each sensor keeps a state that evolves as a mean-reverting random walk around a baseline
that follows the time of day, so consecutive readings look like a real room, not noise.
Anomaly episodes (spike above the range, stuck values, missing readings) can be switched on
to exercise alerting downstream.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from faker import Faker

from iot_common.schema import SensorReading

_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(instant: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact integer arithmetic)."""
    return (instant - _EPOCH) // _MICROSECOND


def utc_from_us(stamp_us: int) -> datetime:
    """The UTC instant ``stamp_us`` microseconds after the epoch."""
    return _EPOCH + timedelta(microseconds=stamp_us)


class Anomaly(StrEnum):
    SPIKE = "spike"  # temperature above the configured maximum
    STUCK = "stuck"  # the same values repeated
    MISSING = "missing"  # no reading at all


@dataclass(frozen=True, slots=True)
class Ranges:
    """Where normal readings live (the seed: 20-30 °C, 30-80 %)."""

    temperature_min: float = 20.0
    temperature_max: float = 30.0
    humidity_min: float = 30.0
    humidity_max: float = 80.0

    def __post_init__(self) -> None:
        if not self.temperature_min < self.temperature_max:
            raise ValueError("temperature min must be below max")
        if not self.humidity_min < self.humidity_max:
            raise ValueError("humidity min must be below max")


@dataclass(frozen=True, slots=True)
class ScriptedSpike:
    """A deterministic episode for demos and tests: sensor ``sensor_index`` reads ``peak`` °C
    (± 0.3) from its ``start``-th reading (0-based) for ``readings`` readings."""

    start: int
    readings: int
    peak: float
    sensor_index: int = 0

    @classmethod
    def parse(cls, text: str, default_peak: float) -> ScriptedSpike:
        """``START:READINGS[:PEAK]``, e.g. ``10:20`` or ``10:20:36.5``."""
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"spike {text!r}: expected START:READINGS[:PEAK], e.g. 10:20 or 10:20:36.5")
        try:
            start, readings = int(parts[0]), int(parts[1])
            peak = float(parts[2]) if len(parts) == 3 else default_peak
        except ValueError:
            raise ValueError(f"spike {text!r}: START and READINGS are whole numbers, PEAK a number") from None
        if start < 0 or readings < 1:
            raise ValueError(f"spike {text!r}: START must be >= 0 and READINGS >= 1")
        return cls(start, readings, peak)


@dataclass(slots=True)
class Sensor:
    """One simulated device: stable identity and metadata, evolving state."""

    sensor_id: uuid.UUID
    name: str
    location: str
    latitude: float
    longitude: float
    key: bytes  # Kafka message key: the UUID's text, so per-sensor order is kept
    temperature: float
    humidity: float
    phase: float  # offset of this sensor's daily cycle, in radians
    last_stamp_us: int | None = None  # the last reading's timestamp, microseconds since the epoch
    anomaly: Anomaly | None = None
    anomaly_left: int = 0
    anomaly_peak: float = 0.0
    readings: int = field(default=0)


def _reflect(value: float, low: float, high: float) -> float:
    """Keep a walk inside [low, high] by bouncing off the bounds."""
    if value < low:
        value = low + (low - value)
    elif value > high:
        value = high - (value - high)
    return min(max(value, low), high)


class SensorFleet:
    """A reproducible set of sensors (same ``seed`` → same ids, metadata and values)."""

    def __init__(
        self,
        count: int,
        *,
        seed: int,
        ranges: Ranges = Ranges(),
        anomaly_rate: float = 0.0,
        anomaly_kinds: tuple[Anomaly, ...] = tuple(Anomaly),
        spike: ScriptedSpike | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("a fleet needs at least one sensor")
        if not 0.0 <= anomaly_rate <= 1.0:
            raise ValueError("anomaly rate must be within [0, 1]")
        self.seed = seed
        self.ranges = ranges
        self.anomaly_rate = anomaly_rate
        self.anomaly_kinds = anomaly_kinds or tuple(Anomaly)
        self._rng = random.Random(seed)
        r = ranges
        self._bounds = (
            r.temperature_min,
            r.temperature_max,
            (r.temperature_min + r.temperature_max) / 2,
            (r.temperature_max - r.temperature_min) / 4,
            r.humidity_min,
            r.humidity_max,
            (r.humidity_min + r.humidity_max) / 2,
            (r.humidity_max - r.humidity_min) / 4,
        )
        self._angle_second: int | None = None
        self._angle = 0.0
        faker = Faker("pt_BR")
        faker.seed_instance(seed)
        self.sensors = [self._make_sensor(faker, index) for index in range(count)]
        if spike is not None and not 0 <= spike.sensor_index < count:
            raise ValueError(f"spike sensor index {spike.sensor_index} is not within the {count} sensors")
        self.spike = spike
        self._spiked = self.sensors[spike.sensor_index] if spike is not None else None

    def _make_sensor(self, faker: Faker, index: int) -> Sensor:
        r = self.ranges
        sensor_id = uuid.UUID(int=self._rng.getrandbits(128), version=4)
        city = faker.city()
        return Sensor(
            sensor_id=sensor_id,
            name=f"sensor-{index:04d}-{city.lower().replace(' ', '-')}",
            location=f"{city}, {faker.estado_sigla()}",
            latitude=float(faker.latitude()),
            longitude=float(faker.longitude()),
            key=str(sensor_id).encode(),
            temperature=self._rng.uniform(r.temperature_min + 2, r.temperature_max - 2),
            humidity=self._rng.uniform(r.humidity_min + 5, r.humidity_max - 5),
            phase=self._rng.uniform(-0.5, 0.5),
        )

    def _step_values(self, sensor: Sensor, stamp_us: int) -> None:
        # The hot loop of the producer (one call per reading): what depends only on the ranges or
        # on the second is computed once (the same operations in the same order, so the same
        # values), and a value inside its range skips the reflection call.
        second = stamp_us // 1_000_000
        if second != self._angle_second:
            # Daily cycle (UTC): warmest mid-afternoon, humidity moves the other way.
            day_fraction = (second % 86400) / 86400
            self._angle = 2 * math.pi * (day_fraction - 0.375)
            self._angle_second = second
        cycle = math.sin(self._angle + sensor.phase)
        t_low, t_high, t_mid, t_amp, h_low, h_high, h_mid, h_amp = self._bounds
        t_target = t_mid + t_amp * cycle
        h_target = h_mid - h_amp * cycle
        gauss = self._rng.gauss
        temperature = sensor.temperature + 0.05 * (t_target - sensor.temperature) + gauss(0, 0.08)
        if not t_low <= temperature <= t_high:
            temperature = _reflect(temperature, t_low, t_high)
        sensor.temperature = temperature
        humidity = sensor.humidity + 0.05 * (h_target - sensor.humidity) + gauss(0, 0.25)
        if not h_low <= humidity <= h_high:
            humidity = _reflect(humidity, h_low, h_high)
        sensor.humidity = humidity

    def _maybe_start_anomaly(self, sensor: Sensor) -> None:
        if sensor.anomaly is None and self.anomaly_rate and self._rng.random() < self.anomaly_rate:
            sensor.anomaly = self._rng.choice(self.anomaly_kinds)
            sensor.anomaly_left = self._rng.randint(5, 30)
            sensor.anomaly_peak = self.ranges.temperature_max + self._rng.uniform(2.0, 12.0)

    def next_reading(self, sensor: Sensor, now: datetime) -> SensorReading | None:
        """The sensor's reading at ``now`` (UTC), or None when it is in a 'missing' episode."""
        values = self.next_values(sensor, epoch_us(now))
        if values is None:
            return None
        stamp_us, temperature, humidity = values
        return SensorReading(sensor.sensor_id, utc_from_us(stamp_us), temperature, humidity)

    def next_values(self, sensor: Sensor, now_us: int) -> tuple[int, float, float] | None:
        """The sensor's reading at ``now_us`` (microseconds since the epoch) as (timestamp in
        microseconds, temperature, humidity), or None in a 'missing' episode: what
        :meth:`next_reading` returns, without building objects (the producer's hot loop)."""
        self._maybe_start_anomaly(sensor)
        anomaly = sensor.anomaly
        if anomaly is not None:
            sensor.anomaly_left -= 1
            if sensor.anomaly_left <= 0:
                sensor.anomaly = None
        if anomaly is Anomaly.MISSING:
            return None
        if anomaly is not Anomaly.STUCK:
            self._step_values(sensor, now_us)
        temperature = sensor.temperature
        if anomaly is Anomaly.SPIKE:
            temperature = sensor.anomaly_peak + self._rng.gauss(0, 0.3)
        spike = self.spike
        if sensor is self._spiked and spike is not None and 0 <= sensor.readings - spike.start < spike.readings:
            temperature = spike.peak + self._rng.gauss(0, 0.3)
        # Per-sensor timestamps strictly increase, even when generating faster than 1/µs.
        last = sensor.last_stamp_us
        if last is not None and now_us <= last:
            now_us = last + 1
        sensor.last_stamp_us = now_us
        sensor.readings += 1
        return now_us, round(temperature, 2), round(sensor.humidity, 2)
