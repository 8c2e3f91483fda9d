"""What the dashboard reads, one function per panel. Plain SQL over the read-only role;
every query is bounded by a time window so the page stays fast on a large ``sensores``.

Charts read raw readings only for windows up to an hour; longer windows read the rollups the
consumer keeps (``sensores_minuto`` up to a day, ``sensores_hora`` beyond), so a 30-day chart
of 1,000 sensors reads ~720k hourly rows instead of ~2.6 billion readings (docs/BENCHMARKS.md,
"Dashboard at scale").
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

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


Source = Literal["raw", "minute", "hour"]
ROLLUP_TABLES: dict[Source, str] = {"minute": "sensores_minuto", "hour": "sensores_hora"}
SOURCE_NAMES: dict[Source, str] = {"raw": "raw readings", "minute": "per-minute rollups", "hour": "hourly rollups"}
_GRAIN: dict[Source, timedelta] = {
    "raw": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
}
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"


def source_for(window: timedelta) -> Source:
    """Raw readings up to an hour, minute rollups up to a day, hour rollups beyond."""
    if window <= timedelta(hours=1):
        return "raw"
    return "minute" if window <= timedelta(days=1) else "hour"


def bucket_for(window: timedelta, points: int = 240, source: Source = "raw") -> timedelta:
    """Chart resolution: about ``points`` per series, never finer than the source holds."""
    return max(_GRAIN[source], timedelta(seconds=round(window.total_seconds() / points)))


def latest_per_sensor(
    conn: psycopg2.extensions.connection, within: timedelta = timedelta(hours=1), limit: int = 50
) -> pd.DataFrame:
    """Newest reading of the ``limit`` sensors heard from most recently within ``within``,
    newest first - bounded whatever the fleet's size.

    The sensors come from the newest minutes of the rollup, walked backwards on its bucket index
    and cut after ``limit`` distinct sensors; then one index probe per sensor finds its newest
    reading: no aggregate over the fleet, no sort of every reading in the window."""
    return _frame(
        conn,
        "latest",
        """SELECT s.sensor_id::text AS sensor_id, r."timestamp", r.temperatura, r.umidade
             FROM (SELECT sensor_id FROM (
                     SELECT sensor_id, bucket FROM sensores_minuto
                      WHERE bucket >= date_trunc('minute', now() - %(within)s)
                      ORDER BY bucket DESC LIMIT %(scan)s) newest
                    GROUP BY sensor_id ORDER BY max(bucket) DESC LIMIT %(limit)s) s
             CROSS JOIN LATERAL (
                   SELECT "timestamp", temperatura, umidade FROM sensores x
                    WHERE x.sensor_id = s.sensor_id AND x."timestamp" >= now() - %(within)s
                    ORDER BY x."timestamp" DESC LIMIT 1) r
            ORDER BY r."timestamp" DESC""",
        # a sensor has one row per minute: a few minutes' worth of rows hold `limit` distinct sensors
        {"within": within, "limit": limit, "scan": limit * 60},
    )


def sensors_heard(conn: psycopg2.extensions.connection, within: timedelta = timedelta(hours=1)) -> int:
    """How many distinct sensors were heard from within ``within`` (from the minute rollup)."""
    frame = _frame(
        conn,
        "sensors_heard",
        """SELECT count(DISTINCT sensor_id) AS sensors FROM sensores_minuto
            WHERE bucket >= date_trunc('minute', now() - %(within)s)""",
        {"within": within},
    )
    return int(frame["sensors"].iloc[0]) if not frame.empty else 0


_HEX = frozenset("0123456789abcdef")


def sensor_id_range(prefix: str) -> tuple[str, str] | None:
    """The UUIDs starting with ``prefix`` (hex digits; dashes and case ignored) as an inclusive
    range, or None when ``prefix`` cannot start a sensor id."""
    digits = prefix.strip().lower().replace("-", "")
    if not digits or len(digits) > 32 or not set(digits) <= _HEX:
        return None
    low, high = digits.ljust(32, "0"), digits.ljust(32, "f")
    return str(uuid.UUID(low)), str(uuid.UUID(high))


def find_sensors(
    conn: psycopg2.extensions.connection, prefix: str, within: timedelta = timedelta(days=1), limit: int = 50
) -> list[str]:
    """Up to ``limit`` sensors heard from within ``within`` whose id starts with ``prefix``:
    a range scan of the rollup's (sensor_id, bucket) key, never a list of the whole fleet."""
    bounds = sensor_id_range(prefix)
    if bounds is None:
        return []
    frame = _frame(
        conn,
        "find_sensors",
        """SELECT DISTINCT sensor_id::text AS sensor_id FROM sensores_minuto
            WHERE sensor_id BETWEEN %(low)s::uuid AND %(high)s::uuid
              AND bucket >= date_trunc('minute', now() - %(within)s)
            ORDER BY 1 LIMIT %(limit)s""",
        {"low": bounds[0], "high": bounds[1], "within": within, "limit": limit},
    )
    return list(frame["sensor_id"]) if not frame.empty else []


