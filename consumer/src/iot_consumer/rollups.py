"""Per-sensor rollups by minute and by hour, kept exactly in step with ``sensores``.

``sensores_minuto`` and ``sensores_hora`` hold, per sensor and bucket, the count, sum, minimum
and maximum of temperatura and umidade (the mean is a generated column: sum / count). They are
updated in the same transaction as the rows they summarise - the consumer's batch, a dead-letter
replay - so a reading is counted exactly as often as it is stored: once, across kill -9,
rebalances and replays, because the stored Kafka positions commit with it. A late reading (a
gateway back online) updates its past bucket like any other.

Upserts go in (sensor, bucket) order (``ORDER BY`` in the INSERT … SELECT): two replicas touching the same buckets (a producer
without keys spreads one sensor over partitions) then lock rows in one order and cannot
deadlock. The aggregation is per batch, in the batch's summary (summary.py: in C when the batch
was decoded natively), so that the database receives one row per sensor-minute instead of
re-reading the batch's rows. (With ``--on-duplicate drop`` the rows actually inserted are
aggregated in SQL instead: see duplicates.py.)

Beside them, the fleet rollups ``sensores_frota_minuto`` / ``sensores_frota_hora`` hold the
whole fleet per bucket (count, sum, min, max) and a HyperLogLog sketch of the sensors heard in
it, so the dashboard's fleet-wide panels read a row per bucket instead of a row per sensor per
bucket: with 1,000,000 sensors, a day's band from the hourly rollup aggregated 23M rows in 2.5 s
(bench/dashboard_bench.py). They are updated from the same stage, in the same transaction.
A fleet row belongs to a slot (the lowest partition of the batch that wrote it), so replicas,
which own different partitions, never wait on each other's fleet rows; readers add the slots up.
"""

from __future__ import annotations

import io

import psycopg2.extensions

from iot_consumer.summary import BatchSummary

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


def on_conflict(key: str, alias: str) -> str:
    """Adds an INSERT's rows (aliased ``alias``) to those already there with the same ``key``."""
    return f"""
    ON CONFLICT ({key}) DO UPDATE SET
        leituras = {alias}.leituras + EXCLUDED.leituras,
        temperatura_soma = {alias}.temperatura_soma + EXCLUDED.temperatura_soma,
        temperatura_min = least({alias}.temperatura_min, EXCLUDED.temperatura_min),
        temperatura_max = greatest({alias}.temperatura_max, EXCLUDED.temperatura_max),
        umidade_soma = {alias}.umidade_soma + EXCLUDED.umidade_soma,
        umidade_min = least({alias}.umidade_min, EXCLUDED.umidade_min),
        umidade_max = greatest({alias}.umidade_max, EXCLUDED.umidade_max)
"""


ON_CONFLICT = on_conflict("sensor_id, bucket", "r")

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


# The fleet rollup of each per-sensor rollup: its name, the unit of its buckets, and whether it
# keeps a sketch of the sensors heard (the minute one: "heard within" any window of minutes is the
# union of its minutes' sketches; the hour one holds the band of long windows only).
FLEET_TABLES = {
    "sensores_minuto": ("sensores_frota_minuto", "minute", True),
    "sensores_hora": ("sensores_frota_hora", "hour", False),
}
# HyperLogLog with 2^10 registers: a distinct count to ~3.3 % (1.04 / sqrt(1024)) in 2 KB per
# bucket. A sensor's register is the low 10 bits of a 64-bit hash of its id, its rank one more than
# the leading zeros of the next 53 bits (54 when all are zero); a register keeps the highest rank.
# (Over {hash}, a column holding the hash: it is computed once per row.)
SKETCH_REGISTERS = 1024
SKETCH_HASH_SQL = "uuid_hash_extended({id}, 0)"
SKETCH_REGISTER_SQL = "({hash} & 1023)::integer"
SKETCH_RANK_SQL = (
    "CASE WHEN ({hash} >> 10) & 9007199254740991 = 0 THEN 54"
    " ELSE 53 - floor(ln((({hash} >> 10) & 9007199254740991)::float8) / ln(2.0))::integer END"
)
_FLEET_VALUES = "leituras, temperatura_soma, temperatura_min, temperatura_max, umidade_soma, umidade_min, umidade_max"


