"""``iot-consumer``: Kafka topic → PostgreSQL table ``sensores``, exactly-once effect."""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import orjson
import psycopg2
import psycopg2.extensions
import typer
from kafka.errors import KafkaError, KafkaTimeoutError

from iot_common.cli import fail, setup_service
from iot_common.errors import summary
from iot_common.http import start_observability_server
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.postgres import CONNECTION_ERRORS, connect
from iot_common.retry import Backoff
from iot_common.schema import DEFAULT_LIMITS, ReadingLimits
from iot_common.settings import TOPIC_NAME_PATTERN, ConfigError, KafkaSettings, PostgresSettings, load_settings
from iot_consumer.alerts.outbox import OutboxPublisher
from iot_consumer.alerts.rules import RuleSet, ThresholdRule, load_rules
from iot_consumer.alerts.stage import AlertStage
from iot_consumer.deadletters import DeadLetterFilter, replay, samples, summarize
from iot_consumer.decoding import Decoder, decoder_available
from iot_consumer.duplicates import DuplicatePolicy
from iot_consumer.gaps import classify
from iot_consumer.housekeeping import (
    Retention,
    RetentionConfigError,
    RetentionPostponedError,
    drop_expired,
    set_retention_policy,
    storage,
)
from iot_consumer.loop import ConsumerOptions, ConsumerService
from iot_consumer.migrations import migrate, missing_service_roles, set_role_passwords, transaction
from iot_consumer.positions import OffsetGapPolicy, reset_positions
from iot_consumer.sink import CopyFormat, PostgresSink
from iot_consumer.verify import kafka_log, reconcile

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
_TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]
log = get_logger("iot_consumer")


def _settings() -> tuple[KafkaSettings, PostgresSettings]:
    try:
        return load_settings(KafkaSettings), load_settings(PostgresSettings)
    except ConfigError as exc:
        fail(str(exc))


def _postgres_settings() -> PostgresSettings:
    """For the commands that never talk to Kafka (migrate, retention, dead letters): they need
    no Kafka credential, which the migration Job, for one, does not have."""
    try:
        return load_settings(PostgresSettings)
    except ConfigError as exc:
        fail(str(exc))


def _rules(path: Path | None) -> RuleSet:
    try:
        return load_rules(path)
    except ConfigError as exc:
        fail(str(exc))


# The acceptance window's defaults (docs/RELIABILITY.md): a year back, so a gateway's backfill or
# a season's archive is accepted while one dead clock makes at most ~400 daily partitions.
DEFAULT_EARLIEST = datetime(2000, 1, 1)
DEFAULT_MAX_AGE_DAYS = 400

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


