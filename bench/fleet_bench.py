"""How the consumer's cost grows with the fleet: the same number of readings (--rows) spread
over fleets of increasing size - 1,000 sensors send 3,000 readings each, 1,000,000 send 3 - and
then the whole fleet goes quiet; each fleet consumed by one iot-consumer (native decoder,
alerts on: the defaults) on a fresh database.

Per fleet: rows/s, CPU µs per row, the consumer's own peak RSS, the alert engine's time per
batch and per idle silence sweep (iot_consumer_alert_evaluation_duration_seconds, scraped until
it exits), the alerts it opened (silence alerts among them) before it went idle. The consumer
exits once idle for --idle seconds: long
enough for the silence rule to see the whole fleet fall quiet (its default is 60 s past a
sensor's last reading, judged on the partition clocks, which move with the wall clock once the
topic is idle).

Then, per fleet, where the alert engine's memory goes (in this process, no consumer around it):
the fleet becomes known through the engine's own evaluate/apply, falls silent past the rule,
and every structure holding sensors is sized with sys.getsizeof beside the RSS it added - the
profile behind the RSS goal.

usage: python -m bench.fleet_bench [--fleets 1000,100000,1000000] [--rows 3000000] [--idle 75] [--memory-only]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import sys
import threading
import time
import urllib.request
import uuid

import psycopg2.extensions
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
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
    prefill,
    save,
)
from iot_consumer.alerts.engine import AlertEngine
from iot_consumer.alerts.rules import DEFAULT_RULES_TOML, parse_rules
from iot_consumer.summary import PythonSummary, from_micros
from tests.helpers import free_port

EVALUATION = "iot_consumer_alert_evaluation_duration_seconds"
# where a batch's time goes (the profile of each fleet): histogram family -> column
BATCH_PARTS = {
    "iot_consumer_batch_duration_seconds": "batch",
    "iot_consumer_copy_duration_seconds": "copy",
    "iot_consumer_rollup_duration_seconds": "rollup",
}


class MetricsWatcher:
    """The consumer's /metrics, fetched every half second until it exits: the last answer."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.last = ""
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.5):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    self.last = answer.read().decode()
            except OSError:
                continue  # not up yet, or gone

    def stop(self) -> dict[str, tuple[float, float]]:
        """kind -> (observations, seconds in total): the alert engine's kinds (batch, idle) and
        the batch's parts (write_batch, write_copy, write_rollup)."""
        self.stopped.set()
        self.thread.join(timeout=5)
        found: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(self.last):
            if family.name == EVALUATION:
                kind = None
            elif family.name in BATCH_PARTS:
                kind = "write_" + BATCH_PARTS[family.name]
            else:
                continue
            for sample in family.samples:
                figures = found.setdefault(kind or sample.labels.get("kind", ""), [0.0, 0.0])
                if sample.name.endswith("_count"):
                    figures[0] = sample.value
                elif sample.name.endswith("_sum"):
                    figures[1] = sample.value
        return {kind: (count, total) for kind, (count, total) in found.items()}


