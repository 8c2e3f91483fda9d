"""iot-producer against the real broker: exact counts, keys, ordering, ranges, clean stops."""

from __future__ import annotations

import itertools
import signal
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from iot_common.schema import SensorReading
from tests.helpers import Service, Stack, create_topic, delete_topic, end_offsets, read_topic, wait_until


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


def _keys_by_partition(records: list[Any]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        out[record.partition].append(record.key)
    return out


def test_native_and_python_encoders_send_the_same_readings_to_the_same_partitions(
    stack: Stack, env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    """Same seed, one run per encoder (the native one in lz4 batches, with anomaly episodes
    skipping readings): partition by partition the same keys in the same order (the values
    follow the time of day, so two runs differ there); every native value is what
    SensorReading.to_json() writes for it, and the record's timestamp is the reading's own (ms)."""
    other = f"{topic}_python"
    create_topic(stack.bootstrap, other, 6, stack.replication_factor)
    try:
        args = ["--sensors", "40", "--count", "3000", "--max-rate", "--seed", "5", "--anomaly-rate", "0.05"]
        native = Service(
            ["iot-producer", *args, "--encoder", "native", "--compression", "lz4"], env, tmp_path / "native.log"
        )
        assert native.wait(120) == 0
        assert native.event("producer_started")["encoder"] == "native"
        python = Service(
            ["iot-producer", *args, "--encoder", "python"], {**env, "KAFKA_TOPIC": other}, tmp_path / "py.log"
        )
        assert python.wait(120) == 0
        assert python.event("producer_started")["encoder"] == "python"
        ours, reference = read_topic(stack.bootstrap, topic), read_topic(stack.bootstrap, other)
    finally:
        delete_topic(stack.bootstrap, other)
    assert native.event("producer_stopped")["acknowledged"] == len(ours) == len(reference) < 3000  # some missing
    assert _keys_by_partition(ours) == _keys_by_partition(reference)
    for record in ours:
        reading = SensorReading.from_json(record.value)
        assert record.value == reading.to_json()
        assert record.timestamp == int(reading.timestamp.timestamp() * 1_000_000) // 1000


def test_in_flight_readings_are_bounded_and_the_bound_does_not_stall(
    stack: Stack, env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    """--max-in-flight 64: generation pauses for acknowledgements (kafka-python's accumulator
    has no bound of its own), says how often, and still ends with every reading acknowledged;
    with the default bound the same run never pauses."""
    args = ["iot-producer", "--sensors", "100", "--count", "5000", "--max-rate"]
    bounded = Service([*args, "--max-in-flight", "64"], env, tmp_path / "bounded.log")
    assert bounded.wait(120) == 0
    stopped = bounded.event("producer_stopped")
    assert (stopped["acknowledged"], stopped["unconfirmed"]) == (5000, 0)
    assert stopped["waits_for_acknowledgements"] >= 5  # about once per 512-reading chunk
    free = Service(args, env, tmp_path / "free.log")
    assert free.wait(120) == 0
    assert free.event("producer_stopped")["waits_for_acknowledgements"] == 0
    assert sum(end_offsets(stack.bootstrap, topic).values()) == 10_000


def test_readings_the_native_encoder_cannot_write_exactly_go_through_send_in_order(
    stack: Stack, env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    """A scripted spike so far out that its floats print differently natively (1e15): those
    readings, and the rest of their chunk's partition, go through send() in batches of their
    own, the others natively; every reading arrives once, each sensor's in order, each value
    exactly as orjson writes it."""
    producer = Service(
        [
            "iot-producer",
            *("--sensors", "8", "--count", "800", "--max-rate", "--encoder", "native"),
            *("--spike", "20:30:1e15"),
        ],
        env,
        tmp_path / "producer.log",
    )
    assert producer.wait(120) == 0
    assert producer.event("producer_stopped")["acknowledged"] == 800
    records = sorted(read_topic(stack.bootstrap, topic), key=lambda r: (r.partition, r.offset))
    assert len(records) == 800
    by_sensor: dict[bytes, list[datetime]] = defaultdict(list)
    spiked = 0
    for record in records:
        value = orjson.loads(record.value)
        assert record.value == orjson.dumps(value)
        spiked += value["temperatura"] > 1e14  # 1e15 ± 0.3
        by_sensor[record.key].append(datetime.fromisoformat(value["timestamp"]))
    assert spiked == 30
    assert all(stamps == sorted(stamps) and len(set(stamps)) == 100 for stamps in by_sensor.values())
