"""Producer throughput with acks=all + idempotence, and where the time goes.

Runs iot-producer as fast as possible (--max-rate) with the native encoder in 1 and N
processes and with the Python reference (one KafkaProducer.send() per reading), counting only
readings the broker acknowledged; then a sustained run at a fixed rate over a large fleet
(--sensors 100000 --rate 100000 for 60 s by default); then profiles one in-process run with
cProfile and groups the time by component.

CPU per reading is the process's CPU (user + system, from wait4) minus that of a run of the same
command with --count 1 (start-up: imports, the fleet, connecting), divided by the readings.

usage: python -m bench.producer_bench [--readings 1000000] [--processes 1,2]
                                      [--sustained-sensors 100000] [--sustained-rate 100000]
                                      [--sustained-seconds 60]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time
from pathlib import Path
from typing import Any

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
from iot_producer.publisher import Encoder, ReadingPublisher
from iot_producer.runner import Pacing, run
from iot_producer.simulation import SensorFleet

# Which files' functions belong to which part of the work (by path fragment).
COMPONENTS = [
    ("native encoder: records and their JSON values (C, one call per partition and chunk)", ("encode_records",)),
    ("iot-producer: appending to kafka-python's open batches", ("iot_producer/accumulator",)),
    (
        "kafka-python: batching, sending, acknowledgements (its I/O thread)",
        ("kafka/producer", "kafka/record", "kafka/partitioner", "kafka/cluster", "kafka/future"),
    ),
    ("kafka-python: network I/O", ("kafka/net", "kafka/protocol", "selectors", "socket")),
    ("waiting on locks shared with kafka-python's I/O thread", ("acquire",)),
    ("simulation: values, anomalies, timestamps", ("iot_producer/simulation", "random.py", "builtins.round")),
    ("serialisation: SensorReading → JSON (send() path)", ("iot_common/schema", "uuid.py", "orjson", "isoformat")),
    (
        "iot-producer: pacing loop, per-partition queues, ack callbacks",
        ("iot_producer/runner", "iot_producer/publisher"),
    ),
    ("metrics (prometheus-client)", ("prometheus_client",)),
]


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            event = json.loads(line)
            if event.get("event") == name:
                events.append(event)
    return events


def _run(args: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, readings/s while generating) of one iot-producer process."""
    log.unlink(missing_ok=True)
    result = Process(cli("iot-producer", *args), env, log).wait()
    assert result.returncode == 0, (args, result.returncode, log)
    finished = _events(log, "generation_finished")[-1]
    return result.wall_s, result.cpu_s, float(finished["rate"])


def startup_cpu_s(args: list[str], env: dict[str, str], log: Path) -> float:
    """CPU of the same command producing one reading: start-up, fleet, connection, close."""
    return _run([*args, "--count", "1"], env, log)[1]


def measure_processes(readings: int, processes: int, encoder: Encoder) -> list[str]:
    topic = fresh_topic("producer")
    try:
        env = STACK.service_env(topic=topic, database="iot", METRICS_PORT="-1")
        share = readings // processes
        base = ["--sensors", "1000", "--max-rate", "--encoder", encoder.value]
        startup = startup_cpu_s([*base, "--seed", "0"], env, RESULTS / f"producer-{encoder}-startup.log")
        started = time.perf_counter()
        procs = [
            Process(
                cli("iot-producer", *base, "--count", str(share), "--seed", str(i)),
                env,
                RESULTS / f"producer-{encoder}-{processes}-{i}.log",
            )
            for i in range(processes)
        ]
        results = [p.wait() for p in procs]
        elapsed = time.perf_counter() - started
        assert all(r.returncode == 0 for r in results), [r.returncode for r in results]
        acked = topic_size(topic) - 1  # the start-up run's one reading
        assert acked == share * processes, (acked, share * processes)
        generating = sum(
            float(_events(RESULTS / f"producer-{encoder}-{processes}-{i}.log", "generation_finished")[-1]["rate"])
            for i in range(processes)
        )
        cpu_us = (sum(r.cpu_s for r in results) - processes * startup) / acked * 1e6
        name = f"{encoder.value} encoder, {processes} process{'es' if processes > 1 else ''}"
        return [name, fmt(acked / elapsed), fmt(generating), fmt(cpu_us, 2)]
    finally:
        drop_topic(topic)


