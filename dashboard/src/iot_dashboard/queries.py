"""What the dashboard reads, one function per panel. Plain SQL over the read-only role;
every query is bounded by a time window so the page stays fast on a large ``sensores``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pandas as pd
import psycopg2.extensions

from iot_dashboard.metrics import QUERY_SECONDS


def _frame(conn: psycopg2.extensions.connection, panel: str, query: str, params: dict[str, Any]) -> pd.DataFrame:
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(query, params)
        rows = cur.fetchall()
        columns = [c.name for c in cur.description or ()]
    QUERY_SECONDS.labels(panel).observe(time.perf_counter() - started)
    return pd.DataFrame.from_records(rows, columns=columns)


def bucket_for(window: timedelta, points: int = 240) -> timedelta:
    """Chart resolution: about ``points`` per series, never finer than one second."""
    return max(timedelta(seconds=1), timedelta(seconds=round(window.total_seconds() / points)))


def latest_per_sensor(conn: psycopg2.extensions.connection, within: timedelta = timedelta(hours=1)) -> pd.DataFrame:
    """Newest reading of every sensor heard from within ``within``, newest sensors first."""
    return _frame(
        conn,
        "latest",
        """SELECT DISTINCT ON (sensor_id) sensor_id::text AS sensor_id, "timestamp", temperatura, umidade
             FROM sensores WHERE "timestamp" >= now() - %(within)s
            ORDER BY sensor_id, "timestamp" DESC""",
        {"within": within},
    )


def series(
    conn: psycopg2.extensions.connection, window: timedelta, sensors: list[str], bucket: timedelta
) -> pd.DataFrame:
    """Average temperature and humidity per sensor per ``bucket`` over the last ``window``."""
    if not sensors:
        return pd.DataFrame(columns=["t", "sensor_id", "temperatura", "umidade"])
    return _frame(
        conn,
        "series",
        """SELECT date_bin(%(bucket)s, "timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS t,
                  sensor_id::text AS sensor_id, avg(temperatura) AS temperatura, avg(umidade) AS umidade
             FROM sensores
            WHERE "timestamp" >= now() - %(window)s AND sensor_id = ANY(%(sensors)s::uuid[])
            GROUP BY 1, 2 ORDER BY 1""",
        {"bucket": bucket, "window": window, "sensors": sensors},
    )


def open_alerts(conn: psycopg2.extensions.connection) -> pd.DataFrame:
    return _frame(
        conn,
        "open_alerts",
        """SELECT sensor_id::text AS sensor_id, rule, severity, opened_at, started_at, peak_value, last_value,
                  condition
             FROM alertas WHERE closed_at IS NULL
            ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, opened_at""",
        {},
    )


def recent_alerts(conn: psycopg2.extensions.connection, within: timedelta, limit: int = 20) -> pd.DataFrame:
    return _frame(
        conn,
        "recent_alerts",
        """SELECT sensor_id::text AS sensor_id, rule, severity, opened_at, closed_at, peak_value
             FROM alertas WHERE closed_at IS NOT NULL AND closed_at >= now() - %(within)s
            ORDER BY closed_at DESC LIMIT %(limit)s""",
        {"within": within, "limit": limit},
    )


def dead_letters_by_reason(conn: psycopg2.extensions.connection, within: timedelta) -> pd.DataFrame:
    return _frame(
        conn,
        "dead_letters",
        """SELECT reason, count(*) AS messages, max(dead_lettered_at) AS latest
             FROM dead_letters WHERE dead_lettered_at >= now() - %(within)s
            GROUP BY reason ORDER BY messages DESC""",
        {"within": within},
    )


@dataclass(frozen=True)
class Throughput:
    readings_per_second: float  # over the last minute, by reading time
    sensors_reporting: int  # sensors with a reading in the last minute
    seconds_since_last_write: float | None  # since the consumer last committed a batch


def throughput(conn: psycopg2.extensions.connection, group: str) -> Throughput:
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(
            """SELECT count(*), count(DISTINCT sensor_id) FROM sensores
                WHERE "timestamp" >= now() - interval '60 seconds' AND "timestamp" <= now()"""
        )
        row = cur.fetchone()
        readings, sensors = (int(row[0]), int(row[1])) if row else (0, 0)
        cur.execute(
            "SELECT extract(epoch FROM now() - max(updated_at)) FROM consumer_positions WHERE consumer_group = %s",
            (group,),
        )
        last = cur.fetchone()
    QUERY_SECONDS.labels("throughput").observe(time.perf_counter() - started)
    since = float(last[0]) if last and last[0] is not None else None
    return Throughput(readings / 60.0, sensors, since)


def stored_positions(conn: psycopg2.extensions.connection, group: str) -> pd.DataFrame:
    return _frame(
        conn,
        "positions",
        """SELECT topic, kafka_partition AS partition, next_offset, updated_at
             FROM consumer_positions WHERE consumer_group = %(group)s ORDER BY topic, kafka_partition""",
        {"group": group},
    )
