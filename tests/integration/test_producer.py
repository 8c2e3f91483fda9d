"""iot-producer against the real broker: exact counts, keys, ordering, ranges, clean stops."""

from __future__ import annotations

import itertools
import signal
import time
from collections import defaultdict
from pathlib import Path

import orjson

from iot_common.schema import SensorReading
from tests.helpers import Service, Stack, end_offsets, read_topic, wait_until


def test_ten_sensors_times_hundred_readings(stack: Stack, env: dict[str, str], topic: str, tmp_path: Path) -> None:
    """10 sensors × 100 readings → exactly 1,000 valid messages, keyed by sensor, per-sensor
    timestamps strictly increasing, values inside the configured ranges."""
    producer = Service(
        ["iot-producer", "--sensors", "10", "--count", "1000", "--rate", "2000", "--seed", "11"],
        env,
        tmp_path / "producer.log",
    )
    assert producer.wait(120) == 0
    stopped = producer.event("producer_stopped")
    assert (stopped["produced"], stopped["acknowledged"], stopped["failed"]) == (1000, 1000, 0)

    records = read_topic(stack.bootstrap, topic)
    assert len(records) == 1000
    by_sensor: dict[str, list[SensorReading]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        reading = SensorReading.from_json(record.value)
        assert record.key == str(reading.sensor_id).encode()
        assert 20.0 <= reading.temperatura <= 30.0
        assert 30.0 <= reading.umidade <= 80.0
        assert set(orjson.loads(record.value)) == {"sensor_id", "timestamp", "temperatura", "umidade"}
        assert orjson.loads(record.value)["timestamp"].endswith("+00:00")
        by_sensor[str(reading.sensor_id)].append(reading)
    assert len(by_sensor) == 10
    for readings in by_sensor.values():
        assert len(readings) == 100
        stamps = [r.timestamp for r in readings]  # in partition order = send order for one key
        assert all(b > a for a, b in itertools.pairwise(stamps))


def test_sigterm_mid_run_loses_no_acknowledged_reading(
    stack: Stack, env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    """SIGTERM while producing: the producer flushes, exits 0, and every reading it reported
    as acknowledged is in the topic (it reports exactly what the topic holds)."""
    producer = Service(["iot-producer", "--sensors", "50", "--rate", "5000"], env, tmp_path / "producer.log")
    wait_until(lambda: sum(end_offsets(stack.bootstrap, topic).values()) > 2000, timeout=60, what="readings in topic")
    producer.signal(signal.SIGTERM)
    assert producer.wait(60) == 0
    stopped = producer.event("producer_stopped")
    assert stopped["failed"] == 0
    assert stopped["unconfirmed"] == 0
    in_topic = sum(end_offsets(stack.bootstrap, topic).values())
    assert stopped["acknowledged"] == stopped["produced"] == in_topic
    assert producer.event("stop_requested")["signal"] == "SIGTERM"


def test_real_time_pacing_is_one_reading_per_sensor_per_interval(
    stack: Stack, env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    """Default pacing: N sensors every INTERVAL seconds, without drift."""
    started = time.monotonic()
    producer = Service(
        ["iot-producer", "--sensors", "4", "--interval", "0.5", "--count", "24"], env, tmp_path / "p.log"
    )
    assert producer.wait(60) == 0
    elapsed = time.monotonic() - started
    # 24 readings at 8/s are due over 2.875 s; process start-up adds a little.
    assert elapsed >= 2.8
    assert sum(end_offsets(stack.bootstrap, topic).values()) == 24


def test_unreachable_broker_fails_fast_with_a_clear_message(env: dict[str, str], tmp_path: Path) -> None:
    """No broker at the address: the producer exits 2 within its bootstrap timeout, naming the address."""
    env = {**env, "KAFKA_BOOTSTRAP_SERVERS": "localhost:1"}
    producer = Service(["iot-producer", "--count", "1"], env, tmp_path / "p.log")
    assert producer.wait(60) == 2
    assert "no Kafka broker reachable at localhost:1" in producer.log_path.read_text()


def test_bad_flags_fail_fast(env: dict[str, str], tmp_path: Path) -> None:
    """Negative rate, unknown compression, unknown anomaly: exit 2 with the reason."""
    for args, expected in (
        (["--rate", "-5"], "--rate"),
        (["--compression", "brotli"], "compression"),
        (["--anomalies", "explode"], "explode"),
    ):
        producer = Service(["iot-producer", *args], env, tmp_path / f"p{args[0]}.log")
        assert producer.wait(60) == 2, args
        assert expected in producer.log_path.read_text()
