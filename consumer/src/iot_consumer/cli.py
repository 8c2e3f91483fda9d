"""``iot-consumer``: Kafka topic → PostgreSQL table ``sensores``, exactly-once effect."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import orjson
import psycopg2
import typer
from kafka.errors import KafkaError, KafkaTimeoutError

from iot_common.cli import fail, setup_service
from iot_common.http import start_observability_server
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.postgres import connect
from iot_common.schema import ReadingLimits
from iot_common.settings import ConfigError, KafkaSettings, PostgresSettings, load_settings
from iot_consumer.alerts.outbox import OutboxPublisher
from iot_consumer.alerts.rules import RuleSet, ThresholdRule, load_rules
from iot_consumer.alerts.stage import AlertStage
from iot_consumer.loop import ConsumerOptions, ConsumerService
from iot_consumer.schema import migrate
from iot_consumer.sink import PostgresSink
from iot_consumer.verify import reconcile

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
log = get_logger("iot_consumer")


def _settings() -> tuple[KafkaSettings, PostgresSettings]:
    try:
        return load_settings(KafkaSettings), load_settings(PostgresSettings)
    except ConfigError as exc:
        fail(str(exc))


def _rules(path: Path | None) -> RuleSet:
    try:
        return load_rules(path)
    except ConfigError as exc:
        fail(str(exc))


TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"

AlertsOption = Annotated[
    bool,
    typer.Option(
        "--alerts/--no-alerts", envvar="ALERTS_ENABLED", help="Evaluate alert rules on every batch (docs/ALERTS.md)."
    ),
]
RulesOption = Annotated[
    Path | None,
    typer.Option(
        "--alert-rules",
        envvar="ALERT_RULES_FILE",
        dir_okay=False,
        help="TOML file of alert rules (default: built-in rules, see `iot-consumer rules`).",
    ),
]


def _migrate(postgres: PostgresSettings) -> int:
    try:
        conn = connect(postgres, application_name="iot-consumer:migrate")
    except psycopg2.OperationalError as exc:
        fail(f"cannot connect to {postgres.describe()}: {str(exc).strip()}", code=1)
    try:
        return migrate(conn)
    finally:
        conn.close()


@app.command()
def run(
    group: Annotated[
        str, typer.Option(envvar="CONSUMER_GROUP", help="Kafka consumer group (replicas share it).")
    ] = "iot-consumer",
    max_batch: Annotated[
        int,
        typer.Option(
            min=1, max=500_000, envvar="CONSUMER_MAX_BATCH", help="Most messages per poll and per transaction."
        ),
    ] = 10_000,
    poll_timeout_ms: Annotated[
        int,
        typer.Option(min=1, max=60_000, envvar="CONSUMER_POLL_TIMEOUT_MS", help="How long one poll waits for data."),
    ] = 500,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            envvar="CONSUMER_EXIT_WHEN_IDLE",
            help="Bounded mode: exit 0 after this many seconds without new messages, once every partition of the topic is consumed (batch jobs, tests).",
        ),
    ] = None,
    temperature_min: Annotated[
        float,
        typer.Option(envvar="READING_TEMPERATURE_MIN", help="Readings below are dead-lettered (physical sanity)."),
    ] = -40.0,
    temperature_max: Annotated[float, typer.Option(envvar="READING_TEMPERATURE_MAX")] = 85.0,
    humidity_min: Annotated[float, typer.Option(envvar="READING_HUMIDITY_MIN")] = 0.0,
    humidity_max: Annotated[float, typer.Option(envvar="READING_HUMIDITY_MAX")] = 100.0,
    max_payload_bytes: Annotated[
        int,
        typer.Option(min=64, envvar="READING_MAX_PAYLOAD_BYTES", help="Larger messages are dead-lettered unparsed."),
    ] = 4096,
    metrics_port: Annotated[
        int | None, typer.Option(min=-1, max=65535, help="Overrides METRICS_PORT (0 = any free port, -1 = off).")
    ] = None,
    alerts: AlertsOption = True,
    alert_rules: RulesOption = None,
    alerts_topic: Annotated[
        str, typer.Option(envvar="ALERTS_TOPIC", help="Kafka topic that receives opened/closed alert events.")
    ] = "iot_alertas",
) -> None:
    """Consume readings into PostgreSQL until SIGTERM/SIGINT (or idle, with --exit-when-idle).

    Each poll becomes one transaction: valid readings are COPYed into `sensores`, invalid
    messages go to `dead_letters` with the reason, and the partitions' next offsets are
    stored in `consumer_positions`, all committed together. Exit code 0 after a clean stop.
    """
    obs = setup_service("iot-consumer")
    kafka, postgres = _settings()
    if temperature_min >= temperature_max or humidity_min >= humidity_max:
        fail("reading limits: each minimum must be below its maximum")
    limits = ReadingLimits(temperature_min, temperature_max, humidity_min, humidity_max, max_payload_bytes)
    if not re.match(TOPIC_PATTERN, alerts_topic):
        fail(f"ALERTS_TOPIC={alerts_topic!r}: not a valid Kafka topic name")
    rules = _rules(alert_rules) if alerts else None
    stop = StopFlag().install()
    version = _migrate(postgres)
    log.info("schema_ready", version=version, database=postgres.describe())
    publisher = OutboxPublisher(kafka, postgres).start() if rules is not None else None
    stage = AlertStage(rules, group, alerts_topic, publisher) if rules is not None else None
    if rules is not None:
        log.info("alert_rules_loaded", source=rules.source, rules=[r.name for r in rules.all], topic=alerts_topic)
    service = ConsumerService(
        kafka,
        PostgresSink(postgres, group, kafka.topic, alerts=stage),
        ConsumerOptions(
            group=group,
            max_batch=max_batch,
            poll_timeout_ms=poll_timeout_ms,
            exit_when_idle_s=exit_when_idle,
            limits=limits,
        ),
        stop,
    )
    server = start_observability_server(
        obs.metrics_host,
        obs.metrics_port if metrics_port is None else metrics_port,
        readiness=service.readiness,
        liveness=service.liveness,
    )
    try:
        service.run()
    except KafkaTimeoutError:
        fail(
            f"no Kafka broker reachable at {kafka.bootstrap_servers} within {kafka.bootstrap_timeout_ms / 1000:.0f} s "
            "(KAFKA_BOOTSTRAP_SERVERS; for TLS/SASL problems see the broker's log)",
            code=1,
        )
    finally:
        if publisher is not None:
            publisher.stop()
        if server:
            server.stop()


@app.command()
def rules(alert_rules: RulesOption = None) -> None:
    """Check an alert rules file and print the rules it defines (exit 2 if it is invalid)."""
    ruleset = _rules(alert_rules)
    typer.echo(f"alert rules from {ruleset.source}")
    for rule in ruleset.all:
        kind = "threshold" if isinstance(rule, ThresholdRule) else "silence"
        typer.echo(f"  {rule.name:<22} {rule.severity:<9} {kind:<10} {rule.describe()}")


@app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the database schema, then exit (the `run` command does this too)."""
    setup_service("iot-consumer")
    _, postgres = _settings()
    version = _migrate(postgres)
    typer.echo(f"schema version {version} at {postgres.describe()}")


