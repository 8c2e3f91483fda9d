"""PostgreSQL side of alerting: ``alertas`` (history), ``alert_states`` (engine state that must
survive a crash) and ``alert_outbox`` (events waiting to be published to Kafka).

All three are written inside the consumer's batch transaction, next to the rows and the
stored positions: an alert opens exactly once even if the consumer dies at any instant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import orjson
import psycopg2.extensions
from psycopg2.extras import execute_values

from iot_consumer.alerts.engine import STORM_SUFFIX, AlertEvent, AlertState, Evaluation
from iot_consumer.alerts.fleet import LastSeen
from iot_consumer.alerts.rules import Rule, RuleSet, SilenceRule, ThresholdRule

MIGRATION_SQL = """
CREATE TABLE alertas (
    id               uuid             PRIMARY KEY,
    consumer_group   text             NOT NULL,
    sensor_id        uuid             NOT NULL,
    rule             text             NOT NULL,
    severity         text             NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    condition        text             NOT NULL,
    started_at       timestamptz      NOT NULL,
    opened_at        timestamptz      NOT NULL,
    closed_at        timestamptz,
    peak_value       double precision,
    last_value       double precision,
    kafka_partition  integer          NOT NULL
);
COMMENT ON TABLE alertas IS 'Alerts: one row per episode, opened and closed once (see docs/ALERTS.md)';
-- The database itself refuses a second open alert for the same sensor and rule.
CREATE UNIQUE INDEX alertas_one_open_idx ON alertas (consumer_group, sensor_id, rule) WHERE closed_at IS NULL;
CREATE INDEX alertas_opened_idx ON alertas (opened_at DESC);

CREATE TABLE alert_states (
    consumer_group   text             NOT NULL,
    sensor_id        uuid             NOT NULL,
    rule             text             NOT NULL,
    kafka_partition  integer          NOT NULL,
    phase            text             NOT NULL CHECK (phase IN ('pending', 'firing', 'clearing')),
    since            timestamptz      NOT NULL,
    alert_id         uuid,
    opened_at        timestamptz,
    peak_value       double precision,
    last_value       double precision,
    clear_since      timestamptz,
    PRIMARY KEY (consumer_group, sensor_id, rule)
);
COMMENT ON TABLE alert_states IS 'Alert state machine of every (sensor, rule) that is not normal';

CREATE TABLE alert_outbox (
    id               bigserial        PRIMARY KEY,
    topic            text             NOT NULL,
    message_key      bytea,
    payload          bytea            NOT NULL,
    created_at       timestamptz      NOT NULL DEFAULT now()
);
COMMENT ON TABLE alert_outbox IS 'Alert events committed with their batch, deleted once Kafka acknowledged them';

