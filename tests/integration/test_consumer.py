"""iot-consumer against the real broker and server: exact counts through crashes, rebalances,
outages and poison messages."""

from __future__ import annotations

import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import psycopg2.extensions
import pytest

from iot_common.schema import ValidReading
from iot_common.settings import PostgresSettings
from iot_consumer.batch import Batch, PositionUpdate, copy_line
from iot_consumer.migrations import migrate
from iot_consumer.position_store import FencedError
from iot_consumer.sink import PostgresSink
from tests.helpers import BIN, Service, Stack, end_offsets, read_topic, row_count, scalar, send_raw, wait_until


def produce(env: dict[str, str], tmp_path: Path, count: int, sensors: int = 500, *extra: str) -> Service:
    return Service(
        ["iot-producer", "--sensors", str(sensors), "--count", str(count), "--max-rate", "--seed", "5", *extra],
        env,
        tmp_path / f"producer-{uuid.uuid4().hex[:6]}.log",
    )


def consume(env: dict[str, str], tmp_path: Path, idle: float = 4.0, *extra: str) -> Service:
    return Service(
        ["iot-consumer", "run", "--exit-when-idle", str(idle), *extra],
        env,
        tmp_path / f"consumer-{uuid.uuid4().hex[:6]}.log",
    )


def assert_exactly_once(db: psycopg2.extensions.connection, stack: Stack, topic: str, expected_rows: int) -> None:
    """Rows + dead letters cover every offset of the topic once; no reading twice."""
    ends = end_offsets(stack.bootstrap, topic)
    total = sum(ends.values())
    rows = scalar(db, "SELECT count(*) FROM sensores")
    dead = scalar(db, "SELECT count(*) FROM dead_letters")
    assert rows == expected_rows
    assert rows + dead == total
    assert (
        scalar(
            db, 'SELECT count(*) FROM (SELECT 1 FROM sensores GROUP BY sensor_id, "timestamp" HAVING count(*) > 1) d'
        )
        == 0
    )
    assert scalar(db, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM sensores") == rows
    with db.cursor() as cur:
        cur.execute("SELECT kafka_partition, next_offset FROM consumer_positions WHERE topic = %s", (topic,))
        stored = dict(cur.fetchall())
    assert stored == {p: end for p, end in ends.items() if end > 0}


def test_readings_arrive_as_rows_identical_to_the_topic(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Walking skeleton: what the producer publishes is what `sensores` holds, value for
    value, with UTC timestamps and each row's Kafka partition/offset."""
    assert produce(env, tmp_path, 600, 20).wait(120) == 0
    assert consume(env, tmp_path, 3).wait(120) == 0
    published = {}
    for record in read_topic(stack.bootstrap, topic):
        body = orjson.loads(record.value)
        published[(record.partition, record.offset)] = (
            body["sensor_id"],
            body["timestamp"],
            body["temperatura"],
            body["umidade"],
        )
    with db.cursor() as cur:
        cur.execute(
            'SELECT kafka_partition, kafka_offset, sensor_id::text, "timestamp", temperatura, umidade FROM sensores'
        )
        stored = {(p, o): (sid, ts.isoformat(), t, h) for p, o, sid, ts, t, h in cur.fetchall()}
    assert stored == published
    assert_exactly_once(db, stack, topic, 600)


def test_two_consumers_share_the_partitions_exactly_once(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """50,000 readings, 2 consumer processes in one group → exactly 50,000 rows, no duplicate,
    and both processes did part of the work."""
    producer = produce(env, tmp_path, 50_000)
    consumers = [consume(env, tmp_path, 8), consume(env, tmp_path, 8)]
    assert producer.wait(180) == 0
    assert [c.wait(240) for c in consumers] == [0, 0]
    assert_exactly_once(db, stack, topic, 50_000)
    inserted = [c.event("consumer_stopped")["inserted"] for c in consumers]
    assert sum(inserted) == 50_000
    assert min(inserted) > 0, f"one consumer did nothing: {inserted}"


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """SIGKILL the consumer at ≥ 5 random moments while 200,000 readings flow in; restart it
    each time → exactly 200,000 rows, no duplicates."""
    rng = random.Random(2026)
    producer = produce(env, tmp_path, 200_000, 1000)
    kills = 0
    while kills < 6:
        consumer = consume(env, tmp_path, 600)
        time.sleep(rng.uniform(1.0, 3.5))
        consumer.kill()
        kills += 1
    assert producer.wait(300) == 0
    final = consume(env, tmp_path, 6)
    assert final.wait(300) == 0
    assert_exactly_once(db, stack, topic, 200_000)
    assert scalar(db, "SELECT count(*) FROM sensores") == 200_000


def test_postgres_restart_mid_run_needs_no_manual_step(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """PostgreSQL restarts while the consumer runs: it pauses, reconnects, resumes; exact count."""
    producer = produce(env, tmp_path, 60_000, 200, "--rate", "6000")
    consumer = consume(env, tmp_path, 8)
    wait_until(lambda: row_count(db) > 5_000, timeout=60, what="first rows")
    db.close()
    stack.stack_command("restart", "postgres")
    assert producer.wait(180) == 0
    assert consumer.wait(240) == 0
    db = stack.connect(env["POSTGRES_DB"])
    try:
        assert_exactly_once(db, stack, topic, 60_000)
    finally:
        db.close()
    events = [e["event"] for e in consumer.events()]
    assert "database_lost" in events or "database_still_unavailable" in events
    assert "resuming_consumption" in events


# At least 15 kinds of malformed message; each must land in dead_letters with its reason.
MALFORMED: list[tuple[bytes | None, str]] = [
    (b"", "empty"),
    (b"x" * 5000, "too_large"),
    (b'{"sensor_id": "\xff\xfe\xfd"}', "not_utf8"),
    (b"not json", "not_json"),
    (b'{"temperatura": NaN}', "not_json"),
    (b'{"temperatura": 1e999}', "not_json"),
    (b"[" * 1500 + b"]" * 1500, "not_json"),
    (b"[1,2,3]", "not_object"),
    (b"42", "not_object"),
    (b'{"sensor_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"}', "missing_field"),
    (  # extra fields are kept (test_foreign_inputs.py), but not in place of a known one
        b'{"sensor_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "timestamp": "2026-11-27T10:00:00+00:00", '
        b'"temperatura": 1, "humidity": 2}',
        "missing_field",
    ),
    (
        b'{"sensor_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "timestamp": "2026-11-27T10:00:00+00:00", '
        b'"temperatura": "hot", "umidade": 2}',
        "wrong_type",
    ),
    (
        b'{"sensor_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "timestamp": "2026-11-27T10:00:00+00:00", '
        b'"temperatura": 900, "umidade": 2}',
        "out_of_range",
    ),
    (
        b'{"sensor_id": "robert\'); DROP TABLE sensores;--", "timestamp": "2026-11-27T10:00:00+00:00", '
        b'"temperatura": 20, "umidade": 2}',
        "bad_uuid",
    ),
    (
        b'{"sensor_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "timestamp": "27/11/2026", '
        b'"temperatura": 20, "umidade": 2}',
        "bad_timestamp",
    ),
    (
        b'{"sensor_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "timestamp": "2026-11-27T10:00:00", '
        b'"temperatura": 20, "umidade": 2}',
        "naive_timestamp",
    ),
    (
        b'{"sensor_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "timestamp": "1970-01-01T00:00:00Z", '
        b'"temperatura": 20, "umidade": 2}',
        "too_old",
    ),
    (
        b'{"sensor_id": "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab", "timestamp": "2999-01-01T00:00:00Z", '
        b'"temperatura": 20, "umidade": 2}',
        "future",
    ),
    (None, "empty"),
]


def test_malformed_messages_are_dead_lettered_and_good_ones_inserted(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """1,000 malformed messages of ≥ 15 kinds mixed among good ones: each is in dead_letters
    with its reason and raw bytes; every good one is inserted; produced = inserted + dead."""
    assert len(MALFORMED) >= 15
    # Every reason a message can earn (not_finite cannot come out of strict JSON).
    assert len({reason for _, reason in MALFORMED}) >= 11
    rng = random.Random(7)
    good_producer = produce(env, tmp_path, 4000, 50)
    bad = [MALFORMED[i % len(MALFORMED)] for i in range(1000)]
    rng.shuffle(bad)
    send_raw(stack.bootstrap, topic, [(b"bad-%d" % i, value) for i, (value, _) in enumerate(bad)])
    assert good_producer.wait(120) == 0
    consumer = consume(env, tmp_path, 4)
    assert consumer.wait(120) == 0

    assert_exactly_once(db, stack, topic, 4000)
    with db.cursor() as cur:
        cur.execute("SELECT message_key, payload, reason, detail, payload_size, payload_truncated FROM dead_letters")
        letters = cur.fetchall()
    assert len(letters) == 1000
    expected_by_key = {b"bad-%d" % i: (value, reason) for i, (value, reason) in enumerate(bad)}
    for key, payload, reason, detail, size, truncated in letters:
        value, expected_reason = expected_by_key[bytes(key)]
        assert reason == expected_reason, (value, reason, detail)
        assert detail
        assert (bytes(payload) if payload is not None else None) == value
        assert size == len(value or b"")
        assert not truncated
    assert scalar(db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'sensores'") == 1
    stopped = consumer.event("consumer_stopped")
    assert stopped["dead_lettered"] == 1000
    assert stopped["inserted"] == 4000


def test_timestamps_keep_their_instant_in_utc(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """A reading stamped 08:00-03:00 is stored as 11:00 UTC and read back as 11:00+00:00."""
    sensor = str(uuid.uuid4())
    body = {"sensor_id": sensor, "timestamp": "2026-11-27T08:00:00.5-03:00", "temperatura": 21.5, "umidade": 40.25}
    send_raw(stack.bootstrap, topic, [(sensor.encode(), orjson.dumps(body))])
    assert consume(env, tmp_path, 3).wait(60) == 0
    with db.cursor() as cur:
        cur.execute('SELECT "timestamp", temperatura, umidade FROM sensores WHERE sensor_id = %s', (sensor,))
        ((stamp, temperature, humidity),) = cur.fetchall()
    assert stamp.isoformat() == "2026-11-27T11:00:00.500000+00:00"
    assert (temperature, humidity) == (21.5, 40.25)


def test_sigterm_during_consumption_exits_zero_and_resumes_exactly(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """SIGTERM while batches are flowing: exit 0 after the current transaction; the next
    run continues from the stored positions with no gap and no duplicate."""
    assert produce(env, tmp_path, 80_000, 200).wait(180) == 0
    consumer = consume(env, tmp_path, 600, "--max-batch", "2000")
    wait_until(lambda: row_count(db) > 4_000, timeout=60, what="rows")
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(60) == 0
    partial = scalar(db, "SELECT count(*) FROM sensores")
    assert partial < 80_000, "stopped too late to test anything"
    assert consume(env, tmp_path, 4).wait(120) == 0
    assert_exactly_once(db, stack, topic, 80_000)


@pytest.mark.partitions(2)
def test_a_fenced_zombie_cannot_write(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection
) -> None:
    """A writer whose expected position is stale (another replica moved it) rolls back, also
    when its batch moves several partitions and only one of them is stale."""

    settings = PostgresSettings(db=env["POSTGRES_DB"], password=env["POSTGRES_PASSWORD"])
    conn = stack.connect(env["POSTGRES_DB"])
    migrate(conn)
    conn.close()
    owner, zombie = PostgresSink(settings, "g", topic), PostgresSink(settings, "g", topic)
    sid = str(uuid.uuid4())

    def batch(expected: int | None, nxt: int, offset: int, partition: int = 0, *more: PositionUpdate) -> Batch:
        b = Batch()
        stamp = datetime(2026, 11, 27, 10, 0, offset, tzinfo=UTC)
        b.copy_lines.append(copy_line(ValidReading(sid, stamp, 20.0, 50.0), partition, offset))
        b.positions.extend([PositionUpdate(partition, expected, nxt), *more])
        b.days.add(date(2026, 11, 27))
        return b

    def stored_positions() -> dict[int, int]:
        with db.cursor() as cur:
            cur.execute("SELECT kafka_partition, next_offset FROM consumer_positions WHERE topic = %s", (topic,))
            return {int(p): int(o) for p, o in cur.fetchall()}

    owner.write(batch(None, 1, 0))
    with pytest.raises(FencedError):
        zombie.write(batch(None, 1, 0))  # believes nothing is stored yet
    owner.write(batch(1, 2, 1))
    with pytest.raises(FencedError):
        zombie.write(batch(1, 2, 1))  # believes the position is still 1
    assert scalar(db, "SELECT count(*) FROM sensores") == 2
    assert stored_positions() == {0: 2}
    # Positions of several partitions move in one statement: either one stale fences the whole batch.
    owner.write(batch(2, 3, 2, 0, PositionUpdate(1, None, 1)))
    owner.write(batch(3, 4, 3, 0, PositionUpdate(1, 1, 2)))
    with pytest.raises(FencedError):
        zombie.write(batch(4, 5, 4, 0, PositionUpdate(1, 1, 2)))  # partition 1 is at 2, not 1
    assert stored_positions() == {0: 4, 1: 2}
    assert scalar(db, "SELECT count(*) FROM sensores") == 4
    owner.write(batch(4, 5, 4, 0, PositionUpdate(0, 5, 6)))  # two moves of one partition chain, in order
    assert stored_positions() == {0: 6, 1: 2}
    owner.close()
    zombie.close()


def test_broker_restart_mid_run_needs_no_manual_step(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """The Kafka broker restarts while producer and consumer run: both reconnect by
    themselves; every acknowledged reading ends up exactly once in sensores."""
    producer = produce(env, tmp_path, 40_000, 200, "--rate", "4000")
    consumer = consume(env, tmp_path, 25)
    wait_until(lambda: row_count(db) > 4_000, timeout=60, what="first rows")
    stack.stack_command("restart", "kafka")
    assert producer.wait(240) == 0, producer.log_path.read_text()[-4000:]
    acknowledged = producer.event("producer_stopped")["acknowledged"]
    assert consumer.wait(300) == 0, consumer.log_path.read_text()[-4000:]
    assert acknowledged == 40_000
    assert_exactly_once(db, stack, topic, 40_000)


def test_verify_reconciles_kafka_with_postgres_and_finds_damage(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """`iot-consumer verify` says OK after a clean run, and names missing and duplicated
    offsets (exit 1) once rows are deleted or copied behind the pipeline's back."""
    assert produce(env, tmp_path, 3000, 30).wait(120) == 0
    send_raw(stack.bootstrap, topic, [(b"k", b"not json")])
    assert consume(env, tmp_path, 3).wait(120) == 0
    verify = [str(BIN / "iot-consumer"), "verify", "--json", "--expect-caught-up"]
    clean = subprocess.run(verify, env=env, capture_output=True, text=True, check=False)
    assert clean.returncode == 0, clean.stderr
    report = orjson.loads(clean.stdout)
    assert (report["consistent"], report["missing"], report["duplicates"], report["lag"]) == (True, 0, 0, 0)
    assert sum(p["written"] for p in report["partitions"]) == 3001

    with db.cursor() as cur:
        cur.execute(
            "DELETE FROM sensores WHERE (kafka_partition, kafka_offset) IN (SELECT kafka_partition, kafka_offset FROM sensores LIMIT 7)"
        )
        cur.execute("INSERT INTO sensores SELECT * FROM sensores LIMIT 2")
    damaged = subprocess.run(verify, env=env, capture_output=True, text=True, check=False)
    assert damaged.returncode == 1
    report = orjson.loads(damaged.stdout)
    assert (report["consistent"], report["missing"], report["duplicates"]) == (False, 7, 2)


def test_readiness_follows_postgres_availability(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """/readyz: 200 while writing; 503 naming PostgreSQL while it is down; 200 again after,
    with no restart of the consumer. /healthz stays 200 throughout (restarting would not help).
    A consumer started while PostgreSQL is down waits for it (logged, with backoff) instead of
    exiting into a crash loop, and starts once it is back."""
    consumer = consume(env, tmp_path, 600)
    wait_until(
        lambda: any(e.get("event") == "observability_server_started" for e in consumer.events()), 30, "metrics server"
    )
    port = consumer.event("observability_server_started")["port"]

    def status(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    wait_until(lambda: status("/readyz")[0] == 200, 60, "ready")
    db.close()
    stack.stack_command("down", "postgres")
    try:
        wait_until(lambda: status("/readyz")[0] == 503, 60, "not ready while PostgreSQL is down")
        assert "PostgreSQL" in status("/readyz")[1]
        assert status("/healthz")[0] == 200
        latecomer = consume(env, tmp_path, 600)
        wait_until(lambda: latecomer.logged("database_unavailable"), 30, "the latecomer waiting for PostgreSQL")
        time.sleep(3)
        assert latecomer.proc.poll() is None, latecomer.log_path.read_text()[-2000:]
        assert latecomer.event("database_unavailable")["during"] == "start"
    finally:
        stack.stack_command("up", "postgres")
    wait_until(lambda: status("/readyz")[0] == 200, 90, "ready again")
    wait_until(lambda: latecomer.logged("consumer_started"), 90, "the latecomer started")
    for service in (consumer, latecomer):
        service.signal(signal.SIGTERM)
        assert service.wait(60) == 0
