"""Rollups and retention against the real servers: rollups equal a GROUP BY over `sensores`
after kill -9, a late backfill and a dead-letter replay; retention drops exactly the expired
partitions (detach + drop), gives way to a lock, and refuses settings that would leave holes."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg2
import psycopg2.extensions

from tests.helpers import Stack, rollup_mismatches, run_cli, scalar, send_raw
from tests.integration.test_consumer import assert_exactly_once, consume, produce


def reading(sensor: str, when: datetime, temperatura: float = 24.5, umidade: float = 55.0) -> tuple[bytes, bytes]:
    """A (key, value) pair as a gateway would send it."""
    value = {"sensor_id": sensor, "timestamp": when.isoformat(), "temperatura": temperatura, "umidade": umidade}
    return sensor.encode(), orjson.dumps(value)


def partitions(db: psycopg2.extensions.connection, table: str) -> set[str]:
    with db.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            (table,),
        )
        return {str(r[0]) for r in cur.fetchall()}


def test_rollups_equal_a_group_by_after_kill_9_and_a_late_backfill(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """100,000 readings with the consumer killed -9 at three random moments, then a gateway's
    backlog from yesterday and two days ago: every minute and hour bucket equals the GROUP BY
    over the stored rows - nothing counted twice, nothing missed, past buckets updated."""
    rng = random.Random(16)
    producer = produce(env, tmp_path, 100_000, 200)
    for _ in range(3):
        consumer = consume(env, tmp_path, 600)
        time.sleep(rng.uniform(1.5, 3.5))
        consumer.kill()
    assert producer.wait(300) == 0
    assert consume(env, tmp_path, 5).wait(300) == 0
    assert rollup_mismatches(db) == []

    now = datetime.now(UTC)
    backlog = [
        reading(
            str(uuid.UUID(int=rng.getrandbits(128))),
            now - timedelta(days=days, seconds=rng.randrange(3600)),
            rng.uniform(20, 30),
            rng.uniform(30, 80),
        )
        for days in (1, 2)
        for _ in range(1_000)
    ]
    send_raw(stack.bootstrap, topic, backlog)
    assert consume(env, tmp_path, 5).wait(300) == 0
    assert_exactly_once(db, stack, topic, 102_000)
    assert scalar(db, "SELECT sum(leituras) FROM sensores_minuto") == 102_000
    assert scalar(db, "SELECT sum(leituras) FROM sensores_hora") == 102_000
    assert rollup_mismatches(db) == []


def test_retention_drops_exactly_the_expired_partitions_of_each_table(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Readings 40, 31, 30, 5 and 0 days old; RETENTION_DAYS=30 and minute rollups for 35 days:
    `--dry-run` names what would go and drops nothing; the running consumer then detaches and
    drops exactly the day partitions that ended more than 30 (35) days ago, logs each and keeps
    every other row; the rollups of the remaining days still equal their GROUP BY, and the fleet
    rollups lose exactly the days their per-sensor rollup lost."""
    now = datetime.now(UTC)
    sensor = str(uuid.uuid4())
    ages = (40, 31, 30, 5, 0)
    send_raw(
        stack.bootstrap, topic, [reading(sensor, now - timedelta(days=d, minutes=1)) for d in ages for _ in range(10)]
    )
    assert consume(env, tmp_path, 4).wait(120) == 0
    before = {table: partitions(db, table) for table in ("sensores", "sensores_minuto", "sensores_hora")}

    def day_partition(table: str, days_old: int) -> str:
        return f"{table}_{(now - timedelta(days=days_old, minutes=1)).date():%Y%m%d}"

    expected = {
        "sensores": {day_partition("sensores", 40), day_partition("sensores", 31)},
        "sensores_minuto": {day_partition("sensores_minuto", 40)},
        "sensores_hora": set(),
    }
    # A partition goes once its end is older than the retention: the 31-day-old day has ended
    # more than 30 days ago, the 30-day-old one has not.
    retention = {"RETENTION_DAYS": "30", "MINUTE_ROLLUP_RETENTION_DAYS": "35", "HOUR_ROLLUP_RETENTION_DAYS": "400"}
    dry = run_cli(["iot-consumer", "retention", "--dry-run"], {**env, **retention})
    assert dry.returncode == 0, dry.stderr
    named = {line.split()[2] for line in dry.stdout.splitlines() if line.startswith("would drop")}
    assert named == set().union(*expected.values())
    assert {table: partitions(db, table) for table in before} == before

    rows_kept = scalar(
        db, 'SELECT count(*) FROM sensores WHERE "timestamp" >= %s', (now - timedelta(days=30, hours=1),)
    )
    consumer = consume({**env, **retention}, tmp_path, 10)  # housekeeping runs 5 s after start
    assert consumer.wait(120) == 0
    dropped = {(e["table"], e["partition"]) for e in consumer.events() if e.get("event") == "partition_dropped"}
    assert dropped == {(table, name) for table, names in expected.items() for name in names}
    for table, names in expected.items():
        assert partitions(db, table) == before[table] - names, table
    assert scalar(db, "SELECT count(*) FROM sensores") == rows_kept == 30
    assert rollup_mismatches(db, f"WHERE bucket >= '{(now - timedelta(days=30, hours=1)).isoformat()}'") == []
    # The fleet rollups keep what their per-sensor rollup keeps, nothing older.
    for fleet, per_sensor, days_kept in (
        ("sensores_frota_minuto", "sensores_minuto", (31, 30, 5, 0)),
        ("sensores_frota_hora", "sensores_hora", ages),
    ):
        oldest = scalar(db, f"SELECT min(bucket) FROM {per_sensor}")
        assert scalar(db, f"SELECT count(*) FROM {fleet} WHERE bucket < %s", (oldest,)) == 0
        assert scalar(db, f"SELECT count(DISTINCT bucket::date) FROM {fleet}") == len(days_kept), fleet
    # Nothing else to drop: a second round is a no-op.
    again = run_cli(["iot-consumer", "retention"], {**env, **retention})
    assert again.returncode == 0, again.stderr
    assert "nothing has expired" in again.stdout


