"""Chaos on three brokers: leader failover, a broker away for a minute, a rolling restart and a
broker cut off from the others, with producers and two consumer replicas running throughout.

Runs only inside tests/harness/kafka_cluster.sh (`make test-chaos-cluster`): three KRaft nodes,
each in a network namespace of its own, replication factor 3 and min.insync.replicas 2; the
test, its clients and its PostgreSQL in a hub namespace that reaches them over a bridge. After
every fault the topic's partitions must be back to three in-sync replicas before the next one.
Afterwards: every send the producers were acknowledged is a row (their counts = the topic's end
offsets = rows), nothing twice, lag 0 (`iot-consumer verify --expect-caught-up`), no offset gap
recorded, the rollups equal a GROUP BY. The figures go to .artifacts/chaos-cluster.md (copy it
to bench/results/chaos_cluster.md, which docs/RELIABILITY.md quotes, when publishing a run).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from kafka import KafkaAdminClient

from tests.helpers import ARTIFACTS, Service, Stack, end_to_end, row_count, scalar, wait_until

NODES = (1, 2, 3)
LEADER_KILLS = 3
# How long a killed leader stays down, a stopped broker stays away, an isolated one stays cut off.
KILLED_FOR = 30.0
STOPPED_FOR = 60.0
ISOLATED_FOR = 45.0
RATE_PER_PRODUCER = 2500


def node_addresses() -> dict[int, str]:
    """Node id -> host:port, from the harness's KAFKA_BOOTSTRAP_SERVERS (node N is the N-th)."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").split(",")
    return {node: servers[node - 1] for node in NODES}


