"""Least privilege and secret hygiene, against the real server and real service processes.

The schema's owner (`iot`) migrates; the consumer runs as `iot_consumer` (insert rows, dead
letters and positions, keep alerts; create partitions only through a SECURITY DEFINER
function), the exporter as `iot_exporter` (read sensores), the dashboard as `iot_dashboard`
(read only, even by mistake). Anything else is refused by PostgreSQL.
"""

from __future__ import annotations

import signal
import subprocess
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
from psycopg2 import sql

from iot_consumer.migrations import migrate
from tests.helpers import (
    BIN,
    ROLE_PASSWORD_VARIABLES,
    Service,
    Stack,
    argv_exposing,
    read_env_file,
    run_cli,
    scalar,
    send_raw,
    wait_until,
)


def connect_as(stack: Stack, database: str, user: str, password: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(host="localhost", port=stack.postgres_port, user=user, password=password, dbname=database)
    conn.autocommit = True
    return conn


def test_services_run_with_least_privilege_roles(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Consumer as iot_consumer and exporter as iot_exporter do their whole job - including a
    new daily partition for a late reading - and are refused everything else."""
    migrate(db)  # as the owner, who also grants the service roles
    late_stamp = datetime.now(UTC) - timedelta(days=9)
    late = {
        "sensor_id": str(uuid.uuid4()),
        "timestamp": late_stamp.isoformat(),
        "temperatura": 21.0,
        "umidade": 40.0,
    }
    send_raw(stack.bootstrap, topic, [(b"late", orjson.dumps(late)), (b"bad", b"garbage")])
    assert (
        Service(["iot-producer", "--sensors", "5", "--count", "200", "--rate", "1000"], env, tmp_path / "p.log").wait(
            60
        )
        == 0
    )
    consumer_env = {**env, **stack.role_env("iot_consumer")}
    consumer = Service(["iot-consumer", "run", "--exit-when-idle", "3"], consumer_env, tmp_path / "c.log")
    assert consumer.wait(120) == 0, consumer.log_path.read_text()[-3000:]
    assert scalar(db, "SELECT count(*) FROM sensores") == 201
    assert scalar(db, "SELECT count(*) FROM dead_letters") == 1
    late_partition = f"sensores_{late_stamp:%Y%m%d}"
    assert scalar(db, "SELECT to_regclass(%s) IS NOT NULL", (late_partition,)) is True

    exporter_env = {**env, **stack.role_env("iot_exporter")}
    exported = subprocess.run(
        [str(BIN / "iot-exporter"), "export", "--format", "csv", "--out", str(tmp_path)],
        env=exporter_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "sensores_exportado.csv").read_text().count("\n") == 202
    # the operator's check runs with the consumer's own role (offset columns only, no values)
    verified = run_cli(["iot-consumer", "verify", "--json"], consumer_env)
    assert verified.returncode == 0, verified.stderr
    assert orjson.loads(verified.stdout)["consistent"] is True

    database = env["POSTGRES_DB"]
    as_consumer = connect_as(stack, database, "iot_consumer", stack.role_password("iot_consumer"))
    as_exporter = connect_as(stack, database, "iot_exporter", stack.role_password("iot_exporter"))
    as_dashboard = connect_as(stack, database, "iot_dashboard", stack.role_password("iot_dashboard"))
    allowed = [
        (as_consumer, 'SELECT sensor_id, "timestamp", kafka_partition FROM sensores LIMIT 1'),  # silence rule
        (as_consumer, "SELECT count(*) FROM alertas"),
        (as_dashboard, "SELECT count(*) FROM sensores"),
        (as_dashboard, "SELECT count(*) FROM alertas"),
        (as_dashboard, "SELECT count(*) FROM dead_letters"),
        (as_dashboard, "SELECT count(*) FROM consumer_positions"),
        (as_dashboard, "SELECT count(*) FROM sensores_frota_minuto"),
        (as_dashboard, "SELECT count(*) FROM sensores_frota_hora"),
    ]
    for conn, statement in allowed:
        with conn.cursor() as cur:
            cur.execute(statement)
    refused = [
        (as_consumer, "SELECT * FROM sensores"),
        (as_consumer, "SELECT temperatura FROM sensores"),
        (as_consumer, "DELETE FROM alertas"),
        (as_consumer, "DELETE FROM sensores"),
        (as_consumer, "DROP TABLE sensores"),
        (as_consumer, "SELECT * FROM dead_letters"),
        (as_consumer, "SELECT payload FROM dead_letters"),
        (as_consumer, "TRUNCATE sensores"),
        (as_consumer, "DROP TABLE dead_letters"),
        (as_consumer, "DELETE FROM sensores_frota_minuto"),  # fleet rows expire through a function only
        (
            as_consumer,
            "CREATE TABLE sensores_29991231 PARTITION OF sensores FOR VALUES FROM ('2999-12-31') TO ('3000-01-01')",
        ),
        (
            as_exporter,
            'INSERT INTO sensores (sensor_id, "timestamp", temperatura, umidade, kafka_partition, kafka_offset) '
            "VALUES (gen_random_uuid(), now(), 1, 1, 0, 0)",
        ),
        (as_exporter, "SELECT * FROM dead_letters"),
        (as_exporter, "UPDATE consumer_positions SET next_offset = 0"),
        (as_exporter, "SELECT iot_ensure_sensores_partition('2030-01-01')"),
        (as_exporter, "SELECT * FROM alertas"),
        (as_dashboard, "SELECT * FROM alert_outbox"),
    ]
    # The dashboard's role also defaults to read-only transactions: writes fail either way.
    read_only = [
        (as_dashboard, "DELETE FROM alertas"),
        (as_dashboard, "UPDATE consumer_positions SET next_offset = 0"),
        (as_dashboard, "CREATE TABLE dashboard_scratch (x int)"),
    ]
    try:
        for conn, statement in refused:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege), conn.cursor() as cur:
                cur.execute(statement)
        for conn, statement in read_only:
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction), conn.cursor() as cur:
                cur.execute(statement)
    finally:
        as_consumer.close()
        as_exporter.close()
        as_dashboard.close()


def test_secrets_never_reach_logs_or_metrics(
    stack: Stack, env: dict[str, str], topic: str, database: str, tmp_path: Path
) -> None:
    """A distinctive database password works but appears in no log line and no metric;
    neither does a wrong one in the error a bad login produces."""
    secret = f"S3cr3t-{uuid.uuid4().hex}"
    role = f"iot_secret_{uuid.uuid4().hex[:8]}"
    admin = stack.admin_connection()
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (secret,))
        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(role)))
    try:
        secret_env = {**env, "POSTGRES_USER": role, "POSTGRES_PASSWORD": secret, "KAFKA_SASL_PASSWORD": secret}
        assert (
            Service(["iot-producer", "--count", "100", "--rate", "1000"], secret_env, tmp_path / "p.log").wait(60) == 0
        )
        consumer = Service(["iot-consumer", "run", "--exit-when-idle", "6"], secret_env, tmp_path / "c.log")
        wait_until(
            lambda: any(
                e.get("event") == "progress" or e.get("event") == "partitions_synced" for e in consumer.events()
            ),
            timeout=60,
            what="consumer running",
        )
        port = consumer.event("observability_server_started")["port"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read().decode()
        assert consumer.wait(120) == 0
        wrong = subprocess.run(
            [str(BIN / "iot-consumer"), "migrate"],
            env={**secret_env, "POSTGRES_PASSWORD": secret + "-wrong"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert wrong.returncode == 1
        assert "password authentication failed" in wrong.stderr
        texts = [
            consumer.log_path.read_text(),
            (tmp_path / "p.log").read_text(),
            metrics,
            ready,
            wrong.stdout,
            wrong.stderr,
        ]
        assert all(secret not in text for text in texts)
        assert "iot_consumer_rows_inserted_total" in metrics  # the endpoint served real metrics
    finally:
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(stack.pg_user))
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.close()


def test_the_consumers_role_cannot_drop_partitions_inside_the_retention(
    stack: Stack, env: dict[str, str], db: psycopg2.extensions.connection
) -> None:
    """`SELECT iot_drop_expired_partitions('sensores', 'infinity')` as iot_consumer used to drop
    every partition (today's included). The function now trusts no argument: with no retention
    configured by the owner it drops nothing; with 7 days configured it refuses any keep_from
    inside them, and drops only what ends before."""
    migrate(db)
    db.cursor().execute("SELECT iot_ensure_sensores_partition(current_date)")
    db.cursor().execute("SELECT iot_ensure_sensores_partition(current_date - 30)")
    partitions = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'sensores'::regclass"
    before = scalar(db, partitions)
    as_consumer = connect_as(stack, env["POSTGRES_DB"], "iot_consumer", stack.role_password("iot_consumer"))
    try:
        for keep_from in ("'infinity'", "now()", "now() - interval '6 days'"):
            with pytest.raises(psycopg2.errors.RaiseException), as_consumer.cursor() as cur:
                cur.execute(f"SELECT * FROM iot_drop_expired_partitions('sensores', {keep_from})")
            if keep_from == "'infinity'":
                db.cursor().execute("INSERT INTO retention_policy VALUES ('sensores', 7)")  # the owner's word
        assert scalar(db, partitions) == before
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), as_consumer.cursor() as cur:
            cur.execute("UPDATE retention_policy SET keep_days = 1")
        with as_consumer.cursor() as cur:
            cur.execute("SELECT partition_name FROM iot_drop_expired_partitions('sensores', now() - interval '7 days')")
            dropped = [row[0] for row in cur.fetchall()]
        assert len(dropped) == 1  # the day 30 days ago; today's partition stays
        assert scalar(db, partitions) == before - 1
    finally:
        as_consumer.close()


RETENTION_VARIABLES = ("RETENTION_DAYS", "MINUTE_ROLLUP_RETENTION_DAYS", "HOUR_ROLLUP_RETENTION_DAYS")


def test_migrate_makes_the_consumers_retention_the_databases(
    stack: Stack, env: dict[str, str], db: psycopg2.extensions.connection
) -> None:
    """The chart's migration Job and Compose's `migrate` give `iot-consumer migrate` the
    consumers' RETENTION_DAYS (...): as the owner it makes them the database's, and the consumers'
    own role can then drop what expired - before, nothing set it and every deployment's hourly
    retention failed ("no retention is configured"), keeping every reading for ever. Without the
    variables migrate leaves the policy alone; with 0 days a table is kept whole again."""
    migrate(db)
    db.cursor().execute("SELECT iot_ensure_sensores_partition(current_date)")
    db.cursor().execute("SELECT iot_ensure_sensores_partition(current_date - 40)")
    partitions = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'sensores'::regclass"
    policy = "SELECT string_agg(relation::text || '=' || keep_days, ',' ORDER BY relation::text) FROM retention_policy"
    plain = {k: v for k, v in env.items() if k not in RETENTION_VARIABLES}
    as_consumer = {
        **plain,
        "POSTGRES_USER": "iot_consumer",
        "POSTGRES_PASSWORD": stack.role_password("iot_consumer"),
    }
    asked = {"RETENTION_DAYS": "30", "MINUTE_ROLLUP_RETENTION_DAYS": "90", "HOUR_ROLLUP_RETENTION_DAYS": "730"}

    unchanged = run_cli(["iot-consumer", "migrate"], plain)
    assert unchanged.returncode == 0, unchanged.stderr
    assert "retention: unchanged" in unchanged.stdout
    assert scalar(db, policy) is None
    refused = run_cli(["iot-consumer", "retention"], {**as_consumer, **asked})
    assert refused.returncode != 0
    assert "no retention is configured" in refused.stdout + refused.stderr

    configured = run_cli(["iot-consumer", "migrate"], {**plain, **asked})
    assert configured.returncode == 0, configured.stderr
    assert "retention: sensores 30 days, sensores_minuto 90 days, sensores_hora 730 days" in configured.stdout
    assert scalar(db, policy) == "sensores=30,sensores_hora=730,sensores_minuto=90"
    before = scalar(db, partitions)
    dropped = run_cli(["iot-consumer", "retention"], {**as_consumer, **asked})
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert scalar(db, partitions) == before - 1  # 40 days ago went; today's stays

    whole = run_cli(["iot-consumer", "migrate"], {**plain, "RETENTION_DAYS": "0"})
    assert whole.returncode == 0, whole.stderr
    assert scalar(db, policy) is None


def development_passwords(stack: Stack) -> dict[str, str]:
    """What stack/stack.sh generated for the service roles (.stack/secrets.env)."""
    return {variable: stack.secret(variable) for variable in ROLE_PASSWORD_VARIABLES.values()}


def test_migrate_sets_the_service_roles_passwords_from_the_environment(
    stack: Stack, env: dict[str, str], db: psycopg2.extensions.connection
) -> None:
    """`iot-consumer migrate` as the owner sets each service role's password from
    CONSUMER_DB_PASSWORD / EXPORTER_DB_PASSWORD / DASHBOARD_DB_PASSWORD (a SCRAM verifier
    computed client-side: the password is neither in argv nor in any statement); each role then
    logs in with its new password and no longer with the old one, and nothing prints it."""
    migrate(db)
    development = development_passwords(stack)
    new = {variable: f"{uuid.uuid4().hex}-{variable.lower()}" for variable in development}
    database = env["POSTGRES_DB"]
    try:
        result = run_cli(["iot-consumer", "migrate"], {**env, **new})
        assert result.returncode == 0, result.stderr
        assert all(password not in result.stdout + result.stderr for password in new.values())
        for role in ("iot_consumer", "iot_exporter", "iot_dashboard"):
            password = new[f"{role.removeprefix('iot_').upper()}_DB_PASSWORD"]
            connect_as(stack, database, role, password).close()
            with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
                connect_as(stack, database, role, development[ROLE_PASSWORD_VARIABLES[role]])
    finally:
        restored = run_cli(["iot-consumer", "migrate"], {**env, **development})
        assert restored.returncode == 0, restored.stderr


def test_make_run_keeps_every_password_out_of_every_argv(
    stack: Stack, env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """`make run`'s path (scripts/with-stack-secrets.sh scripts/run-pipeline.sh) takes the
    passwords stack/stack.sh generated (.stack/secrets.env, 0600, none committed) and moves
    readings as the consumer's own role, while no process on the machine - the broker, the
    database server, the pipeline's shells and services - shows any of them in its argv."""
    secrets_file = stack.stack_dir / "secrets.env"
    assert secrets_file.stat().st_mode & 0o077 == 0, "readable by others"
    secrets = list(read_env_file(secrets_file).values())
    assert len(secrets) >= 6
    assert all(len(secret) >= 32 for secret in secrets)
    run_env = {k: v for k, v in env.items() if "PASSWORD" not in k}
    run_env.update(PRODUCER_METRICS_PORT="0", CONSUMER_METRICS_PORT="0")
    pipeline = Service(
        [str(stack.repo / "scripts" / "with-stack-secrets.sh"), str(stack.repo / "scripts" / "run-pipeline.sh"),
         "--sensors", "5", "--interval", "0.2"],
        run_env, tmp_path / "pipeline.log",
    )  # fmt: skip
    try:
        wait_until(lambda: scalar(db, "SELECT to_regclass('sensores') IS NOT NULL") is True, 60, "the migration")
        wait_until(lambda: (scalar(db, "SELECT count(*) FROM sensores") or 0) >= 50, 120, "readings through make run")
        roles = scalar(
            db,
            "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'iot-consumer:%%'",
        )
        assert roles == "iot_consumer"
        assert argv_exposing(secrets) == []
    finally:
        pipeline.signal(signal.SIGTERM)
        stopped = pipeline.wait(60)
    assert stopped == 0, pipeline.log_path.read_text()[-2000:]  # both services stopped cleanly
    assert not [s for s in secrets if s in pipeline.log_path.read_text()]
