"""Dashboard at scale: every panel's query on 100M readings of 1,000 sensors over 30 days.

Loads the readings with COPY into a database of its own (kept between runs as
`iot_bench_dashboard` and topped up to the present, so a re-run takes minutes, not the load's
~20), builds the rollups the consumer keeps (the same SQL as migration 5), then times each panel
query of the dashboard (iot_dashboard.queries, the code the page runs) --rounds times per
window: p50 and p95 in ms. Side by side, for the windows the rollups serve, the same chart
computed from raw readings (the dashboard before rollups), to show what they save.

A fleet of another size gets a database and a result file of its own
(`iot_bench_dashboard_<sensors>`, bench/results/dashboard_bench_<sensors>.md): `make
bench-dashboard-fleet` runs 24M readings of 1,000,000 sensors over a day (each sensor once an
hour), where every panel that aggregates "the fleet" meets a million sensors.

usage: python -m bench.dashboard_bench [--readings 100000000] [--sensors 1000] [--days 30] [--rounds 20] [--reload]
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg2.extensions

from bench.common import STACK, Table, connect, fmt, save
from iot_consumer import rollups
from iot_consumer.migrations import DailyPartitions, migrate
from iot_consumer.rollups import FLEET_REBUILD_SQL, REBUILD_SQL
from iot_dashboard import queries as q

DEFAULT_SENSORS = 1000
WINDOWS = {"5 min": 300, "1 h": 3600, "24 h": 86_400, "7 d": 604_800, "30 d": 2_592_000}
CHOSEN = 12  # series drawn by default (DASHBOARD_MAX_SENSORS)
# Raw-reading versions of the rollup-served charts are slow by design: time them fewer times.
RAW_ROUNDS = 3


def database_for(sensors: int) -> str:
    """The kept database of a fleet size (the default size keeps its historical name)."""
    return "iot_bench_dashboard" if sensors == DEFAULT_SENSORS else f"iot_bench_dashboard_{sensors}"


def results_name(sensors: int) -> str:
    return "dashboard_bench" if sensors == DEFAULT_SENSORS else f"dashboard_bench_{sensors}"


def ensure_database(database: str) -> None:
    admin = STACK.admin_connection()
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE DATABASE {database} OWNER {STACK.pg_user}")
    admin.close()


def drop_database(database: str) -> None:
    admin = STACK.admin_connection()
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    admin.close()


def lines(sensors: list[str], start: datetime, end: datetime, step_s: float, first_offset: int) -> Iterator[str]:
    """COPY text lines: every sensor once per step in [start, end), the fleet spread evenly over
    the step (as real sensors' clocks are), values cycling through a realistic range; chunks of
    one step (one line per sensor)."""
    temperatures = [f"{20 + (i % 1000) / 100:.2f}" for i in range(997)]
    humidities = [f"{30 + (i % 5000) / 100:.2f}" for i in range(991)]
    offset = first_offset
    steps = int((end - start).total_seconds() // step_s)
    for step in range(steps):
        step_start = start + timedelta(seconds=step * step_s)
        spacing = timedelta(seconds=step_s / len(sensors))
        chunk = []
        for index, sensor in enumerate(sensors):
            n = step * len(sensors) + index
            stamp = (step_start + index * spacing).isoformat()
            chunk.append(
                f"{sensor}\t{stamp}\t{temperatures[n % 997]}\t{humidities[n % 991]}\t{index % 6}\t{offset}\t\\N\n"
            )
            offset += 1
        yield "".join(chunk)


class LineStream(io.RawIOBase):
    """A file-like view of the generator for COPY FROM STDIN."""

    def __init__(self, source: Iterator[str]) -> None:
        self._source = source
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        wanted = size if size and size > 0 else 1 << 20
        while len(self._buffer) < wanted:
            piece = next(self._source, None)
            if piece is None:
                break
            self._buffer += piece.encode()
        out, self._buffer = self._buffer[:wanted], self._buffer[wanted:]
        return out


def load(
    conn: psycopg2.extensions.connection, sensors: list[str], start: datetime, end: datetime, step_s: float
) -> int:
    """COPY the readings of [start, end) day by day; returns rows written."""
    conn.autocommit = False
    DailyPartitions().ensure(conn, {(start + timedelta(days=d)).date() for d in range((end - start).days + 2)})
    rows = 0
    day = start
    while day < end:
        until = min(end, datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1))
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.copy_expert(
                'COPY sensores (sensor_id, "timestamp", temperatura, umidade, kafka_partition, kafka_offset, extras) '
                "FROM STDIN",
                LineStream(lines(sensors, day, until, step_s, rows)),
                size=1 << 20,
            )
            added = cur.rowcount
        conn.commit()
        rows += added
        print(f"[dashboard_bench] {day:%Y-%m-%d}: {added:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
        day = until
    return rows


def rebuild_rollups(conn: psycopg2.extensions.connection) -> float:
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("TRUNCATE sensores_minuto, sensores_hora, sensores_frota_minuto, sensores_frota_hora")
        cur.execute(REBUILD_SQL)
        cur.execute(FLEET_REBUILD_SQL)
    conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE sensores")
        cur.execute("VACUUM ANALYZE sensores_minuto")
        cur.execute("VACUUM ANALYZE sensores_hora")
        cur.execute("VACUUM ANALYZE sensores_frota_minuto")
        cur.execute("VACUUM ANALYZE sensores_frota_hora")
    conn.autocommit = False
    return time.perf_counter() - started


def refresh_rollups(conn: psycopg2.extensions.connection, since: datetime) -> float:
    """Recompute the rollups from ``since``'s hour on (after a top-up; the rest is unchanged)."""
    started = time.perf_counter()
    hour = since.replace(minute=0, second=0, microsecond=0)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM sensores_minuto WHERE bucket >= %s", (hour,))
        cur.execute("DELETE FROM sensores_hora WHERE bucket >= %s", (hour,))
        cur.execute(
            f"""INSERT INTO sensores_minuto ({rollups.COLUMNS})
                SELECT sensor_id, date_trunc('minute', "timestamp", 'UTC'), count(*), sum(temperatura),
                       min(temperatura), max(temperatura), sum(umidade), min(umidade), max(umidade)
                  FROM sensores WHERE "timestamp" >= %s GROUP BY 1, 2""",
            (hour,),
        )
        cur.execute(
            f"""INSERT INTO sensores_hora ({rollups.COLUMNS})
                SELECT sensor_id, date_trunc('hour', bucket, 'UTC'), sum(leituras), sum(temperatura_soma),
                       min(temperatura_min), max(temperatura_max), sum(umidade_soma), min(umidade_min),
                       max(umidade_max)
                  FROM sensores_minuto WHERE bucket >= %s GROUP BY 1, 2""",
            (hour,),
        )
        for table, (fleet, unit, sketch) in rollups.FLEET_TABLES.items():
            cur.execute(f"DELETE FROM {fleet} WHERE bucket >= %s", (hour,))
            source = cur.mogrify(f"(SELECT * FROM {table} WHERE bucket >= %s) AS refreshed", (hour,)).decode()
            cur.execute(rollups.fleet_sql(source, unit, fleet, "0", sketch))
    conn.commit()
    return time.perf_counter() - started


def prepare(args: argparse.Namespace) -> tuple[int, str]:
    """The database with ~--readings rows ending now; (rows, how it was prepared)."""
    database = database_for(args.sensors)
    if args.reload:
        drop_database(database)
    ensure_database(database)
    conn = connect(database)
    conn.autocommit = True
    migrate(conn)
    conn.autocommit = False
    sensors = [str(uuid.UUID(int=0x4000_8000_0000_0000_0000 + i)) for i in range(args.sensors)]
    step_s = args.days * 86_400 * args.sensors / args.readings
    now = datetime.now(UTC).replace(microsecond=0)
    with conn.cursor() as cur:
        cur.execute('SELECT max("timestamp"), count(*) FROM sensores')
        newest, existing = cur.fetchone() or (None, 0)
    conn.rollback()
    if newest is None:
        started = time.perf_counter()
        # Indexes are built once after the load (as a restore would), not row by row.
        with conn.cursor() as cur:
            cur.execute("DROP INDEX IF EXISTS sensores_sensor_time_idx")
        conn.commit()
        rows = load(conn, sensors, now - timedelta(days=args.days), now, step_s)
        with conn.cursor() as cur:
            cur.execute('CREATE INDEX sensores_sensor_time_idx ON sensores (sensor_id, "timestamp" DESC)')
        conn.commit()
        loaded = time.perf_counter() - started
        rollup_s = rebuild_rollups(conn)
        how = f"loaded {rows:,} rows with COPY in {loaded:.0f} s (index built after), rollups built in {rollup_s:.0f} s"
    else:
        start = newest + timedelta(seconds=step_s)
        rows = load(conn, sensors, start, now, step_s) if start < now else 0
        rollup_s = refresh_rollups(conn, start) if rows else 0.0
        how = f"reused {existing:,} rows, topped up {rows:,} to now (their rollups computed in {rollup_s:.0f} s)"
        rows += existing
    conn.close()
    return rows, how


def timed(run: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(p50, p95) in ms of ``rounds`` runs after one warm-up."""
    run()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]


def raw_series(conn: psycopg2.extensions.connection, window: timedelta, sensors: list[str], bucket: timedelta) -> None:
    """The chart as the dashboard computed it before rollups: from every raw reading."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT date_bin(%(bucket)s, "timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS t,
                      sensor_id, avg(temperatura), avg(umidade)
                 FROM sensores WHERE "timestamp" >= now() - %(window)s AND sensor_id = ANY(%(sensors)s::uuid[])
                GROUP BY 1, 2""",
            {"bucket": bucket, "window": window, "sensors": sensors},
        )
        cur.fetchall()


def raw_latest(conn: psycopg2.extensions.connection) -> None:
    """The latest-per-sensor panel before rollups: DISTINCT ON over the last hour's readings."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT DISTINCT ON (sensor_id) sensor_id, "timestamp", temperatura, umidade
                 FROM sensores WHERE "timestamp" >= now() - interval '1 hour' ORDER BY sensor_id, "timestamp" DESC"""
        )
        cur.fetchall()


def measure_retention(conn: psycopg2.extensions.connection) -> Table:
    """Retention at this fleet size: the oldest day of each table detached and dropped (what
    iot_drop_expired_partitions runs; as the owner here, whose policy would keep a day this
    young), then the fleet rollups expired after them. The database is dropped afterwards: the
    next run loads again."""
    rows: list[list[str]] = []
    with conn.cursor() as cur:
        for table in ("sensores", "sensores_minuto", "sensores_hora"):
            cur.execute(
                """SELECT c.oid::regclass::text, pg_total_relation_size(c.oid), c.reltuples::bigint
                     FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhparent = %s::regclass ORDER BY c.relname LIMIT 1""",
                (table,),
            )
            found = cur.fetchone()
            if found is None:
                continue
            child, size, tuples = found
            started = time.perf_counter()
            cur.execute(f"ALTER TABLE {table} DETACH PARTITION {child}")
            cur.execute(f"DROP TABLE {child}")
            rows.append(
                [
                    f"{table}: drop {child}",
                    f"{tuples:,}",
                    f"{size / 1e6:,.0f}",
                    fmt((time.perf_counter() - started) * 1000, 1),
                ]
            )
        started = time.perf_counter()
        cur.execute("SELECT iot_expire_fleet_rollups()")
        expired = (cur.fetchone() or (0,))[0]
        rows.append(
            [
                "fleet rollups: iot_expire_fleet_rollups()",
                f"{expired:,}",
                "-",
                fmt((time.perf_counter() - started) * 1000, 1),
            ]
        )
    return Table(
        "Retention at this fleet size: the oldest day of each table",
        ["step", "rows", "MB freed", "ms"],
        rows,
        [
            "Detach + drop of whole partitions: no row is read or deleted; the time grows with the files unlinked and the shared buffers dropped (~0.35 ms per MB here), and the hourly rollup's partitions are months."
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=100_000_000)
    parser.add_argument("--sensors", type=int, default=DEFAULT_SENSORS)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reload", action="store_true", help="Drop the kept database and load again.")
    parser.add_argument(
        "--measure-retention",
        action="store_true",
        help="At the end, time dropping the oldest day of every table (then the database is dropped).",
    )
    args = parser.parse_args()
    rows, how = prepare(args)
    conn = connect(database_for(args.sensors))
    conn.autocommit = True
    chosen = q.most_deviating(conn, timedelta(hours=1), CHOSEN)
    panels: list[list[str]] = []
    compared: list[list[str]] = []
    fixed: dict[str, Callable[[], object]] = {
        "latest reading per sensor (1 h, newest 50)": lambda: q.latest_per_sensor(conn, timedelta(hours=1)),
        "sensors heard from (1 h)": lambda: q.sensors_heard(conn, timedelta(hours=1)),
        "sensors heard from (5 min)": lambda: q.sensors_heard(conn, timedelta(minutes=5)),
        "sensor picker: ids starting 4000": lambda: q.find_sensors(conn, "4000"),
        "sensors furthest from the mean (1 h)": lambda: q.most_deviating(conn, timedelta(hours=1), CHOSEN),
        "headline: readings/s, sensors reporting": lambda: q.throughput(conn, "iot-consumer"),
        "open alerts (first 100)": lambda: q.open_alerts(conn),
        "recently closed alerts (24 h)": lambda: q.recent_alerts(conn, timedelta(hours=24)),
        "dead letters by reason (24 h)": lambda: q.dead_letters_by_reason(conn, timedelta(hours=24)),
        "stored positions": lambda: q.stored_positions(conn, "iot-consumer"),
    }
    for name, run in fixed.items():
        p50, p95 = timed(run, args.rounds)
        panels.append([name, "-", fmt(p50, 1), fmt(p95, 1)])
    for label, seconds in WINDOWS.items():
        window = timedelta(seconds=seconds)
        source = q.source_for(window)
        bucket = q.bucket_for(window, source=source)
        p50, p95 = timed(functools.partial(q.series, conn, window, chosen, bucket), args.rounds)
        panels.append([f"chart: {CHOSEN} sensors ({label})", q.SOURCE_NAMES[source], fmt(p50, 1), fmt(p95, 1)])
        p50, p95 = timed(functools.partial(q.fleet_band, conn, window, bucket), args.rounds)
        panels.append([f"chart: band of all sensors ({label})", "rollups", fmt(p50, 1), fmt(p95, 1)])
        if source != "raw":
            raw50, _ = timed(functools.partial(raw_series, conn, window, chosen, bucket), RAW_ROUNDS)
            new50, _ = timed(functools.partial(q.series, conn, window, chosen, bucket), RAW_ROUNDS)
            compared.append([label, fmt(raw50, 1), fmt(new50, 1), f"{raw50 / new50:,.0f}×"])
        print(f"[dashboard_bench] {label} done", flush=True)
    raw50, _ = timed(lambda: raw_latest(conn), RAW_ROUNDS)
    new50, _ = timed(lambda: q.latest_per_sensor(conn, timedelta(hours=1)), RAW_ROUNDS)
    compared.append(
        [
            "latest reading per sensor (1 h; raw: all, ours: newest 50)",
            fmt(raw50, 1),
            fmt(new50, 1),
            f"{raw50 / new50:,.0f}×",
        ]
    )
    with conn.cursor() as cur:
        cur.execute(
            """SELECT (SELECT count(*) FROM sensores_minuto), (SELECT count(*) FROM sensores_hora),
                      pg_size_pretty((SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i
                                       WHERE i.inhparent = 'sensores'::regclass)),
                      pg_size_pretty((SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i
                                       WHERE i.inhparent = 'sensores_minuto'::regclass)),
                      pg_size_pretty((SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i
                                       WHERE i.inhparent = 'sensores_hora'::regclass))"""
        )
        minute_rows, hour_rows, raw_size, minute_size, hour_size = cur.fetchone() or (0, 0, "?", "?", "?")
    conn.close()
    slowest = max(float(r[3].replace(",", "")) for r in panels)
    tables = [
        Table(
            f"Every panel's query, {rows:,} readings of {args.sensors:,} sensors over {args.days} days",
            ["panel", "reads", "p50 ms", "p95 ms"],
            panels,
            [
                how,
                f"sensores {raw_size}; sensores_minuto {minute_rows:,} rows, {minute_size}; "
                f"sensores_hora {hour_rows:,} rows, {hour_size}",
                f"slowest p95: {slowest:,.1f} ms (goal ≤ 300 ms); {args.rounds} rounds after a warm-up, "
                "the code the page runs (iot_dashboard.queries), one connection",
            ],
        ),
        Table(
            "The same panels from raw readings (before rollups) vs now, p50 ms",
            ["panel / window", "raw readings", "now", "ratio"],
            compared,
            [f"{RAW_ROUNDS} rounds each; raw = GROUP BY over every reading of the window (12 sensors)"],
        ),
    ]
    if args.measure_retention:
        conn = connect(database_for(args.sensors))
        conn.autocommit = True
        try:
            tables.append(measure_retention(conn))
        finally:
            conn.close()
        drop_database(database_for(args.sensors))
    save(results_name(args.sensors), tables, script="dashboard_bench")


if __name__ == "__main__":
    main()
