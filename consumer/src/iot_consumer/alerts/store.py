"""PostgreSQL side of alerting: ``alertas`` (history), ``alert_states`` (engine state that must
survive a crash) and ``alert_outbox`` (events waiting to be published to Kafka).

All three are written inside the consumer's batch transaction, next to the rows and the
stored positions: an alert opens exactly once even if the consumer dies at any instant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg2.extensions
from psycopg2.extras import execute_values

from iot_consumer.alerts.engine import AlertEvent, AlertState, Evaluation
from iot_consumer.alerts.rules import RuleSet, ThresholdRule

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


def load_last_seen(
    cur: psycopg2.extensions.cursor, partitions: list[int], lookback: timedelta
) -> dict[str, tuple[int, datetime]]:
    """Newest reading per sensor on ``partitions`` within ``lookback`` (silence bookkeeping after a restart)."""
    cur.execute(
        """SELECT sensor_id::text, kafka_partition, max("timestamp") FROM sensores
            WHERE kafka_partition = ANY(%s) AND "timestamp" >= now() - %s
            GROUP BY sensor_id, kafka_partition""",
        (partitions, lookback),
    )
    newest: dict[str, tuple[int, datetime]] = {}
    for sensor, partition, stamp in cur.fetchall():
        if sensor not in newest or stamp > newest[sensor][1]:
            newest[sensor] = (partition, stamp)
    return newest


def event_payload(event: AlertEvent, rules: RuleSet) -> dict[str, Any]:
    """The message published to the alerts topic (one per opened or closed alert)."""
    state = event.state
    rule = rules.by_name(state.rule)
    payload: dict[str, Any] = {
        "event": event.kind,
        "alert_id": str(state.alert_id),
        "sensor_id": state.sensor_id,
        "rule": state.rule,
        "severity": event.severity,
        "condition": rule.describe() if rule is not None else None,
        "started_at": state.since,
        "opened_at": state.opened_at,
        "closed_at": event.at if event.kind == "closed" else None,
        "peak_value": state.peak,
        "last_value": state.last_value,
    }
    if isinstance(rule, ThresholdRule):
        payload.update(metric=rule.metric, threshold=rule.threshold, clear_threshold=rule.clear)
    return payload


def write_evaluation(
    cur: psycopg2.extensions.cursor, group: str, topic: str, evaluation: Evaluation, rules: RuleSet
) -> None:
    """Write what one evaluation changes (inside the caller's transaction)."""
    outbox: list[tuple[str, bytes, bytes]] = []
    for event in evaluation.events:
        state = event.state
        if event.kind == "opened":
            rule = rules.by_name(state.rule)
            cur.execute(
                """INSERT INTO alertas (id, consumer_group, sensor_id, rule, severity, condition, started_at,
                                        opened_at, peak_value, last_value, kafka_partition)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (
                    str(state.alert_id),
                    group,
                    state.sensor_id,
                    state.rule,
                    event.severity,
                    rule.describe() if rule is not None else state.rule,
                    state.since,
                    state.opened_at,
                    state.peak,
                    state.last_value,
                    state.partition,
                ),
            )
        else:
            cur.execute(
                "UPDATE alertas SET closed_at = %s, peak_value = %s, last_value = %s WHERE id = %s",
                (event.at, state.peak, state.last_value, str(state.alert_id)),
            )
        outbox.append((topic, state.sensor_id.encode(), orjson.dumps(event_payload(event, rules))))
    for key in evaluation.peaks:
        peaked = evaluation.states.get(key)
        if peaked is not None and peaked.alert_id is not None:
            cur.execute(
                "UPDATE alertas SET peak_value = %s, last_value = %s WHERE id = %s",
                (peaked.peak, peaked.last_value, str(peaked.alert_id)),
            )
    if outbox:
        execute_values(
            cur,
            "INSERT INTO alert_outbox (topic, message_key, payload) VALUES %s",
            [(t, psycopg2.Binary(k), psycopg2.Binary(p)) for t, k, p in outbox],
        )
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
        )
