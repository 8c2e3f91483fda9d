"""Chaos: the whole pipeline under faults, against the real broker and server.

While two producers publish and two consumer replicas write, a fault schedule runs. The full
run (`make test-chaos`): over a million readings, 20 SIGKILLs of random consumer replicas (each
restarted), a SIGTERM in the middle of a batch, a PostgreSQL restart, the Kafka broker stopped
for 30 s, a producer killed mid-run (restarted). The short run (in `make test` and CI, so the
proof moves with every change to the exactly-once path): 240,000 readings, 6 SIGKILLs, a SIGTERM
mid-batch, a PostgreSQL restart. Afterwards the invariant must hold: what the producers were
acknowledged is what Kafka holds (the topic's end offsets), rows + dead letters = those messages,
no reading twice, lag 0 — checked by `iot-consumer verify --expect-caught-up` and by SQL.
The figures of a run are written to .artifacts/chaos.md / chaos-short.md (copy the full one to
bench/results/chaos.md, which docs/RELIABILITY.md quotes, when publishing a run).
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg2.extensions
import pytest

from iot_consumer.decoding import decoder_available
from tests.helpers import (
    ARTIFACTS,
    Service,
    Stack,
    end_to_end,
    row_count,
    send_raw,
    wait_until,
)

POISON = 500


@dataclass(frozen=True)
class Schedule:
    """How big a chaos run is, and which faults it has."""

    name: str
    readings_per_producer: int
    kills: int
    sigterm_at: int
    postgres_restart_at: int
    producer_kill_at: int | None
    kafka_stop_at: int | None


FULL = Schedule("chaos", 520_000, 20, 5, 11, 8, 15)
SHORT = Schedule("chaos-short", 120_000, 6, 2, 4, None, None)


@pytest.mark.chaos
def test_no_loss_no_duplicate_under_faults(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Over a million readings through minutes of faults (20 SIGKILLs of replicas, a SIGTERM
    mid-batch, a producer killed, PostgreSQL restarted, Kafka stopped 30 s): rows + dead letters =
    messages in Kafka, no reading twice, `verify` 0/0/0; the figures go to the run's artifacts."""
    run_chaos(stack, env, topic, db, tmp_path, FULL)