def test_retention_gives_way_to_a_lock_and_drops_nothing(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """While a long query holds sensores (a dashboard, a report), retention waits at most a few
    seconds for the table lock, then gives up with a clear message and leaves every partition:
    it never stalls the writers queued behind it for longer."""
    now = datetime.now(UTC)
    send_raw(stack.bootstrap, topic, [reading(str(uuid.uuid4()), now - timedelta(days=45))])
    assert consume(env, tmp_path, 3).wait(120) == 0
    before = partitions(db, "sensores")
    reader = stack.connect(db.info.dbname)
    reader.autocommit = False
    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM sensores")  # holds ACCESS SHARE until the transaction ends
        started = time.monotonic()
        result = run_cli(["iot-consumer", "retention", "--retention-days", "30"], env)
        waited = time.monotonic() - started
    finally:
        reader.rollback()
        reader.close()
    assert result.returncode == 1
    assert "stayed locked too long, nothing dropped" in result.stderr
    assert waited < 30
    assert partitions(db, "sensores") == before


def test_retention_settings_that_would_leave_holes_fail_at_start(env: dict[str, str]) -> None:
    """Minute rollups kept shorter than raw readings (or hour rollups shorter than minute ones)
    would make long windows show holes: the consumer refuses to start and names both settings."""
    result = run_cli(["iot-consumer", "run"], {**env, "RETENTION_DAYS": "30", "MINUTE_ROLLUP_RETENTION_DAYS": "7"})
    assert result.returncode == 2
    assert "MINUTE_ROLLUP_RETENTION_DAYS=7 keeps less than RETENTION_DAYS=30" in result.stderr
