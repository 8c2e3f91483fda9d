"""Simulated sensors: reproducible, inside their ranges, smooth, with anomalies on demand."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from iot_common.schema import SensorReading
from iot_producer.simulation import Anomaly, Ranges, ScriptedSpike, SensorFleet

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def readings(fleet: SensorFleet, steps: int, index: int = 0) -> list[SensorReading]:
    sensor = fleet.sensors[index]
    out = []
    for step in range(steps):
        reading = fleet.next_reading(sensor, START + timedelta(seconds=step))
        if reading is not None:
            out.append(reading)
    return out


def test_same_seed_gives_same_fleet_and_values() -> None:
    """--seed makes a run reproducible: ids, metadata and values."""
    a, b = SensorFleet(5, seed=42), SensorFleet(5, seed=42)
    assert [s.sensor_id for s in a.sensors] == [s.sensor_id for s in b.sensors]
    assert [s.location for s in a.sensors] == [s.location for s in b.sensors]
    assert readings(a, 50) == readings(b, 50)
    assert [s.sensor_id for s in SensorFleet(5, seed=43).sensors] != [s.sensor_id for s in a.sensors]


def test_values_stay_in_range_with_two_decimals() -> None:
    """Simulated values stay within 20-30 °C and 30-80 %, with two decimals and UTC timestamps."""
    fleet = SensorFleet(3, seed=1)
    for index in range(3):
        for reading in readings(fleet, 3000, index):
            assert 20.0 <= reading.temperatura <= 30.0
            assert 30.0 <= reading.umidade <= 80.0
            assert round(reading.temperatura, 2) == reading.temperatura
            assert reading.timestamp.tzinfo is UTC


def test_values_evolve_smoothly() -> None:
    """Consecutive readings differ by little (a random walk, not white noise over 20-30 °C)."""
    values = [r.temperatura for r in readings(SensorFleet(1, seed=7), 2000)]
    steps = [abs(b - a) for a, b in itertools.pairwise(values)]
    assert max(steps) < 1.0
    assert sum(steps) / len(steps) < 0.2
    assert max(values) - min(values) > 0.5  # but it does move


def test_per_sensor_timestamps_strictly_increase_even_when_clock_repeats() -> None:
    """A sensor's timestamps strictly increase even when the clock returns the same instant."""
    fleet = SensorFleet(1, seed=3)
    sensor = fleet.sensors[0]
    stamps = [fleet.next_reading(sensor, START).timestamp for _ in range(5)]  # type: ignore[union-attr]
    assert all(b > a for a, b in itertools.pairwise(stamps))


def test_spike_anomaly_goes_above_the_range() -> None:
    """With anomalies on, spikes exceed the configured maximum (to exercise alerts)."""
    fleet = SensorFleet(1, seed=5, anomaly_rate=1.0, anomaly_kinds=(Anomaly.SPIKE,))
    assert any(r.temperatura > 30.0 for r in readings(fleet, 20))


def test_missing_anomaly_skips_readings() -> None:
    """The `missing` anomaly skips readings (a gap in the sensor's series)."""
    fleet = SensorFleet(1, seed=5, anomaly_rate=1.0, anomaly_kinds=(Anomaly.MISSING,))
    assert len(readings(fleet, 100)) < 100


def test_stuck_anomaly_repeats_values() -> None:
    """The `stuck` anomaly repeats the same values."""
    fleet = SensorFleet(1, seed=5, anomaly_rate=1.0, anomaly_kinds=(Anomaly.STUCK,))
    values = [(r.temperatura, r.umidade) for r in readings(fleet, 30)]
    assert any(a == b for a, b in itertools.pairwise(values))


def test_no_anomalies_by_default() -> None:
    """Without an anomaly rate every reading is produced."""
    fleet = SensorFleet(2, seed=9, ranges=Ranges(20, 30, 30, 80))
    assert len(readings(fleet, 500)) == 500


def test_a_scripted_spike_drives_only_the_first_sensor_above_the_range_for_its_readings() -> None:
    """`--spike 3:4` drives sensor 0 to about the peak for readings 3-6, and no other sensor."""
    spike = ScriptedSpike.parse("3:4", default_peak=35.0)
    fleet = SensorFleet(3, seed=9, spike=spike)
    start = datetime(2026, 11, 28, tzinfo=UTC)
    temperatures: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for second in range(10):
        for index, sensor in enumerate(fleet.sensors):
            reading = fleet.next_reading(sensor, start + timedelta(seconds=second))
            assert reading is not None
            temperatures[index].append(reading.temperatura)
    hot = [i for i, t in enumerate(temperatures[0]) if t > 30.0]
    assert hot == [3, 4, 5, 6]
    assert all(33.5 < temperatures[0][i] < 36.5 for i in hot)
    assert max(temperatures[1] + temperatures[2]) <= 30.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "expected START:READINGS[:PEAK]"),
        ("a:4", "whole numbers"),
        ("3:0", "READINGS >= 1"),
        ("-1:4", "START must be >= 0"),
        ("1:2:hot", "PEAK a number"),
    ],
)
def test_a_bad_spike_is_refused_with_the_format(text: str, message: str) -> None:
    """A malformed `--spike` is refused with the expected format in the message."""
    with pytest.raises(ValueError, match=r"^spike ") as caught:
        ScriptedSpike.parse(text, default_peak=35.0)
    assert message in str(caught.value)
