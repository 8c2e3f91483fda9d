"""Alerts end to end: the producer's scripted spike → Kafka → consumer → one alert in ``alertas``,
one "opened" and one "closed" event on the alerts topic - also when the consumer is killed
in the middle of the episode."""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg2.extensions
import pytest
from prometheus_client.parser import text_string_to_metric_families

from iot_consumer.migrations import migrate
from tests.helpers import Service, Stack, read_topic, run_cli, scalar, send_raw, wait_until

pytestmark = pytest.mark.integration

SENSORS = 3
INTERVAL = 0.25  # 4 readings per sensor per second: the 5 s durations pass in 20 readings
SPIKE_START, SPIKE_READINGS = 8, 40  # 10 s above 30 °C on the first sensor


@pytest.fixture
def alert_env(env: dict[str, str], alerts_topic: str) -> dict[str, str]:
    return {**env, "ALERTS_TOPIC": alerts_topic}


def produce_spike(env: dict[str, str], tmp_path: Path, readings_per_sensor: int = 100) -> Service:
    """The first sensor spikes to ~33 °C; the others, and it before and after, stay below 28 °C."""
    return Service(
        [
            "iot-producer",
            "--sensors",
            str(SENSORS),
            "--interval",
            str(INTERVAL),
            "--count",
            str(SENSORS * readings_per_sensor),
            "--seed",
            "11",
            "--temperature-max",
            "28",
            "--spike",
            f"{SPIKE_START}:{SPIKE_READINGS}",
        ],
        env,
        tmp_path / f"producer-{uuid.uuid4().hex[:6]}.log",
    )


def consume(env: dict[str, str], tmp_path: Path, *extra: str) -> Service:
    return Service(["iot-consumer", "run", *extra], env, tmp_path / f"consumer-{uuid.uuid4().hex[:6]}.log")


