"""What alert evaluation costs the consumer: the same topic data consumed with the built-in
rules on (the default) and with --no-alerts, alternating, several rounds; medians.

Two data sets: normal readings (rules evaluated, nothing fires: the everyday cost), and
readings where an anomaly episode (spike above 30 °C or stuck value) starts on 1 % of readings
(state changes are written to alert_states in the batch's transaction).

usage: python -m bench.alerts_bench [--readings 200000] [--rounds 3]
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg2.extensions

from bench.common import RESULTS, Table, consume_once, drop_topic, fmt, fresh_topic, prefill, readings_and_rounds, save
from iot_consumer.alerts.engine import AlertEngine
from iot_consumer.alerts.rules import load_rules
from iot_consumer.readings import Reading
from iot_consumer.summary import summary_of


def engine_cost(readings: int, rounds: int = 5) -> tuple[float, float]:
    """CPU µs per reading of AlertEngine.evaluate + apply alone (no I/O), in 10,000-reading
    batches like the consumer's: normal values, and values where 1 % of readings start a spike."""
    rng = random.Random(7)
    sensors = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(1000)]
    start = datetime.now(UTC)
    results = []
    for spike_rate in (0.0, 0.01):
        data = []
        spiking = dict.fromkeys(sensors, 0)
        for i in range(readings):
            sensor = sensors[i % len(sensors)]
            if spiking[sensor] == 0 and rng.random() < spike_rate:
                spiking[sensor] = rng.randint(5, 30)
            temperature = 35.0 if spiking[sensor] else rng.uniform(20, 30)
            spiking[sensor] = max(0, spiking[sensor] - 1)
            stamp = start + timedelta(seconds=i // len(sensors))
            data.append(Reading(i % 6, sensor, stamp, temperature, rng.uniform(30, 80)))
        timings = []
        for _ in range(rounds):
            engine = AlertEngine(load_rules(None))
            # the batch summaries exist before alerts run (the decoder fills them): not timed here
            summaries = [summary_of(data[offset : offset + 10_000]) for offset in range(0, readings, 10_000)]
            began = time.process_time()
            for summary in summaries:
                engine.apply(engine.evaluate(summary))
            timings.append((time.process_time() - began) / readings * 1e6)
        results.append(statistics.median(timings))
    return results[0], results[1]


def consume(topic: str, readings: int, alerts: bool) -> tuple[float, int, int]:
    """rows/s of one iot-consumer process from launch to last commit; alert rows and states written."""

    def alert_rows(conn: psycopg2.extensions.connection) -> tuple[int, int]:
        with conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM alertas), (SELECT count(*) FROM alert_states)")
            found, states = cur.fetchone()  # type: ignore[misc]
        return int(found), int(states)

    flag = "--alerts" if alerts else "--no-alerts"
    log = RESULTS / f"alerts-bench-{'on' if alerts else 'off'}.log"
    run, (found, states) = consume_once(topic, readings, log, flag, inspect=alert_rows)
    return run.rows_per_s, found, states


def main() -> None:
    args = readings_and_rounds(__doc__)
    normal_us, spiky_us = engine_cost(args.readings)
    engine_table = Table(
        f"AlertEngine alone (built-in rules, 1,000 sensors, {args.readings:,} readings, median of 5)",
        ["data", "CPU µs per reading"],
        [["normal readings", f"{normal_us:.2f}"], ["a 5-30 s spike starts on 1 % of readings", f"{spiky_us:.2f}"]],
        [
            "evaluate() + apply() in 10,000-reading batches, one reading per sensor per second (event time), "
            "so spikes do open and close alerts. No I/O: the database writes are in the table below.",
        ],
    )
    rows: list[list[str]] = []
    for label, extra in (
        ("normal readings", ()),
        ("1 % anomaly episodes", ("--anomaly-rate", "0.01", "--anomalies", "spike,stuck")),
    ):
        topic = fresh_topic("alerts")
        try:
            prefill(topic, args.readings, extra=extra)
            rates: dict[bool, list[float]] = {True: [], False: []}
            written = (0, 0)
            for round_ in range(args.rounds):
                for alerts in (round_ % 2 == 0, round_ % 2 != 0):  # alternate who goes first
                    rate, alert_rows, states = consume(topic, args.readings, alerts)
                    rates[alerts].append(rate)
                    if alerts:
                        written = (alert_rows, states)
        finally:
            drop_topic(topic)
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        rows.append(
            [
                label,
                fmt(off),
                fmt(on),
                f"{on / off:.2f}×",
                f"{written[0]:,} / {written[1]:,}",
                ", ".join(fmt(r) for r in rates[True]) + " / " + ", ".join(fmt(r) for r in rates[False]),
            ]
        )
    table = Table(
        f"Alert evaluation in iot-consumer (1 process), {args.readings:,} readings, median of {args.rounds}",
        ["data", "--no-alerts rows/s", "alerts on rows/s", "on ÷ off", "alerts / states left", "each run: on / off"],
        rows,
        [
            "Built-in rules (4): temperatura_alta, umidade_alta, umidade_baixa, sensor_silencioso.",
            "Prefilled at full speed by iot-producer (1,000 sensors): readings of one sensor are microseconds "
            "apart, so for_seconds is never reached and no alert opens; the anomaly set exercises pending-state writes.",
            "rows/s = rows ÷ (last commit − process launch). Reproduce: python -m bench.alerts_bench.",
        ],
    )
    save("alerts_bench", [engine_table, table])


if __name__ == "__main__":
    main()
