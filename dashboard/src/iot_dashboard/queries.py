"""What the dashboard reads, one function per panel. Plain SQL over the read-only role;
every query is bounded by a time window so the page stays fast on a large ``sensores``.

Charts read raw readings only for windows up to an hour; longer windows read the rollups the
consumer keeps (``sensores_minuto`` up to a day, ``sensores_hora`` beyond), so a 30-day chart
of 1,000 sensors reads ~720k hourly rows instead of ~2.6 billion readings (docs/BENCHMARKS.md,
"Dashboard at scale").
"""

from __future__ import annotations

import math
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


# Up to this many rows are counted exactly; beyond, the fleet rollup's sketches estimate (a
# million sensors' hour is a million rows to count distinct).
EXACT_COUNT_LIMIT = 100_000


@dataclass(frozen=True)
class Count:
    """A number of distinct sensors: counted exactly, or estimated from the fleet rollup's
    HyperLogLog sketches (~3 % standard error) when more rows than EXACT_COUNT_LIMIT hold them."""

    sensors: int
    exact: bool = True

    def __str__(self) -> str:
        return f"{self.sensors:,}" if self.exact else f"≈{self.sensors:,}"


def sketch_estimate(registers: int, zeros: int, harmonic: float) -> int:
    """HyperLogLog's estimate from a sketch: its number of registers, how many are 0 and the
    sum of 2^-rank over all of them (Flajolet et al. 2007, linear counting for small sets)."""
    alpha = 0.7213 / (1 + 1.079 / registers)
    raw = alpha * registers * registers / harmonic
    if raw <= 2.5 * registers and zeros:
        return round(registers * math.log(registers / zeros))
    return round(raw)


def _sketch_count(
    conn: psycopg2.extensions.connection, panel: str, since: str, until: str, params: dict[str, Any]
) -> int:
    """The sensors heard in the fleet rollup's minutes ``since`` ≤ bucket < ``until`` (SQL
    expressions): the union of their sketches, estimated."""
    frame = _frame(
        conn,
        panel,
        f"""SELECT count(*) AS registers, count(*) FILTER (WHERE m = 0) AS zeros,
                   coalesce(sum(power(2.0, -m)), 0) AS harmonic
              FROM (SELECT k, max(v) AS m
                      FROM sensores_frota_minuto f, unnest(f.registros) WITH ORDINALITY AS u(v, k)
                     WHERE f.bucket >= {since} AND f.bucket < {until}
                     GROUP BY k) registers""",
        params,
    )
    if frame.empty or not float(frame["harmonic"].iloc[0]):
        return 0
    first = frame.iloc[0]
    return sketch_estimate(int(first["registers"]), int(first["zeros"]), float(first["harmonic"]))


def sensors_heard(
    conn: psycopg2.extensions.connection, within: timedelta = timedelta(hours=1), exact_limit: int = EXACT_COUNT_LIMIT
) -> Count:
    """How many distinct sensors were heard from within ``within``: counted over the minute
    rollup when it holds at most ``exact_limit`` rows for the window, else estimated from the
    fleet rollup's sketches - bounded whatever the fleet's size."""
    frame = _frame(
        conn,
        "sensors_heard",
        """SELECT count(*) AS rows, count(DISTINCT sensor_id) AS sensors
             FROM (SELECT sensor_id FROM sensores_minuto
                    WHERE bucket >= date_trunc('minute', now() - %(within)s) LIMIT %(probe)s) window_rows""",
        {"within": within, "probe": exact_limit + 1},
    )
    if frame.empty:
        return Count(0)
    if int(frame["rows"].iloc[0]) <= exact_limit:
        return Count(int(frame["sensors"].iloc[0]))
    estimate = _sketch_count(
        conn, "sensors_heard_sketch", "date_trunc('minute', now() - %(within)s)", "'infinity'", {"within": within}
    )
    return Count(estimate, exact=False)


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


FLEET_TABLES: dict[Source, str] = {"minute": "sensores_frota_minuto", "hour": "sensores_frota_hora"}