def partitions(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Each partition of ``topic`` as the cluster's metadata has it: leader, replicas, ISR."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    return sorted(described[0]["partitions"], key=lambda p: p["partition_index"])


def leaders(bootstrap: str, topic: str) -> Counter[int]:
    """How many of ``topic``'s partitions each node leads."""
    return Counter(int(p["leader_id"]) for p in partitions(bootstrap, topic))


class Cluster:
    """The harness's three nodes: their addresses, and the faults stack/stack.sh can do to them."""

    def __init__(self, stack: Stack, topic: str) -> None:
        self.stack = stack
        self.topic = topic
        self.addresses = node_addresses()
        self.events: list[str] = []
        self.catch_up: list[float] = []
        self.moved: list[float | None] = []

    def bootstrap_without(self, node: int) -> str:
        return ",".join(address for n, address in self.addresses.items() if n != node)

    def busiest_leader(self) -> int:
        return leaders(self.stack.bootstrap, self.topic).most_common(1)[0][0]

    def node(self, action: str, node: int) -> None:
        self.stack.stack_command("node", action, str(node))

    def harness(self, action: str, node: int) -> None:
        subprocess.run([os.environ["IOT_CLUSTER_HARNESS"], action, str(node)], check=True)

    def wait_in_sync(self, what: str) -> None:
        """Every partition led and with all three replicas in sync again (min ISR 2 holds for the
        next fault), timed."""
        started = time.monotonic()

        def in_sync() -> bool:
            try:
                states = partitions(self.stack.bootstrap, self.topic)
            except Exception:  # noqa: BLE001 - a node may still be starting; ask again
                return False
            return all(p["leader_id"] >= 0 and len(p["isr_nodes"]) == len(NODES) for p in states)

        wait_until(in_sync, timeout=180, what=f"all replicas in sync after {what}", interval=1.0)
        self.catch_up.append(time.monotonic() - started)

    def leaderships_moved(self, victim: int, started: float, away_for: float) -> float | None:
        """Seconds until the other nodes' metadata shows no partition led by ``victim`` (None if
        not within ``away_for``); returns once ``away_for`` has passed."""
        moved_after: float | None = None
        others = self.bootstrap_without(victim)
        while time.monotonic() - started < away_for:
            if moved_after is None:
                try:
                    if leaders(others, self.topic)[victim] == 0:
                        moved_after = time.monotonic() - started
                except Exception:  # noqa: BLE001 - metadata may time out while the quorum re-forms
                    pass
            time.sleep(0.5)
        return moved_after

    @staticmethod
    def after(seconds: float | None, away_for: float) -> str:
        return f"{seconds:.0f} s" if seconds is not None else f"not within {away_for:.0f} s"

    def kill_busiest_leader(self, round_: int) -> None:
        victim = self.busiest_leader()
        led = leaders(self.stack.bootstrap, self.topic)[victim]
        started = time.monotonic()
        self.node("kill", victim)
        moved_after = self.leaderships_moved(victim, started, KILLED_FOR)
        self.node("up", victim)
        self.wait_in_sync(f"leader kill {round_}")
        self.moved.append(moved_after)
        self.events.append(
            f"kill -9 of node {victim}, leader of {led}/6 partitions (its leaderships moved after "
            f"{self.after(moved_after, KILLED_FOR)}), restarted after {KILLED_FOR:.0f} s"
        )

    def stop_one(self) -> None:
        victim = self.busiest_leader()
        self.node("down", victim)
        time.sleep(STOPPED_FOR)
        self.node("up", victim)
        self.wait_in_sync("the stopped broker's return")
        self.events.append(f"node {victim} stopped (SIGTERM) for {STOPPED_FOR:.0f} s, then started")

    def rolling_restart(self) -> None:
        for node in NODES:
            self.node("down", node)
            self.node("up", node)
            self.wait_in_sync(f"restart of node {node}")
        self.events.append("rolling restart of nodes 1, 2, 3 (each back in sync before the next)")

    def isolate_busiest_leader(self) -> float | None:
        """Cut the busiest leader off from the other nodes (clients still reach it) for
        ISOLATED_FOR seconds; returns how long the others took to move its leaderships away."""
        victim = self.busiest_leader()
        led = leaders(self.stack.bootstrap, self.topic)[victim]
        started = time.monotonic()
        self.harness("isolate", victim)
        try:
            moved_after = self.leaderships_moved(victim, started, ISOLATED_FOR)
        finally:
            self.harness("heal", victim)
        self.wait_in_sync("the isolated broker's return")
        self.moved.append(moved_after)
        self.events.append(
            f"node {victim}, leader of {led}/6 partitions, cut off from the other nodes for {ISOLATED_FOR:.0f} s "
            f"while clients still reached it (its leaderships moved after {self.after(moved_after, ISOLATED_FOR)}), "
            "then reconnected"
        )
        return moved_after


def warnings_by_kind(services: list[Service]) -> tuple[Counter[str], Counter[str]]:
    """Warning and error log lines of some services: our own events by name, and the Kafka
    client's messages by kind (without node ids, numbers and connection prefixes) - how each
    failover showed to the clients."""
    own: Counter[str] = Counter()
    client: Counter[str] = Counter()
    for service in services:
        for event in service.events():
            if event.get("level") not in {"warning", "error", "critical"}:
                continue
            text = str(event.get("event"))
            if str(event.get("logger", "")).startswith("kafka"):
                text = re.sub(r"<[^>]*>:?\s*", "", text)
                text = re.sub(r"(node|coordinator)[ _=-]*(id=)?[-\w]*\d", r"\1 N", text)
                client[re.sub(r"\d+", "N", text)[:70]] += 1
            else:
                what = f" ({event['what']})" if event.get("what") else ""
                own[text + what] += 1
    return own, client


@pytest.mark.chaos
@pytest.mark.cluster
@pytest.mark.timeout(1500)
def test_three_brokers_lose_and_duplicate_nothing_through_failover(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Three brokers (RF 3, min ISR 2) under two producers and two consumer replicas: the busiest
    leader killed -9 three times, a broker stopped for 60 s, a rolling restart, the busiest leader
    cut off from the other nodes for 45 s while clients still reach it. Every acknowledged send is
    one row, nothing twice, no producer failure, lag 0, no offset gap, rollups exact."""
    if stack.brokers != len(NODES) or "IOT_CLUSTER_HARNESS" not in os.environ:
        pytest.fail("runs on the three-node cluster of tests/harness/kafka_cluster.sh: make test-chaos-cluster")
    started = time.monotonic()
    cluster = Cluster(stack, topic)
    assert all(len(p["replica_nodes"]) == 3 for p in partitions(stack.bootstrap, topic))

    def producer(seed: int) -> Service:
        return Service(
            ["iot-producer", "--sensors", "1000", "--rate", str(RATE_PER_PRODUCER), "--seed", str(seed)],
            env,
            tmp_path / f"producer-{seed}.log",
        )

    def consumer() -> Service:
        return Service(
            ["iot-consumer", "run", "--exit-when-idle", "30"], env, tmp_path / f"consumer-{uuid.uuid4().hex[:6]}.log"
        )

    producers = [producer(1), producer(2)]
    consumers = [consumer(), consumer()]
    wait_until(lambda: row_count(db) > 20_000, timeout=120, what="first rows")

    faults: list[Callable[[], object]] = [
        *(lambda r=r: cluster.kill_busiest_leader(r) for r in range(1, LEADER_KILLS + 1)),
        cluster.stop_one,
        cluster.rolling_restart,
        cluster.isolate_busiest_leader,
    ]
    for fault in faults:
        fault()
        for service in (*producers, *consumers):
            assert service.proc.poll() is None, (service.args, service.log_path.read_text()[-3000:])

    for service in producers:
        service.signal(signal.SIGTERM)
    acknowledged = failed = unconfirmed = 0
    for service in producers:
        assert service.wait(180) == 0, service.log_path.read_text()[-3000:]
        stopped = service.event("producer_stopped")
        acknowledged += int(stopped["acknowledged"])
        failed += int(stopped["failed"])
        unconfirmed += int(stopped["unconfirmed"])
    for service in consumers:
        assert service.wait(600) == 0, service.log_path.read_text()[-3000:]
    elapsed = time.monotonic() - started

    result = end_to_end(stack, env, topic)
    gaps = int(scalar(db, "SELECT count(*) FROM offset_gaps"))
    gap_events = sum(1 for c in consumers for e in c.events() if e.get("event") == "offset_gap")
    producer_own, producer_client = warnings_by_kind(producers)
    consumer_own, consumer_client = warnings_by_kind(consumers)

    def explained(counted: Counter[str]) -> str:
        return "; ".join(f"{name} ×{n}" for name, n in counted.most_common(6)) or "none"

    moved = [m for m in cluster.moved if m is not None]

    summary = [
        f"<!-- generated by tests/chaos/test_cluster.py at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} -->",
        "| figure | value |",
        "|---|---|",
        "| brokers | 3 KRaft nodes (broker + controller), replication factor 3, min.insync.replicas 2 |",
        f"| readings the producers were acknowledged (2 producers, {RATE_PER_PRODUCER:,}/s each) | {acknowledged:,} |",
        f"| producer sends failed / unconfirmed at exit | {failed} / {unconfirmed} |",
        f"| messages Kafka holds (end offsets) | {result.in_kafka:,} |",
        f"| rows in sensores | {result.rows:,} |",
        f"| rows − acknowledged | {result.rows - acknowledged} |",
        f"| dead letters | {result.dead_letters} |",
        f"| duplicate readings (sensor_id, timestamp) / Kafka offsets | {result.duplicate_readings} / {result.duplicate_offsets} |",
        f"| `iot-consumer verify`: missing / duplicates / lag | {result.verify['missing']} / {result.verify['duplicates']} / {result.verify['lag']} |",
        f"| offset gaps recorded / logged | {gaps} / {gap_events} |",
        f"| rollup buckets differing from a GROUP BY over sensores | {len(result.rollups_off)} |",
        f"| leader kills (-9) / broker stops / restarts / isolations | {LEADER_KILLS} / 1 / 3 / 1 |",
        "| seconds until a killed or isolated leader's partitions had new leaders (each) | "
        + ", ".join(cluster.after(m, 0) if m is not None else "not in time" for m in cluster.moved)
        + " |",
        "| seconds until all replicas were in sync again, per fault (median, max) | "
        f"{sorted(cluster.catch_up)[len(cluster.catch_up) // 2]:.0f}, {max(cluster.catch_up):.0f} |",
        f"| producers' own warning events | {explained(producer_own)} |",
        f"| consumers' own warning events (each retried) | {explained(consumer_own)} |",
        f"| the Kafka client's warnings in the producers' logs, six most frequent | {explained(producer_client)} |",
        f"| the Kafka client's warnings in the consumers' logs, six most frequent | {explained(consumer_client)} |",
        f"| run time | {elapsed:.0f} s |",
        "",
        "Faults in order: " + "; ".join(cluster.events) + ".",
    ]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "chaos-cluster.md").write_text("\n".join(summary) + "\n")

    assert len(moved) == len(cluster.moved), "a dead or cut-off leader kept its partitions"
    assert (failed, unconfirmed) == (0, 0)
    assert acknowledged == result.in_kafka
    assert result.rows == result.in_kafka
    assert result.dead_letters == 0
    assert result.duplicate_readings == 0
    assert result.duplicate_offsets == 0
    assert (gaps, gap_events) == (0, 0)
    assert result.verify_returncode == 0, result.verify
    assert result.verify["consistent"] is True
    assert result.rollups_off == []
