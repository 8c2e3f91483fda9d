"""`docker compose up` of our docker-compose.yml, for real.

Needs a Docker daemon and docker-compose v2 (`scripts/install-tools.sh compose` builds it from
the Go module proxy). The third-party images cannot be pulled here, so the test selects local
stand-ins that honour the same contract (tests/compose/standins/: Kafka 4.3.1 through Kafka's
own Docker wrapper, Debian's PostgreSQL with the official entrypoint's contract, Pushgateway and
Prometheus built from their Go modules) through the variables the file offers (`KAFKA_IMAGE`,
...), and builds our four images with docker/build-images.sh. Without a daemon the module is
skipped, unless IOT_REQUIRE_COMPOSE_TESTS=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openpyxl
import psycopg2
import psycopg2.errors
import pytest

from tests.helpers import REPO, require_docker, standin_images, wait_until

# Cold, the fixtures build docker-compose and the stand-in images from the Go module proxy (over
# 10 min on 2 cores, past the suite's default timeout): the k8s suite allows the same hour.
pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]

PROJECT = "iot-compose-test"
TOOLS = Path(os.environ.get("IOT_TOOLS_CACHE", Path.home() / ".cache" / "iot-monitor" / "bin"))
POSTGRES_PORT = 15432  # docker-compose.yml publishes PostgreSQL here


@pytest.fixture(scope="module")
def compose_env() -> dict[str, str]:
    """Stand-in images built, our images built, the compose binary ready: the environment for it."""
    require_docker("IOT_REQUIRE_COMPOSE_TESTS")
    subprocess.run([str(REPO / "scripts" / "install-tools.sh"), "compose"], check=True, timeout=3600)
    images = standin_images()
    env = {
        **os.environ,
        **images,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "EXPORT_INTERVAL_SECONDS": "15",
        "PRODUCER_SENSORS": "20",
    }
    return env


def compose(
    env: dict[str, str], *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLS / "docker-compose"), "-f", str(REPO / "docker-compose.yml"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@pytest.fixture(scope="module")
def stack_up(compose_env: dict[str, str]) -> Iterator[dict[str, str]]:
    compose(compose_env, "down", "-v", "--remove-orphans", check=False)
    try:
        yield compose_env
    finally:
        logs = compose(compose_env, "logs", "--no-color", "--tail", "200", check=False).stdout
        (REPO / ".artifacts").mkdir(exist_ok=True)
        (REPO / ".artifacts" / "compose.log").write_text(logs)
        compose(compose_env, "down", "-v", "--remove-orphans", check=False, timeout=300)


def states(env: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """service → its containers' state and health, from `docker compose ps`."""
    out = compose(env, "ps", "--all", "--format", "json").stdout
    rows = (
        [json.loads(line) for line in out.splitlines() if line.strip()]
        if not out.lstrip().startswith("[")
        else json.loads(out)
    )
    by_service: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_service.setdefault(row["Service"], []).append(row)
    return by_service


def all_up(env: dict[str, str]) -> bool:
    found = states(env)
    expected = {
        "kafka",
        "kafka-init",
        "migrate",
        "postgres",
        "producer",
        "consumer",
        "exporter",
        "dashboard",
        "pushgateway",
        "prometheus",
    }
    if not expected <= found.keys():
        return False
    for service, rows in found.items():
        for row in rows:
            if service in ("kafka-init", "migrate"):  # one-shot: done, successfully
                if not (row["State"] == "exited" and "(0)" in row.get("Status", "")):
                    return False
            elif row["State"] != "running" or row.get("Health") not in ("", "healthy"):
                return False
    return len(found["consumer"]) == 2


