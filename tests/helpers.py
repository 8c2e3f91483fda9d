"""Helpers for integration tests: the local stack, topics, service processes, read-backs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psycopg2
import psycopg2.extensions
import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from iot_common.postgres import connect
from iot_common.settings import PostgresSettings
from iot_consumer.rollups import FLEET_TABLES, SKETCH_HASH_SQL, SKETCH_RANK_SQL, SKETCH_REGISTER_SQL, SKETCH_REGISTERS

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
# What tests produce for people to look at (the chaos run's figures, the dashboard's screenshot).
# Ignored by git: tests never rewrite tracked files; copy a result into docs/ or bench/results/
# deliberately when it should be published.
ARTIFACTS = REPO / ".artifacts"


# The service roles' passwords in the local stack, by the variable that carries each.
ROLE_PASSWORD_VARIABLES = {
    "iot_consumer": "CONSUMER_DB_PASSWORD",
    "iot_exporter": "EXPORTER_DB_PASSWORD",
    "iot_dashboard": "DASHBOARD_DB_PASSWORD",
}


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines (scripts/dev-secrets.sh's format), comments and blanks skipped."""
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Stack:
    repo: Path
    kafka_port: int
    postgres_port: int
    pg_user: str
    stack_dir: Path
    # A cluster's nodes (stack/stack.sh with KAFKA_BROKERS=3); one node on localhost otherwise.
    kafka_bootstrap: str = ""
    brokers: int = 1

    @classmethod
    def from_env(cls, repo: Path) -> Stack:
        kafka_port = int(os.environ.get("KAFKA_PORT", "9092"))
        brokers = int(os.environ.get("KAFKA_BROKERS", "1"))
        return cls(
            repo=repo,
            kafka_port=kafka_port,
            postgres_port=int(os.environ.get("POSTGRES_PORT", "5432")),
            pg_user=os.environ.get("POSTGRES_USER", "iot"),
            stack_dir=Path(os.environ.get("STACK_DIR", repo / ".stack")),
            kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "") if brokers > 1 else "",
            brokers=brokers,
        )

    @property
    def replication_factor(self) -> int:
        """What stack/stack.sh gives its topics: 3 on a cluster of three, 1 on one node."""
        return min(self.brokers, 3)

    def secret(self, name: str) -> str:
        """One of the stack's development passwords: the environment's, else the one
        stack/stack.sh generated into .stack/secrets.env (nothing is committed)."""
        if os.environ.get(name):
            return os.environ[name]
        path = self.stack_dir / "secrets.env"
        try:
            return read_env_file(path)[name]
        except (OSError, KeyError):
            raise RuntimeError(f"{name} is neither set nor in {path}: run stack/stack.sh up") from None

    @property
    def pg_password(self) -> str:
        """The schema owner's password."""
        return self.secret("POSTGRES_PASSWORD")

    def role_password(self, role: str) -> str:
        """The password of a service role (iot_consumer, iot_exporter, iot_dashboard)."""
        return self.secret(ROLE_PASSWORD_VARIABLES[role])

    def role_env(self, role: str) -> dict[str, str]:
        """POSTGRES_USER / POSTGRES_PASSWORD of a service role, for a service's environment."""
        return {"POSTGRES_USER": role, "POSTGRES_PASSWORD": self.role_password(role)}

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"localhost:{self.kafka_port}"

    def admin_connection(self) -> psycopg2.extensions.connection:
        """Superuser over the stack's unix socket (trust auth), for creating test databases."""
        conn = psycopg2.connect(
            host=str((self.stack_dir / "postgres").resolve()),
            port=self.postgres_port,
            user="postgres",
            dbname="postgres",
        )
        conn.autocommit = True
        return conn

    def connect(self, database: str) -> psycopg2.extensions.connection:
        """The project's role on ``database``, a UTC session as the services have (autocommit)."""
        settings = PostgresSettings(
            host="localhost", port=self.postgres_port, user=self.pg_user, password=self.pg_password, db=database
        )
        conn = connect(settings, application_name="tests")
        conn.autocommit = True
        return conn

    def service_env(self, topic: str, database: str, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC": topic,
            "POSTGRES_HOST": "localhost",
            "POSTGRES_PORT": str(self.postgres_port),
            "POSTGRES_DB": database,
            "POSTGRES_USER": self.pg_user,
            "POSTGRES_PASSWORD": self.pg_password,
            "METRICS_PORT": "0",
            "LOG_FORMAT": "json",
        }
        env.update(extra)
        return env

    def stack_command(self, *args: str) -> None:
        subprocess.run([str(self.repo / "stack" / "stack.sh"), *args], check=True)


def create_topic(bootstrap: str, name: str, partitions: int, replication_factor: int = 1) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, replication_factor)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
    wait_until(lambda: len(partitions_of(bootstrap, name)) == partitions, timeout=30, what=f"topic {name}")