def fleet_band(conn: psycopg2.extensions.connection, window: timedelta, bucket: timedelta) -> pd.DataFrame:
    """Every sensor at once, per ``bucket``: the lowest, mean and highest temperature and
    humidity (the band the chosen sensors are drawn against), from the fleet rollups - a row
    per bucket whatever the fleet's size (the per-sensor rollups took 2.5 s for a day of
    1,000,000 sensors, bench/dashboard_bench.py).

    Beyond an hour the band comes from the hourly fleet rollup even where the lines use minutes."""
    source: Source = "minute" if window <= timedelta(hours=1) else "hour"
    return _frame(
        conn,
        f"band_{source}",
        f"""SELECT date_bin(%(bucket)s, bucket, {_ORIGIN}) AS t,
                   min(temperatura_min) AS temperatura_min, sum(temperatura_soma) / sum(leituras) AS temperatura,
                   max(temperatura_max) AS temperatura_max,
                   min(umidade_min) AS umidade_min, sum(umidade_soma) / sum(leituras) AS umidade,
                   max(umidade_max) AS umidade_max
              FROM {FLEET_TABLES[source]}
             WHERE bucket >= now() - %(window)s
             GROUP BY 1 ORDER BY 1""",
        {"bucket": max(bucket, _GRAIN[source]), "window": window},
    )


# Sensor-minutes most_deviating looks at: the newest of the window (the last 30 minutes of 1,000
# sensors reporting every second; with a million sensors, 100,000 of them took ~380 ms).
DEVIATION_SCAN = 30_000


def most_deviating(
    conn: psycopg2.extensions.connection, within: timedelta, limit: int, scan: int = DEVIATION_SCAN
) -> list[str]:
    """Sensors whose mean temperature over ``within`` is furthest from the fleet's, first.

    Among the sensors of the window's newest ``scan`` minute-rollup rows (all of them while the
    window holds fewer; with a million sensors, those heard most recently), against the fleet's mean
    from the fleet rollup: bounded whatever the fleet's size."""
    frame = _frame(
        conn,
        "deviation",
        """WITH recent AS (
                SELECT sensor_id, leituras, temperatura_soma FROM sensores_minuto
                 WHERE bucket >= date_trunc('minute', now() - %(within)s)
                 ORDER BY bucket DESC LIMIT %(scan)s),
           per_sensor AS (
                SELECT sensor_id, sum(temperatura_soma) / sum(leituras) AS mean FROM recent GROUP BY sensor_id),
           fleet AS (
                SELECT sum(temperatura_soma) / sum(leituras) AS mean FROM sensores_frota_minuto
                 WHERE bucket >= date_trunc('minute', now() - %(within)s))
           SELECT sensor_id::text AS sensor_id FROM per_sensor
            ORDER BY abs(mean - (SELECT mean FROM fleet)) DESC NULLS LAST, sensor_id LIMIT %(limit)s""",
        {"within": within, "limit": limit, "scan": scan},
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
    sensors_reporting: Count  # sensors with a reading in the last minute
    seconds_since_last_write: float | None  # since the consumer last committed a batch


def throughput(conn: psycopg2.extensions.connection, group: str, exact_limit: int = EXACT_COUNT_LIMIT) -> Throughput:
    """Readings and sensors of the last 60 s, counted over the readings when there are at most
    ``exact_limit`` of them; beyond, the last complete minute of the fleet rollup (its count,
    and its sketch's estimate of the sensors)."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(
            """SELECT count(*), count(DISTINCT sensor_id)
                 FROM (SELECT sensor_id FROM sensores
                        WHERE "timestamp" >= now() - interval '60 seconds' AND "timestamp" <= now()
                        LIMIT %(probe)s) last_minute""",
            {"probe": exact_limit + 1},
        )
        row = cur.fetchone()
        readings, sensors = (int(row[0]), int(row[1])) if row else (0, 0)
        cur.execute(
            "SELECT extract(epoch FROM now() - max(updated_at)) FROM consumer_positions WHERE consumer_group = %s",
            (group,),
        )
        last = cur.fetchone()
    reporting = Count(sensors)
    if readings > exact_limit:
        complete = "date_trunc('minute', now()) - interval '1 minute'"
        frame = _frame(
            conn,
            "throughput_fleet",
            f"SELECT coalesce(sum(leituras), 0) AS n FROM sensores_frota_minuto WHERE bucket = {complete}",
            {},
        )
        readings = int(frame["n"].iloc[0]) if not frame.empty else 0
        reporting = Count(_sketch_count(conn, "throughput_sketch", complete, "date_trunc('minute', now())", {}), False)
    QUERY_SECONDS.labels("throughput").observe(time.perf_counter() - started)
    since = float(last[0]) if last and last[0] is not None else None
    return Throughput(readings / 60.0, reporting, since)


def stored_positions(conn: psycopg2.extensions.connection, group: str) -> pd.DataFrame:
    return _frame(
        conn,
        "positions",
        """SELECT topic, kafka_partition AS partition, next_offset, updated_at
             FROM consumer_positions WHERE consumer_group = %(group)s ORDER BY topic, kafka_partition""",
        {"group": group},
    )