# Reading limits: the same options (and variables) for `run` and `dead-letters replay`.
TemperatureMinOption = Annotated[
    float, typer.Option(envvar="READING_TEMPERATURE_MIN", help="Readings below are dead-lettered (physical sanity).")
]
TemperatureMaxOption = Annotated[float, typer.Option(envvar="READING_TEMPERATURE_MAX")]
HumidityMinOption = Annotated[float, typer.Option(envvar="READING_HUMIDITY_MIN")]
HumidityMaxOption = Annotated[float, typer.Option(envvar="READING_HUMIDITY_MAX")]
MaxPayloadOption = Annotated[
    int, typer.Option(min=64, envvar="READING_MAX_PAYLOAD_BYTES", help="Larger messages are dead-lettered unparsed.")
]
EarliestOption = Annotated[
    datetime,
    typer.Option(
        envvar="READING_EARLIEST",
        formats=["%Y-%m-%d"],
        help="Readings stamped before this UTC day are dead letters (too_old).",
    ),
]
MaxAgeOption = Annotated[
    int,
    typer.Option(
        min=0,
        envvar="READING_MAX_AGE_DAYS",
        help="Readings stamped more than this many days ago are dead letters (too_old); RETENTION_DAYS, "
        "when shorter, narrows it (0 = only --earliest). Bounds the daily partitions one device with a "
        "dead clock can make.",
    ),
]
DeadLetterRetentionOption = Annotated[
    int,
    typer.Option(
        min=0, envvar="DEAD_LETTER_RETENTION_DAYS", help="Days dead letters are kept (0 = all; at least 1 day)."
    ),
]
GroupOption = Annotated[str, typer.Option(envvar="CONSUMER_GROUP", help="Kafka consumer group (replicas share it).")]
# Shared by `run`, `retention` and `migrate` (which tells "not given" from 0).
RAW_RETENTION = typer.Option(
    min=0, envvar="RETENTION_DAYS", help="Days of raw readings kept; older daily partitions are dropped (0 = all)."
)
MINUTE_RETENTION = typer.Option(
    min=0, envvar="MINUTE_ROLLUP_RETENTION_DAYS", help="Days of sensores_minuto kept (0 = all)."
)
HOUR_RETENTION = typer.Option(min=0, envvar="HOUR_ROLLUP_RETENTION_DAYS", help="Days of sensores_hora kept (0 = all).")
RawRetentionOption = Annotated[int, RAW_RETENTION]
MinuteRetentionOption = Annotated[int, MINUTE_RETENTION]
HourRetentionOption = Annotated[int, HOUR_RETENTION]


def _limits(
    t_min: float,
    t_max: float,
    h_min: float,
    h_max: float,
    max_payload: int,
    earliest: datetime = DEFAULT_EARLIEST,
    max_age_days: int = 0,
    max_batch_bytes: int = DEFAULT_LIMITS.max_batch_bytes,
) -> ReadingLimits:
    if t_min >= t_max or h_min >= h_max:
        fail("reading limits: each minimum must be below its maximum")
    max_age = timedelta(days=max_age_days) if max_age_days else None
    return ReadingLimits(
        t_min, t_max, h_min, h_max, max_payload, earliest.replace(tzinfo=UTC), max_age=max_age,
        max_batch_bytes=max_batch_bytes,
    )  # fmt: skip


def _connect(postgres: PostgresSettings, purpose: str) -> psycopg2.extensions.connection:
    try:
        return connect(postgres, application_name=f"iot-consumer:{purpose}")
    except psycopg2.OperationalError as exc:
        fail(f"cannot connect to {postgres.describe()}: {summary(exc)}", code=1)


def _migrate(postgres: PostgresSettings) -> int:
    conn = _connect(postgres, "migrate")
    try:
        return migrate(conn)
    finally:
        conn.close()


# A connection refused for these reasons is a setting to fix, not an outage to wait out.
_CONFIGURATION_ERRORS = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


def _migrate_once_reachable(postgres: PostgresSettings, stop: StopFlag) -> int | None:
    """`run` at start: migrate as soon as PostgreSQL answers. A consumer (re)started while the
    database restarts waits for it - logged, with backoff - instead of exiting into a crash
    loop; wrong credentials still fail at once. None when stopped before."""
    backoff = Backoff(0.5, 30.0)
    while not stop.is_set():
        try:
            conn = connect(postgres, application_name="iot-consumer:migrate")
        except psycopg2.OperationalError as exc:
            if any(reason in str(exc) for reason in _CONFIGURATION_ERRORS):
                fail(f"cannot connect to {postgres.describe()}: {summary(exc)}", code=1)
            delay = backoff.next_delay()
            log.warning("database_unavailable", error=summary(exc), retry_in_s=round(delay, 2), during="start")
            stop.wait(delay)
            continue
        try:
            return migrate(conn)
        except CONNECTION_ERRORS as exc:  # lost while migrating: the same wait
            delay = backoff.next_delay()
            log.warning("database_unavailable", error=summary(exc), retry_in_s=round(delay, 2), during="migration")
            stop.wait(delay)
        finally:
            conn.close()
    return None


