"""Shared plumbing for the benchmarks: fresh topics and databases, measured child processes,
and result tables printed and saved under bench/results/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from tests.helpers import BIN, MEASURE, Stack, create_topic, delete_topic, end_offsets

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
STACK = Stack.from_env(REPO)


def machine() -> str:
    """One line describing where the numbers come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, Python {platform.python_version()}, Kafka 4.3.1 (local, KRaft), PostgreSQL {pg_version()}"


def pg_version() -> str:
    conn = STACK.admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            row = cur.fetchone()
        return str(row[0]) if row else "?"
    finally:
        conn.close()


@dataclass
class Measured:
    """A finished child process: wall time, CPU (user+sys) and peak RSS, from wait4()."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    started_at: float  # time.time() at launch


class Process:
    """A child process measured by tests/measure.py: its own CPU and peak RSS, not this
    benchmark's (a wait4() here would count this process's memory as the child's)."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.args = list(args)
        self.log = log
        self._report = log.with_name(f".{log.name}.{uuid.uuid4().hex[:8]}.usage.json")
        self._log_handle = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(MEASURE), str(self._report), "--", *self.args],
            env=env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )
        self._result: Measured | None = None

    def _reaped(self, status: int, usage: resource.struct_rusage) -> Measured:
        del usage  # the launcher's, not the command's
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._log_handle.close()
        figures = json.loads(self._report.read_text()) if self._report.exists() else {}
        self._report.unlink(missing_ok=True)
        self._result = Measured(
            self.proc.returncode,
            time.perf_counter() - self._t0,
            float(figures.get("cpu_s", float("nan"))),
            float(figures.get("peak_rss_kb", float("nan"))) / 1024,
            self.started_at,
        )
        return self._result

    def poll(self) -> int | None:
        """Exit code if finished (reaping it with its resource usage), else None."""
        if self._result is not None:
            return self._result.returncode
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return None
        return self._reaped(status, usage).returncode

    def wait(self) -> Measured:
        if self._result is not None:
            return self._result
        _, status, usage = os.wait4(self.proc.pid, 0)
        return self._reaped(status, usage)


def cli(name: str, *args: str) -> list[str]:
    return [str(BIN / name), *args]


def fresh_topic(prefix: str, partitions: int = 6) -> str:
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    create_topic(STACK.bootstrap, name, partitions)
    return name


def drop_topic(name: str) -> None:
    delete_topic(STACK.bootstrap, name)


# When a row became visible: the commit of the transaction that wrote it (not a column a
# pipeline fills in itself, which would be its transaction's start for one and each row's own
# clock for another).
COMMITTED = "pg_xact_commit_timestamp(xmin)"


def require_commit_timestamps() -> None:
    conn = connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW track_commit_timestamp")
            on = cur.fetchone()[0] == "on"  # type: ignore[index]
    finally:
        conn.close()
    if not on:
        sys.exit(
            "bench.compare times rows by their commit: PostgreSQL needs track_commit_timestamp = on "
            "(stack/stack.sh sets it; restart the server: stack/stack.sh restart postgres)"
        )


def postgres_cpu_seconds() -> float:
    """CPU seconds (user + system) the stack's PostgreSQL server has used so far: the postmaster,
    its live processes, and the backends it reaped (its children's times). Differences of two
    readings are what a run cost the server (backends of connections that came and went
    included; autovacuum and the checkpointer too, alike for every run)."""
    pid_file = (STACK.stack_dir / "postgres").resolve() / "data" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    fields = _stat(postmaster)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat(int(entry.name))
        except OSError:
            continue  # gone meanwhile: counted in the postmaster's children's times
        if int(child[1]) == postmaster:  # field 4: the parent
            total += int(child[11]) + int(child[12])
    return total / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (field 3, the state, is [0])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) one live process has used so far, its threads included."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kafka_cpu_seconds() -> float:
    """CPU seconds (user + system) the stack's Kafka broker(s) have used so far (every node whose
    pid file the stack wrote, its threads included); differences are what a run cost the broker."""
    kafka = (STACK.stack_dir / "kafka").resolve()
    total, nodes = 0.0, 0
    for pid_file in [kafka / "kafka.pid", *sorted(kafka.glob("node-*/kafka.pid"))]:
        try:
            total += process_cpu_seconds(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue  # no such node, or not running
        nodes += 1
    if not nodes:
        raise RuntimeError(f"no running Kafka node has a pid file under {kafka} (make stack-up)")
    return total


CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class CpuPerRow:
    """CPU µs one stored row cost: the pipeline's own processes, every PostgreSQL server process
    (backends, WAL writer, checkpointer, autovacuum), the Kafka broker; and the rows/s ceilings
    that follow on this machine."""

    client: float
    postgres: float
    broker: float

    @classmethod
    def median_of(cls, runs: Sequence[tuple[float, float, float, int]]) -> CpuPerRow:
        """Each part's median over runs of (client s, PostgreSQL s, broker s, rows stored)."""

        def median_us(part: int) -> float:
            return statistics.median(run[part] / max(run[3], 1) for run in runs) * 1e6

        return cls(median_us(0), median_us(1), median_us(2))

    @property
    def total(self) -> float:
        return self.client + self.postgres + self.broker

    def cores_ceiling(self) -> float:
        """Rows/s if every core of the machine did this work and nothing else."""
        return CORES * 1e6 / self.total

    def backend_ceiling(self, connections: int) -> float:
        """Rows/s if the server work of each connection filled one core (a backend is one
        process); a low bound, as the server's CPU also holds its WAL writer and checkpointer."""
        return connections * 1e6 / self.postgres


def fresh_database(prefix: str) -> str:
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    admin = STACK.admin_connection()
    try:
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(STACK.pg_user))
            )
    finally:
        admin.close()
    return name