def fleet_sql(source: str, unit: str, target: str, slot: str, sketch: bool) -> str:
    """INSERT … SELECT of the fleet rows of ``source`` (rows with the per-sensor rollup columns),
    by ``unit`` bucket, into ``target`` under ``slot`` (an SQL expression); no ON CONFLICT."""
    hashed = f", {SKETCH_HASH_SQL.format(id='sensor_id')} AS h" if sketch else ""
    sketches = ""
    if sketch:
        register = SKETCH_REGISTER_SQL.format(hash="h")
        rank = SKETCH_RANK_SQL.format(hash="h")
        sketches = f""", ranks AS (
        SELECT bucket, {register} AS registro, max({rank})::smallint AS posto FROM staged GROUP BY 1, 2
    ), sketches AS (
        SELECT t.bucket, array_agg(coalesce(r.posto, 0)::smallint ORDER BY g.registro) AS registros
        FROM totals t CROSS JOIN generate_series(0, {SKETCH_REGISTERS - 1}) AS g(registro)
        LEFT JOIN ranks r ON r.bucket = t.bucket AND r.registro = g.registro
        GROUP BY t.bucket
    )"""
    return f"""
    WITH staged AS (
        SELECT date_trunc('{unit}', bucket, 'UTC') AS bucket, {_FLEET_VALUES}{hashed} FROM {source}
    ), totals AS (
        SELECT bucket, sum(leituras) AS leituras, sum(temperatura_soma) AS temperatura_soma,
               min(temperatura_min) AS temperatura_min, max(temperatura_max) AS temperatura_max,
               sum(umidade_soma) AS umidade_soma, min(umidade_min) AS umidade_min, max(umidade_max) AS umidade_max
        FROM staged GROUP BY bucket
    ){sketches}
    INSERT INTO {target} AS f (bucket, slot, {_FLEET_VALUES}{", registros" if sketch else ""})
    SELECT t.bucket, {slot}, {", ".join("t." + c for c in _FLEET_VALUES.split(", "))}{", s.registros" if sketch else ""}
    FROM totals t{" JOIN sketches s USING (bucket)" if sketch else ""} ORDER BY t.bucket"""


def fleet_on_conflict(sketch: bool) -> str:
    """Adds an INSERT's fleet rows (aliased f) to those already there, sketches by union."""
    merged = on_conflict("bucket, slot", "f").rstrip("\n")
    return merged + (",\n        registros = iot_sketch_union(f.registros, EXCLUDED.registros)" if sketch else "")


_FLEET_UPSERT = {
    table: fleet_sql("rollup_stage", unit, target, "%(slot)s", sketch) + fleet_on_conflict(sketch)
    for table, (target, unit, sketch) in FLEET_TABLES.items()
}
# Both fleet rollups from the per-sensor ones (into empty tables; slot 0): migration 8 fills them
# for what was stored before, tests and benchmarks rebuild them with it.
FLEET_REBUILD_SQL = ";\n".join(
    fleet_sql(table, unit, target, "0", sketch) for table, (target, unit, sketch) in FLEET_TABLES.items()
)


# A dead-letter replay's fleet rows: a slot no consumer's batch uses, so a replay's long
# transaction never holds a row a live replica waits for.
REPLAY_SLOT = 32767


def batch_slot(summary: BatchSummary) -> int:
    """The fleet rows' slot of a batch: its lowest partition (a replica's own, so replicas do not
    contend for fleet rows; any value is correct, readers add the slots up)."""
    return min((partition for partition, _ in summary.clocks()), default=0)


def upsert(cur: psycopg2.extensions.cursor, summary: BatchSummary, slot: int) -> int:
    """Add the batch's buckets to both rollups and both fleet rollups inside the caller's
    transaction, fleet rows under ``slot``; the minute buckets touched. The days' partitions of
    the rollups exist whenever ``sensores``' do (``iot_ensure_sensores_partition`` creates all three)."""
    minute_rows = summary.rollup_copy(60)
    if not minute_rows:
        return 0
    cur.execute(STAGE_SQL)
    cur.copy_expert("COPY rollup_stage FROM STDIN", io.BytesIO(minute_rows), size=1 << 20)
    add_stage_to_rollups(cur, slot)
    return minute_rows.count(b"\n")


def add_stage_to_rollups(cur: psycopg2.extensions.cursor, slot: int) -> None:
    """Add the minute buckets rollup_stage holds to both rollups and both fleet rollups (fleet
    rows under ``slot``), then empty the stage for the transaction's next batch (a replay's)."""
    cur.execute(_STAGE_TO_ROLLUPS, {"slot": slot})


_UPSERT = "INSERT INTO {table} AS r ({columns}) SELECT * FROM rollup_stage ORDER BY sensor_id, bucket" + ON_CONFLICT
# The hours are the staged minutes' sums, so a batch's buckets cross the wire once; all four
# upserts and the stage's DELETE go in one round trip. Measured with PostgreSQL's statement log, 1
# process at 10,000 readings/s (~300 readings a batch): rollup server time 17.5 -> 14.5 ms a batch.
# Upserts in (sensor, bucket) order: two replicas touching the same buckets cannot deadlock.
_HOURS_FROM_STAGE = (
    f"""INSERT INTO sensores_hora AS r ({COLUMNS})
    SELECT sensor_id, date_trunc('hour', bucket, 'UTC'), sum(leituras), sum(temperatura_soma), min(temperatura_min),
           max(temperatura_max), sum(umidade_soma), min(umidade_min), max(umidade_max)
    FROM rollup_stage GROUP BY 1, 2 ORDER BY 1, 2"""
    + ON_CONFLICT
)
_STAGE_TO_ROLLUPS = ";\n".join(
    [
        _UPSERT.format(table="sensores_minuto", columns=COLUMNS),
        _HOURS_FROM_STAGE,
        # fleet rows of either unit from the minutes staged (fleet_sql truncates to its unit)
        *(_FLEET_UPSERT[table] for table in TABLES),
        "DELETE FROM rollup_stage",
    ]
)
