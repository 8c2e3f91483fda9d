"""The producer's main loop: drift-free pacing over a fleet of sensors."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_producer.publisher import ReadingPublisher
from iot_producer.simulation import SensorFleet

log = get_logger(__name__)

SKIPPED = Counter("iot_producer_readings_skipped_total", "Readings not emitted because of a 'missing' anomaly")
SENSORS = Gauge("iot_producer_sensors", "Simulated sensors")
TARGET_RATE = Gauge("iot_producer_target_rate", "Target readings per second (0 = as fast as possible)")

# Sleeping for less than this costs more than it saves; run slightly early instead.
_MIN_SLEEP_S = 0.002


@dataclass(frozen=True)
class Pacing:
    """How many readings per second in total (None: as fast as possible), and when to stop."""

    rate: float | None
    count: int | None = None
    duration_s: float | None = None


def run(fleet: SensorFleet, publisher: ReadingPublisher, pacing: Pacing, stop: StopFlag) -> int:
    """Emit readings round-robin over the fleet until count, duration or a stop signal.

    Reading k is due at ``start + k / rate``: lateness in one step is caught up in the next
    instead of accumulating (no ``sleep(interval)`` after the work). Returns the number of
    time slots used (emitted + skipped).
    """
    sensors = fleet.sensors
    n = len(sensors)
    SENSORS.set(n)
    TARGET_RATE.set(pacing.rate or 0)
    interval = 1.0 / pacing.rate if pacing.rate else 0.0
    start = time.monotonic()
    deadline = start + pacing.duration_s if pacing.duration_s is not None else None
    k = 0
    while not stop.is_set():
        if pacing.count is not None and k >= pacing.count:
            break
        now_mono = time.monotonic()
        if deadline is not None and now_mono >= deadline:
            break
        if interval:
            ahead = start + k * interval - now_mono
            if ahead > _MIN_SLEEP_S and stop.wait(ahead):
                break
        sensor = sensors[k % n]
        reading = fleet.next_reading(sensor, datetime.now(UTC))
        if reading is None:
            SKIPPED.inc()
        else:
            publisher.publish(reading, sensor.key)
        k += 1
    elapsed = time.monotonic() - start
    log.info(
        "generation_finished",
        slots=k,
        seconds=round(elapsed, 3),
        rate=round(k / elapsed, 1) if elapsed > 0 else None,
        stopped_by_signal=stop.is_set(),
    )
    return k