def _retention(raw_days: int, minute_days: int, hour_days: int, dead_letter_days: int = 0) -> Retention:
    try:
        return Retention(raw_days, minute_days, hour_days, dead_letter_days)
    except RetentionConfigError as exc:
        fail(str(exc))


@app.command()
def run(
    group: GroupOption = "iot-consumer",
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
    temperature_min: TemperatureMinOption = -40.0,
    temperature_max: TemperatureMaxOption = 85.0,
    humidity_min: HumidityMinOption = 0.0,
    humidity_max: HumidityMaxOption = 100.0,
    max_payload_bytes: MaxPayloadOption = 4096,
    earliest: EarliestOption = DEFAULT_EARLIEST,
    max_reading_age_days: MaxAgeOption = DEFAULT_MAX_AGE_DAYS,
    max_batch_bytes: Annotated[
        int,
        typer.Option(
            min=1 << 20,
            max=1 << 30,
            envvar="CONSUMER_MAX_BATCH_BYTES",
            help="The most one compressed record batch may decompress to; a larger one is dead-lettered "
            "whole (batch_too_large) and the partition goes on. Bounds the memory a crafted batch can take.",
        ),
    ] = DEFAULT_LIMITS.max_batch_bytes,
    metrics_port: Annotated[
        int | None, typer.Option(min=-1, max=65535, help="Overrides METRICS_PORT (0 = any free port, -1 = off).")
    ] = None,
    alerts: AlertsOption = True,
    alert_rules: RulesOption = None,
    alerts_topic: Annotated[
        str, typer.Option(envvar="ALERTS_TOPIC", help="Kafka topic that receives opened/closed alert events.")
    ] = "iot_alertas",
    on_offset_gap: Annotated[
        OffsetGapPolicy,
        typer.Option(
            envvar="CONSUMER_ON_OFFSET_GAP",
            help="When Kafka's log no longer holds a stored position (topic re-created, retention): "
            "fail = halt that partition loudly until fixed; resume-earliest / resume-latest = move on, "
            "recorded in offset_gaps (docs/RELIABILITY.md).",
        ),
    ] = OffsetGapPolicy.FAIL,
    stall_after: Annotated[
        float,
        typer.Option(
            min=1.0,
            envvar="CONSUMER_STALL_AFTER_S",
            help="Messages waiting without progress (or an error repeating) this long turns /readyz to 503.",
        ),
    ] = 30.0,
    decoder: Annotated[
        Decoder,
        typer.Option(
            envvar="CONSUMER_DECODER",
            help="How fetched records are decoded: native = the C decoder (iot_fastpath; fails at start if "
            "it is not installed), python = kafka-python + the Python validator, auto = native when "
            "installed (docs/PERFORMANCE.md).",
        ),
    ] = Decoder.AUTO,
    write_overlap: Annotated[
        bool,
        typer.Option(
            "--write-overlap/--no-write-overlap",
            envvar="CONSUMER_WRITE_OVERLAP",
            help="Write each batch on a writer thread while the next one is polled and decoded "
            "(one batch in flight; same transaction and fencing).",
        ),
    ] = True,
    retention_days: RawRetentionOption = 0,
    minute_rollup_retention_days: MinuteRetentionOption = 0,
    hour_rollup_retention_days: HourRetentionOption = 0,
    dead_letter_retention_days: DeadLetterRetentionOption = 0,
    on_duplicate: Annotated[
        DuplicatePolicy,
        typer.Option(
            envvar="CONSUMER_ON_DUPLICATE",
            help="A reading whose sensor and timestamp are already stored (a gateway re-sending): "
            "keep = store it again (every Kafka record once; fastest), drop = store the first only, "
            "rollups count it once (docs/RELIABILITY.md has the cost).",
        ),
    ] = DuplicatePolicy.KEEP,
    copy_format: Annotated[
        CopyFormat,
        typer.Option(
            envvar="CONSUMER_COPY_FORMAT",
            help="How the native decoder's rows reach COPY: binary (PostgreSQL parses no text; "
            "fastest) or text (the reference; always under --on-duplicate drop and on the Python path).",
        ),
    ] = CopyFormat.BINARY,
    housekeeping_interval: Annotated[
        float,
        typer.Option(
            min=10.0,
            envvar="HOUSEKEEPING_INTERVAL_S",
            help="Seconds between two retention rounds (the first at start).",
        ),
    ] = 3600.0,
) -> None:
    """Consume readings into PostgreSQL until SIGTERM/SIGINT (or idle, with --exit-when-idle).

    Each poll becomes one transaction: valid readings are COPYed into `sensores`, invalid
    messages go to `dead_letters` with the reason, and the partitions' next offsets are
    stored in `consumer_positions`, all committed together. Exit code 0 after a clean stop.
    """
    obs = setup_service("iot-consumer")
    kafka, postgres = _settings()
    if retention_days and (not max_reading_age_days or retention_days < max_reading_age_days):
        max_reading_age_days = retention_days  # stored only to be dropped: refused at once instead
    limits = _limits(
        temperature_min, temperature_max, humidity_min, humidity_max, max_payload_bytes, earliest, max_reading_age_days,
        max_batch_bytes,
    )  # fmt: skip
    if not re.match(TOPIC_NAME_PATTERN, alerts_topic):
        fail(f"ALERTS_TOPIC={alerts_topic!r}: not a valid Kafka topic name")
    rules = _rules(alert_rules) if alerts else None
    retention = _retention(
        retention_days, minute_rollup_retention_days, hour_rollup_retention_days, dead_letter_retention_days
    )
    if decoder is Decoder.NATIVE and not decoder_available():
        fail(
            "CONSUMER_DECODER=native but the native decoder (iot_fastpath) is not installed: "
            "pip install ./consumer/fastpath (needs a C compiler), or use auto/python"
        )
    stop = StopFlag().install(force_exit_after=obs.shutdown_timeout_s)
    version = _migrate_once_reachable(postgres, stop)
    if version is None:
        return  # stopped while waiting for the database
    log.info("schema_ready", version=version, database=postgres.describe())
    publisher = OutboxPublisher(kafka, postgres).start() if rules is not None else None
    stage = AlertStage(rules, group, alerts_topic, publisher) if rules is not None else None
    if rules is not None:
        log.info("alert_rules_loaded", source=rules.source, rules=[r.name for r in rules.all], topic=alerts_topic)
    service = ConsumerService(
        kafka,
        PostgresSink(postgres, group, kafka.topic, alerts=stage, duplicates=on_duplicate, copy_format=copy_format),
        ConsumerOptions(
            group=group,
            max_batch=max_batch,
            poll_timeout_ms=poll_timeout_ms,
            exit_when_idle_s=exit_when_idle,
            limits=limits,
            on_offset_gap=on_offset_gap,
            native_decoder=decoder is not Decoder.PYTHON,
            write_overlap=write_overlap,
            stall_after_s=stall_after,
            retention=retention,
            housekeeping_interval_s=housekeeping_interval,
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


# Where `migrate` finds each service role's password: the environment only (never argv, so no
# process list shows it); Compose and the chart's migration Job fill these from their secrets.
ROLE_PASSWORD_VARIABLES = {
    "iot_consumer": "CONSUMER_DB_PASSWORD",
    "iot_exporter": "EXPORTER_DB_PASSWORD",
    "iot_dashboard": "DASHBOARD_DB_PASSWORD",
}


@app.command("migrate")
def migrate_command(
    require_service_roles: Annotated[
        bool,
        typer.Option(
            envvar="MIGRATE_REQUIRE_SERVICE_ROLES",
            help="Fail unless the roles iot_consumer, iot_exporter and iot_dashboard exist afterwards.",
        ),
    ] = True,
    retention_days: Annotated[int | None, RAW_RETENTION] = None,
    minute_rollup_retention_days: Annotated[int | None, MINUTE_RETENTION] = None,
    hour_rollup_retention_days: Annotated[int | None, HOUR_RETENTION] = None,
) -> None:
    """Create or upgrade the database schema and the service roles, then exit (run as the
    schema's owner). Each role's password is set from CONSUMER_DB_PASSWORD,
    EXPORTER_DB_PASSWORD and DASHBOARD_DB_PASSWORD when given (`run` migrates too, without roles).
    The retention given (RETENTION_DAYS, ...: the consumers' own, a table not named kept whole)
    becomes the database's: the consumers' role may drop what expired and nothing newer. Without
    any, the database's retention stays as it is."""
    setup_service("iot-consumer")
    asked = (retention_days, minute_rollup_retention_days, hour_rollup_retention_days)
    retention = None if all(days is None for days in asked) else _retention(*(days or 0 for days in asked))
    postgres = _postgres_settings()
    conn = _connect(postgres, "migrate")
    try:
        version = migrate(conn)
        missing = missing_service_roles(conn)
        if missing and require_service_roles:
            fail(
                f"service roles {', '.join(missing)} do not exist and {postgres.user} may not create roles: "
                "create them as an administrator, or give the owner CREATEROLE (docs/SECURITY.md)"
            )
        passwords = {
            role: os.environ[variable]
            for role, variable in ROLE_PASSWORD_VARIABLES.items()
            if os.environ.get(variable) and role not in missing
        }
        if passwords:
            set_role_passwords(conn, passwords)
        policy = set_retention_policy(conn, retention) if retention else None
    finally:
        conn.close()
    typer.echo(f"schema version {version} at {postgres.describe()}")
    if policy is None:
        typer.echo("retention: unchanged (no RETENTION_DAYS given)")
    else:
        log.info("retention_policy_set", days=policy)
        kept = (f"{table} {f'{days} days' if days else 'kept whole'}" for table, days in policy.items())
        typer.echo("retention: " + ", ".join(kept))
    for role in sorted(passwords):
        typer.echo(f"password of {role} set from {ROLE_PASSWORD_VARIABLES[role]}")


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
    conn = _connect(postgres, "verify")
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


@app.command("retention")
def retention_command(
    retention_days: RawRetentionOption = 0,
    minute_rollup_retention_days: MinuteRetentionOption = 0,
    hour_rollup_retention_days: HourRetentionOption = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be dropped; drop nothing.")] = False,
) -> None:
    """Drop the partitions of sensores and its rollups older than their retention, now (the
    running consumer does this on its own clock), then show each table's size on disk."""
    setup_service("iot-consumer")
    postgres = _postgres_settings()
    retention = _retention(retention_days, minute_rollup_retention_days, hour_rollup_retention_days)
    _migrate(postgres)
    conn = _connect(postgres, "retention")
    try:
        try:
            dropped = drop_expired(conn, retention, datetime.now(UTC), dry_run=dry_run)
        except RetentionPostponedError as exc:
            fail(f"a table stayed locked too long, nothing dropped (try again): {exc}", code=1)
        if dropped is None:
            fail("another consumer is applying retention right now; nothing done", code=1)
        verb = "would drop" if dry_run else "dropped"
        for part in dropped:
            typer.echo(
                f"{verb} {part.partition:<26} {part.table:<16} ends {part.upper_bound:%Y-%m-%d %H:%M}Z  {part.bytes:>14,} bytes"
            )
        if not dropped:
            typer.echo("nothing has expired" if retention.enabled else "no retention set: every partition is kept")
        for table in storage(conn):
            typer.echo(f"{table.table:<16} {table.partitions:>5} partitions {table.bytes:>16,} bytes")
    finally:
        conn.close()


positions_app = typer.Typer(no_args_is_help=True, help="Stored positions: show them, move them by hand.")
app.add_typer(positions_app, name="positions")


def _kafka_log(kafka: KafkaSettings) -> tuple[dict[int, tuple[int, int]], uuid.UUID | None]:
    try:
        return kafka_log(kafka)
    except (KafkaError, ValueError) as exc:
        fail(f"cannot read Kafka offsets of {kafka.topic!r}: {exc}", code=1)


@positions_app.command("show")
def positions_show(group: GroupOption = "iot-consumer") -> None:
    """Each partition's stored position next to its Kafka log (start, end), and recorded gaps."""
    setup_service("iot-consumer")
    kafka, postgres = _settings()
    bounds, topic_id = _kafka_log(kafka)
    conn = _connect(postgres, "positions")
    try:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT kafka_partition, next_offset, topic_id FROM consumer_positions
                   WHERE consumer_group = %s AND topic = %s""",
                (group, kafka.topic),
            )
            stored = {int(p): (int(o), uuid.UUID(str(t)) if t else None) for p, o, t in cur.fetchall()}
            cur.execute(
                """SELECT count(*), coalesce(sum(records_lost), 0), coalesce(sum(records_skipped), 0)
                   FROM offset_gaps WHERE consumer_group = %s AND topic = %s""",
                (group, kafka.topic),
            )
            gaps = cur.fetchone() or (0, 0, 0)
    finally:
        conn.close()
    typer.echo(f"topic {kafka.topic} (id {topic_id})  group {group}")
    typer.echo(f"{'partition':>9} {'log start':>12} {'log end':>12} {'stored':>12}  state")
    for partition, (start, end) in sorted(bounds.items()):
        position, stored_id = stored.get(partition, (None, None))
        gap = classify(partition, position, start, end, stored_id, topic_id) if position is not None else None
        state = "no position stored" if position is None else (gap.describe() if gap else "ok")
        typer.echo(f"{partition:>9} {start:>12} {end:>12} {'-' if position is None else position:>12}  {state}")
    typer.echo(f"offset gaps recorded: {gaps[0]} (records lost {gaps[1]}, skipped {gaps[2]}; see table offset_gaps)")


@positions_app.command("reset")
def positions_reset(
    to: Annotated[str, typer.Option(help="earliest, latest, or an offset.")],
    partition: Annotated[
        list[int] | None, typer.Option("--partition", "-p", min=0, help="Partition to move (repeatable).")
    ] = None,
    all_partitions: Annotated[bool, typer.Option("--all", help="Every partition of the topic.")] = False,
    allow_rewind: Annotated[
        bool, typer.Option(help="Allow moving back within the same log (its readings are written again).")
    ] = False,
    group: GroupOption = "iot-consumer",
) -> None:
    """Move stored positions (e.g. past an offset gap that halted a partition); the running
    consumers pick the new positions up by themselves. Every move is recorded in offset_gaps."""
    setup_service("iot-consumer")
    if to not in ("earliest", "latest") and not to.isdigit():
        fail(f"--to must be earliest, latest or an offset, got {to!r}")
    if bool(partition) == all_partitions:
        fail("name the partitions with --partition N (repeatable) or pass --all")
    kafka, postgres = _settings()
    bounds, topic_id = _kafka_log(kafka)
    wanted = sorted(bounds) if all_partitions else sorted(set(partition or []))
    conn = _connect(postgres, "positions")
    try:
        with transaction(conn):
            resets = reset_positions(conn, group, kafka.topic, bounds, topic_id, wanted, to, allow_rewind)
    except ValueError as exc:
        fail(str(exc))
    finally:
        conn.close()
    for reset in resets:
        old = "-" if reset.old is None else reset.old
        typer.echo(f"partition {reset.partition}: {old} -> {reset.new} (records skipped: {reset.records_skipped})")


dead_letters_app = typer.Typer(no_args_is_help=True, help="Dead letters: list them, replay them after a fix.")
app.add_typer(dead_letters_app, name="dead-letters")

ReasonOption = Annotated[
    list[str] | None, typer.Option("--reason", help="Only this reason (repeatable), e.g. extra_field.")
]
SinceOption = Annotated[
    datetime | None, typer.Option(help="Only dead letters from this UTC time on (ISO 8601).", formats=_TIME_FORMATS)
]
UntilOption = Annotated[
    datetime | None, typer.Option(help="Only dead letters before this UTC time (ISO 8601).", formats=_TIME_FORMATS)
]


def _filter(group: str, reason: list[str] | None, since: datetime | None, until: datetime | None) -> DeadLetterFilter:
    utc = [t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (since, until)]
    return DeadLetterFilter(group, tuple(reason or ()), utc[0], utc[1])


@dead_letters_app.command("list")
def dead_letters_list(
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    show: Annotated[int, typer.Option(min=0, max=1000, help="Also print this many of the newest.")] = 5,
    group: GroupOption = "iot-consumer",
) -> None:
    """Dead letters not replayed yet, by reason, with a few samples."""
    setup_service("iot-consumer")
    postgres = _postgres_settings()
    which = _filter(group, reason, since, until)
    conn = _connect(postgres, "dead-letters")
    try:
        counts = summarize(conn, which)
        newest = samples(conn, which, show) if show else []
    finally:
        conn.close()
    typer.echo(f"{'reason':<22} {'count':>9}  first / last dead-lettered (UTC)")
    for name, count, first, last in counts:
        typer.echo(f"{name:<22} {count:>9}  {first:%Y-%m-%d %H:%M:%S} / {last:%Y-%m-%d %H:%M:%S}")
    typer.echo(f"total {sum(c for _, c, _, _ in counts)}")
    for letter_id, part, offset, name, detail, payload in newest:
        body = payload[:200].decode("utf-8", "replace") if payload is not None else "-"
        typer.echo(f"#{letter_id} partition {part} offset {offset} {name}: {detail[:120]}\n    {body}")


@dead_letters_app.command("replay")
def dead_letters_replay(
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be replayed; change nothing.")] = False,
    temperature_min: TemperatureMinOption = -40.0,
    temperature_max: TemperatureMaxOption = 85.0,
    humidity_min: HumidityMinOption = 0.0,
    humidity_max: HumidityMaxOption = 100.0,
    max_payload_bytes: MaxPayloadOption = 4096,
    earliest: EarliestOption = DEFAULT_EARLIEST,
    max_reading_age_days: MaxAgeOption = DEFAULT_MAX_AGE_DAYS,
    group: GroupOption = "iot-consumer",
) -> None:
    """Re-validate stored dead letters with today's rules and move the valid ones into
    `sensores`, exactly once (a second replay does nothing); audited in dead_letter_replays."""
    setup_service("iot-consumer")
    postgres = _postgres_settings()
    limits = _limits(
        temperature_min, temperature_max, humidity_min, humidity_max, max_payload_bytes, earliest, max_reading_age_days
    )
    version = _migrate(postgres)
    log.info("schema_ready", version=version, database=postgres.describe())
    conn = _connect(postgres, "dead-letters")
    try:
        # the window fixed once (validating every letter against a moving "now" costs per letter)
        result = replay(conn, _filter(group, reason, since, until), limits.at(datetime.now(UTC)), dry_run=dry_run)
    finally:
        conn.close()
    verb = "would replay" if dry_run else "replayed"
    typer.echo(
        f"examined {result.examined}: {verb} {result.replayed}, still invalid {result.still_invalid}, "
        f"skipped {result.skipped} (payload truncated or absent)"
        + (f"; replay #{result.replay_id}" if result.replay_id is not None else "")
    )
    for name, count in sorted(result.still_invalid_by_reason.items()):
        typer.echo(f"  still invalid: {name} {count}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