def alerts(db: psycopg2.extensions.connection) -> list[dict[str, Any]]:
    with db.cursor() as cur:
        cur.execute(
            """SELECT id::text, sensor_id::text, rule, severity, started_at, opened_at, closed_at, peak_value
                 FROM alertas ORDER BY opened_at"""
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def spiked_sensor(producer: Service) -> str:
    return str(producer.event("producer_started")["spike"]["sensor_id"])


def assert_one_closed_temperature_alert(db: psycopg2.extensions.connection, sensor: str) -> dict[str, Any]:
    found = alerts(db)
    assert len(found) == 1, found
    alert = found[0]
    assert (alert["sensor_id"], alert["rule"], alert["severity"]) == (sensor, "temperatura_alta", "critical")
    assert alert["closed_at"] is not None
    assert 31.5 < alert["peak_value"] < 34.5  # the spike is 33 ± 0.3 °C
    assert (alert["opened_at"] - alert["started_at"]).total_seconds() >= 5  # for_seconds
    # The value dropped below 29.5 after the spike's last reading and stayed there for clear_for_seconds.
    spike_end = alert["started_at"].timestamp() + (SPIKE_READINGS - 1) * INTERVAL
    assert alert["closed_at"].timestamp() >= spike_end + 5
    assert scalar(db, "SELECT count(*) FROM alert_states") == 0
    return alert


def topic_events(stack: Stack, alerts_topic: str) -> list[tuple[str, dict[str, Any]]]:
    return [(r.key.decode(), orjson.loads(r.value)) for r in read_topic(stack.bootstrap, alerts_topic)]


def test_a_spike_opens_exactly_one_alert_and_closes_it_below_the_clear_threshold(
    stack: Stack, alert_env: dict[str, str], alerts_topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """A scripted spike above 30 °C opens exactly one alert after for_seconds and closes it once
    below the clear level; the alerts topic carries one `opened` and one `closed` for that alert id.
    The consumer runs as its own role, as every deployment runs it: its outbox publisher may lock,
    send and delete what it published (a real cluster found it could not)."""
    migrate(db)  # as the owner, who grants the consumer's role
    as_its_role = {**alert_env, **stack.role_env("iot_consumer")}
    consumer = consume(as_its_role, tmp_path, "--exit-when-idle", "4")
    producer = produce_spike(alert_env, tmp_path)
    assert producer.wait(120) == 0
    assert consumer.wait(120) == 0
    sensor = spiked_sensor(producer)
    alert = assert_one_closed_temperature_alert(db, sensor)

    wait_until(lambda: len(read_topic(stack.bootstrap, alerts_topic)) >= 2, 30, "alert events on the topic")
    events = topic_events(stack, alerts_topic)
    assert [(key, e["event"]) for key, e in events] == [(sensor, "opened"), (sensor, "closed")]
    assert {e["alert_id"] for _, e in events} == {alert["id"]}
    assert events[0][1]["threshold"] == 30.0
    assert events[0][1]["clear_threshold"] == 29.5
    assert scalar(db, "SELECT count(*) FROM alert_outbox") == 0
    logged = [e["event"] for e in consumer.events() if e.get("event", "").startswith("alert_")]
    assert logged.count("alert_opened") == 1
    assert logged.count("alert_closed") == 1
    assert not consumer.logged("alert_publish_failed")


def test_killing_the_consumer_during_the_episode_still_gives_one_alert(
    stack: Stack, alert_env: dict[str, str], alerts_topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """kill -9 while the alert is open: the restarted consumer continues the same episode from
    the state stored with its positions - no second alert, one close."""
    first = consume(alert_env, tmp_path, "--max-batch", "5")
    producer = produce_spike(alert_env, tmp_path)
    wait_until(lambda: any(e.get("event") == "alert_opened" for e in first.events()), 60, "the alert to open")
    first.kill()
    second = consume(alert_env, tmp_path, "--exit-when-idle", "4")
    assert producer.wait(120) == 0
    assert second.wait(120) == 0
    sensor = spiked_sensor(producer)
    alert = assert_one_closed_temperature_alert(db, sensor)
    assert not any(e.get("event") == "alert_opened" for e in second.events())

    wait_until(lambda: len(read_topic(stack.bootstrap, alerts_topic)) >= 2, 30, "alert events on the topic")
    events = topic_events(stack, alerts_topic)
    # At least once on the topic; exactly one of each after de-duplicating on (alert_id, event).
    assert {(e["alert_id"], e["event"]) for _, e in events} == {(alert["id"], "opened"), (alert["id"], "closed")}


SILENCE_RULES = """
[[rule]]
name = "sensor_silencioso"
severity = "warning"
silent_for_seconds = 3
"""


def test_sensors_that_stop_sending_raise_a_silence_alert_and_their_next_reading_closes_it(
    stack: Stack, alert_env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Sensors that go quiet open a silence alert on the idle partitions' wall clock; their next
    readings close it; the metrics count both and time the engine's batches and idle sweeps."""
    rules = tmp_path / "rules.toml"
    rules.write_text(SILENCE_RULES, encoding="utf-8")
    consumer = consume(alert_env, tmp_path, "--alert-rules", str(rules))
    try:
        burst = ["iot-producer", "--sensors", "2", "--count", "20", "--interval", "0.1", "--seed", "3"]
        assert Service(burst, alert_env, tmp_path / "p1.log").wait(60) == 0
        # Nothing arrives any more: the idle partitions' clock follows the wall clock.
        wait_until(lambda: scalar(db, "SELECT count(*) FROM alertas WHERE closed_at IS NULL") == 2, 30, "2 open")
        assert Service(burst, alert_env, tmp_path / "p2.log").wait(60) == 0
        wait_until(lambda: scalar(db, "SELECT count(*) FROM alertas WHERE closed_at IS NOT NULL") == 2, 30, "closed")
        assert scalar(db, "SELECT count(DISTINCT sensor_id) FROM alertas WHERE rule = 'sensor_silencioso'") == 2
        port = consumer.event("observability_server_started")["port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            metrics = response.read().decode()
        assert 'iot_consumer_alerts_opened_total{rule="sensor_silencioso",severity="warning"} 2.0' in metrics
        assert 'iot_consumer_alerts_closed_total{rule="sensor_silencioso",severity="warning"} 2.0' in metrics
        # What the engine cost: timed per batch, and per idle sweep (which opened the alerts).
        timed = {
            sample.labels["kind"]: sample.value
            for family in text_string_to_metric_families(metrics)
            if family.name == "iot_consumer_alert_evaluation_duration_seconds"
            for sample in family.samples
            if sample.name.endswith("_count")
        }
        assert timed["batch"] >= 1
        assert timed["idle"] >= 1
    finally:
        consumer.signal(signal.SIGTERM)
        assert consumer.wait(60) == 0


STORM_RULES = """
[[rule]]
name = "sensor_silencioso"
severity = "warning"
silent_for_seconds = 3
storm_share = 0.2
storm_min_sensors = 50
"""


def readings_now(sensors: list[str]) -> list[tuple[bytes | None, bytes | None]]:
    stamp = datetime.now(UTC).isoformat()
    return [
        (s.encode(), orjson.dumps({"sensor_id": s, "timestamp": stamp, "temperatura": 25.0, "umidade": 50.0}))
        for s in sensors
    ]


@pytest.mark.partitions(2)
def test_a_fleet_falling_silent_together_is_one_storm_per_partition_not_an_alert_per_sensor(
    stack: Stack,
    alert_env: dict[str, str],
    alerts_topic: str,
    db: psycopg2.extensions.connection,
    tmp_path: Path,
) -> None:
    """400 sensors fall silent together: one storm alert per partition (2), one event each on the
    alerts topic, no per-sensor alert. 380 come back: both storms close, and the 20 still silent
    - silent on their own now - get alerts of their own."""
    rules = tmp_path / "rules.toml"
    rules.write_text(STORM_RULES, encoding="utf-8")
    consumer = consume(alert_env, tmp_path, "--alert-rules", str(rules))
    fleet = sorted(str(uuid.uuid4()) for _ in range(400))
    storms = "SELECT count(*) FROM alertas WHERE rule = 'sensor_silencioso:storm'"
    try:
        port = consumer.port(60)
        migrated = "SELECT count(*) FROM pg_tables WHERE tablename = 'alertas'"
        wait_until(lambda: scalar(db, migrated) == 1, 60, "the consumer's migrations")
        send_raw(stack.bootstrap, alert_env["KAFKA_TOPIC"], readings_now(fleet))
        wait_until(lambda: scalar(db, storms) == 2, 60, "a storm on each partition")
        time.sleep(3)  # the next sweeps open nothing more
        assert scalar(db, "SELECT count(*) FROM alertas WHERE rule = 'sensor_silencioso'") == 0
        assert scalar(db, "SELECT sum(last_value) FROM alertas WHERE rule = 'sensor_silencioso:storm'") == 400
        assert scalar(db, "SELECT count(*) FROM alert_states WHERE rule = 'sensor_silencioso'") == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            metrics = response.read().decode()
        assert 'iot_consumer_alert_storm_sensors{rule="sensor_silencioso"} 400.0' in metrics
        assert 'iot_consumer_alerts_open{rule="sensor_silencioso:storm",severity="warning"} 2.0' in metrics

        back, still_silent = fleet[20:], fleet[:20]
        send_raw(stack.bootstrap, alert_env["KAFKA_TOPIC"], readings_now(back))
        wait_until(lambda: scalar(db, storms + " AND closed_at IS NOT NULL") == 2, 60, "both storms closed")
        own = "SELECT count(*) FROM alertas WHERE rule = 'sensor_silencioso' AND closed_at IS NULL"
        wait_until(lambda: scalar(db, own) >= 20, 60, "alerts of their own for the 20 still silent")
        with db.cursor() as cur:
            cur.execute(
                "SELECT sensor_id::text FROM alertas WHERE rule = 'sensor_silencioso' AND opened_at < "
                "(SELECT min(closed_at) FROM alertas WHERE rule = 'sensor_silencioso:storm')"
                " + interval '2 seconds'"
            )
            opened_own = sorted(row[0] for row in cur.fetchall())
            # (3 s after they came back, the 380 fall silent together again: a second storm each)
            cur.execute(
                "SELECT id::text FROM alertas WHERE rule = 'sensor_silencioso:storm' ORDER BY opened_at LIMIT 2"
            )
            first_storms = [row[0] for row in cur.fetchall()]
        db.rollback()
        assert set(still_silent) <= set(opened_own)
        wait_until(lambda: scalar(db, "SELECT count(*) FROM alert_outbox") == 0, 30, "the outbox drained")
        events = [e for _, e in topic_events(stack, alerts_topic)]
        for storm_id in first_storms:  # one event when it opened, one when it closed, none per sensor
            assert sorted(e["event"] for e in events if e["alert_id"] == storm_id) == ["closed", "opened"]
        for opened in (e for e in events if e["rule"].endswith(":storm") and e["event"] == "opened"):
            assert 50 <= opened["sensors_silent"] <= opened["sensors_known"] <= 400  # the counts, with the event
            assert opened["sensor_id"] is None
            assert opened["scope"] == "partition"
        per_sensor = {e["sensor_id"] for e in events if e["rule"] == "sensor_silencioso" and e["event"] == "opened"}
        assert set(still_silent) <= per_sensor
    finally:
        consumer.signal(signal.SIGTERM)
        assert consumer.wait(60) == 0


def test_a_bad_rules_file_stops_the_consumer_at_start_with_the_reason(
    alert_env: dict[str, str], tmp_path: Path
) -> None:
    """An inconsistent rules file stops the consumer at start (exit 2), naming the rule and the field."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "x"\nmetric = "temperatura"\nabove = 30\nclear_below = 35\n', encoding="utf-8")
    result = run_cli(["iot-consumer", "run", "--alert-rules", str(rules)], alert_env)
    assert result.returncode == 2
    assert "rule 1 ('x') clear_below (35.0) must not be above the threshold (30.0)" in result.stderr
