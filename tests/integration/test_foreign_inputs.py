"""Readings from producers other than ours, and the broker's own failure shapes.

Our producer is the friendliest client there is. Here the consumer meets what others send
(librdkafka's kcat with every codec, keys, headers, newer firmware's extra fields) and what a
broker does to a log (a topic deleted and created again, retention deleting unread records),
and what a database does to writes (a refused privilege, a lock held for ever). Each case
must end in rows or in a loud, counted, visible state - never in silence.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import orjson
import psycopg2.extensions
import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from tests.helpers import (
    REPO,
    Service,
    Stack,
    codecs_in_log,
    delete_topic,
    end_offsets,
    kcat_produce,
    partitions_of,
    read_topic,
    rollup_mismatches,
    run_cli,
    scalar,
    wait_until,
)
from tests.integration.test_consumer import assert_exactly_once, consume, produce

CODECS = ["gzip", "snappy", "lz4", "zstd"]


def reading(index: int, **extra: object) -> bytes:
    """A valid reading, as another client would write it (its own key order and spacing)."""
    body = {
        "temperatura": 20.0 + (index % 100) / 10,
        "timestamp": f"2026-11-27T10:{index // 60 % 60:02d}:{index % 60:02d}Z",
        "sensor_id": str(uuid.UUID(int=index % 40 + 1)),
        "umidade": 30.0 + (index % 50),
        **extra,
    }
    return json.dumps(body, indent=1).encode()


def long_running(env: dict[str, str], tmp_path: Path, *extra: str) -> Service:
    return Service(
        ["iot-consumer", "run", "--no-alerts", *extra], env, tmp_path / f"consumer-{uuid.uuid4().hex[:6]}.log"
    )


def recovers_then_stops_cleanly(
    consumer: Service, db: psycopg2.extensions.connection, stack: Stack, topic: str, rows: int
) -> None:
    """Once the cause is gone: every row arrives, /readyz is 200 again, SIGTERM exits 0, and
    the topic is in the table exactly once."""
    wait_until(lambda: scalar(db, "SELECT count(*) FROM sensores") == rows, 90, f"{rows} rows")
    wait_until(lambda: consumer.get("/readyz")[0] == 200, 30, "ready again")
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert_exactly_once(db, stack, topic, rows)


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_from_our_producer_arrives(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path, codec: str
) -> None:
    """`iot-producer --compression X` for each of Kafka's codecs: the broker stores X batches
    (checked with Kafka's DumpLogSegments) and every reading becomes exactly one row."""
    assert produce(env, tmp_path, 1500, 30, "--compression", codec).wait(120) == 0
    assert codec in codecs_in_log(stack, topic)
    assert consume(env, tmp_path, 3).wait(120) == 0
    assert_exactly_once(db, stack, topic, 1500)


@pytest.mark.partitions(3)
@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_from_kcat_with_keys_and_headers_arrives(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path, codec: str
) -> None:
    """librdkafka (Debian's kcat) with each codec, messages with keys and headers and messages
    without either: every value is stored once, value for value."""
    keyed = [reading(i, bateria=90 - i % 10) for i in range(300)]
    unkeyed = [reading(1000 + i) for i in range(300)]
    kcat_produce(
        stack.bootstrap,
        topic,
        keyed,
        codec=codec,
        keys=[b"sensor-%d" % (i % 7) for i in range(300)],
        headers=["firmware=2.1", "gateway=gw-7"],
    )
    kcat_produce(stack.bootstrap, topic, unkeyed, codec=codec)
    assert codec in codecs_in_log(stack, topic)
    assert consume(env, tmp_path, 3).wait(120) == 0
    assert_exactly_once(db, stack, topic, 600)
    expected = {}
    for record in read_topic(stack.bootstrap, topic):
        body = orjson.loads(record.value)
        expected[(record.partition, record.offset)] = (body["temperatura"], body["umidade"], body.get("bateria"))
    with db.cursor() as cur:
        cur.execute("SELECT kafka_partition, kafka_offset, temperatura, umidade, extras FROM sensores")
        stored = {(p, o): (t, h, (x or {}).get("bateria")) for p, o, t, h, x in cur.fetchall()}
    assert stored == expected


def test_readings_with_new_fields_are_kept_and_counted(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Schema evolution: a newer firmware adds fields (flat and nested). The readings are rows,
    the new fields are in `extras` as sent, the metric counts them; a reading missing a known
    field or with a wrong type is still a dead letter."""
    newer = [reading(i, bateria=91, rede={"rssi": -67, "canal": 11}) for i in range(50)]
    older = [reading(100 + i) for i in range(50)]
    broken = [
        orjson.dumps(
            {"sensor_id": str(uuid.UUID(int=5)), "timestamp": "2026-11-27T10:00:00Z", "umidade": 40, "bateria": 3}
        ),
        orjson.dumps(
            {
                "sensor_id": str(uuid.UUID(int=5)),
                "timestamp": "2026-11-27T10:00:00Z",
                "temperatura": "21",
                "umidade": 40,
            }
        ),
    ]
    kcat_produce(stack.bootstrap, topic, newer + older + broken, codec="zstd")
    consumer = long_running(env, tmp_path)
    wait_until(
        lambda: (
            scalar(db, "SELECT to_regclass('sensores') IS NOT NULL")
            and scalar(db, "SELECT count(*) FROM sensores") == 100
        ),
        60,
        "rows",
    )
    assert consumer.metric("iot_consumer_readings_with_extra_fields_total") == 50
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert (
        scalar(
            db,
            'SELECT count(*) FROM sensores WHERE extras = \'{"bateria": 91, "rede": {"rssi": -67, "canal": 11}}\'::jsonb',
        )
        == 50
    )
    assert scalar(db, "SELECT count(*) FROM sensores WHERE extras IS NULL") == 50
    with db.cursor() as cur:
        cur.execute("SELECT reason FROM dead_letters ORDER BY kafka_offset")
        assert sorted(r for (r,) in cur.fetchall()) == ["missing_field", "wrong_type"]


@pytest.mark.partitions(2)
def test_a_batch_that_cannot_be_decoded_stalls_loudly_and_recovers_by_itself(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """A consumer without the snappy library (as an image built without it would be) meets
    snappy batches on partition 0: that partition is paused and retried with backoff (no busy
    loop), every attempt is logged with partition and offset and counted, /readyz turns 503
    naming it while partition 1 goes on; once the library is back it catches up by itself,
    readiness returns, and SIGTERM ends it cleanly."""
    kcat_produce(stack.bootstrap, topic, [reading(i) for i in range(200)], codec="snappy", partition=0)
    kcat_produce(stack.bootstrap, topic, [reading(500 + i) for i in range(100)], codec="gzip", partition=1)
    restore = tmp_path / "snappy-is-back"
    consumer = Service(
        [
            "python",
            "-m",
            "tests.harness.codec_outage",
            "snappy",
            str(restore),
            "run",
            "--no-alerts",
            "--stall-after",
            "3",
        ],
        {**env, "PYTHONPATH": str(REPO)},
        tmp_path / "consumer.log",
    )
    wait_until(
        lambda: (
            scalar(db, "SELECT to_regclass('sensores') IS NOT NULL")
            and scalar(db, "SELECT count(*) FROM sensores") == 100
        ),
        60,
        "partition 1 rows",
    )
    wait_until(lambda: consumer.get("/readyz")[0] == 503, 30, "not ready")
    body = consumer.get("/readyz")[1]
    assert "partition 0" in body
    assert "UnsupportedCodecError" in body
    assert consumer.get("/healthz")[0] == 200  # the loop turns: restarting would not help
    blocked = [e for e in consumer.events() if e.get("event") == "progress_blocked"]
    assert len(blocked) >= 2
    assert all(e["partition"] == 0 and e["offset"] == 0 for e in blocked)
    assert consumer.metric("iot_consumer_poll_errors_total", error="UnsupportedCodecError") >= 2
    wait_until(lambda: consumer.metric("iot_consumer_stalled_partitions") == 1, 10, "partition 0 reported stalled")
    cpu_before = consumer.cpu_seconds()
    time.sleep(4)
    assert consumer.cpu_seconds() - cpu_before < 1.0, "the stalled consumer must not spin a core"
    assert scalar(db, "SELECT count(*) FROM sensores WHERE kafka_partition = 0") == 0

    restore.touch()
    recovers_then_stops_cleanly(consumer, db, stack, topic, 300)
    assert consumer.logged("progress_resumed")


def test_a_write_postgres_refuses_is_retried_reported_and_resumes(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """A PostgreSQL error that is not a bad row (here: INSERT revoked) stops every batch: it is
    retried with backoff, logged, counted and shown on /readyz; once the grant is back the same
    records are written, exactly once."""
    consumer = long_running(env, tmp_path, "--stall-after", "3")
    wait_until(lambda: consumer.get("/readyz")[0] == 200, 60, "ready")
    db.cursor().execute("REVOKE INSERT ON sensores FROM CURRENT_USER")
    assert produce(env, tmp_path, 500, 20).wait(120) == 0
    wait_until(lambda: consumer.get("/readyz")[0] == 503, 30, "not ready")
    assert "write: InsufficientPrivilege" in consumer.get("/readyz")[1]
    assert consumer.metric("iot_consumer_write_errors_total", error="InsufficientPrivilege") >= 2
    assert scalar(db, "SELECT count(*) FROM sensores") == 0
    db.cursor().execute("GRANT INSERT ON sensores TO CURRENT_USER")
    recovers_then_stops_cleanly(consumer, db, stack, topic, 500)


def test_sigterm_ends_a_consumer_stuck_in_postgres_within_the_grace_period(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """A COPY blocked on a lock no one releases holds the main thread inside libpq, where no
    Python signal handler runs. SIGTERM still ends the process after SHUTDOWN_TIMEOUT_S (exit 1,
    logged), nothing half-written stays, and the next run writes every reading once."""
    consumer = long_running({**env, "SHUTDOWN_TIMEOUT_S": "3"}, tmp_path)
    wait_until(lambda: consumer.get("/readyz")[0] == 200, 60, "ready")
    locker = stack.connect(env["POSTGRES_DB"])
    locker.autocommit = False
    locker.cursor().execute("LOCK TABLE sensores IN ACCESS EXCLUSIVE MODE")
    try:
        assert produce(env, tmp_path, 300, 10).wait(120) == 0
        wait_until(
            lambda: (
                scalar(
                    db,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'iot-consumer:%%' AND wait_event_type = 'Lock'",
                )
                >= 1
            ),
            30,
            "the consumer blocked on the lock",
        )
        started = time.monotonic()
        consumer.signal(signal.SIGTERM)
        assert consumer.wait(20) == 1
        assert time.monotonic() - started < 10
        assert consumer.logged("shutdown_forced")
    finally:
        locker.rollback()
        locker.close()
    assert consume(env, tmp_path, 3).wait(120) == 0
    assert_exactly_once(db, stack, topic, 300)


def recreate_topic(bootstrap: str, name: str, partitions: int) -> None:
    """Delete ``name`` and create it again (a new topic id, offsets from 0)."""
    delete_topic(bootstrap, name)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
                break
            except TopicAlreadyExistsError:  # deletion still in progress
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        admin.close()
    wait_until(lambda: len(partitions_of(bootstrap, name)) == partitions, 30, f"topic {name} re-created")


@pytest.mark.partitions(3)
def test_topic_recreated_halts_loudly_until_positions_are_reset(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """The topic is deleted and created again while PostgreSQL keeps the positions. With the
    default policy the consumer skips nothing and guesses nothing: each partition is halted,
    logged with the numbers, counted, /readyz 503. `iot-consumer positions reset --all --to
    earliest` (recorded in offset_gaps) lets the running consumer go on by itself."""
    assert produce(env, tmp_path, 600, 30).wait(120) == 0
    assert consume(env, tmp_path, 3).wait(120) == 0
    assert scalar(db, "SELECT count(*) FROM sensores") == 600
    recreate_topic(stack.bootstrap, topic, 3)
    assert produce(env, tmp_path, 90, 30).wait(120) == 0  # fewer than before: offsets "in range" by number

    consumer = long_running(env, tmp_path, "--stall-after", "3")
    wait_until(lambda: consumer.metric("iot_consumer_halted_partitions") == 3, 60, "3 halted partitions")
    status, body = consumer.get("/readyz")
    assert status == 503
    assert "topic re-created" in body
    gaps = [e for e in consumer.events() if e.get("event") == "offset_gap"]
    assert {e["partition"] for e in gaps} == {0, 1, 2}
    assert all(e["kind"] == "topic_recreated" and e["action"] == "halted" for e in gaps)
    assert consumer.metric("iot_consumer_offset_gaps_total", action="halted", kind="topic_recreated") == 3
    time.sleep(2)
    assert scalar(db, "SELECT count(*) FROM sensores") == 600  # nothing written, nothing skipped

    reset = run_cli(["iot-consumer", "positions", "reset", "--all", "--to", "earliest"], env)
    assert reset.returncode == 0, reset.stderr
    wait_until(lambda: scalar(db, "SELECT count(*) FROM sensores") == 690, 90, "new topic's readings")
    wait_until(lambda: consumer.get("/readyz")[0] == 200, 30, "ready again")
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert scalar(db, "SELECT count(*) FROM offset_gaps WHERE action = 'manual_reset'") == 3
    shown = run_cli(["iot-consumer", "positions", "show"], env)
    assert shown.returncode == 0
    assert shown.stdout.count(" ok") == 3


@pytest.mark.partitions(2)
def test_topic_recreated_with_resume_earliest_moves_on_and_records_it(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """`--on-offset-gap resume-earliest`: the consumer reads the new topic from its start by
    itself; each move is a row in offset_gaps and a count in the metrics."""
    assert produce(env, tmp_path, 400, 20).wait(120) == 0
    assert consume(env, tmp_path, 3).wait(120) == 0
    recreate_topic(stack.bootstrap, topic, 2)
    assert produce(env, tmp_path, 100, 20).wait(120) == 0
    assert consume(env, tmp_path, 3, "--on-offset-gap", "resume-earliest").wait(120) == 0
    assert scalar(db, "SELECT count(*) FROM sensores") == 500
    with db.cursor() as cur:
        cur.execute("SELECT kind, action, new_position, topic_id IS NOT NULL FROM offset_gaps ORDER BY kafka_partition")
        assert cur.fetchall() == [("topic_recreated", "resume-earliest", 0, True)] * 2


@pytest.mark.partitions(1)
def test_records_deleted_unread_are_reported_as_a_count(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Retention (here Kafka's delete-records, the same log-start move) removes 150 records
    nobody read. Default: the partition halts with records_lost=150 in the log line; with
    resume-earliest the consumer goes on from the log start and offset_gaps says 150 were lost."""
    assert produce(env, tmp_path, 100, 10).wait(120) == 0
    assert consume(env, tmp_path, 3).wait(120) == 0
    assert produce(env, tmp_path, 200, 10).wait(120) == 0
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 0): 250})
    finally:
        admin.close()

    halted = long_running(env, tmp_path)
    wait_until(lambda: halted.logged("offset_gap"), 60, "offset gap logged")
    gap = halted.event("offset_gap")
    assert (gap["kind"], gap["stored_position"], gap["log_start"], gap["records_lost"]) == (
        "behind_log_start",
        100,
        250,
        150,
    )
    assert halted.metric("iot_consumer_records_skipped_total", kind="behind_log_start") == 150
    halted.signal(signal.SIGTERM)
    assert halted.wait(30) == 0
    assert scalar(db, "SELECT count(*) FROM sensores") == 100

    assert consume(env, tmp_path, 3, "--on-offset-gap", "resume-earliest").wait(120) == 0
    assert scalar(db, "SELECT count(*) FROM sensores") == 150
    assert scalar(db, "SELECT min(kafka_offset) FROM sensores WHERE kafka_offset >= 100") == 250
    with db.cursor() as cur:
        cur.execute("SELECT kind, records_lost, new_position FROM offset_gaps")
        assert cur.fetchall() == [("behind_log_start", 150, 250)]
    assert end_offsets(stack.bootstrap, topic) == {0: 300}