-- Time-range scans over the newest readings (dashboard, silence bookkeeping, daily exports):
-- rows arrive roughly in time order, so a BRIN index stays small and lets range scans skip old blocks.
CREATE INDEX sensores_timestamp_brin ON sensores USING brin ("timestamp");
"""


def load_states(cur: psycopg2.extensions.cursor, group: str, partitions: list[int]) -> list[AlertState]:
    cur.execute(
        """SELECT sensor_id::text, rule, kafka_partition, phase, since, alert_id, opened_at,
                  peak_value, last_value, clear_since
             FROM alert_states WHERE consumer_group = %s AND kafka_partition = ANY(%s)""",
        (group, partitions),
    )
    return [
        AlertState(
            sensor_id=row[0],
            rule=row[1],
            partition=row[2],
            phase=row[3],
            since=row[4],
            alert_id=uuid.UUID(str(row[5])) if row[5] is not None else None,
            opened_at=row[6],
            peak=row[7],
            last_value=row[8],
            clear_since=row[9],
        )
        for row in cur.fetchall()
    ]


def load_last_seen(cur: psycopg2.extensions.cursor, partitions: list[int], lookback: timedelta) -> LastSeen:
    """Newest reading per sensor on ``partitions`` within ``lookback`` (silence bookkeeping after a
    restart), streamed from a server-side cursor into the packed table: a million sensors never
    sit in memory as a million rows of Python objects."""
    newest = LastSeen()
    conn = cur.connection
    with conn.cursor(name="iot_last_seen") as rows:
        rows.itersize = 20_000
        rows.execute(
            """SELECT sensor_id::text, kafka_partition,
                      (extract(epoch FROM max("timestamp")) * 1000000)::bigint
                 FROM sensores
                WHERE kafka_partition = ANY(%s) AND "timestamp" >= now() - %s
                GROUP BY sensor_id, kafka_partition""",
            (partitions, lookback),
        )
        for sensor, partition, stamp_us in rows:
            known = newest.of(sensor)
            if known is None or stamp_us > known[1]:
                newest.note(sensor, partition, stamp_us)
    return newest


def event_payload(event: AlertEvent, rules: RuleSet) -> dict[str, Any]:
    """The message published to the alerts topic (one per opened or closed alert; one per storm)."""
    state = event.state
    rule = rules.by_name(state.rule.removesuffix(STORM_SUFFIX))
    payload: dict[str, Any] = {
        "event": event.kind,
        "alert_id": str(state.alert_id),
        "sensor_id": None if state.is_storm else state.sensor_id,
        "rule": state.rule,
        "severity": event.severity,
        "condition": _condition(state, rule, event.known),
        "started_at": state.since,
        "opened_at": state.opened_at,
        "closed_at": event.at if event.kind == "closed" else None,
        "peak_value": state.peak,
        "last_value": state.last_value,
    }
    if isinstance(rule, ThresholdRule):
        payload.update(metric=rule.metric, threshold=rule.threshold, clear_threshold=rule.clear)
    if state.is_storm:
        payload.update(scope="partition", kafka_partition=state.partition, sensors_known=event.known)
        payload["sensors_silent"] = int(state.last_value or 0)
    return payload


def _condition(state: AlertState, rule: Rule | None, known: int | None) -> str:
    if rule is None:
        return state.rule
    if state.is_storm and isinstance(rule, SilenceRule):
        return "storm: " + rule.describe_storm(int(state.last_value or 0), known or 0)
    return rule.describe()


def write_evaluation(
    cur: psycopg2.extensions.cursor, group: str, topic: str, evaluation: Evaluation, rules: RuleSet
) -> None:
    """Write what one evaluation changes (inside the caller's transaction), a statement per
    kind of change however many alerts it holds (the engine bounds how many open at once)."""
    opened = []
    closed = []
    outbox: list[tuple[str, Any, Any]] = []
    for event in evaluation.events:
        state = event.state
        if event.kind == "opened":
            rule = rules.by_name(state.rule.removesuffix(STORM_SUFFIX))
            opened.append(
                (
                    str(state.alert_id),
                    group,
                    state.sensor_id,
                    state.rule,
                    event.severity,
                    _condition(state, rule, event.known),
                    state.since,
                    state.opened_at,
                    state.peak,
                    state.last_value,
                    state.partition,
                )
            )
        else:
            closed.append((str(state.alert_id), event.at, state.peak, state.last_value))
        message_key = f"storm-{state.partition}".encode() if state.is_storm else state.sensor_id.encode()
        payload = orjson.dumps(event_payload(event, rules))
        outbox.append((topic, psycopg2.Binary(message_key), psycopg2.Binary(payload)))
    if opened:
        execute_values(
            cur,
            """INSERT INTO alertas (id, consumer_group, sensor_id, rule, severity, condition, started_at,
                                    opened_at, peak_value, last_value, kafka_partition)
               VALUES %s""",
            opened,
            template="(%s::uuid, %s, %s::uuid, %s, %s, %s, %s, %s, %s, %s, %s)",
            page_size=1000,
        )
    peaked = []
    for key in evaluation.peaks:
        moved = evaluation.states.get(key)
        if moved is not None and moved.alert_id is not None:
            peaked.append((str(moved.alert_id), None, moved.peak, moved.last_value))
    for rows, closing in ((closed, True), (peaked, False)):
        if rows:
            execute_values(
                cur,
                f"""UPDATE alertas a SET {"closed_at = v.closed_at, " if closing else ""}
                           peak_value = v.peak, last_value = v.last
                      FROM (VALUES %s) AS v(id, closed_at, peak, last)
                     WHERE a.id = v.id""",
                rows,
                template="(%s::uuid, %s::timestamptz, %s::double precision, %s::double precision)",
                page_size=1000,
            )
    if outbox:
        execute_values(cur, "INSERT INTO alert_outbox (topic, message_key, payload) VALUES %s", outbox, page_size=1000)
    _write_states(cur, group, evaluation.states.items())


def _write_states(
    cur: psycopg2.extensions.cursor, group: str, states: Iterable[tuple[tuple[str, str], AlertState | None]]
) -> None:
    upserts = []
    deletes = []
    for (sensor, rule), state in states:
        if state is None:
            deletes.append((group, sensor, rule))
        else:
            upserts.append(
                (
                    group,
                    state.sensor_id,
                    state.rule,
                    state.partition,
                    state.phase,
                    state.since,
                    str(state.alert_id) if state.alert_id is not None else None,
                    state.opened_at,
                    state.peak,
                    state.last_value,
                    state.clear_since,
                )
            )
    if deletes:
        execute_values(
            cur,
            """DELETE FROM alert_states s USING (VALUES %s) AS d(consumer_group, sensor_id, rule)
                WHERE s.consumer_group = d.consumer_group AND s.sensor_id = d.sensor_id::uuid AND s.rule = d.rule""",
            deletes,
            page_size=1000,
        )
    if upserts:
        execute_values(
            cur,
            """INSERT INTO alert_states (consumer_group, sensor_id, rule, kafka_partition, phase, since, alert_id,
                                         opened_at, peak_value, last_value, clear_since)
               VALUES %s
               ON CONFLICT (consumer_group, sensor_id, rule) DO UPDATE SET
                   kafka_partition = EXCLUDED.kafka_partition, phase = EXCLUDED.phase, since = EXCLUDED.since,
                   alert_id = EXCLUDED.alert_id, opened_at = EXCLUDED.opened_at, peak_value = EXCLUDED.peak_value,
                   last_value = EXCLUDED.last_value, clear_since = EXCLUDED.clear_since""",
            upserts,
            page_size=1000,
        )
