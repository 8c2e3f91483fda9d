"""Where the end-to-end latency goes at a fixed offered rate (issue 27's "p99 ≤ 50 ms at 10,000
readings/s"), in one run:

- Kafka alone: iot-producer → the broker → a kafka-python consumer with iot-consumer's fetch
  settings and no database; latency = when poll() returned the record − the reading's timestamp.
  What any kafka-python pipeline on this machine starts from.
- iot-consumer (native decoder, its defaults) with 1 and N processes; latency = the commit of the
  transaction that wrote the row (track_commit_timestamp) − the reading's timestamp, as in
  bench/compare.py; and each batch's time split by the consumer's own metrics (COPY of the
  readings, the rollup upserts, alert evaluation, the rest).

usage: python -m bench.latency_profile [--rate 10000] [--seconds 30] [--rounds 3] [--processes 2]
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from kafka import KafkaConsumer

from bench.common import (
    COMMITTED,
    RESULTS,
    STACK,
    Process,
    Table,
    cli,
    connect,
    drop_database,
    drop_topic,
    fmt,
    fresh_database,
    fresh_topic,
    require_commit_timestamps,
    save,
)

SENSORS = 1000
JOIN_S = 10  # group join before the producer starts (as bench/compare.py)
WARM_S = 5  # the first seconds of readings are left out (first fetches, caches)
# iot-consumer's per-batch histograms (iot_consumer/metrics.py): name → column.
STAGES = {
    "iot_consumer_copy_duration_seconds": "COPY of the readings",
    "iot_consumer_rollup_duration_seconds": "rollup upserts",
    'iot_consumer_alert_evaluation_duration_seconds{kind="batch"}': "alert evaluation",
}
BATCH = "iot_consumer_batch_duration_seconds"
SIZE = "iot_consumer_batch_size"


@dataclass
class Run:
    """One measurement: latencies in ms (after the warm-up) and, for ours, the summed histograms."""

    latencies_ms: list[float]
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def quantile(self, q: float) -> float:
        """Nearest rank."""
        values = self.latencies_ms
        if not values:
            raise RuntimeError("no latencies measured")
        return values[max(math.ceil(len(values) * q) - 1, 0)]

    def per_batch_ms(self, name: str) -> float:
        """Mean ms of one observation of histogram ``name`` (each counts its own: COPY and rollups
        only batches with rows, alert evaluation also retried writes)."""
        return self.sums.get(name, 0.0) / max(self.counts.get(name, 0.0), 1.0) * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_producer(topic: str, rate: int, seconds: int, name: str) -> Process:
    """iot-producer offering ``rate`` readings/s for ``seconds`` (acks=all, its defaults)."""
    return Process(
        cli("iot-producer", "--sensors", str(SENSORS), "--rate", str(rate), "--count", str(rate * seconds)),
        STACK.service_env(topic=topic, database="iot", METRICS_PORT="-1"),
        RESULTS / f"latency-profile-{name}-producer.log",
    )


def stop(procs: list[Process], timeout_s: float = 60) -> None:
    """SIGTERM, then SIGKILL whatever has not exited within ``timeout_s``; reaped either way."""
    for p in procs:
        if p.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.proc.kill()
        p.wait()


def kafka_alone(rate: int, seconds: int) -> Run:
    topic = fresh_topic("latency_kafka")
    producer: Process | None = None
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=STACK.bootstrap,
        group_id=f"latency-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # iot-consumer's fetch settings (iot_consumer/polling.py)
        max_partition_fetch_bytes=1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        isolation_level="read_committed",
    )
    try:
        deadline = time.monotonic() + JOIN_S
        while time.monotonic() < deadline:
            consumer.poll(200)
        producer = start_producer(topic, rate, seconds, "kafka")  # its own process; this one reads
        total, seen, latencies = rate * seconds, 0, []
        deadline = time.monotonic() + seconds + 60
        while seen < total and time.monotonic() < deadline:
            polled = consumer.poll(500, max_records=100_000)
            now_ms = time.time() * 1000
            for records in polled.values():
                latencies += [now_ms - r.timestamp for r in records]
                seen += len(records)
        if producer.wait().returncode != 0 or seen != total:
            raise RuntimeError(f"Kafka alone: read {seen:,} of {total:,}; see {producer.log}")
        return Run(sorted(latencies[rate * WARM_S :]))
    finally:
        if producer is not None:
            stop([producer])
        consumer.close()
        drop_topic(topic)


def scrape(port: int, sums: dict[str, float], counts: dict[str, float]) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        for histogram in (*STAGES, BATCH, SIZE):
            base, _, labels = histogram.partition("{")
            suffix = "{" + labels if labels else ""
            if name == f"{base}_sum{suffix}":
                sums[histogram] = sums.get(histogram, 0.0) + float(value)
            elif name == f"{base}_count{suffix}":
                counts[histogram] = counts.get(histogram, 0.0) + float(value)


def ours(processes: int, rate: int, seconds: int) -> Run:
    topic = fresh_topic("latency_ours")
    database: str | None = None
    procs: list[Process] = []
    try:
        database = fresh_database("latency_ours")
        group = f"latency-{uuid.uuid4().hex[:8]}"
        ports = [free_port() for _ in range(processes)]
        procs = [
            Process(
                cli("iot-consumer", "run"),
                STACK.service_env(topic=topic, database=database, METRICS_PORT=str(port), CONSUMER_GROUP=group),
                RESULTS / f"latency-profile-ours-{processes}-{i}.log",
            )
            for i, port in enumerate(ports)
        ]
        time.sleep(JOIN_S)
        producer = start_producer(topic, rate, seconds, f"ours-{processes}")
        if producer.wait().returncode != 0:
            raise RuntimeError(f"the producer failed; see {producer.log}")
        total = rate * seconds
        conn = connect(database)
        conn.autocommit = True
        deadline = time.monotonic() + 120
        while True:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM sensores")
                (rows,) = cur.fetchone()  # type: ignore[misc]
            if rows >= total:
                break
            exited = [p for p in procs if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                raise RuntimeError(f"iot-consumer stored {rows:,} of {total:,}; see {(exited or procs)[0].log}")
            time.sleep(0.5)
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for port in ports:
            scrape(port, sums, counts)
        with conn.cursor() as cur:
            cur.execute(
                f"""SELECT extract(epoch FROM {COMMITTED} - "timestamp") * 1000 FROM sensores
                   WHERE "timestamp" > (SELECT min("timestamp") FROM sensores) + interval '{WARM_S} seconds'"""
            )
            latencies = sorted(float(v) for (v,) in cur.fetchall())
        conn.close()
        return Run(latencies, sums, counts)
    finally:
        stop(procs)
        if database is not None:
            drop_database(database)
        drop_topic(topic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=10_000, help="readings/s offered")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the table shows medians)")
    parser.add_argument("--processes", type=int, default=2, help="iot-consumer processes of the N-way run")
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= WARM_S or args.rounds <= 0 or args.processes <= 0:
        parser.error(f"--rate, --rounds and --processes must be positive, --seconds above {WARM_S}")
    require_commit_timestamps()
    RESULTS.mkdir(parents=True, exist_ok=True)
    labels = {
        "kafka": "Kafka alone: iot-producer → kafka-python consumer, no database",
        "ours-1": "iot-consumer, native decoder, 1 process",
        f"ours-{args.processes}": f"iot-consumer, native decoder, {args.processes} processes",
    }
    runs: dict[str, list[Run]] = {name: [] for name in labels}
    for round_ in range(args.rounds):
        for name in labels:
            print(f"[latency] round {round_ + 1}/{args.rounds}: {name}", flush=True)
            if name == "kafka":
                runs[name].append(kafka_alone(args.rate, args.seconds))
            else:
                runs[name].append(ours(int(name.split("-")[1]), args.rate, args.seconds))

    def median(name: str, value: Callable[[Run], float]) -> float:
        return statistics.median(value(run) for run in runs[name])

    latency = Table(
        f"End-to-end latency at {args.rate:,} readings/s offered for {args.seconds} s ({SENSORS:,} sensors)",
        ["pipeline", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms"],
        [
            [label] + [fmt(median(name, partial(Run.quantile, q=q))) for q in (0.5, 0.9, 0.99, 0.999)]
            for name, label in labels.items()
        ],
        [
            f"Medians of {args.rounds} interleaved rounds; the first {WARM_S} s of readings left out.",
            "Kafka alone: poll() returning the record − the reading's timestamp (the producer's linger, the"
            " broker's append with acks=all, the fetch); iot-consumer: the commit of the row's transaction"
            " − the reading's timestamp.",
        ],
    )
    ours_names = [name for name in labels if name != "kafka"]
    batches = Table(
        "iot-consumer at that rate: each batch's time, from its own metrics (mean ms per batch)",
        [
            "pipeline",
            "batches/s (all processes)",
            "messages per batch",
            *STAGES.values(),
            "poll result → COMMIT",
        ],
        [
            [
                labels[name],
                fmt(median(name, lambda r: r.counts.get(BATCH, 0.0)) / args.seconds),
                fmt(median(name, lambda r: r.sums.get(SIZE, 0.0) / max(r.counts.get(SIZE, 0.0), 1.0))),
                *(fmt(median(name, partial(Run.per_batch_ms, name=stage)), 1) for stage in STAGES),
                fmt(median(name, lambda r: r.per_batch_ms(BATCH)), 1),
            ]
            for name in ours_names
        ],
        [
            "From iot_consumer_*_duration_seconds (each histogram's sum ÷ its count) and"
            " iot_consumer_batch_size (messages, dead letters included), summed over the processes; the run"
            " includes the warm-up and the drain.",
            "Poll result → COMMIT also holds building the batch, waiting for the previous batch's write"
            " (the writer thread overlaps them), the positions and the COMMIT.",
            f"Reproduce: python -m bench.latency_profile --rate {args.rate} --seconds {args.seconds}",
        ],
    )
    save("latency_profile", [latency, batches])


if __name__ == "__main__":
    main()
