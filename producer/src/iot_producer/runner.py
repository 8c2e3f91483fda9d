"""The producer's main loop: drift-free pacing over a fleet of sensors."""

from __future__ import annotations

import time
from dataclasses import dataclass

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

# Readings generated between two hand-offs to the client, at most: enough that the per-chunk
# costs (a clock read, one append per partition) vanish beside the per-reading ones, few enough
# that a chunk takes ~5 ms at 100,000 readings/s, the default linger.
CHUNK = 512

# When paced, readings due within this long are generated together: a loop that keeps up would
# otherwise hand over a few readings per turn and pay the per-chunk costs for each few (at
# 100,000/s and 100,000 sensors that doubled the CPU per reading). 200 readings at 100,000/s;
# one at a time below 500/s. Delays a reading by 2 ms at most, under the 5 ms linger.
COALESCE_S = 0.002


@dataclass(frozen=True)
class Pacing:
    """How many readings per second in total (None: as fast as possible), and when to stop."""

    rate: float | None
    count: int | None = None
    duration_s: float | None = None


def run(fleet: SensorFleet, publisher: ReadingPublisher, pacing: Pacing, stop: StopFlag) -> int:
    """Emit readings round-robin over the fleet until count, duration or a stop signal.

    Reading k is due at ``start + k / rate``: lateness in one step is caught up in the next
    instead of accumulating (no ``sleep(interval)`` after the work). The readings due at one
    moment, or within :data:`COALESCE_S` of it (up to :data:`CHUNK`), are generated with one
    clock reading and handed to the publisher together. Returns the number of time slots used (emitted + skipped).
    """
    sensors = fleet.sensors
    n = len(sensors)
    SENSORS.set(n)
    TARGET_RATE.set(pacing.rate or 0)
    interval = 1.0 / pacing.rate if pacing.rate else 0.0
    together = max(1, min(CHUNK, int(pacing.rate * COALESCE_S))) if pacing.rate else CHUNK
    next_values = fleet.next_values
    add = publisher.add
    start = time.monotonic()
    deadline = start + pacing.duration_s if pacing.duration_s is not None else None
    k = 0
    while not stop.is_set():
        chunk = CHUNK if pacing.count is None else min(CHUNK, pacing.count - k)
        if chunk <= 0:
            break
        now_mono = time.monotonic()
        if deadline is not None and now_mono >= deadline:
            break
        if interval:
            due = int((now_mono - start + _MIN_SLEEP_S) / interval) + 1 - k
            wanted = min(together, chunk)
            if due < wanted:  # ahead of schedule: sleep until `wanted` readings are due
                if stop.wait(start + (k + wanted - 1) * interval - now_mono):
                    break
                continue
            chunk = min(chunk, due)
        now_us = time.time_ns() // 1000
        skipped = 0
        for slot in range(k, k + chunk):
            sensor = sensors[slot % n]
            values = next_values(sensor, now_us)
            if values is None:
                skipped += 1
            else:
                stamp_us, temperature, humidity = values
                add(sensor.key, sensor.sensor_id, stamp_us, temperature, humidity)
        k += chunk
        if skipped:
            SKIPPED.inc(skipped)
        publisher.send_pending()
        publisher.wait_for_room(stop, deadline)
    publisher.send_pending()
    elapsed = time.monotonic() - start
    log.info(
        "generation_finished",
        slots=k,
        seconds=round(elapsed, 3),
        rate=round(k / elapsed, 1) if elapsed > 0 else None,
        stopped_by_signal=stop.is_set(),
    )
    return k