def drop_database(name: str) -> None:
    admin = STACK.admin_connection()
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


def connect(database: str) -> psycopg2.extensions.connection:
    return STACK.connect(database)


def topic_size(topic: str) -> int:
    return sum(end_offsets(STACK.bootstrap, topic).values())


def prefill(
    topic: str,
    readings: int,
    processes: int = 2,
    log_dir: Path | None = None,
    extra: Sequence[str] = (),
    sensors: int = 2000,
) -> float:
    """Fill ``topic`` with ``readings`` simulated readings (acks=all) of ``sensors`` distinct
    sensors (split between the processes, each its own seed), using several producer processes;
    returns readings/s."""
    log_dir = log_dir or RESULTS
    env = STACK.service_env(topic=topic, database="iot", METRICS_PORT="-1")
    share = [readings // processes + (1 if i < readings % processes else 0) for i in range(processes)]
    started = time.perf_counter()
    procs = [
        Process(
            cli(
                "iot-producer",
                *("--sensors", str(max(1, sensors // processes)), "--count", str(n), "--max-rate"),
                *("--seed", str(100 + i), *extra),
            ),
            env,
            log_dir / f"prefill-{i}.log",
        )
        for i, n in enumerate(share)
    ]
    results = [p.wait() for p in procs]
    elapsed = time.perf_counter() - started
    if any(r.returncode for r in results):
        raise RuntimeError(f"prefill failed: {[r.returncode for r in results]}")
    if topic_size(topic) != readings:
        raise RuntimeError(f"prefill: topic holds {topic_size(topic)} readings, expected {readings}")
    return readings / elapsed


@dataclass
class ConsumerRun:
    rows_per_s: float  # rows ÷ (last commit − process launch)
    cpu_us_per_row: float  # user + sys of the whole process ÷ rows
    database: str


def consume_once(
    topic: str, readings: int, log: Path, *flags: str, inspect: Callable[[psycopg2.extensions.connection], T]
) -> tuple[ConsumerRun, T]:
    """Run one ``iot-consumer`` in bounded mode on a fresh database until ``topic`` is consumed,
    check it wrote ``readings`` rows, look at the database with ``inspect``, drop it. Timed to
    the last commit (track_commit_timestamp)."""
    require_commit_timestamps()
    database = fresh_database("consume")
    env = STACK.service_env(
        topic=topic, database=database, METRICS_PORT="-1", CONSUMER_GROUP=f"bench-{uuid.uuid4().hex[:8]}"
    )
    try:
        process = Process(cli("iot-consumer", "run", "--exit-when-idle", "3", *flags), env, log)
        result = process.wait()
        if result.returncode:
            raise RuntimeError(f"iot-consumer {' '.join(flags)} exited {result.returncode}; see {log}")
        conn = connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*), extract(epoch FROM max({COMMITTED})) FROM sensores")
                rows, last = cur.fetchone()  # type: ignore[misc]
            if rows != readings:
                raise RuntimeError(f"expected {readings} rows, found {rows}")
            seen = inspect(conn)
        finally:
            conn.close()
        run = ConsumerRun(rows / (float(last) - process.started_at), result.cpu_s / rows * 1e6, database)
        return run, seen
    finally:
        drop_database(database)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str]

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def save(name: str, tables: list[Table], header: str = "", script: str | None = None) -> Path:
    """Print the tables and save them as bench/results/<name>.md (+ a timestamped copy and JSON);
    ``script`` names the bench/ script when it is not ``name``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    text = f"<!-- generated by bench/{script or name}.py at {stamp} -->\n" + (header + "\n" if header else "")
    text += f"Machine: {machine()}\n\n" + "\n".join(t.markdown() for t in tables)
    print(text)
    latest = RESULTS / f"{name}.md"
    latest.write_text(text)
    (RESULTS / "history").mkdir(exist_ok=True)
    (RESULTS / "history" / f"{name}-{stamp}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps([t.__dict__ for t in tables], indent=2))
    return latest


def readings_and_rounds(doc: str | None, readings: int = 200_000, rounds: int = 3) -> argparse.Namespace:
    """The usual benchmark arguments (--readings, --rounds); makes bench/results/."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=readings)
    parser.add_argument("--rounds", type=int, default=rounds)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    return args


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def self_time_by_component(
    stats: pstats.Stats, components: list[tuple[str, tuple[str, ...]]]
) -> tuple[dict[str, float], float, float]:
    """cProfile self time grouped by component (first matching path/name fragment wins):
    (seconds per component, seconds matching none, total seconds)."""
    shares = dict.fromkeys((name for name, _ in components), 0.0)
    other = total = 0.0
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{filename}:{func}"  # built-ins have filename '~': classified by name
        total += tottime
        for name, fragments in components:
            if any(fragment in where for fragment in fragments):
                shares[name] += tottime
                break
        else:
            other += tottime
    return shares, other, total