@app.command()
def verify(
    group: Annotated[
        str, typer.Option(envvar="CONSUMER_GROUP", help="Consumer group whose positions to check.")
    ] = "iot-consumer",
    expect_caught_up: Annotated[bool, typer.Option(help="Also fail while messages are waiting (lag > 0).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Reconcile Kafka with PostgreSQL: per partition, Kafka's offsets, the stored position,
    and the rows + dead letters written; report missing, duplicated and unconsumed messages.

    Exit 0 when nothing is missing or duplicated (and, with --expect-caught-up, lag is 0).
    """
    setup_service("iot-consumer")
    kafka, postgres = _settings()
    try:
        conn = connect(postgres, application_name="iot-consumer:verify")
    except psycopg2.OperationalError as exc:
        fail(f"cannot connect to {postgres.describe()}: {str(exc).strip()}", code=1)
    try:
        result = reconcile(conn, kafka, group)
    except (KafkaError, ValueError) as exc:
        fail(f"cannot read Kafka offsets of {kafka.topic!r}: {exc}", code=1)
    finally:
        conn.close()
    ok = result.consistent(expect_caught_up)
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "topic": result.topic,
                    "group": result.group,
                    "consistent": ok,
                    "missing": result.missing,
                    "duplicates": result.duplicates,
                    "ahead": result.ahead,
                    "lag": result.lag,
                    "partitions": [p.as_dict() for p in result.partitions],
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        typer.echo(f"topic {result.topic}  group {result.group}")
        typer.echo(
            f"{'partition':>9} {'kafka start':>12} {'kafka end':>12} {'stored':>12} {'written':>12} {'missing':>8} {'dup':>6} {'ahead':>6} {'lag':>10}"
        )
        for p in result.partitions:
            stored = "-" if p.stored is None else str(p.stored)
            typer.echo(
                f"{p.partition:>9} {p.kafka_start:>12} {p.kafka_end:>12} {stored:>12} {p.written:>12} {p.missing:>8} {p.duplicates:>6} {p.ahead:>6} {p.lag:>10}"
            )
        verdict = "OK" if ok else "INCONSISTENT"
        typer.echo(
            f"{verdict}: missing {result.missing}, duplicates {result.duplicates}, ahead {result.ahead}, lag {result.lag}"
        )
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