def sustained(sensors: int, rate: int, seconds: int, encoder: Encoder) -> list[str]:
    """One process at a fixed total rate over a large fleet: did it keep up, at what CPU."""
    topic = fresh_topic("producer_sustained")
    try:
        env = STACK.service_env(topic=topic, database="iot", METRICS_PORT="-1")
        base = ["--sensors", str(sensors), "--seed", "3", "--encoder", encoder.value]
        startup = startup_cpu_s([*base, "--max-rate"], env, RESULTS / f"producer-sustained-{encoder}-startup.log")
        log = RESULTS / f"producer-sustained-{encoder}.log"
        _wall, cpu, generating = _run([*base, "--rate", str(rate), "--duration", str(seconds)], env, log)
        acked = topic_size(topic) - 1
        stopped = _events(log, "producer_stopped")[-1]
        assert stopped["failed"] == 0, stopped
        assert stopped["unconfirmed"] == 0, stopped
        return [
            f"{encoder.value} encoder, 1 process",
            fmt(rate),
            fmt(generating),
            fmt(acked),
            f"{100 * generating / rate:.1f} %",
            fmt((cpu - startup) / acked * 1e6, 2),
            f"{100 * (cpu - startup) / seconds:.0f} %",
        ]
    finally:
        drop_topic(topic)


def profile(readings: int) -> tuple[list[list[str]], float]:
    topic = fresh_topic("producer_profile")
    try:
        os.environ["KAFKA_TOPIC"] = topic
        publisher = ReadingPublisher(
            KafkaSettings(bootstrap_servers=STACK.bootstrap, topic=topic), encoder=Encoder.NATIVE
        )
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
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--python-readings", type=int, default=200_000, help="for the (slower) send() reference")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--sustained-sensors", type=int, default=100_000)
    parser.add_argument("--sustained-rate", type=int, default=100_000)
    parser.add_argument("--sustained-seconds", type=int, default=60)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [measure_processes(args.readings, int(p), Encoder.NATIVE) for p in args.processes.split(",")]
    rows.append(measure_processes(args.python_readings, 1, Encoder.PYTHON))
    throughput = Table(
        f"Producer at full speed, acks=all + idempotence, 1,000 sensors, 6 partitions "
        f"({args.readings:,} readings native, {args.python_readings:,} python)",
        [
            "configuration",
            "acknowledged readings/s, launch to exit",
            "readings/s while generating",
            "CPU µs per reading",
        ],
        rows,
        [
            "Acknowledged: what the broker holds at the end (all processes together), over the wall time from launch to exit.",
            "While generating: the producer's own generation_finished rate (start-up and the final flush excluded), summed over processes.",
            "CPU per reading: the processes' CPU minus that of the same command with --count 1 (start-up), per acknowledged reading.",
            "Reproduce: python -m bench.producer_bench --readings N",
        ],
    )
    sustained_rows = [
        sustained(args.sustained_sensors, args.sustained_rate, args.sustained_seconds, Encoder.NATIVE),
    ]
    steady = Table(
        f"Sustained: --sensors {args.sustained_sensors:,} --rate {args.sustained_rate:,} "
        f"for {args.sustained_seconds} s, one process",
        [
            "configuration",
            "target readings/s",
            "generated readings/s",
            "acknowledged",
            "of target",
            "CPU µs per reading",
            "CPU (share of a core)",
        ],
        sustained_rows,
        [
            "Every reading acknowledged (acks=all, idempotence), none failed or unconfirmed at exit.",
            f"CPU as above: start-up (here building the {args.sustained_sensors:,}-sensor fleet) subtracted.",
        ],
    )
    profile_rows, profiled_rate = profile(min(args.readings, 300_000))
    where = Table(
        "Where the producer's time goes (native encoder; cProfile, self time by component)",
        ["component", "share of CPU time"],
        profile_rows,
        [
            f"One in-process run of {min(args.readings, 300_000):,} readings ({fmt(profiled_rate)} readings/s under the profiler).",
            "Full profile: bench/results/producer_profile.pstats (python -m pstats).",
        ],
    )
    save("producer_bench", [throughput, steady, where])


if __name__ == "__main__":
    main()