def series(
    conn: psycopg2.extensions.connection, window: timedelta, sensors: list[str], bucket: timedelta
) -> pd.DataFrame:
    """Mean temperature and humidity per sensor per ``bucket`` over the last ``window``."""
    if not sensors:
        return pd.DataFrame(columns=["t", "sensor_id", "temperatura", "umidade"])
    source = source_for(window)
    params = {"bucket": max(bucket, _GRAIN[source]), "window": window, "sensors": sensors}
    if source == "raw":
        query = f"""SELECT date_bin(%(bucket)s, "timestamp", {_ORIGIN}) AS t,
                           sensor_id::text AS sensor_id, avg(temperatura) AS temperatura, avg(umidade) AS umidade
                      FROM sensores
                     WHERE "timestamp" >= now() - %(window)s AND sensor_id = ANY(%(sensors)s::uuid[])
                     GROUP BY 1, 2 ORDER BY 1"""
    else:
        query = f"""SELECT date_bin(%(bucket)s, bucket, {_ORIGIN}) AS t, sensor_id::text AS sensor_id,
                           sum(temperatura_soma) / sum(leituras) AS temperatura,
                           sum(umidade_soma) / sum(leituras) AS umidade
                      FROM {ROLLUP_TABLES[source]}
                     WHERE bucket >= now() - %(window)s AND sensor_id = ANY(%(sensors)s::uuid[])
                     GROUP BY 1, 2 ORDER BY 1"""
    return _frame(conn, f"series_{source}", query, params)


def fleet_band(conn: psycopg2.extensions.connection, window: timedelta, bucket: timedelta) -> pd.DataFrame:
    """Every sensor at once, per ``bucket``: the lowest, mean and highest temperature and
    humidity (the band the chosen sensors are drawn against), from the rollups.

    Beyond an hour the band comes from the hourly rollup even where the lines use minutes:
    aggregating every sensor's minutes of a day took 1.9 s on 1,000 sensors, their hours 28 ms
    (bench/dashboard_bench.py)."""
    source: Source = "minute" if window <= timedelta(hours=1) else "hour"
    return _frame(
        conn,
        f"band_{source}",
        f"""SELECT date_bin(%(bucket)s, bucket, {_ORIGIN}) AS t,
                   min(temperatura_min) AS temperatura_min, sum(temperatura_soma) / sum(leituras) AS temperatura,
                   max(temperatura_max) AS temperatura_max,
                   min(umidade_min) AS umidade_min, sum(umidade_soma) / sum(leituras) AS umidade,
                   max(umidade_max) AS umidade_max
              FROM {ROLLUP_TABLES[source]}
             WHERE bucket >= now() - %(window)s
             GROUP BY 1 ORDER BY 1""",
        {"bucket": max(bucket, _GRAIN[source]), "window": window},
    )


def most_deviating(conn: psycopg2.extensions.connection, within: timedelta, limit: int) -> list[str]:
    """Sensors whose mean temperature over ``within`` is furthest from the fleet's, first."""
    frame = _frame(
        conn,
        "deviation",
        """WITH per_sensor AS (
                SELECT sensor_id, sum(temperatura_soma) / sum(leituras) AS mean
                  FROM sensores_minuto WHERE bucket >= date_trunc('minute', now() - %(within)s)
                 GROUP BY sensor_id)
           SELECT sensor_id::text AS sensor_id FROM per_sensor
            ORDER BY abs(mean - (SELECT avg(mean) FROM per_sensor)) DESC, sensor_id LIMIT %(limit)s""",
        {"within": within, "limit": limit},
    )
    return list(frame["sensor_id"]) if not frame.empty else []


def open_alerts(conn: psycopg2.extensions.connection, limit: int = 100) -> pd.DataFrame:
    """The ``limit`` most severe, oldest open alerts (storms, which stand for many sensors, first)."""
    return _frame(
        conn,
        "open_alerts",
        """SELECT sensor_id::text AS sensor_id, rule, severity, opened_at, started_at, peak_value, last_value,
                  condition, kafka_partition
             FROM alertas WHERE closed_at IS NULL
            ORDER BY rule LIKE '%%:storm' DESC,
                     CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, opened_at
            LIMIT %(limit)s""",
        {"limit": limit},
    )


def open_alert_count(conn: psycopg2.extensions.connection) -> int:
    frame = _frame(conn, "open_alert_count", "SELECT count(*) AS n FROM alertas WHERE closed_at IS NULL", {})
    return int(frame["n"].iloc[0]) if not frame.empty else 0


def recent_alerts(conn: psycopg2.extensions.connection, within: timedelta, limit: int = 20) -> pd.DataFrame:
    return _frame(
        conn,
        "recent_alerts",
        """SELECT sensor_id::text AS sensor_id, rule, severity, opened_at, closed_at, peak_value, kafka_partition
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
