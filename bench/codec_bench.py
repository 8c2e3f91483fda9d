"""What each Kafka compression codec costs end to end: the same readings produced with
`iot-producer --compression X` for none, gzip, snappy, lz4 and zstd, then consumed by one
`iot-consumer` process (alert rules off, to isolate decoding); side by side in one run.

Per codec: bytes per reading in the broker's log (what retention and the network carry),
producer readings/s (2 processes), consumer rows/s and consumer CPU µs per row (median of
--rounds), each also as a ratio to no compression.

usage: python -m bench.codec_bench [--readings 200000] [--rounds 3]
"""

from __future__ import annotations

import statistics

from bench.common import (
    RESULTS,
    STACK,
    Table,
    consume_once,
    drop_topic,
    fmt,
    fresh_topic,
    prefill,
    readings_and_rounds,
    save,
)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def log_bytes(topic: str) -> int:
    """Bytes of the topic's log segments on the local broker's disk."""
    return sum(p.stat().st_size for p in (STACK.stack_dir / "kafka" / "data").glob(f"{topic}-*/*.log"))


def consume(topic: str, readings: int) -> tuple[float, float]:
    """(rows/s from launch to last commit, CPU µs per row) of one consumer process."""
    run, _ = consume_once(topic, readings, RESULTS / "codec-bench-consumer.log", "--no-alerts", inspect=lambda _: None)
    return run.rows_per_s, run.cpu_us_per_row


def main() -> None:
    args = readings_and_rounds(__doc__)
    measured: dict[str, tuple[float, float, float, float, list[float]]] = {}
    for codec in CODECS:
        topic = fresh_topic(f"codec_{codec}")
        try:
            produced = prefill(topic, args.readings, extra=("--compression", codec))
            size = log_bytes(topic) / args.readings
            runs = [consume(topic, args.readings) for _ in range(args.rounds)]
        finally:
            drop_topic(topic)
        rates = [r for r, _ in runs]
        cpu = statistics.median(c for _, c in runs)
        measured[codec] = (size, produced, statistics.median(rates), cpu, rates)
        print(
            f"[codec_bench] {codec}: {size:.1f} B/reading, {produced:,.0f} produced/s, {statistics.median(rates):,.0f} rows/s",
            flush=True,
        )
    base_size, base_produced, base_rate, base_cpu, _ = measured["none"]
    rows = [
        [
            codec,
            f"{size:.1f} ({size / base_size:.2f}×)",
            f"{fmt(produced)} ({produced / base_produced:.2f}×)",
            f"{fmt(rate)} ({rate / base_rate:.2f}×)",
            f"{cpu:.1f} ({cpu / base_cpu:.2f}×)",
            ", ".join(fmt(r) for r in rates),
        ]
        for codec, (size, produced, rate, cpu, rates) in measured.items()
    ]
    table = Table(
        f"Compression codecs end to end, {args.readings:,} readings (1,000 sensors), consumer median of {args.rounds}",
        [
            "codec",
            "bytes/reading in Kafka's log",
            "producer readings/s (2 proc.)",
            "consumer rows/s (1 proc.)",
            "consumer CPU µs/row",
            "each consumer run",
        ],
        rows,
        [
            "Ratios are to no compression, measured in the same run. Producer: iot-producer --compression X "
            "--max-rate, 2 processes, acks=all, its default batch.size/linger.ms.",
            "Consumer: iot-consumer run --no-alerts --exit-when-idle 3 on a fresh database; rows/s = rows ÷ "
            "(last commit − launch); CPU = user+sys of the whole process ÷ rows.",
            "Reproduce: python -m bench.codec_bench (or make bench-codecs).",
        ],
    )
    save("codec_bench", [table])


if __name__ == "__main__":
    main()
