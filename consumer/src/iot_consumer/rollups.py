"""Per-sensor rollups by minute and by hour, kept exactly in step with ``sensores``.

``sensores_minuto`` and ``sensores_hora`` hold, per sensor and bucket, the count, sum, minimum
and maximum of temperatura and umidade (the mean is a generated column: sum / count). They are
updated in the same transaction as the rows they summarise - the consumer's batch, a dead-letter
replay - so a reading is counted exactly as often as it is stored: once, across kill -9,
rebalances and replays, because the stored Kafka positions commit with it. A late reading (a
gateway back online) updates its past bucket like any other.

Upserts go in (sensor, bucket) order (``ORDER BY`` in the INSERT … SELECT): two replicas touching the same buckets (a producer
without keys spreads one sensor over partitions) then lock rows in one order and cannot
deadlock. The aggregation is per batch - in C on the native path (``iot_fastpath.Summary``), in
Python otherwise (``by_minute``) - so that the database receives one row per sensor-minute
instead of re-reading the batch's rows. (With ``--on-duplicate drop`` the rows actually
inserted are aggregated in SQL instead: see duplicates.py.)
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import datetime

import psycopg2.extensions

from iot_consumer.readings import Reading

# (sensor_id, bucket start) -> [count, temperatura sum, min, max, umidade sum, min, max]
Buckets = dict[tuple[str, datetime], list[float]]

TABLES = ("sensores_minuto", "sensores_hora")
COLUMNS = (
    "sensor_id, bucket, leituras, temperatura_soma, temperatura_min, temperatura_max, "
    "umidade_soma, umidade_min, umidade_max"
)
# The batch's buckets go to a temporary table by COPY, then into the rollup in one statement:
# measured 6.5 µs per reading against 11 µs with a VALUES list built in Python (bench/rollup_bench.py).
STAGE_SQL = """CREATE TEMP TABLE IF NOT EXISTS rollup_stage (
    sensor_id uuid, bucket timestamptz, leituras integer, temperatura_soma double precision,
    temperatura_min double precision, temperatura_max double precision, umidade_soma double precision,
    umidade_min double precision, umidade_max double precision) ON COMMIT DELETE ROWS"""
# Adds an INSERT's buckets (aliased r) to the rows already there.
ON_CONFLICT = """
    ON CONFLICT (sensor_id, bucket) DO UPDATE SET
        leituras = r.leituras + EXCLUDED.leituras,
        temperatura_soma = r.temperatura_soma + EXCLUDED.temperatura_soma,
        temperatura_min = least(r.temperatura_min, EXCLUDED.temperatura_min),
        temperatura_max = greatest(r.temperatura_max, EXCLUDED.temperatura_max),
        umidade_soma = r.umidade_soma + EXCLUDED.umidade_soma,
        umidade_min = least(r.umidade_min, EXCLUDED.umidade_min),
        umidade_max = greatest(r.umidade_max, EXCLUDED.umidade_max)
"""
_UPSERT = "INSERT INTO {table} AS r ({columns}) SELECT * FROM rollup_stage ORDER BY sensor_id, bucket" + ON_CONFLICT

# Both rollups computed from the readings in sensores (into empty tables): migration 5 fills
# them for the data stored before rollups existed; tests use it as the reference.
REBUILD_SQL = f"""
    INSERT INTO sensores_minuto ({COLUMNS})
    SELECT sensor_id, date_trunc('minute', "timestamp", 'UTC'), count(*), sum(temperatura), min(temperatura),
           max(temperatura), sum(umidade), min(umidade), max(umidade)
    FROM sensores GROUP BY 1, 2;
    INSERT INTO sensores_hora ({COLUMNS})
    SELECT sensor_id, date_trunc('hour', bucket, 'UTC'), sum(leituras), sum(temperatura_soma),
           min(temperatura_min), max(temperatura_max), sum(umidade_soma), min(umidade_min), max(umidade_max)
    FROM sensores_minuto GROUP BY 1, 2;
"""


def by_minute(readings: Iterable[Reading]) -> Buckets:
    """Aggregate readings (partition, sensor, UTC time, temperatura, umidade) per sensor-minute."""
    buckets: Buckets = {}
    get = buckets.get
    for _partition, sensor, stamp, temperatura, umidade in readings:
        key = (sensor, stamp.replace(second=0, microsecond=0))
        agg = get(key)
        if agg is None:
            buckets[key] = [1, temperatura, temperatura, temperatura, umidade, umidade, umidade]
            continue
        agg[0] += 1
        agg[1] += temperatura
        if temperatura < agg[2]:
            agg[2] = temperatura
        elif temperatura > agg[3]:
            agg[3] = temperatura
        agg[4] += umidade
        if umidade < agg[5]:
            agg[5] = umidade
        elif umidade > agg[6]:
            agg[6] = umidade
    return buckets


def coarser(minutes: Buckets) -> Buckets:
    """Merge per-minute buckets into per-hour buckets."""
    hours: Buckets = {}
    for (sensor, minute), agg in minutes.items():
        key = (sensor, minute.replace(minute=0))
        into = hours.get(key)
        if into is None:
            hours[key] = list(agg)
            continue
        into[0] += agg[0]
        into[1] += agg[1]
        into[2] = min(into[2], agg[2])
        into[3] = max(into[3], agg[3])
        into[4] += agg[4]
        into[5] = min(into[5], agg[5])
        into[6] = max(into[6], agg[6])
    return hours


def _copy_text(buckets: Buckets) -> bytes:
    """The buckets as COPY text rows of rollup_stage."""
    lines = [
        f"{sensor}\t{bucket.isoformat()}\t{int(a[0])}\t{a[1]!r}\t{a[2]!r}\t{a[3]!r}\t{a[4]!r}\t{a[5]!r}\t{a[6]!r}\n"
        for (sensor, bucket), a in buckets.items()
    ]
    return "".join(lines).encode()


def upsert(cur: psycopg2.extensions.cursor, readings: Iterable[Reading]) -> int:
    """Add ``readings`` to both rollups inside the caller's transaction; the minute buckets touched.

    The days' partitions of the rollups exist whenever ``sensores``' do
    (``iot_ensure_sensores_partition`` creates all three).
    """
    minutes = by_minute(readings)
    if not minutes:
        return 0
    upsert_staged(cur, _copy_text(minutes), _copy_text(coarser(minutes)))
    return len(minutes)


def upsert_from_stage(cur: psycopg2.extensions.cursor, table: str) -> None:
    """Add what rollup_stage holds to ``table`` (in (sensor, bucket) order: no deadlock)."""
    cur.execute(_UPSERT.format(table=table, columns=COLUMNS))


def upsert_staged(cur: psycopg2.extensions.cursor, minute_rows: bytes, hour_rows: bytes) -> None:
    """Add buckets already in rollup_stage's COPY text form (the native path's
    ``Summary.rollup_copy``) to both rollups inside the caller's transaction."""
    if not minute_rows:
        return
    cur.execute(STAGE_SQL)
    for table, rows in zip(TABLES, (minute_rows, hour_rows), strict=True):
        cur.copy_expert("COPY rollup_stage FROM STDIN", io.BytesIO(rows), size=1 << 20)
        upsert_from_stage(cur, table)
        cur.execute("DELETE FROM rollup_stage")