def test_dead_letters_are_replayed_once_after_a_fix(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Readings above the temperature limit are dead letters; after the limit is widened,
    `dead-letters replay --reason out_of_range` moves them into sensores with their Kafka
    offsets, audited; a second replay finds nothing; verify still sees every message once."""
    hot = [reading(200 + i, temperatura=90.5 + i / 10) for i in range(30)]
    kcat_produce(stack.bootstrap, topic, [reading(i) for i in range(70)] + hot + [b"not json"] * 5)
    assert consume(env, tmp_path, 3).wait(120) == 0
    assert scalar(db, "SELECT count(*) FROM sensores") == 70
    listed = run_cli(["iot-consumer", "dead-letters", "list"], env)
    assert listed.returncode == 0
    assert "out_of_range" in listed.stdout
    assert "not_json" in listed.stdout

    dry = run_cli(
        ["iot-consumer", "dead-letters", "replay", "--reason", "out_of_range", "--temperature-max", "100", "--dry-run"],
        env,
    )
    assert dry.returncode == 0, dry.stderr
    assert "would replay 30" in dry.stdout
    assert scalar(db, "SELECT count(*) FROM sensores") == 70
    first = run_cli(
        ["iot-consumer", "dead-letters", "replay", "--reason", "out_of_range", "--temperature-max", "100"], env
    )
    assert first.returncode == 0, first.stderr
    assert "replayed 30" in first.stdout
    second = run_cli(
        ["iot-consumer", "dead-letters", "replay", "--reason", "out_of_range", "--temperature-max", "100"], env
    )
    assert "examined 0" in second.stdout
    assert scalar(db, "SELECT count(*) FROM sensores") == 100
    assert scalar(db, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM sensores") == 100
    assert scalar(db, "SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL AND replay_id IS NOT NULL") == 30
    assert scalar(db, "SELECT replayed FROM dead_letter_replays ORDER BY id LIMIT 1") == 30
    assert rollup_mismatches(db) == []  # the replayed readings are in the rollups too, once
    verify = run_cli(["iot-consumer", "verify", "--expect-caught-up"], env)
    assert verify.returncode == 0, verify.stdout
