"""Kafka → PostgreSQL, side by side in one run on the same topic data and table shape:
iot-consumer (1 and N processes), the seed-style baseline, Quix Streams' PostgreSQLSink and
Kafka Connect 4.3.1 with the Debezium JDBC sink (tasks.max 1 and N); the machine's limits
(PostgreSQL COPY alone, kafka-python reading alone); end-to-end latency at a fixed offered
rate; and issue 27's goals against this same run, each throughput goal beside the CPU a row may
cost to reach it and what a row cost (its processes, PostgreSQL, the broker). Fair by
construction: every pipeline's rows are timed by the commit of the transaction that wrote them
(track_commit_timestamp), every pipeline runs in each of --rounds interleaved rounds (the tables
show medians), every table is checked for readings stored twice, and every pipeline also reads a
topic its producers compressed (--codec).

usage: python -m bench.compare [--readings 300000] [--rounds 3] [--codec lz4] [--processes 2]
                               [--latency-rate 10000] [--latency-seconds 30] [--skip-latency]
       (--readings 10000000 for the full-size run)
Installs its peers on first use: Quix Streams into .bench/venv-quix (PyPI), the Debezium
plugin into .bench/connect/plugins (Maven Central).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    COMMITTED,
    CORES,
    REPO,
    RESULTS,
    STACK,
    CpuPerRow,
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
    kafka_cpu_seconds,
    postgres_cpu_seconds,
    prefill,
    process_cpu_seconds,
    require_commit_timestamps,
    save,
)
from bench.consumer_bench import TARGETS, run_copy_only, run_kafka_only, run_seed

WORK = REPO / ".bench"
DEFAULT_READINGS = 300_000
QUIX_VENV = WORK / "venv-quix"
QUIX_VERSION = "3.28.1"
PLUGINS = WORK / "connect" / "plugins"
KAFKA_LIBS = STACK.stack_dir / "kafka" / "libs"
PEER_TABLE = """
CREATE TABLE sensores (
    sensor_id uuid NOT NULL,
    "timestamp" timestamptz NOT NULL,
    temperatura double precision NOT NULL,
    umidade double precision NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT clock_timestamp()  -- for the latency figures only
);
CREATE INDEX sensores_sensor_time_idx ON sensores (sensor_id, "timestamp" DESC);
"""


# ------------------------------------------------------------------------------ peers' set-up
def install_quix() -> Path:
    python = QUIX_VENV / "bin" / "python"
    if not (
        python.exists()
        and subprocess.run([str(python), "-c", "import quixstreams"], capture_output=True, check=False).returncode == 0
    ):
        print(f"[bench] installing quixstreams[postgresql]=={QUIX_VERSION} into {QUIX_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"quixstreams[postgresql]=={QUIX_VERSION}"], check=True
        )
    return python


def install_connect_plugin() -> None:
    if any(PLUGINS.glob("debezium-connector-jdbc/*.jar")):
        return
    print("[bench] fetching the Debezium JDBC sink plugin from Maven Central", flush=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(REPO / "bench" / "peers" / "connect" / "pom.xml"), "generate-resources"],
        check=True,
    )


# ------------------------------------------------------------------------------ runs
@dataclass
class Outcome:
    rows: int
    distinct: int
    launched: float
    first_row: float
    last_row: float
    measured: Measured
    postgres_cpu_s: float  # every server process from launch to exit, the bench's own counts left out
    kafka_cpu_s: float  # the broker, from launch to exit

    @property
    def rate(self) -> float:
        """Rows per second from launch to the last row (start-up included)."""
        return self.rows / (self.last_row - self.launched)

    @property
    def steady_rate(self) -> float:
        """Rows per second between the first and the last row."""
        return self.rows / max(self.last_row - self.first_row, 1e-9)


def row_times(database: str) -> tuple[int, int, float, float]:
    """Rows, distinct readings (sensor, timestamp), first and last commit (epoch seconds)."""
    conn = connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"""SELECT count(*), count(DISTINCT (sensor_id, "timestamp")), extract(epoch FROM min({COMMITTED})),
                           extract(epoch FROM max({COMMITTED})) FROM sensores"""
            )
            rows, distinct, first, last = cur.fetchone()  # type: ignore[misc]
        return int(rows), int(distinct), float(first or 0), float(last or 0)
    finally:
        conn.close()


def results_name(readings: int) -> str:
    """bench/results/compare.md for the routine size, compare_<N>.md beside it for another (the
    full-size run does not replace the routine table, whose latency it may skip)."""
    return "compare" if readings == DEFAULT_READINGS else f"compare_{readings}"


class RowCounter:
    """Counts a database's stored rows over one connection, and knows what counting cost the
    server: its backend's CPU, which a pipeline's PostgreSQL CPU leaves out (a count(*) of 10M
    rows keeps a core busy for a second or more). Parallel workers are off, so that the whole scan
    runs in the one backend measured."""

    def __init__(self, database: str) -> None:
        self.conn = connect(database)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SET max_parallel_workers_per_gather = 0")
            cur.execute("SELECT pg_backend_pid()")
            self.backend = int(cur.fetchone()[0])  # type: ignore[index]

    def count(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass('sensores') IS NOT NULL")
            if not cur.fetchone()[0]:  # type: ignore[index]
                return 0  # ours creates the table when it starts
            cur.execute("SELECT count(*) FROM sensores")
            return int(cur.fetchone()[0])  # type: ignore[index]

    def close(self) -> float:
        """Closes the connection; the CPU seconds its backend used (connecting included)."""
        try:
            return process_cpu_seconds(self.backend)
        finally:
            self.conn.close()


def prepare_peer_table(database: str) -> None:
    conn = connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(PEER_TABLE)
    finally:
        conn.close()


def wait_for_rows(counter: RowCounter, wanted: int, procs: list[Process], timeout: float) -> None:
    """Until ``wanted`` rows are committed. A count(*) of 10M rows takes a core for seconds, so
    the next count waits half the time the last two predict (0.25-10 s), not a fixed 0.25 s:
    one scan per 10 s far from the end, closer only near it. (PostgreSQL's
    insert statistics cost nothing but lag: a backend idle in a transaction, as Quix's sink
    leaves its connection, never reports them.) A pipeline that stops by itself at its count
    (Quix) may commit its last batch during a count, so its exit is judged by a count after it."""
    deadline = time.monotonic() + timeout
    last_rows, last_at = 0, time.monotonic()
    while time.monotonic() < deadline:
        exited = all(p.poll() is not None for p in procs)
        rows, now = counter.count(), time.monotonic()
        if rows >= wanted:
            return
        if exited:
            raise RuntimeError(
                f"pipeline exited with {[p.proc.returncode for p in procs]} after {rows:,} of {wanted:,} rows;"
                f" see {RESULTS}"
            )
        rate = (rows - last_rows) / max(now - last_at, 1e-3)
        last_rows, last_at = rows, now
        time.sleep(min(max((wanted - rows) / rate / 2 if rate > 0 else 1.0, 0.25), 10.0))
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {wanted:,} rows ({counter.count():,} stored)")


def run_pipeline(
    name: str,
    topic: str,
    readings: int,
    start: Callable[[str, str], list[Process]],
    peer_table: bool,
) -> Outcome:
    timeout = max(900.0, readings / 5_000)  # 10M: 2,000 s, time for a pipeline at 5,000 rows/s
    database = fresh_database(name.replace("-", "_")[:20])
    try:
        if peer_table:
            prepare_peer_table(database)
        server_cpu, broker_cpu = postgres_cpu_seconds(), kafka_cpu_seconds()
        counter = RowCounter(database)
        procs = start(database, f"bench-{name}-{uuid.uuid4().hex[:6]}")
        launched = min(p.started_at for p in procs)
        try:
            wait_for_rows(counter, readings, procs, timeout)
        finally:  # a pipeline that failed to get there must not go on loading the next one's machine
            for p in procs:
                if p.poll() is None:
                    p.proc.send_signal(signal.SIGTERM)
            results = [p.wait() for p in procs]
            counting_cpu = counter.close()
        server_cpu = postgres_cpu_seconds() - server_cpu - counting_cpu
        broker_cpu = kafka_cpu_seconds() - broker_cpu
        rows, distinct, first, last = row_times(database)
        measured = Measured(
            max(r.returncode for r in results),
            last - launched,
            sum(r.cpu_s for r in results),
            max(r.peak_rss_mb for r in results),
            launched,
        )
        return Outcome(rows, distinct, launched, first, last, measured, server_cpu, broker_cpu)
    finally:
        drop_database(database)


def ours(processes: int, topic: str, decoder: str = "native") -> Callable[[str, str], list[Process]]:
    def start(database: str, group: str) -> list[Process]:
        env = STACK.service_env(
            topic=topic, database=database, METRICS_PORT="-1", CONSUMER_GROUP=group, CONSUMER_DECODER=decoder
        )
        return [
            Process(cli("iot-consumer", "run"), env, RESULTS / f"compare-ours-{decoder}-{processes}-{i}.log")
            for i in range(processes)
        ]

    return start


def quix(topic: str, readings: int) -> Callable[[str, str], list[Process]]:
    python = install_quix()

    def start(database: str, group: str) -> list[Process]:
        workdir = WORK / "quix-state"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        args = [
            str(python),
            str(REPO / "bench" / "peers" / "quix_sink.py"),
            topic,
            group,
            database,
            str(STACK.postgres_port),
            STACK.pg_user,
            STACK.pg_password,
            str(readings),
            "30",
        ]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = Process(args, env, RESULTS / "compare-quix.log")  # one log per run: the last kept
        return [proc]

    return start


def kafka_connect(topic: str, tasks: int) -> Callable[[str, str], list[Process]]:
    install_connect_plugin()

    def start(database: str, group: str) -> list[Process]:
        work = WORK / "connect" / group
        work.mkdir(parents=True, exist_ok=True)
        replacements = {
            "@KAFKA_PORT@": str(STACK.kafka_port),
            "@WORK@": str(work),
            "@PLUGINS@": str(PLUGINS),
            "@NAME@": group,
            "@TASKS@": str(tasks),
            "@TOPIC@": topic,
            "@PG_PORT@": str(STACK.postgres_port),
            "@DATABASE@": database,
            "@PG_USER@": STACK.pg_user,
            "@PG_PASSWORD@": STACK.pg_password,
        }
        files = []
        for template in ("worker.properties", "jdbc-sink.properties"):
            text = (REPO / "bench" / "peers" / "connect" / f"{template}.template").read_text()
            for key, value in replacements.items():
                text = text.replace(key, value)
            (work / template).write_text(text)
            files.append(str(work / template))
        args = [
            "java",
            "-Xms256m",
            "-Xmx1g",
            "-cp",
            f"{KAFKA_LIBS}/*",
            f"-Dlog4j2.configurationFile={REPO / 'stack' / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={work}",
            "org.apache.kafka.connect.cli.ConnectStandalone",
            *files,
        ]
        return [Process(args, dict(os.environ), RESULTS / f"compare-connect-{tasks}.log")]

    return start


# ------------------------------------------------------------------------------ latency
Starter = Callable[[str, str, str], list[Process]]  # (topic, database, group) → processes


def measure_latency(name: str, starter: Starter, peer_table: bool, rate: int, seconds: int) -> tuple[float, float]:
    """p50/p99 of (row written − reading timestamp) in ms, at ``rate`` readings/s offered.

    The pipeline subscribes to an empty topic and has time to join before data flows.
    """
    topic = fresh_topic(f"lat_{name}")
    database = fresh_database(f"lat_{name}")
    try:
        if peer_table:
            prepare_peer_table(database)
        procs = starter(topic, database, f"lat-{name}-{uuid.uuid4().hex[:6]}")
        time.sleep(10)  # group join / JVM start before the clock starts
        total = rate * seconds
        producer = Process(
            cli("iot-producer", "--sensors", "1000", "--rate", str(rate), "--count", str(total)),
            STACK.service_env(topic=topic, database="iot", METRICS_PORT="-1"),
            RESULTS / f"latency-{name}-producer.log",
        )
        if producer.wait().returncode != 0:
            raise RuntimeError("latency producer failed")
        counter = RowCounter(database)
        try:
            wait_for_rows(counter, total, procs, 300)
        finally:  # as in run_pipeline: a pipeline that failed must not go on loading the machine
            counter.close()
            for p in procs:
                if p.poll() is None:
                    p.proc.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
        conn = connect(database)
        with conn.cursor() as cur:
            # Leave out the first 5 s of readings (first fetches, caches, JIT).
            cur.execute(
                f"""SELECT extract(epoch FROM {COMMITTED} - "timestamp") * 1000 FROM sensores
                   WHERE "timestamp" > (SELECT min("timestamp") FROM sensores) + interval '5 seconds'"""
            )
            values = sorted(float(v) for (v,) in cur.fetchall())
        conn.close()
        return statistics.median(values), values[max(int(len(values) * 0.99) - 1, 0)]
    finally:
        drop_database(database)
        drop_topic(topic)


# ------------------------------------------------------------------------------ main
Pipeline = tuple[str, str, Callable[[str], Callable[[str, str], list[Process]]], bool]


def pipelines(processes: int, readings: int) -> list[Pipeline]:
    """(label, name, topic → starter, writes the peers' table) of every pipeline compared."""
    return [
        ("iot-consumer, native decoder, 1 process", "ours-native-1", lambda t: ours(1, t, "native"), False),
        (
            f"iot-consumer, native decoder, {processes} processes",
            f"ours-native-{processes}",
            lambda t: ours(processes, t, "native"),
            False,
        ),
        ("iot-consumer, Python path, 1 process", "ours-python-1", lambda t: ours(1, t, "python"), False),
        (
            f"iot-consumer, Python path, {processes} processes",
            f"ours-python-{processes}",
            lambda t: ours(processes, t, "python"),
            False,
        ),
        (f"Quix Streams {QUIX_VERSION} PostgreSQLSink", "quix", lambda t: quix(t, readings), True),
        (
            "Kafka Connect 4.3.1 + Debezium JDBC sink 3.6.0, tasks.max=1",
            "connect-1",
            lambda t: kafka_connect(t, 1),
            True,
        ),
        (
            f"Kafka Connect 4.3.1 + Debezium JDBC sink 3.6.0, tasks.max={processes}",
            f"connect-{processes}",
            lambda t: kafka_connect(t, processes),
            True,
        ),
    ]


def cpu_per_row(runs: list[Outcome]) -> CpuPerRow:
    return CpuPerRow.median_of([(o.measured.cpu_s, o.postgres_cpu_s, o.kafka_cpu_s, o.rows) for o in runs])


def outcome_row(label: str, runs: list[Outcome], readings: int, seed_rate: float) -> list[str]:
    """Medians over the rounds; RSS the highest; every round exactly the readings, none twice."""
    rate = statistics.median(o.rate for o in runs)
    stored_once = all(o.rows == o.distinct == readings for o in runs)
    twice = max(o.rows - o.distinct for o in runs)
    cpu = cpu_per_row(runs)
    return [
        label,
        fmt(rate),
        fmt(statistics.median(o.steady_rate for o in runs)),
        f"{rate / seed_rate:.0f}×",
        fmt(cpu.client, 1),
        fmt(cpu.postgres, 1),
        fmt(cpu.broker, 1),
        fmt(max(o.measured.peak_rss_mb for o in runs)),
        "yes" if stored_once else f"**NO** (rows {min(o.rows for o in runs):,}, stored twice {twice:,})",
    ]


# Issue 27's goals besides TARGETS (× COPY text alone, per process count): N processes ≥ 4× Kafka
# Connect with tasks.max=N; a compressed topic ≥ 90 % of the uncompressed rate; consumer RSS ≤
# 150 MB; p99 ≤ 50 ms at 10,000 readings/s.
GOAL_CONNECT_FACTOR = 4.0
GOAL_COMPRESSED_SHARE = 0.9
GOAL_RSS_MB = 150.0
GOAL_P99_MS = 50.0
GOAL_LATENCY_RATE = 10_000


def goals_table(
    outcomes: dict[tuple[str, str], list[Outcome]],
    label_of: dict[str, str],
    processes: int,
    limits: dict[str, float],
    p99_ms: float | None,
    latency_rate: int,
) -> Table:
    """Issue 27's goals against this run: target, measured, met, and for each throughput goal the
    CPU a row may cost to reach it beside what a row cost, and the ceilings that follow (a target
    above a ceiling needs less CPU per row; a rate well under both waits rather than computes)."""

    def rate(kind: str, name: str) -> float:
        return statistics.median(o.rate for o in outcomes[(kind, label_of[name])])

    def verdict(met: bool) -> str:
        return "yes" if met else "**no**"

    rows: list[list[str]] = []
    counts = sorted({1, processes})
    kinds = sorted({kind for kind, _ in outcomes}, key=lambda k: k != "uncompressed")
    for kind in kinds:
        topic = "" if kind == "uncompressed" else f", {kind} topic"
        throughput_goals = [
            (
                f"{count} process{'es' if count > 1 else ''} ≥ {TARGETS[count]:g}× COPY text alone{topic}",
                f"ours-native-{count}",
                TARGETS[count] * limits["copy text"],
                count,
            )
            for count in counts
            if count in TARGETS
        ]
        connect = rate(kind, f"connect-{processes}")
        throughput_goals.append(
            (
                f"{processes} process{'es' if processes > 1 else ''} ≥ {GOAL_CONNECT_FACTOR:g}× Kafka Connect"
                f" tasks.max={processes}{topic}",
                f"ours-native-{processes}",
                GOAL_CONNECT_FACTOR * connect,
                processes,
            )
        )
        for goal, name, target, connections in throughput_goals:
            measured = rate(kind, name)
            cpu = cpu_per_row(outcomes[(kind, label_of[name])])
            rows.append(
                [
                    goal,
                    f"{fmt(target)} rows/s",
                    f"{fmt(measured)} rows/s ({measured / target:.0%})",
                    verdict(measured >= target),
                    fmt(CORES * 1e6 / target, 1),
                    f"{cpu.total:.1f} = {cpu.client:.1f} + {cpu.postgres:.1f} + {cpu.broker:.1f}",
                    fmt(cpu.cores_ceiling()),
                    fmt(cpu.backend_ceiling(connections)),
                ]
            )
    for kind in kinds[1:]:
        for count in counts:
            name = f"ours-native-{count}"
            share = rate(kind, name) / rate("uncompressed", name)
            rows.append(
                [
                    f"{kind} topic ≥ {GOAL_COMPRESSED_SHARE:.0%} of uncompressed, {count} process{'es' if count > 1 else ''}",
                    f"{GOAL_COMPRESSED_SHARE:.0%}",
                    f"{share:.0%}",
                    verdict(share >= GOAL_COMPRESSED_SHARE),
                    *["–"] * 4,
                ]
            )
    rss = max(
        o.measured.peak_rss_mb
        for (_, label), runs in outcomes.items()
        if label.startswith("iot-consumer")
        for o in runs
    )
    rows.append(
        [
            f"iot-consumer peak RSS ≤ {GOAL_RSS_MB:.0f} MB (every run)",
            f"{GOAL_RSS_MB:.0f} MB",
            f"{rss:.0f} MB",
            verdict(rss <= GOAL_RSS_MB),
            *["–"] * 4,
        ]
    )
    p99_goal = f"p99 ≤ {GOAL_P99_MS:.0f} ms at {GOAL_LATENCY_RATE:,} readings/s, {processes} processes"
    if p99_ms is None:
        rows.append([p99_goal, f"{GOAL_P99_MS:.0f} ms", "not measured (--skip-latency)", "–", *["–"] * 4])
    else:
        at_goal_rate = latency_rate == GOAL_LATENCY_RATE
        rows.append(
            [
                p99_goal,
                f"{GOAL_P99_MS:.0f} ms",
                f"{p99_ms:.0f} ms" + ("" if at_goal_rate else f" at {latency_rate:,}/s"),
                verdict(p99_ms <= GOAL_P99_MS) if at_goal_rate else "– (another rate)",
                *["–"] * 4,
            ]
        )
    notes = [
        f"Targets: issue 27's, × this run's own limits and peers above (COPY text alone {fmt(limits['copy text'])} rows/s).",
        f"CPU per row, µs: the target's allowance is {CORES} cores ÷ the target; this run's is its processes + PostgreSQL + the broker (medians, the table above).",
        f"Ceilings, rows/s: {CORES} cores ÷ this run's CPU per row; PostgreSQL's work of each process's one connection on one core (a low bound: the server's CPU also holds its WAL writer and checkpointer). A target above a ceiling cannot be met here without less CPU per row; a rate well under both waits rather than computes (where: bench/results/consumer_profile.md).",
    ]
    notes.append("Where the latency goes, Kafka alone beside iot-consumer: bench/results/latency_profile.md.")
    for kind in kinds:
        target = GOAL_CONNECT_FACTOR * rate(kind, f"connect-{processes}")
        if target > limits["copy binary"]:
            notes.append(
                f"{GOAL_CONNECT_FACTOR:g}× Connect on the {kind} topic is {fmt(target)} rows/s:"
                f" {target / limits['copy binary']:.1f}× PostgreSQL's own COPY BINARY of the same rows alone on one connection ({fmt(limits['copy binary'])} rows/s)."
            )
    return Table(
        "Issue 27's goals in this run",
        [
            "goal",
            "target",
            "this run",
            "met",
            "CPU µs per row the target allows",
            "CPU µs per row: processes + PostgreSQL + broker",
            f"ceiling: {CORES} cores",
            "ceiling: PostgreSQL, 1 core per connection",
        ],
        rows,
        notes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--readings", type=int, default=DEFAULT_READINGS, help="per topic (10000000: the full-size run)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every pipeline (medians)")
    parser.add_argument(
        "--codec", default="lz4", choices=["gzip", "snappy", "lz4", "zstd", "none"], help="the compressed topic's codec"
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="iot-consumer processes and Connect tasks for the N-way runs"
    )
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--latency-rate", type=int, default=10_000)
    parser.add_argument("--latency-seconds", type=int, default=30)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    if args.readings < 1 or args.rounds < 1 or args.processes < 1:
        parser.error("--readings, --rounds and --processes must be at least 1")
    require_commit_timestamps()
    RESULTS.mkdir(parents=True, exist_ok=True)
    install_quix()
    install_connect_plugin()
    n = args.readings
    compared = pipelines(args.processes, n)

    topics = {"uncompressed": fresh_topic("compare")}
    if args.codec != "none":
        topics[args.codec] = fresh_topic(f"compare_{args.codec}")
    fill_rates: dict[str, float] = {}
    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    try:
        for kind, topic in topics.items():
            extra = () if kind == "uncompressed" else ("--compression", kind)
            fill_rates[kind] = prefill(topic, n, extra=extra)
        for _round in range(args.rounds):  # interleaved: drift and a warming machine hit every pipeline alike
            for kind, topic in topics.items():
                for label, name, starter, peer in compared:
                    runs = outcomes.setdefault((kind, label), [])
                    runs.append(run_pipeline(f"{name}-{kind}"[:20], topic, n, starter(topic), peer_table=peer))
        seed_rate, seed, seed_rows = run_seed(topics["uncompressed"], n, args.baseline_seconds)
        kafka_only_broker_cpu = kafka_cpu_seconds()
        kafka_rate, kafka_only = run_kafka_only(topics["uncompressed"], n)
        kafka_only_broker_cpu = kafka_cpu_seconds() - kafka_only_broker_cpu
        copy_rate, copy_server_cpu = run_copy_only(n)
        copy_binary_rate, copy_binary_server_cpu = run_copy_only(n, binary=True)
    finally:
        for topic in topics.values():
            drop_topic(topic)

    rows = [outcome_row(label, outcomes[("uncompressed", label)], n, seed_rate) for label, _, _, _ in compared]
    rows.append(
        [
            "seed-style: kafka-python + INSERT + COMMIT per message",
            fmt(seed_rate),
            fmt(seed_rate),
            "1×",
            fmt(seed.cpu_s / seed_rows * 1e6, 1),
            "–",
            "–",
            fmt(seed.peak_rss_mb),
            f"{seed_rows:,} rows in {args.baseline_seconds:.0f} s",
        ]
    )
    rows.append(
        [
            "limit: kafka-python reading, no database",
            fmt(kafka_rate),
            "–",
            f"{kafka_rate / seed_rate:.0f}×",
            fmt(kafka_only.cpu_s / n * 1e6, 1),
            "–",
            fmt(kafka_only_broker_cpu / n * 1e6, 1),
            fmt(kafka_only.peak_rss_mb),
            f"{n:,} read",
        ]
    )
    for label, rate, server_cpu in (
        ("text", copy_rate, copy_server_cpu),
        ("BINARY", copy_binary_rate, copy_binary_server_cpu),
    ):
        rows.append(
            [
                f"limit: PostgreSQL COPY {label} alone (our table, 10k rows/tx)",
                fmt(rate),
                "–",
                f"{rate / seed_rate:.0f}×",
                "–",
                fmt(server_cpu / n * 1e6, 1),
                "–",
                "–",
                "–",
            ]
        )
    columns = [
        "pipeline",
        "rows/s (launch → last commit)",
        "rows/s (first → last commit)",
        "vs seed",
        "CPU s per 1M rows: its processes",
        "PostgreSQL",
        "Kafka broker",
        "peak RSS MB",
        "every reading once",
    ]
    throughput = Table(
        f"Kafka → PostgreSQL, {n:,} readings (6 partitions), same topic data, same columns",
        columns,
        rows,
        [
            f"Medians of {args.rounds} interleaved rounds (every pipeline once per round); rows/s from the commit timestamps of the transactions that wrote the rows (track_commit_timestamp), the same clock for every pipeline.",
            f"Topic prefilled once by 2 iot-producer processes (acks=all) at {fmt(fill_rates['uncompressed'])} readings/s; every pipeline reads it from the beginning with a new group into a new database.",
            "Peers write (sensor_id uuid, timestamp timestamptz, temperatura, umidade) with an index on (sensor_id, timestamp); ours also stores partition/offset, partitions by day, rolls up per minute and hour, and stores positions in the same transaction.",
            "Every reading once: each round stored exactly the topic's readings, no (sensor_id, timestamp) twice.",
            f"Quix: commit_interval=1 s (its batch), include_metadata=False, schema_auto_update=False. Connect: standalone, tasks.max=1 and {args.processes} (one per iot-consumer process of the N-way run), batch.size=5000 with consumer.max.poll.records=5000, dialect.postgres.unnest.insert.enabled=true, JsonConverter with schema.content (no envelopes). Debezium 3.6.1.Final is not on Maven Central; 3.6.0.Final is the newest there.",
            f"CPU per 1M rows, medians: the pipeline's own processes (JVM for Connect); every PostgreSQL server process (backends, WAL writer, checkpointer, autovacuum) and the broker's JVM, from launch to exit, less the bench's own row counts' backend; all share the same {CORES} cores. RSS: the pipeline's own processes.",
        ],
    )
    tables = [throughput]
    for kind in topics:
        if kind == "uncompressed":
            continue
        plain = {
            label: statistics.median(o.rate for o in outcomes[("uncompressed", label)]) for label, _, _, _ in compared
        }
        compressed_rows = []
        for label, _, _, _ in compared:
            row = outcome_row(label, outcomes[(kind, label)], n, seed_rate)
            rate = statistics.median(o.rate for o in outcomes[(kind, label)])
            compressed_rows.append([*row[:3], f"{rate / plain[label]:.0%}", *row[4:]])
        tables.append(
            Table(
                f"The same {n:,} readings from a {kind}-compressed topic",
                [*columns[:3], "of the uncompressed rate", *columns[4:]],
                compressed_rows,
                [
                    f"Prefilled by the same producers with --compression {kind} at {fmt(fill_rates[kind])} readings/s; the same rounds as above (interleaved with them)."
                ],
            )
        )
    ours_p99: float | None = None
    if not args.skip_latency:
        total = args.latency_rate * args.latency_seconds
        starters: list[tuple[str, str, Starter, bool]] = [
            (
                f"iot-consumer, native decoder, {args.processes} processes",
                "ours",
                lambda t, d, g: ours(args.processes, t, "native")(d, g),
                False,
            ),
            (
                f"iot-consumer, Python path, {args.processes} processes",
                "ours-python",
                lambda t, d, g: ours(args.processes, t, "python")(d, g),
                False,
            ),
            (f"Quix Streams {QUIX_VERSION}", "quix", lambda t, d, g: quix(t, total)(d, g), True),
            ("Kafka Connect + Debezium JDBC sink", "connect", lambda t, d, g: kafka_connect(t, 1)(d, g), True),
        ]
        lat_rows = []
        for lat_label, lat_name, lat_starter, lat_peer in starters:
            p50, p99 = measure_latency(lat_name, lat_starter, lat_peer, args.latency_rate, args.latency_seconds)
            lat_rows.append([lat_label, fmt(p50), fmt(p99)])
            if lat_name == "ours":
                ours_p99 = p99
        tables.append(
            Table(
                f"End-to-end latency at {args.latency_rate:,} readings/s offered for {args.latency_seconds} s",
                ["pipeline", "p50 ms", "p99 ms"],
                lat_rows,
                [
                    "Latency = the commit of the transaction that wrote the row (every pipeline alike) − the reading's timestamp; first 5 s left out.",
                    "Ours runs with its defaults (poll timeout 500 ms, batches up to 10,000); Quix checkpoints every 1 s.",
                ],
            )
        )
    tables.append(
        goals_table(
            outcomes,
            {name: label for label, name, _, _ in compared},
            args.processes,
            {"copy text": copy_rate, "copy binary": copy_binary_rate},
            ours_p99,
            args.latency_rate,
        )
    )
    command = f"python -m bench.compare --readings {n} --rounds {args.rounds} --codec {args.codec}"
    command += " --skip-latency" if args.skip_latency else ""
    reproduce = f"make bench (or {command})" if results_name(n) == "compare" else command
    save(
        results_name(n),
        tables,
        header=f"Reproduce: {reproduce}.\n",
        script="compare",
    )


if __name__ == "__main__":
    main()