def delete_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([name])
    except UnknownTopicOrPartitionError:
        pass
    finally:
        admin.close()


def partitions_of(bootstrap: str, topic: str) -> set[int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return set(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` from the beginning (no group, nothing committed)."""
    ends = end_offsets(bootstrap, topic)
    total = sum(ends.values())
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    parts = [TopicPartition(topic, p) for p in ends]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < total and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=50_000).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def send_raw(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    """Publish raw (key, value) pairs as they are, acks=all."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush(60)
    finally:
        producer.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Service:
    """A service CLI running as a real child process, its JSON log lines captured."""

    # Every process started, so a failing test cannot leave one running (see conftest).
    started: ClassVar[list[Service]] = []

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        Service.started.append(self)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events() if e.get("event") == name]
        assert found, f"{self.args[0]} logged no {name!r}; log: {self.log_path.read_text()[-3000:]}"
        return found[-1]

    def logged(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def port(self, timeout: float = 30) -> int:
        """The port of the process's /metrics, /healthz and /readyz (started with METRICS_PORT=0)."""
        wait_until(lambda: self.logged("observability_server_started"), timeout, "metrics server")
        return int(self.event("observability_server_started")["port"])

    def get(self, path: str) -> tuple[int, str]:
        """GET one of the process's HTTP endpoints: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port()}{path}", timeout=3) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when the series is absent)."""
        _, body = self.get("/metrics")
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in body.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (from /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def require_docker(required_by: str) -> None:
    """Skip the calling test unless a Docker daemon answers; fail instead where the variable
    ``required_by`` is 1 (CI sets it: there a missing daemon is an error, not a skip)."""
    try:
        ok = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if ok:
        return
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but no Docker daemon answers `docker info`")
    pytest.skip("no Docker daemon (CI runs these: .ci/run starts one)")


def standin_images() -> dict[str, str]:
    """Build the stand-ins for the third-party images (tests/compose/standins/build.sh) and our
    four images (docker/build-images.sh, tag dev, on the same base); the variables selecting
    the stand-ins (KAFKA_IMAGE=..., PYTHON_IMAGE=...)."""
    out = subprocess.run(
        [str(REPO / "tests" / "compose" / "standins" / "build.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    ).stdout
    images = dict(line.split("=", 1) for line in out.split() if "=" in line)
    subprocess.run(
        [str(REPO / "docker" / "build-images.sh"), "dev"],
        check=True,
        env={**os.environ, **images},
        timeout=1800,
        capture_output=True,
    )
    return images


def kcat_produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    *,
    codec: str = "none",
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[str | bytes] = (),
    partition: int | None = None,
    config: Sequence[str] = (),
) -> None:
    """Publish with librdkafka's kcat (Debian's package), the non-Python client users have:
    its own batching and codec implementations, optional keys and headers (``key=value``, of
    any bytes), and librdkafka properties (``config``: ``name=value``)."""
    if shutil.which("kcat") is None:
        raise AssertionError("kcat is required for this test: apt-get install kcat (.ci/run installs it)")
    args: list[str | bytes] = ["kcat", "-P", "-b", bootstrap, "-t", topic, "-z", codec, "-X", "linger.ms=50"]
    args += ["-D", "\\x1e"]
    for setting in config:
        args += ["-X", setting]
    for header in headers:
        args += ["-H", header]
    if partition is not None:
        args += ["-p", str(partition)]
    if keys is not None:
        args += ["-K", "\\x1f"]
        body = b"\x1e".join((k or b"") + b"\x1f" + v for k, v in zip(keys, values, strict=True))
    else:
        body = b"\x1e".join(values)
    subprocess.run(args, input=body, check=True, timeout=60, capture_output=True)


def codecs_in_log(stack: Stack, topic: str) -> set[str]:
    """The compression codecs of the record batches the broker stored for ``topic``, read with
    Kafka's own DumpLogSegments (proves a test's messages really travelled compressed)."""
    found: set[str] = set()
    for segment in sorted((stack.stack_dir / "kafka" / "data").glob(f"{topic}-*/*.log")):
        out = subprocess.run(
            [
                "java",
                "-cp",
                str(stack.stack_dir / "kafka" / "libs" / "*"),
                "org.apache.kafka.tools.DumpLogSegments",
                "--files",
                str(segment),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        found |= {
            line.split("compresscodec: ", 1)[1].split()[0] for line in out.splitlines() if "compresscodec: " in line
        }
    return found


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one of our CLIs to completion (``args[0]`` from the virtualenv), capturing its output."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def free_port() -> int:
    """A TCP port nobody listens on right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scalar(conn: psycopg2.extensions.connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return row[0] if row else None


def row_count(conn: psycopg2.extensions.connection) -> int:
    """Rows in sensores, 0 while the consumer has not created the table yet."""
    if scalar(conn, "SELECT to_regclass('sensores')") is None:
        return 0
    return int(scalar(conn, "SELECT count(*) FROM sensores"))


@dataclass(frozen=True)
class EndToEnd:
    """What a pipeline run left behind, against the topic it read: the chaos tests' invariant."""

    in_kafka: int
    rows: int
    dead_letters: int
    duplicate_readings: int
    duplicate_offsets: int
    verify_returncode: int
    verify: dict[str, Any]
    rollups_off: list[tuple[Any, ...]]


def end_to_end(stack: Stack, env: dict[str, str], topic: str) -> EndToEnd:
    """Messages in Kafka (end offsets), rows, dead letters, readings and offsets stored twice,
    `iot-consumer verify --expect-caught-up` and the rollups against a GROUP BY - read once
    the consumers have stopped."""
    conn = stack.connect(env["POSTGRES_DB"])
    try:
        rows = int(scalar(conn, "SELECT count(*) FROM sensores"))
        duplicate_readings = int(
            scalar(
                conn,
                'SELECT count(*) FROM (SELECT 1 FROM sensores GROUP BY sensor_id, "timestamp" HAVING count(*) > 1) d',
            )
        )
        distinct_offsets = int(scalar(conn, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM sensores"))
        dead = int(scalar(conn, "SELECT count(*) FROM dead_letters"))
        verify = subprocess.run(
            [str(BIN / "iot-consumer"), "verify", "--json", "--expect-caught-up"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        return EndToEnd(
            in_kafka=sum(end_offsets(stack.bootstrap, topic).values()),
            rows=rows,
            dead_letters=dead,
            duplicate_readings=duplicate_readings,
            duplicate_offsets=rows - distinct_offsets,
            verify_returncode=verify.returncode,
            verify=json.loads(verify.stdout),
            rollups_off=rollup_mismatches(conn),
        )
    finally:
        conn.close()


def rollup_mismatches(conn: psycopg2.extensions.connection, where: str = "") -> list[tuple[Any, ...]]:
    """Buckets where sensores_minuto / sensores_hora differ from a GROUP BY over ``sensores``
    (counts, minima and maxima exactly; sums to 1e-9 relative): [] when the rollups are exact.
    ``where`` narrows both sides by bucket, e.g. ``WHERE bucket >= '2026-11-01'``."""
    found: list[tuple[Any, ...]] = []
    for table, unit in (("sensores_minuto", "minute"), ("sensores_hora", "hour")):
        with conn.cursor() as cur:
            cur.execute(
                f"""WITH g AS (
                        SELECT sensor_id, date_trunc('{unit}', "timestamp", 'UTC') AS bucket, count(*) AS n,
                               sum(temperatura) AS ts, min(temperatura) AS tmin, max(temperatura) AS tmax,
                               sum(umidade) AS us, min(umidade) AS umin, max(umidade) AS umax
                        FROM sensores GROUP BY 1, 2),
                    r AS (SELECT * FROM {table} {where}),
                    gw AS (SELECT * FROM g {where})
                    SELECT '{table}', sensor_id, bucket, gw.n, r.leituras
                    FROM gw FULL JOIN r USING (sensor_id, bucket)
                    WHERE gw.n IS DISTINCT FROM r.leituras
                       OR gw.tmin IS DISTINCT FROM r.temperatura_min OR gw.tmax IS DISTINCT FROM r.temperatura_max
                       OR gw.umin IS DISTINCT FROM r.umidade_min OR gw.umax IS DISTINCT FROM r.umidade_max
                       OR abs(gw.ts - r.temperatura_soma) > 1e-9 * greatest(1, abs(gw.ts))
                       OR abs(gw.us - r.umidade_soma) > 1e-9 * greatest(1, abs(gw.us))
                    ORDER BY 3, 2 LIMIT 20"""
            )
            found += cur.fetchall()
    return found + fleet_rollup_mismatches(conn, where)


def fleet_rollup_mismatches(conn: psycopg2.extensions.connection, where: str = "") -> list[tuple[Any, ...]]:
    """Buckets where the fleet rollups (their slots added up) differ from a GROUP BY over
    ``sensores``: counts, minima, maxima and every sketch register exactly, sums to 1e-9
    relative; [] when they are exact."""
    hashed = SKETCH_HASH_SQL.format(id="sensor_id")
    register = SKETCH_REGISTER_SQL.format(hash=hashed)
    rank = SKETCH_RANK_SQL.format(hash=hashed)
    found: list[tuple[Any, ...]] = []
    for table, unit, sketch in FLEET_TABLES.values():
        union = f"""(SELECT array_agg(m ORDER BY k) FROM (
                        SELECT k, max(v) AS m FROM {table} x, unnest(x.registros) WITH ORDINALITY u(v, k)
                        WHERE x.bucket = t.bucket GROUP BY k) y)"""
        with conn.cursor() as cur:
            cur.execute(
                f"""WITH g AS (
                        SELECT date_trunc('{unit}', "timestamp", 'UTC') AS bucket, count(*) AS n,
                               sum(temperatura) AS ts, min(temperatura) AS tmin, max(temperatura) AS tmax,
                               sum(umidade) AS us, min(umidade) AS umin, max(umidade) AS umax
                        FROM sensores GROUP BY 1),
                    ranks AS (
                        SELECT date_trunc('{unit}', "timestamp", 'UTC') AS bucket, {register} AS reg, max({rank}) AS r
                        FROM sensores GROUP BY 1, 2),
                    gs AS (
                        SELECT g.bucket, array_agg(coalesce(ranks.r, 0)::smallint ORDER BY i.reg) AS sketch
                        FROM g CROSS JOIN generate_series(0, {SKETCH_REGISTERS - 1}) AS i(reg)
                        LEFT JOIN ranks ON ranks.bucket = g.bucket AND ranks.reg = i.reg GROUP BY g.bucket),
                    f AS (
                        SELECT bucket, sum(leituras) AS leituras, sum(temperatura_soma) AS ts,
                               min(temperatura_min) AS tmin, max(temperatura_max) AS tmax,
                               sum(umidade_soma) AS us, min(umidade_min) AS umin, max(umidade_max) AS umax,
                               {union if sketch else "NULL::smallint[]"} AS sketch
                        FROM {table} t GROUP BY bucket),
                    r AS (SELECT * FROM f {where}),
                    gw AS (SELECT g.*, {"gs.sketch" if sketch else "NULL::smallint[] AS sketch"}
                           FROM g JOIN gs USING (bucket) {where})
                    SELECT '{table}', bucket, gw.n, r.leituras
                    FROM gw FULL JOIN r USING (bucket)
                    WHERE gw.n IS DISTINCT FROM r.leituras
                       OR gw.tmin IS DISTINCT FROM r.tmin OR gw.tmax IS DISTINCT FROM r.tmax
                       OR gw.umin IS DISTINCT FROM r.umin OR gw.umax IS DISTINCT FROM r.umax
                       OR gw.sketch IS DISTINCT FROM r.sketch
                       OR abs(gw.ts - r.ts) > 1e-9 * greatest(1, abs(gw.ts))
                       OR abs(gw.us - r.us) > 1e-9 * greatest(1, abs(gw.us))
                    ORDER BY 2 LIMIT 20"""
            )
            found += cur.fetchall()
    return found


MEASURE = REPO / "tests" / "measure.py"


def run_measured(
    args: list[str], env: dict[str, str], timeout: float, report: Path
) -> tuple[int, float, subprocess.CompletedProcess[str]]:
    """Run a command through tests/measure.py: (exit code, its own peak RSS in MB, the run).

    Measuring with wait4() here would report this test process's own peak for the child
    (see tests/measure.py)."""
    result = subprocess.run(
        [sys.executable, str(MEASURE), str(report), "--", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    figures = json.loads(report.read_text())
    return int(figures["returncode"]), figures["peak_rss_kb"] / 1024, result


def argv_exposing(secrets: list[str]) -> list[str]:
    """Every process on this machine (containers and the test node's pods included: their
    processes are in this /proc too) whose command line contains one of ``secrets``, as
    "pid: argv[0]" - any user can read another's argv with `ps`."""
    wanted = [s.encode() for s in secrets if s]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if any(secret in argv for secret in wanted):
            program = argv.split(b"\x00")[0].decode(errors="replace")
            found.append(f"{entry.name}: {program}")
    return found


# The chart's Grafana dashboard and its alert rules: what the operators' view queries.
GRAFANA_DASHBOARD = REPO / "charts" / "iot-monitor" / "files" / "grafana-dashboard.json"
PROMETHEUS_RULES = REPO / "charts" / "iot-monitor" / "files" / "prometheus-rules.yaml"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard (panels and templating)."""
    board = json.loads(GRAFANA_DASHBOARD.read_text())
    queries = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    queries += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return queries


def rule_queries() -> list[str]:
    """Every expression of the pipeline's Prometheus rules."""
    rules = yaml.safe_load(PROMETHEUS_RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def metric_families(expression: str) -> set[str]:
    """Our metric families an expression names (a histogram's _bucket/_sum/_count is its family)."""
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\biot_[a-z_]+", expression)}


def exposed_families(metrics_text: str) -> set[str]:
    """The metric families a /metrics page declares (# TYPE lines: also those without samples yet)."""
    families = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            families.add(name)
            if kind == "counter":
                families.add(name + "_total" if not name.endswith("_total") else name)
    return families
