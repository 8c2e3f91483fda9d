"""Consumer throughput, end to end (Kafka → PostgreSQL), in one run on the same topic data:

- iot-consumer with 1 process and with N processes in one group, with the native decoder
  (iot_fastpath), the native decoder without the writer thread, and the Python path
  (CONSUMER_DECODER=python), side by side;
- the seed-style baseline (kafka-python + one INSERT and COMMIT per message);
- limits: kafka-python reading with no database; PostgreSQL COPY of the same rows alone.

usage: python -m bench.consumer_bench [--readings 300000] [--processes 1,2]
                                     [--configs native,native/no-overlap,native/drop-duplicates,python]
                                     [--baseline-seconds 30]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.common import (
    RESULTS,
    STACK,
    Measured,
    Process,
    Table,
    cli,
    connect,
    drop_database,
    drop_topic,
    fmt,
    fresh_database,
    fresh_topic,
    prefill,
    save,
)
from iot_consumer.migrations import DailyPartitions, migrate

IDLE_S = 3.0
VARIANT_LABELS = {"": "", "no-overlap": ", no writer thread", "drop-duplicates": ", --on-duplicate drop"}


def run_ours(topic: str, readings: int, processes: int, config: str) -> tuple[float, Measured, bool]:
    """``config``: a CONSUMER_DECODER value, with "/no-overlap" for CONSUMER_WRITE_OVERLAP=false
    or "/drop-duplicates" for CONSUMER_ON_DUPLICATE=drop."""
    decoder, _, variant = config.partition("/")
    database = fresh_database("ours")
    env = STACK.service_env(
        topic=topic,
        database=database,
        METRICS_PORT="-1",
        CONSUMER_GROUP=f"bench-{uuid.uuid4().hex[:8]}",
        CONSUMER_DECODER=decoder,
        CONSUMER_WRITE_OVERLAP="false" if variant == "no-overlap" else "true",
        CONSUMER_ON_DUPLICATE="drop" if variant == "drop-duplicates" else "keep",
    )
    try:
        procs = [
            Process(
                cli("iot-consumer", "run", "--exit-when-idle", str(IDLE_S)),
                env,
                RESULTS / f"consumer-{config.replace('/', '-')}-{processes}-{i}.log",
            )
            for i in range(processes)
        ]
        launched = min(p.started_at for p in procs)
        results = [p.wait() for p in procs]
        conn = connect(database)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)), extract(epoch FROM max(ingested_at)) FROM sensores"
            )
            rows, distinct, last = cur.fetchone()  # type: ignore[misc]
        conn.close()
        exact = rows == distinct == readings and all(r.returncode == 0 for r in results)
        total = Measured(
            max(r.returncode for r in results),
            float(last) - launched,
            sum(r.cpu_s for r in results),
            max(r.peak_rss_mb for r in results),
            launched,
        )
        return rows / total.wall_s, total, exact
    finally:
        drop_database(database)


def run_seed(topic: str, readings: int, seconds: float) -> tuple[float, Measured, int]:
    database = fresh_database("seed")
    try:
        proc = Process(
            [
                sys.executable,
                "-m",
                "bench.baselines.seed_consumer",
                topic,
                database,
                f"seed-{uuid.uuid4().hex[:8]}",
                str(readings),
                str(seconds),
            ],
            STACK.service_env(topic=topic, database=database),
            RESULTS / "seed.log",
        )
        measured = proc.wait()
        conn = connect(database)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM sensores")
            rows = cur.fetchone()[0]  # type: ignore[index]
        conn.close()
        return rows / measured.wall_s, measured, rows
    finally:
        drop_database(database)


def run_kafka_only(topic: str, readings: int) -> tuple[float, Measured]:
    proc = Process(
        [sys.executable, "-m", "bench.baselines.kafka_only", topic, str(readings)],
        STACK.service_env(topic=topic, database="iot"),
        RESULTS / "kafka-only.log",
    )
    measured = proc.wait()
    return readings / measured.wall_s, measured


def run_copy_only(readings: int) -> float:
    """PostgreSQL alone: COPY the same number of rows, same table (partitioned, indexed), 10k per transaction."""
    database = fresh_database("copy")
    try:
        conn = connect(database)
        migrate(conn)
        conn.autocommit = False
        base = datetime.now(UTC) - timedelta(minutes=10)
        DailyPartitions().ensure_ahead(conn)
        sensors = [str(uuid.uuid4()) for _ in range(1000)]
        lines = [
            f"{sensors[i % 1000]}\t{(base + timedelta(microseconds=i * 500)).isoformat()}\t{20 + (i % 1000) / 100!r}\t{50 + (i % 700) / 100!r}\t{i % 6}\t{i // 6}\n"
            for i in range(readings)
        ]
        started = time.perf_counter()
        with conn.cursor() as cur:
            for start in range(0, readings, 10_000):
                payload = "".join(lines[start : start + 10_000]).encode()
                cur.copy_expert(
                    'COPY sensores (sensor_id, "timestamp", temperatura, umidade, kafka_partition, kafka_offset) FROM STDIN',
                    io.BytesIO(payload),
                )
                conn.commit()
        elapsed = time.perf_counter() - started
        conn.close()
        return readings / elapsed
    finally:
        drop_database(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts for iot-consumer")
    parser.add_argument(
        "--configs",
        default="native,native/no-overlap,native/drop-duplicates,python",
        help="comma-separated CONSUMER_DECODER values, /no-overlap = without the writer thread, "
        "/drop-duplicates = CONSUMER_ON_DUPLICATE=drop",
    )
    parser.add_argument("--baseline-seconds", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (the table shows medians)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)

    topic = fresh_topic("consumer")
    try:
        fill_rate = prefill(topic, args.readings)
        rows: list[list[str]] = []
        seed_rate, seed, seed_rows = run_seed(topic, args.readings, args.baseline_seconds)
        runs: dict[tuple[str, int], list[tuple[float, Measured, bool]]] = {}
        for _round in range(args.repeat):  # rounds interleave the configurations: drift hits all alike
            for config in args.configs.split(","):
                for processes in (int(p) for p in args.processes.split(",")):
                    runs.setdefault((config, processes), []).append(run_ours(topic, args.readings, processes, config))
        for (config, processes), results in runs.items():
            decoder, _, variant = config.partition("/")
            label = f"{decoder} decoder" + VARIANT_LABELS[variant]
            rate = statistics.median(r[0] for r in results)
            cpu_us = statistics.median(r[1].cpu_s for r in results) / args.readings * 1e6
            rows.append(
                [
                    f"iot-consumer, {label}, {processes} process{'es' if processes > 1 else ''}",
                    fmt(rate),
                    f"{rate / seed_rate:.1f}×",
                    fmt(cpu_us, 1),
                    fmt(max(r[1].peak_rss_mb for r in results)),
                    "yes" if all(r[2] for r in results) else "**NO**",
                ]
            )
        rows.append(
            [
                "seed-style: INSERT + COMMIT per message",
                fmt(seed_rate),
                "1.0×",
                fmt(seed.cpu_s / seed_rows * 1e6, 1),
                fmt(seed.peak_rss_mb),
                f"({seed_rows:,} rows in {args.baseline_seconds:.0f} s)",
            ]
        )
        kafka_rate, kafka = run_kafka_only(topic, args.readings)
        rows.append(
            [
                "limit: kafka-python reading only, no database",
                fmt(kafka_rate),
                f"{kafka_rate / seed_rate:.1f}×",
                fmt(kafka.cpu_s / args.readings * 1e6, 1),
                fmt(kafka.peak_rss_mb),
                "–",
            ]
        )
        copy_rate = run_copy_only(args.readings)
        rows.append(
            [
                "limit: PostgreSQL COPY alone (same table, 10k rows/tx)",
                fmt(copy_rate),
                f"{copy_rate / seed_rate:.1f}×",
                "–",
                "–",
                "–",
            ]
        )
    finally:
        drop_topic(topic)

    table = Table(
        f"Kafka → PostgreSQL, {args.readings:,} readings, 6 partitions",
        ["pipeline", "rows/s", "vs seed", "CPU s per 1M rows (client processes)", "peak RSS MB", "exactly once"],
        rows,
        [
            f"iot-consumer rows: median of {args.repeat} runs each (rounds interleaved), peak RSS the highest; "
            "rows/s = rows ÷ (last commit − process launch): start-up and group join included.",
            f"Topic prefilled by 2 iot-producer processes at {fmt(fill_rate)} readings/s (acks=all).",
            "CPU excludes the PostgreSQL and Kafka server processes, which share the same 2 cores.",
            "Reproduce: make bench-consumer (or python -m bench.consumer_bench --readings N).",
        ],
    )
    save("consumer_bench", [table])


if __name__ == "__main__":
    main()