def test_a_short_chaos_run_loses_and_duplicates_nothing(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """240,000 readings, 6 SIGKILLs of replicas, a SIGTERM mid-batch, PostgreSQL restarted: every
    acknowledged send is in Kafka and is one row (or one of the poison dead letters), nothing
    twice, `verify` 0/0/0 - in every `make test`."""
    run_chaos(stack, env, topic, db, tmp_path, SHORT)


def run_chaos(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path, plan: Schedule
) -> None:
    rng = random.Random(20261127)
    logs = tmp_path
    started = time.monotonic()

    def producer(name: str, count: int, seed: int) -> Service:
        return Service(
            ["iot-producer", "--sensors", "1000", "--count", str(count), "--rate", "6000", "--seed", str(seed)],
            env,
            logs / f"producer-{name}-{uuid.uuid4().hex[:4]}.log",
        )

    def consumer() -> Service:
        return Service(
            ["iot-consumer", "run", "--exit-when-idle", "20"], env, logs / f"consumer-{uuid.uuid4().hex[:6]}.log"
        )

    count = plan.readings_per_producer
    producers = {"a": producer("a", count, 1), "b": producer("b", count, 2)}
    consumers = [consumer(), consumer()]
    # Poison mixed in: dead letters are part of the invariant.
    send_raw(stack.bootstrap, topic, [(b"poison-%d" % i, b'{"not": "a reading"}') for i in range(POISON)])
    events: list[str] = []
    wait_until(lambda: row_count(db) > 20_000, timeout=120, what="first rows")

    def restart(index: int, sig: signal.Signals) -> None:
        victim = consumers[index]
        if sig is signal.SIGKILL:
            victim.kill()
        else:
            # "During a batch": once it runs (before its handler is installed, SIGTERM just ends it).
            wait_until(
                lambda: any(e.get("event") == "consumer_started" for e in victim.events()), 60, "consumer started"
            )
            time.sleep(1.0)
            victim.signal(sig)
            assert victim.wait(90) == 0, victim.log_path.read_text()[-3000:]
        consumers[index] = consumer()

    killed_producers = 0
    for kill in range(plan.kills):
        time.sleep(rng.uniform(0.5, 3.0))
        restart(rng.randrange(2), signal.SIGKILL)
        events.append(f"SIGKILL consumer #{kill + 1}")
        if kill == plan.sigterm_at:
            restart(0, signal.SIGTERM)
            events.append("SIGTERM consumer during a batch (exit 0)")
        if kill == plan.producer_kill_at:
            producers["b"].kill()
            killed_producers += 1
            producers["b"] = producer("b2", count, 3)
            events.append("SIGKILL producer b, restarted")
        if kill == plan.postgres_restart_at:
            stack.stack_command("restart", "postgres")
            events.append("PostgreSQL restarted")
        if kill == plan.kafka_stop_at:
            stack.stack_command("down", "kafka")
            time.sleep(30)
            stack.stack_command("up", "kafka")
            events.append("Kafka broker stopped for 30 s, then started")

    acknowledged = 0
    for name, proc in producers.items():
        assert proc.wait(600) == 0, (name, proc.log_path.read_text()[-3000:])
        stopped = proc.event("producer_stopped")
        assert (stopped["failed"], stopped["unconfirmed"]) == (0, 0), stopped
        acknowledged += int(stopped["acknowledged"])
    for proc in consumers:
        assert proc.wait(600) == 0, proc.log_path.read_text()[-3000:]
    elapsed = time.monotonic() - started

    result = end_to_end(stack, env, topic)
    decoders = sorted(
        {
            orjson.loads(line).get("decoder", "?")
            for log in logs.glob("consumer-*.log")
            for line in log.read_text(errors="replace").splitlines()
            if line.startswith("{") and '"consumer_started"' in line
        }
    )

    summary = [
        f"<!-- generated by tests/chaos/test_chaos.py at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} -->",
        "| figure | value |",
        "|---|---|",
        f"| readings the producers were acknowledged (their own count{', a killed one not known' if killed_producers else ''}) | {acknowledged:,} |",
        f"| messages Kafka holds (end offsets; {POISON} poison included) | {result.in_kafka:,} |",
        f"| rows in sensores | {result.rows:,} |",
        f"| dead letters | {result.dead_letters:,} |",
        f"| rows + dead letters − messages | {result.rows + result.dead_letters - result.in_kafka} |",
        f"| duplicate readings (sensor_id, timestamp) | {result.duplicate_readings} |",
        f"| duplicate Kafka offsets | {result.duplicate_offsets} |",
        f"| `iot-consumer verify`: missing / duplicates / lag | {result.verify['missing']} / {result.verify['duplicates']} / {result.verify['lag']} |",
        f"| rollup buckets differing from a GROUP BY over sensores | {len(result.rollups_off)} |",
        f"| consumer SIGKILLs | {plan.kills} |",
        f"| consumer decoder(s) | {', '.join(decoders)} (writer thread on) |",
        f"| run time | {elapsed:.0f} s |",
        "",
        "Faults in order: " + "; ".join(events) + ".",
    ]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{plan.name}.md").write_text("\n".join(summary) + "\n")

    assert result.in_kafka >= 2 * count + POISON
    # Every acknowledged send is in Kafka; with no producer killed, nothing else is either.
    if killed_producers:
        assert acknowledged + POISON <= result.in_kafka
    else:
        assert acknowledged + POISON == result.in_kafka
    assert result.dead_letters == POISON
    assert decoders == (["native"] if decoder_available() else ["python"])
    assert result.rows + result.dead_letters == result.in_kafka
    assert result.duplicate_readings == 0
    assert result.duplicate_offsets == 0
    assert result.verify_returncode == 0, result.verify
    assert result.verify["consistent"] is True
    assert result.rollups_off == []