def consume_fleet(topic: str, readings: int, idle_s: float, label: str) -> dict[str, float]:
    """One consumer until idle: throughput, CPU, peak RSS, alert engine time, alerts opened."""
    database = fresh_database("fleet")
    port = free_port()
    env = STACK.service_env(
        topic=topic, database=database, METRICS_PORT=str(port), CONSUMER_GROUP=f"bench-{uuid.uuid4().hex[:8]}"
    )
    log = RESULTS / f"fleet-{label}.log"
    try:
        process = Process(cli("iot-consumer", "run", "--exit-when-idle", str(idle_s)), env, log)
        watcher = MetricsWatcher(port)
        result = process.wait()
        evaluations = watcher.stop()
        if result.returncode:
            raise RuntimeError(f"iot-consumer exited {result.returncode}; see {log}")
        conn = connect(database)
        try:
            figures = _stored(conn)
        finally:
            conn.close()
        if figures["rows"] != readings:
            raise RuntimeError(f"expected {readings} rows, found {figures['rows']:.0f}")
        figures["rows_per_s"] = readings / (figures["last_commit"] - process.started_at)
        figures["cpu_us_per_row"] = result.cpu_s / readings * 1e6
        figures["peak_rss_mb"] = result.peak_rss_mb
        for kind in ("batch", "idle", "write_batch", "write_copy", "write_rollup"):
            count, total = evaluations.get(kind, (0.0, 0.0))
            figures[f"{kind}_evaluations"] = count
            figures[f"{kind}_ms"] = total / count * 1e3 if count else float("nan")
        return figures
    finally:
        drop_database(database)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def engine_memory(fleet: int, partitions: int = 6, batch: int = 10_000) -> dict[str, float]:
    """The alert engine alone with ``fleet`` known sensors, then after all of them fell silent
    (default rules: storms): bytes per sensor in each structure that holds sensors, and the RSS
    the engine added (what getsizeof does not see is the allocator's: free lists, fragments)."""
    gc.collect()
    before = _rss_mb()
    engine = AlertEngine(parse_rules(DEFAULT_RULES_TOML, "default rules"))
    heard_us = int(time.time() * 1e6) - 3_600_000_000  # an hour ago: past every silence limit
    for start in range(0, fleet, batch):
        summary = PythonSummary()
        for number in range(start, min(fleet, start + batch)):
            sensor = str(uuid.UUID(int=0x4000_8000_0000_0000_0000 + number))
            summary.add_reading(number % partitions, number, sensor, heard_us, 25.0, 50.0)
        engine.apply(engine.evaluate(summary))
    known_rss = _rss_mb() - before
    wheels = 0
    for wheel in [*engine._wheels, engine._forget_wheel]:
        for buckets in wheel._buckets.values():
            wheels += sys.getsizeof(buckets) + sum(sys.getsizeof(b) for b in buckets.values())
    clocks = dict.fromkeys(range(partitions), from_micros(heard_us + 3_600_000_000))
    engine.apply(engine.evaluate_clock(clocks))
    gc.collect()
    silent_rss = _rss_mb() - before
    packed = engine.last_seen.packed
    members = sum(sys.getsizeof(m) for rule in engine._members for m in rule.values())
    figures = {
        "known_rss": known_rss,
        "silent_rss": silent_rss,
        "ids": sum(sys.getsizeof(sensor) for sensor in packed),
        "ints": sum(sys.getsizeof(value) for value in packed.values()),
        "table": sys.getsizeof(packed),
        "wheels": float(wheels),
        "members": float(members),
        "storms": float(sum(1 for state in engine.states.values() if state.is_storm)),
        "states": float(len(engine.states)),
    }
    del engine, packed
    gc.collect()
    return figures


def memory_row(fleet: int) -> list[str]:
    # a fresh interpreter per fleet: memory another fleet freed would hide this one's RSS
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        m = pool.apply(engine_memory, (fleet,))
    per = {k: m[k] / fleet for k in ("ids", "ints", "table", "wheels", "members")}
    seen = sum(per.values())
    return [
        f"{fleet:,}",
        fmt(m["known_rss"]),
        fmt(m["silent_rss"]),
        fmt(m["silent_rss"] * 1024 * 1024 / fleet),
        fmt(per["ids"]),
        fmt(per["ints"]),
        fmt(per["table"]),
        fmt(per["wheels"]),
        fmt(per["members"]),
        fmt(m["silent_rss"] * 1024 * 1024 / fleet - seen),
        f"{m['storms']:,.0f} storms, {m['states'] - m['storms']:,.0f} other",
    ]


def memory_table(fleets: list[int]) -> Table:
    rows = []
    for fleet in fleets:
        rows.append(memory_row(fleet))
        print(rows[-1], flush=True)
    return Table(
        "Where the alert engine's memory goes (the engine alone, known fleet, then all of it silent)",
        [
            "known sensors",
            "RSS added MB: known",
            "… then silent",
            "B per sensor (RSS)",
            "id str",
            "packed int",
            "last-seen dict",
            "wheels (silence, forget)",
            "storm members",
            "allocator, rest",
            "alert states",
        ],
        rows,
        [
            "In the bench process: the engine's own evaluate/apply over 10,000-reading summaries on 6 partitions,"
            " then one idle sweep an hour later (default rules: the silence storms open, their members held).",
            "B per sensor by structure = sys.getsizeof of what holds sensors ÷ sensors; 'allocator, rest' is the"
            " RSS per sensor that no structure accounts for (pymalloc pools, freed batch objects not returned);"
            " the wheel is sized while the fleet is known (the sweep takes its entries), the storm members once"
            " it is silent.",
            "A consumer adds this to its ~120 MB without a fleet (the 1,000-sensor row above).",
        ],
    )


