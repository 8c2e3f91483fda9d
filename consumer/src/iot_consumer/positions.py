"""Where each owned partition's consumption stands, and what happens when Kafka's log no
longer holds that place.

The stored positions in PostgreSQL (``consumer_positions``) are the truth. After every
rebalance and every fetch error, :meth:`PartitionPositions.sync` reloads them for the
partitions this replica owns, compares each with the partition's log (start and end offsets,
and the topic's id) and seeks there. A stored position the log no longer holds is an
*offset gap*:

- ``topic_recreated``: the topic's id changed (deleted and created again): the stored
  offsets belong to a log that is gone;
- ``ahead_of_log``: stored position > log end (log re-created or truncated, broker volume
  lost);
- ``behind_log_start``: stored position < log start (retention or ``delete-records`` removed
  messages nobody read: ``log start − stored`` records are lost).

The policy (``--on-offset-gap``) decides: ``fail`` (default) halts that partition loudly
(paused, logged, counted, ``/readyz`` 503) and re-checks it with backoff, so an operator's
``iot-consumer positions reset`` or a restored log lets it go on by itself;
``resume-earliest`` / ``resume-latest`` move the stored position to the log's start / end
in one fenced transaction that also records the gap in ``offset_gaps``.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from iot_common.logging import get_logger
from iot_common.retry import Backoff
from iot_consumer import metrics as m
from iot_consumer.gaps import GapKind, OffsetGap, classify
from iot_consumer.sink import PostgresSink

log = get_logger(__name__)


class OffsetGapPolicy(StrEnum):
    FAIL = "fail"
    RESUME_EARLIEST = "resume-earliest"
    RESUME_LATEST = "resume-latest"


class AssignmentTracker(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records assignment changes. Runs on kafka-python's I/O thread, so it only takes notes;
    the main loop acts on them (blocking here would stall heartbeats)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._assigned: set[TopicPartition] = set()
        self.generation = 0

    def on_partitions_revoked(self, revoked: Any) -> None:
        with self._lock:
            self._assigned -= set(revoked)
            self.generation += 1

    def on_partitions_assigned(self, assigned: Any) -> None:
        with self._lock:
            self._assigned |= set(assigned)
            self.generation += 1

    def snapshot(self) -> tuple[int, frozenset[TopicPartition]]:
        with self._lock:
            return self.generation, frozenset(self._assigned)


@dataclass
class HaltedPartition:
    gap: OffsetGap
    since: float
    recheck: Backoff = field(default_factory=lambda: Backoff(wait_initial=5.0, wait_max=60.0, wait_jitter=1.0))
    recheck_at: float = 0.0


def topic_id_of(consumer: KafkaConsumer, topic: str) -> uuid.UUID | None:
    """The topic's id from the client's cluster metadata (None until metadata has it)."""
    topic_id = consumer._client.cluster.topic_id(topic)
    return topic_id if isinstance(topic_id, uuid.UUID) else None


def group_caught_up(consumer: KafkaConsumer, sink: PostgresSink, topic: str) -> bool:
    """Every partition of the topic - not only this replica's - has its stored position at the
    log end (bounded mode's exit condition; False when it cannot tell). Raises the database's
    connection errors."""
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(partitions, timeout_ms=5_000) if partitions else {}
    except KafkaError:
        return False
    if not partitions or len(ends) != len(partitions):
        return False
    stored = sink.load_positions(tp.partition for tp in partitions)
    for tp in partitions:
        end = ends.get(tp)
        row = stored.get(tp.partition)
        if end is None or (end > 0 and (row is None or row.next_offset < end)):
            return False
    return True


class PartitionPositions:
    """Positions of the partitions this replica owns (only those loaded and sought to)."""

    def __init__(self, topic: str, policy: OffsetGapPolicy = OffsetGapPolicy.FAIL) -> None:
        self.topic = topic
        self.policy = policy
        self.tracker = AssignmentTracker()
        # Partition → offset of the next record to write, and the fence value for the next batch.
        self.position: dict[int, int] = {}
        self.stored: dict[int, int | None] = {}
        self.halted: dict[int, HaltedPartition] = {}
        self.topic_id: uuid.UUID | None = None
        self._synced_generation = -1
        self._lag: dict[int, int] = {}
        self.sync_error: BaseException | None = None  # why the last sync returned False

    # ------------------------------------------------------------------ state
    def needs_sync(self) -> bool:
        return self.tracker.generation != self._synced_generation or self._recheck_due()

    def invalidate(self) -> None:
        """Re-read stored positions (and re-check the logs) before the next poll."""
        self._synced_generation = -1

    def forget(self) -> None:
        """After a failed or fenced write, or a database outage: nothing is trusted until re-read."""
        self.position.clear()
        self.stored.clear()
        self._synced_generation = -1

    def advanced(self, partition: int, next_offset: int) -> None:
        """A batch committed: ``partition`` goes on at ``next_offset``, which is now also stored."""
        self.position[partition] = next_offset
        self.stored[partition] = next_offset

    def _recheck_due(self) -> bool:
        now = time.monotonic()
        return any(h.recheck_at <= now for h in self.halted.values())

    # ------------------------------------------------------------------ sync
    def sync(self, consumer: KafkaConsumer, sink: PostgresSink) -> bool:
        """Load stored positions of every owned partition, check them against the log, seek.

        Returns False when the assignment moved meanwhile (the caller tries again). Raises
        the database's connection errors to the caller, which owns outage handling.
        """
        generation, assigned = self.tracker.snapshot()
        mine = sorted((tp for tp in assigned if tp.topic == self.topic), key=lambda tp: tp.partition)
        stored = sink.load_positions(tp.partition for tp in mine)
        position: dict[int, int] = {}
        halted: dict[int, HaltedPartition] = {}
        try:
            bounds = self._log_bounds(consumer, mine)
            self.topic_id = topic_id_of(consumer, self.topic) or self.topic_id
            for tp in mine:
                row = stored[tp.partition]
                log_start, log_end = bounds[tp]
                start = self._starting_offset(consumer, tp, row.next_offset if row else None, log_start)
                gap = classify(tp.partition, start, log_start, log_end, row.topic_id if row else None, self.topic_id)
                if gap is not None:
                    moved = self._on_gap(sink, tp, gap, row.next_offset if row else None, halted)
                    if moved is None:
                        # Paused, never fetched; but kafka-python wants a position for every
                        # assigned partition, and without one each poll would fail and re-sync.
                        consumer.seek(tp, log_start)
                        continue
                    start = moved
                    stored = {**stored, tp.partition: sink.load_positions([tp.partition])[tp.partition]}
                consumer.seek(tp, start)
                position[tp.partition] = start
            paused = [tp for tp in mine if tp.partition in halted]
            if paused:
                consumer.pause(*paused)
            resumed = [tp for tp in mine if tp.partition in position and tp.partition in self.halted]
            if resumed:
                consumer.resume(*resumed)
        except (KafkaError, AssertionError, ValueError) as exc:
            # The assignment changed while we were seeking, or Kafka did not answer: the
            # caller retries (with backoff, reported if it persists).
            self.sync_error = exc
            self._synced_generation = -1
            return False
        for partition in self.halted.keys() - halted.keys():
            log.info("offset_gap_resolved", partition=partition, position=position.get(partition))
        self.halted = halted
        sink.positions.topic_id = self.topic_id
        sink.load_alert_state(position)
        self.position = position
        self.stored = {}
        for partition in position:
            row = stored[partition]
            self.stored[partition] = row.next_offset if row is not None else None
        self._synced_generation = generation
        m.REBALANCES.inc()
        m.ASSIGNED_PARTITIONS.set(len(mine))
        m.HALTED_PARTITIONS.set(len(halted))
        for partition in list(self._lag):
            if partition not in position:
                m.LAG.remove(str(partition))
                del self._lag[partition]
        log.info(
            "partitions_synced",
            partitions=sorted(position),
            positions=position,
            halted=sorted(halted),
            stored=sum(1 for v in self.stored.values() if v is not None),
        )
        return True

    def _log_bounds(
        self, consumer: KafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        if not partitions:
            return {}
        starts = consumer.beginning_offsets(partitions, timeout_ms=10_000)
        ends = consumer.end_offsets(partitions, timeout_ms=10_000)
        return {tp: (int(starts[tp]), int(ends[tp])) for tp in partitions}

    @staticmethod
    def _starting_offset(consumer: KafkaConsumer, tp: TopicPartition, stored: int | None, log_start: int) -> int:
        if stored is not None:
            return stored
        # Nothing stored yet: start where the group last committed, else at the log start.
        committed = consumer.committed(tp)
        return int(committed) if committed is not None else log_start

    def _on_gap(
        self,
        sink: PostgresSink,
        tp: TopicPartition,
        gap: OffsetGap,
        stored: int | None,
        halted: dict[int, HaltedPartition],
    ) -> int | None:
        """Apply the policy; the offset to go on from, or None when the partition halts."""
        previous = self.halted.get(tp.partition)
        if self.policy is OffsetGapPolicy.FAIL:
            entry = previous if previous is not None and previous.gap == gap else HaltedPartition(gap, time.monotonic())
            delay = entry.recheck.next_delay()
            entry.recheck_at = time.monotonic() + delay
            halted[tp.partition] = entry
            if previous is None or previous.gap != gap:
                m.OFFSET_GAPS.labels(gap.kind.value, "halted").inc()
                if gap.records_lost:
                    m.RECORDS_SKIPPED.labels(gap.kind.value).inc(gap.records_lost)
            log.error(
                "offset_gap",
                **gap.log_fields(),
                action="halted",
                halted_for_s=round(time.monotonic() - entry.since, 1),
                recheck_in_s=round(delay, 1),
                fix="iot-consumer positions reset --partition N --to earliest|latest|OFFSET (docs/RELIABILITY.md)",
            )
            return None
        target = gap.log_start if self.policy is OffsetGapPolicy.RESUME_EARLIEST else gap.log_end
        skipped = (target - gap.log_start) if gap.kind is not GapKind.BEHIND_LOG_START else (target - gap.position)
        sink.positions.topic_id = self.topic_id
        sink.record_gap_and_move(gap, stored, target, self.policy.value, skipped)
        m.OFFSET_GAPS.labels(gap.kind.value, self.policy.value).inc()
        if skipped:
            m.RECORDS_SKIPPED.labels(gap.kind.value).inc(skipped)
        log.error(
            "offset_gap",
            **gap.log_fields(),
            action=self.policy.value,
            new_position=target,
            records_skipped=skipped,
        )
        return target

    # ------------------------------------------------------------------ observation
    def update_lag(self, consumer: KafkaConsumer) -> dict[int, int]:
        """Messages waiting per consumed partition (from the fetcher's high watermarks, as of
        its last fetch); partitions whose high watermark is not known yet are left out."""
        lags: dict[int, int] = {}
        for partition, next_offset in self.position.items():
            try:
                highwater = consumer.highwater(TopicPartition(self.topic, partition))
            except KafkaError:
                continue
            if highwater is not None:
                lags[partition] = max(0, highwater - next_offset)
                m.LAG.labels(str(partition)).set(lags[partition])
        self._lag.update(lags)
        return lags

    def caught_up(self, lags: dict[int, int]) -> dict[int, int]:
        """Partitions with nothing waiting (per ``lags`` from update_lag) → their stored
        position, the fence for writes that concern them."""
        return {
            partition: stored
            for partition, stored in self.stored.items()
            if stored is not None and partition in self.position and lags.get(partition) == 0
        }


@dataclass(frozen=True)
class PositionReset:
    partition: int
    old: int | None
    new: int
    records_skipped: int


def reset_positions(
    conn: Any,
    group: str,
    topic: str,
    bounds: dict[int, tuple[int, int]],
    topic_id: uuid.UUID | None,
    partitions: list[int],
    to: str,
    allow_rewind: bool = False,
) -> list[PositionReset]:
    """Move stored positions by hand (``iot-consumer positions reset``), each recorded in
    ``offset_gaps`` with action ``manual_reset``; one transaction for all of them.

    ``to`` is ``earliest``, ``latest`` or an offset. Moving a position back within the same
    log would write its readings a second time, so that is refused unless ``allow_rewind``;
    a topic re-created since (another id) is a new log, where any offset is fair.
    """
    resets: list[PositionReset] = []
    with conn.cursor() as cur:
        cur.execute(
            """SELECT kafka_partition, next_offset, topic_id FROM consumer_positions
               WHERE consumer_group = %s AND topic = %s AND kafka_partition = ANY(%s) FOR UPDATE""",
            (group, topic, partitions),
        )
        stored = {int(p): (int(o), uuid.UUID(str(t)) if t else None) for p, o, t in cur.fetchall()}
        for partition in partitions:
            if partition not in bounds:
                raise ValueError(f"topic {topic!r} has no partition {partition}")
            log_start, log_end = bounds[partition]
            new = log_start if to == "earliest" else log_end if to == "latest" else int(to)
            if not log_start <= new <= log_end:
                raise ValueError(f"partition {partition}: offset {new} is outside the log {log_start}..{log_end}")
            old, old_id = stored.get(partition, (None, None))
            same_log = old_id is None or topic_id is None or old_id == topic_id
            if old is not None and same_log and new < old and not allow_rewind:
                raise ValueError(
                    f"partition {partition}: {new} < stored {old} would write {old - new} readings again "
                    "(pass --allow-rewind if that is what you want)"
                )
            base = old if (old is not None and same_log) else log_start
            skipped = max(0, new - max(base, log_start))
            cur.execute(
                """INSERT INTO offset_gaps (consumer_group, topic, kafka_partition, kind, stored_position,
                       log_start, log_end, records_lost, action, new_position, records_skipped, old_topic_id, topic_id)
                   VALUES (%s, %s, %s, 'manual', %s, %s, %s, NULL, 'manual_reset', %s, %s, %s, %s)""",
                (
                    group,
                    topic,
                    partition,
                    old,
                    log_start,
                    log_end,
                    new,
                    skipped,
                    str(old_id) if old_id else None,
                    str(topic_id) if topic_id else None,
                ),
            )
            cur.execute(
                """INSERT INTO consumer_positions (consumer_group, topic, kafka_partition, next_offset, topic_id)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (consumer_group, topic, kafka_partition)
                   DO UPDATE SET next_offset = EXCLUDED.next_offset, topic_id = EXCLUDED.topic_id, updated_at = now()""",
                (group, topic, partition, new, str(topic_id) if topic_id else None),
            )
            resets.append(PositionReset(partition, old, new, skipped))
    return resets
