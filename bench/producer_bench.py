"""Producer throughput with acks=all + idempotence, and where the time goes.

Runs iot-producer as fast as possible (--max-rate) with 1 and with N processes on the same
machine, counting only readings the broker acknowledged, then profiles one in-process run
with cProfile and groups the time by component.

usage: python -m bench.producer_bench [--readings 200000] [--processes 1,2]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

from bench.common import (
    RESULTS,
    STACK,
    Process,
    Table,
    cli,
    drop_topic,
    fmt,
    fresh_topic,
    save,
    self_time_by_component,
    topic_size,
)
from iot_common.lifecycle import StopFlag
from iot_common.settings import KafkaSettings
from iot_producer.publisher import ReadingPublisher
from iot_producer.runner import Pacing, run
from iot_producer.simulation import SensorFleet

# Which files' functions belong to which part of the work (by path fragment).
COMPONENTS = [
    (
        "kafka-python: partitioning, batching, record encoding (send)",
        ("kafka/producer", "kafka/record", "kafka/partitioner", "kafka/cluster", "kafka/future"),
    ),
    (
        "kafka-python: network I/O (socket sends from the caller's thread)",
        ("kafka/net", "kafka/protocol", "selectors", "socket"),
    ),
    ("waiting on locks shared with kafka-python's I/O thread", ("acquire",)),
    ("simulation: values, anomalies, timestamps", ("iot_producer/simulation", "random.py", "builtins.round")),
    ("serialisation: SensorReading → JSON", ("iot_common/schema", "uuid.py", "orjson", "isoformat")),
    ("iot-producer: pacing loop, hand-off, ack callbacks", ("iot_producer/runner", "iot_producer/publisher")),
    ("metrics (prometheus-client)", ("prometheus_client",)),
]


def measure_processes(readings: int, processes: int) -> tuple[float, float]:
    topic = fresh_topic("producer")
    try:
        env = STACK.service_env(topic=topic, database="iot", METRICS_PORT="-1")
        share = readings // processes
        started = time.perf_counter()
        procs = [
            Process(
                cli("iot-producer", "--sensors", "1000", "--count", str(share), "--max-rate", "--seed", str(i)),
                env,
                RESULTS / f"producer-{processes}-{i}.log",
            )
            for i in range(processes)
        ]
        results = [p.wait() for p in procs]
        elapsed = time.perf_counter() - started
        assert all(r.returncode == 0 for r in results), [r.returncode for r in results]
        acked = topic_size(topic)
        assert acked == share * processes, (acked, share * processes)
        return acked / elapsed, sum(r.cpu_s for r in results) / acked * 1e6
    finally:
        drop_topic(topic)


def profile(readings: int) -> tuple[list[list[str]], float]:
    topic = fresh_topic("producer_profile")
    try:
        os.environ["KAFKA_TOPIC"] = topic
        publisher = ReadingPublisher(KafkaSettings(bootstrap_servers=STACK.bootstrap, topic=topic))
        fleet = SensorFleet(1000, seed=1)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        run(fleet, publisher, Pacing(rate=None, count=readings), StopFlag())
        publisher.close()
        profiler.disable()
        elapsed = time.perf_counter() - started
    finally:
        drop_topic(topic)
    stats = pstats.Stats(profiler)
    shares, other, total = self_time_by_component(stats, COMPONENTS)
    rows = [[name, f"{100 * t / total:.0f} %"] for name, t in sorted(shares.items(), key=lambda kv: -kv[1])]
    rows.append(["other (interpreter built-ins: len, isinstance, locks, …)", f"{100 * other / total:.0f} %"])
    stats.sort_stats("tottime").dump_stats(str(RESULTS / "producer_profile.pstats"))
    return rows, readings / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--processes", default="1,2")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for processes in (int(p) for p in args.processes.split(",")):
        rate, cpu_us = measure_processes(args.readings, processes)
        rows.append([f"iot-producer, {processes} process{'es' if processes > 1 else ''}", fmt(rate), fmt(cpu_us, 1)])
    throughput = Table(
        f"Producer, acks=all + idempotence, {args.readings:,} readings, 1,000 sensors, 6 partitions",
        ["configuration", "acknowledged readings/s", "CPU µs per reading"],
        rows,
        [
            "readings/s counts what the broker acknowledged (all processes together), launch to exit.",
            "Reproduce: python -m bench.producer_bench --readings N",
        ],
    )
    profile_rows, profiled_rate = profile(min(args.readings, 100_000))
    where = Table(
        "Where the producer's time goes (cProfile, self time by component)",
        ["component", "share of CPU time"],
        profile_rows,
        [
            f"One in-process run of {min(args.readings, 100_000):,} readings ({fmt(profiled_rate)} readings/s under the profiler).",
            "Full profile: bench/results/producer_profile.pstats (python -m pstats).",
        ],
    )
    save("producer_bench", [throughput, where])


if __name__ == "__main__":
    main()
