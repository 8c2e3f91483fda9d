"""What the rollups cost the consumer: per batch, the COPY of the rows next to the rollup work
done in the same transaction (the Python path's batch summary and its minute rows + the upserts:
both rollups and both fleet rollups, the hours summed from the staged minutes in SQL), on a real
PostgreSQL.

Batches of --batch readings from --sensors sensors at 1 Hz (each batch covers batch/sensors
seconds, so it touches about sensors × minutes-spanned minute buckets), written one after the
other into a fresh database exactly as the consumer's sink writes them; median over --rounds.

usage: python -m bench.rollup_bench [--batch 10000] [--sensors 1000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.common import Table, connect, drop_database, fmt, fresh_database, save
from iot_consumer import rollups
from iot_consumer.migrations import DailyPartitions, migrate
from iot_consumer.readings import Reading
from iot_consumer.sink import COPY_SQL
from iot_consumer.summary import summary_of


def batches(sensors: list[str], size: int, rounds: int, start: datetime) -> list[tuple[list[Reading], bytes]]:
    """``rounds`` consecutive batches: readings (for the rollups) and their COPY payload."""
    out = []
    offset = 0
    for _ in range(rounds):
        readings: list[Reading] = []
        lines = []
        for _ in range(size):
            sensor = sensors[offset % len(sensors)]
            stamp = start + timedelta(seconds=offset // len(sensors), microseconds=offset % 1000)
            temperatura, umidade = 20 + (offset % 1000) / 100, 30 + (offset % 5000) / 100
            readings.append(Reading(offset % 6, sensor, stamp, temperatura, umidade))
            lines.append(f"{sensor}\t{stamp.isoformat()}\t{temperatura!r}\t{umidade!r}\t{offset % 6}\t{offset}\t\\N\n")
            offset += 1
        out.append((readings, "".join(lines).encode()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    database = fresh_database("rollups")
    try:
        conn = connect(database)
        conn.autocommit = True
        migrate(conn)
        conn.autocommit = False
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)
        DailyPartitions().ensure(conn, {start.date(), (start + timedelta(days=1)).date()})
        sensors = [str(uuid.uuid4()) for _ in range(args.sensors)]
        copy_s, aggregate_s, upsert_s, buckets = [], [], [], []
        for readings, payload in batches(sensors, args.batch, args.rounds, start):
            with conn.cursor() as cur:
                began = time.perf_counter()
                cur.copy_expert(COPY_SQL, io.BytesIO(payload), size=1 << 20)
                copied = time.perf_counter()
                summary = summary_of(readings)
                summarised = time.perf_counter()
                summary.rollup_copy(60)
                aggregated = time.perf_counter()
                buckets.append(rollups.upsert(cur, summary, rollups.batch_slot(summary)))
                done = time.perf_counter()
            conn.commit()
            copy_s.append(copied - began)
            aggregate_s.append(aggregated - copied)
            # upsert() writes the minute rows again before staging them: its own time minus that.
            upsert_s.append(max(0.0, (done - aggregated) - (aggregated - summarised)))
        conn.close()
    finally:
        drop_database(database)
    per_row = 1e6 / args.batch
    copy_us = statistics.median(copy_s) * per_row
    aggregate_us = statistics.median(aggregate_s) * per_row
    upsert_us = statistics.median(upsert_s) * per_row
    rows = [
        ["COPY of the rows (the consumer's write)", fmt(copy_us, 2), "1.00×"],
        [
            "rollups: aggregation in Python (PythonSummary: by sensor-minute, as COPY rows)",
            fmt(aggregate_us, 2),
            f"{aggregate_us / copy_us:.2f}×",
        ],
        [
            "rollups: COPY of the minutes, upserts into sensores_minuto, sensores_hora (summed in SQL) and the fleet rollups",
            fmt(upsert_us, 2),
            f"{upsert_us / copy_us:.2f}×",
        ],
        [
            "rollups in all",
            fmt(aggregate_us + upsert_us, 2),
            f"{(aggregate_us + upsert_us) / copy_us:.2f}×",
        ],
    ]
    save(
        "rollup_bench",
        [
            Table(
                f"Rollup cost per row, batches of {args.batch:,} readings from {args.sensors:,} sensors",
                ["step (same transaction)", "µs per row (median)", "vs COPY"],
                rows,
                [
                    f"{statistics.median(buckets):,.0f} minute buckets per batch (median); {args.rounds} batches",
                    "the consumer's whole cost per row: bench/results/consumer_bench.md (CPU per 1M rows); rollups add what is shown here",
                    f"Reproduce: python -m bench.rollup_bench --batch {args.batch} --sensors {args.sensors}",
                ],
            )
        ],
    )


if __name__ == "__main__":
    main()