def sql(query: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(host="127.0.0.1", port=POSTGRES_PORT, user="iot", password="iot", dbname="iot")
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return list(cur.fetchall())
    finally:
        conn.close()


def rows() -> int:
    try:
        return int(str(sql("SELECT count(*) FROM sensores")[0][0]))
    except psycopg2.Error:
        return 0


def stop_producing_and_catch_up(env: dict[str, str], what: str) -> None:
    """Stop the producer (a quiet topic) and wait until the consumers wrote every reading."""
    compose(env, "stop", "producer")
    verify = ["exec", "-T", "consumer", "iot-consumer", "verify", "--expect-caught-up"]
    wait_until(lambda: compose(env, *verify, check=False).returncode == 0, 120, what)


def test_compose_runs_the_pipeline_and_down_up_keeps_every_reading(stack_up: dict[str, str], tmp_path: Path) -> None:
    """`docker compose up`: every service healthy (2 consumer replicas), readings arrive, the
    exporter writes today's CSV and XLSX files, which open. `docker compose down` then `up` keeps the Kafka log and the
    database: the topic's offsets go on from where they were, the consumers continue exactly at
    their stored positions (no offset gap, no reading missing or twice: `iot-consumer verify`)."""
    env = stack_up
    compose(env, "up", "-d", timeout=900)
    wait_until(lambda: all_up(env), 300, "every service running and healthy", interval=3)
    wait_until(lambda: rows() >= 200, 180, "readings in sensores", interval=2)
    day = datetime.now(UTC).date().isoformat()
    wait_until(
        lambda: f"sensores_{day}.xlsx" in compose(env, "exec", "-T", "exporter", "ls", "/exports", check=False).stdout,
        120,
        "today's export files",
        interval=3,
    )
    exports = compose(env, "exec", "-T", "exporter", "ls", "/exports").stdout.split()
    assert f"sensores_{day}.csv" in exports
    copied = tmp_path / "exports"
    compose(env, "cp", "exporter:/exports", str(copied))
    header = (copied / f"sensores_{day}.csv").read_text().splitlines()[0]
    assert header.split(",")[:4] == ["sensor_id", "timestamp", "temperatura", "umidade"]
    sheet = openpyxl.load_workbook(copied / f"sensores_{day}.xlsx", read_only=True).worksheets[0]
    table = list(sheet.iter_rows(values_only=True))
    assert list(table[0][:4]) == ["sensor_id", "timestamp (UTC)", "temperatura (°C)", "umidade (%)"]
    assert len(table) > 1
    assert isinstance(table[1][1], datetime)  # a date-time cell, not text

    stop_producing_and_catch_up(env, "caught up")
    before = {
        int(str(p)): int(str(o))
        for p, o in sql("SELECT kafka_partition, next_offset FROM consumer_positions WHERE topic = 'iot_sensores'")
    }
    rows_before = rows()

    compose(env, "down", timeout=300)  # no -v: the volumes stay
    compose(env, "up", "-d", timeout=900)
    wait_until(lambda: all_up(env), 300, "every service running again", interval=3)
    wait_until(lambda: rows() >= rows_before + 100, 180, "new readings after down/up", interval=2)
    stop_producing_and_catch_up(env, "caught up again")

    # The log kept its offsets: each partition's new rows start exactly at the stored position.
    for partition, position in before.items():
        first_new = sql(
            f"SELECT min(kafka_offset) FROM sensores WHERE kafka_partition = {int(partition)} AND kafka_offset >= {int(position)}"
        )[0][0]
        if first_new is not None:
            assert first_new == position, (partition, position, first_new)
    assert sql("SELECT count(*) FROM offset_gaps")[0][0] == 0
    assert (
        sql('SELECT count(*) FROM (SELECT 1 FROM sensores GROUP BY sensor_id, "timestamp" HAVING count(*) > 1) d')[0][0]
        == 0
    )
    verify = compose(env, "exec", "-T", "consumer", "iot-consumer", "verify", "--json")
    report = json.loads(verify.stdout)
    assert (report["missing"], report["duplicates"], report["lag"]) == (0, 0, 0)
    logs = compose(env, "logs", "--no-color", "consumer").stdout
    assert '"event":"offset_gap"' not in logs


def sessions_by_role() -> dict[str, set[str]]:
    """Which roles the services' connections log in as (application name → roles)."""
    found: dict[str, set[str]] = {}
    for application, role in sql(
        "SELECT application_name, usename FROM pg_stat_activity WHERE datname = 'iot' AND application_name <> ''"
    ):
        found.setdefault(str(application).split(":")[0], set()).add(str(role))
    return found


def as_role(role: str, password: str, statement: str) -> None:
    conn = psycopg2.connect(host="127.0.0.1", port=POSTGRES_PORT, user=role, password=password, dbname="iot")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def test_compose_services_log_in_as_their_own_least_privilege_roles(stack_up: dict[str, str]) -> None:
    """The one-shot `migrate` service (the owner) created iot_consumer, iot_exporter and
    iot_dashboard and set their passwords; the consumers log in as iot_consumer, the dashboard as
    iot_dashboard, and each role can do its job and nothing more: the consumer cannot DELETE,
    TRUNCATE or DROP readings, the exporter and the dashboard cannot write."""
    env = stack_up
    if not all_up(env):
        compose(env, "up", "-d", timeout=900)
        wait_until(lambda: all_up(env), 300, "every service running and healthy", interval=3)
    wait_until(lambda: "iot_consumer" in sessions_by_role().get("iot-consumer", set()), 60, "consumer sessions")
    roles = sessions_by_role()
    assert roles["iot-consumer"] == {"iot_consumer"}, roles
    exported = compose(env, "exec", "-T", "exporter", "iot-exporter", "export", "--format", "csv", "--out", "/tmp")
    assert exported.returncode == 0
    allowed = [
        ("iot_consumer", "iot_consumer", 'SELECT count(sensor_id) FROM sensores WHERE "timestamp" > now()'),
        ("iot_exporter", "iot_exporter", "SELECT count(*) FROM sensores"),
        ("iot_dashboard", "iot_dashboard", "SELECT count(*) FROM alertas"),
    ]
    for role, password, statement in allowed:
        as_role(role, password, statement)
    refused = [
        ("iot_consumer", "iot_consumer", "DELETE FROM sensores"),
        ("iot_consumer", "iot_consumer", "TRUNCATE sensores"),
        ("iot_consumer", "iot_consumer", "DROP TABLE sensores"),
        ("iot_consumer", "iot_consumer", "SELECT iot_drop_expired_partitions('sensores', 'infinity')"),
        ("iot_exporter", "iot_exporter", "DELETE FROM sensores"),
        ("iot_exporter", "iot_exporter", "UPDATE consumer_positions SET next_offset = 0"),
        ("iot_dashboard", "iot_dashboard", "DELETE FROM alertas"),
        ("iot_dashboard", "iot_dashboard", "INSERT INTO offset_gaps DEFAULT VALUES"),
    ]
    for role, password, statement in refused:
        with pytest.raises(psycopg2.Error) as refusal:
            as_role(role, password, statement)
        assert isinstance(
            refusal.value,
            psycopg2.errors.InsufficientPrivilege
            | psycopg2.errors.ReadOnlySqlTransaction
            | psycopg2.errors.RaiseException,
        ), (role, statement, refusal.value)
