"""Where a consumer process's time goes, native decoder vs Python path, side by side.

Runs one iot-consumer process per decoder under cProfile (writer thread off, so every wait is on
the profiled thread) over the same prefilled topic, and groups self time by component.

usage: python -m bench.consumer_profile [--readings 300000]
"""

from __future__ import annotations

import argparse
import pstats
import sys
import uuid

from bench.common import (
    RESULTS,
    STACK,
    Process,
    Table,
    drop_database,
    drop_topic,
    fmt,
    fresh_database,
    fresh_topic,
    prefill,
    save,
    self_time_by_component,
)
from tests.helpers import BIN

# Which functions belong to which part of the work (by path or name fragment), first match wins.
COMPONENTS = [
    ("iot_fastpath (C): CRC, record framing, validation, COPY rows, batch summary", ("iot_fastpath",)),
    ("PostgreSQL round trips: COPY, rollup upserts, commit (waiting)", ("psycopg2",)),
    ("kafka-python: fetch responses, record decoding, ConsumerRecords", ("kafka/",)),
    ("socket reads (fetch responses)", ("selectors", "socket", "'recv", "ssl.py")),
    ("waiting for fetch responses (locks shared with kafka-python's network thread)", ("'acquire' of",)),
    (
        "Python validator + COPY lines",
        ("iot_common/schema", "orjson", "fromisoformat", "isoformat", "iot_consumer/batch"),
    ),
    ("rollup aggregation (Python path)", ("iot_consumer/rollups",)),
    ("alert evaluation", ("iot_consumer/alerts",)),
    ("positions, loop, decoding glue", ("iot_consumer/",)),
    ("logging and metrics", ("structlog", "prometheus_client", "logging/")),
]


def profile(topic: str, readings: int, decoder: str) -> tuple[list[tuple[str, float]], float, float]:
    database = fresh_database(f"profile_{decoder}")
    output = RESULTS / f"consumer_profile_{decoder}.pstats"
    try:
        env = STACK.service_env(
            topic=topic,
            database=database,
            METRICS_PORT="-1",
            CONSUMER_GROUP=f"profile-{uuid.uuid4().hex[:8]}",
            CONSUMER_DECODER=decoder,
            CONSUMER_WRITE_OVERLAP="false",
        )
        command = [sys.executable, "-m", "cProfile", "-o", str(output), str(BIN / "iot-consumer")]
        measured = Process([*command, "run", "--exit-when-idle", "3"], env, RESULTS / f"profile-{decoder}.log").wait()
        assert measured.returncode == 0, f"profiled consumer exited {measured.returncode}"
    finally:
        drop_database(database)
    shares, other, total = self_time_by_component(pstats.Stats(str(output)), COMPONENTS)
    per_row = [(name, seconds / readings * 1e6) for name, seconds in shares.items()]
    per_row.append(("other (interpreter built-ins, imports at start)", other / readings * 1e6))
    return per_row, total / readings * 1e6, measured.cpu_s / readings * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=300_000)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    topic = fresh_topic("profile")
    try:
        prefill(topic, args.readings)
        native, native_total, native_cpu = profile(topic, args.readings, "native")
        python, python_total, python_cpu = profile(topic, args.readings, "python")
    finally:
        drop_topic(topic)
    python_of = dict(python)
    rows = [[name, fmt(us, 2), fmt(python_of[name], 2)] for name, us in native]
    rows.append(["**profiled time per reading (sum)**", fmt(native_total, 2), fmt(python_total, 2)])
    rows.append(["process CPU per reading (under the profiler)", fmt(native_cpu, 2), fmt(python_cpu, 2)])
    table = Table(
        f"Where one consumer process's time goes, µs per reading ({args.readings:,} readings, cProfile self time)",
        ["component", "native decoder", "Python path"],
        rows,
        [
            "One process owning all 6 partitions, writer thread off (CONSUMER_WRITE_OVERLAP=false) so that waits show here.",
            "cProfile adds its own cost per Python call: the Python path's figures are inflated more than the native ones.",
            "Full profiles: bench/results/consumer_profile_<decoder>.pstats (python -m pstats).",
            "Reproduce: python -m bench.consumer_profile --readings N",
        ],
    )
    save("consumer_profile", [table])


if __name__ == "__main__":
    main()