def _stored(conn: psycopg2.extensions.connection) -> dict[str, float]:
    with conn.cursor() as cur:
        cur.execute(
            """SELECT (SELECT count(*) FROM sensores),
                      (SELECT extract(epoch FROM max(ingested_at)) FROM sensores),
                      (SELECT count(*) FROM alertas),
                      (SELECT count(*) FROM alertas WHERE rule = 'sensor_silencioso'),
                      (SELECT count(*) FROM alertas WHERE rule = 'sensor_silencioso:storm')"""
        )
        rows, last, alerts, silence, storms = cur.fetchone()  # type: ignore[misc]
    return {
        "rows": float(rows),
        "last_commit": float(last),
        "alerts": float(alerts),
        "silence": float(silence),
        "storms": float(storms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleets", default="1000,100000,1000000", help="comma-separated fleet sizes")
    parser.add_argument("--rows", type=int, default=3_000_000, help="readings per fleet (the same for every fleet)")
    parser.add_argument("--idle", type=float, default=75.0, help="seconds idle before the consumer exits")
    parser.add_argument("--memory-only", action="store_true", help="only the engine's memory profile (seconds)")
    args = parser.parse_args()
    fleets = [int(size) for size in args.fleets.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    memory = memory_table(fleets)
    if args.memory_only:
        print(memory.markdown())
        return
    rows: list[list[str]] = []
    baseline: float | None = None
    for fleet in fleets:
        per_sensor = max(1, args.rows // fleet)
        readings = fleet * per_sensor
        topic = fresh_topic("fleet")
        try:
            prefill(topic, readings, sensors=fleet, processes=2 if fleet >= 2 else 1)
            figures = consume_fleet(topic, readings, args.idle, str(fleet))
        finally:
            drop_topic(topic)
        baseline = baseline or figures["rows_per_s"]
        rows.append(
            [
                f"{fleet:,}",
                f"{readings:,} ({per_sensor:,} each)",
                fmt(figures["rows_per_s"]),
                f"{figures['rows_per_s'] / baseline:.2f}×",
                fmt(figures["cpu_us_per_row"], 1),
                fmt(figures["peak_rss_mb"]),
                f"{figures['write_batch_ms']:.1f} / {figures['write_copy_ms']:.1f} / {figures['write_rollup_ms']:.1f}",
                f"{figures['batch_ms']:.2f} ({figures['batch_evaluations']:,.0f})",
                f"{figures['idle_ms']:.2f} ({figures['idle_evaluations']:,.0f})",
                f"{figures['alerts']:,.0f} ({figures['silence']:,.0f} / {figures['storms']:,.0f})",
            ]
        )
        print(rows[-1], flush=True)
    table = Table(
        f"One iot-consumer by fleet size ({args.rows:,} readings each, then the fleet falls silent)",
        [
            "distinct sensors",
            "rows",
            "rows/s",
            f"÷ {fleets[0]:,}-sensor rows/s",
            "CPU µs per row",
            "peak RSS MB",
            "ms per batch: written / COPY / rollups",
            "alert ms per batch (batches)",
            "alert ms per idle sweep (sweeps)",
            "alerts opened (silence / storm)",
        ],
        rows,
        [
            "Defaults: native decoder, writer thread, built-in alert rules; one process, fresh database per fleet.",
            "rows/s = rows ÷ (last commit − process launch); CPU and peak RSS are the consumer's own (tests/measure.py).",
            "ms per batch (the profile): the write's whole transaction, its COPY of the rows and its rollup upserts"
            " (iot_consumer_batch/copy/rollup_duration_seconds); the alert engine's time is apart, before the write.",
            f"The consumer exits after {args.idle:.0f} s idle, time for the silence rule to judge the quiet fleet.",
            "Storm: one alert per partition when a fifth of its fleet falls silent together (the default rule).",
            "Goal (issue 24): 1,000,000 sensors at ≥ 50 % of the 1,000-sensor rows/s with RSS ≤ 256 MB.",
            "Reproduce: make bench-fleet (python -m bench.fleet_bench --fleets ...).",
        ],
    )
    save("fleet_bench", [table, memory])


if __name__ == "__main__":
    main()
