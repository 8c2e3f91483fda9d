"""The consumer's main loop: poll → validate → one PostgreSQL transaction → Kafka commit.

Guarantees (see docs/RELIABILITY.md):
- positions live in PostgreSQL and move in the same transaction as the rows, so a crash at
  any instant neither loses nor duplicates a reading;
- after every rebalance and every failed batch, the positions of all owned partitions are
  re-read from PostgreSQL and the consumer seeks there;
- while PostgreSQL is down, every partition is paused (memory holds at most one batch) and
  the loop keeps polling so the member stays in its group; it resumes by itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from iot_common.http import Health
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.schema import DEFAULT_LIMITS, ReadingLimits
from iot_common.settings import KafkaSettings
from iot_consumer import metrics as m
from iot_consumer.batch import Batch, build_batch
from iot_consumer.sink import CONNECTION_ERRORS, FencedError, PostgresSink

log = get_logger(__name__)


@dataclass(frozen=True)
class ConsumerOptions:
    group: str = "iot-consumer"
    max_batch: int = 10_000
    poll_timeout_ms: int = 500
    exit_when_idle_s: float | None = None
    limits: ReadingLimits = DEFAULT_LIMITS
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    progress_interval_s: float = 10.0
    # Kafka's default is 45 s: a crashed replica's partitions would sit idle that long.
    session_timeout_ms: int = 10_000
    partitions_check_interval_s: float = 600.0
    # Idle partitions' silence clock trails the wall clock by this much (producer-to-us latency).
    alert_clock_grace_s: float = 2.0


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
class Totals:
    consumed: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    failed_batches: int = 0
    dead_by_reason: dict[str, int] = field(default_factory=dict)


class ConsumerService:
    """One replica of the consumer group."""

    def __init__(
        self,
        kafka: KafkaSettings,
        sink: PostgresSink,
        options: ConsumerOptions,
        stop: StopFlag,
    ) -> None:
        self.kafka_settings = kafka
        self.sink = sink
        self.options = options
        self.stop = stop
        self.topic = kafka.topic
        self.tracker = AssignmentTracker()
        self.totals = Totals()
        # Partition → offset of the next record to write (only for partitions whose stored
        # position has been loaded and sought to), and the fence value for the next batch.
        self.position: dict[int, int] = {}
        self.stored: dict[int, int | None] = {}
        self._synced_generation = -1
        self._database_ok = False
        self._consumer: KafkaConsumer | None = None
        self._last_activity = time.monotonic()
        self._started = time.monotonic()
        self._last_kafka_error = float("-inf")
        self._heartbeat = time.monotonic()
        self._next_alert_clock = time.monotonic()

    # ------------------------------------------------------------------ health
    def readiness(self) -> Health:
        """Ready while PostgreSQL accepts writes and Kafka answers polls.

        Kafka counts as unreachable after a poll failed within the last 10 s, or when no
        partition has been assigned a minute after start (the group never formed).
        """
        if not self._database_ok:
            return Health(False, "PostgreSQL unreachable")
        if self._consumer is None:
            return Health(False, "Kafka consumer not started")
        now = time.monotonic()
        if now - self._last_kafka_error < 10.0:
            return Health(False, "Kafka unreachable (poll failing)")
        if not self.position and now - self._started > 60.0:
            return Health(False, "no partition assigned (group not formed, or more replicas than partitions)")
        return Health(True, f"{len(self.position)} partitions")

    def liveness(self) -> Health:
        """Alive while the main loop turns (a loop stuck for 2 minutes asks for a restart)."""
        stalled = time.monotonic() - self._heartbeat
        if stalled > 120.0:
            return Health(False, f"main loop stalled for {stalled:.0f} s")
        return Health(True)

    # ------------------------------------------------------------------ lifecycle
    def _make_consumer(self) -> KafkaConsumer:
        options = self.kafka_settings.client_options()
        options["client_id"] = f"{self.kafka_settings.client_id}-consumer"
        consumer = KafkaConsumer(
            group_id=self.options.group,
            enable_auto_commit=False,  # positions are committed to PostgreSQL, Kafka gets a copy
            auto_offset_reset="earliest",
            max_poll_records=self.options.max_batch,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            isolation_level="read_committed",
            session_timeout_ms=self.options.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.options.session_timeout_ms // 5),
            # Default 30 s: after a broker restart the client would wait that long to reconnect.
            reconnect_backoff_max_ms=5_000,
            metrics_enabled=False,  # client-side metrics cost CPU per record; ours are enough
            **options,
        )
        consumer.subscribe([self.topic], listener=self.tracker)
        return consumer

    def run(self) -> Totals:
        """Consume until stopped (signal, or idle timeout in bounded mode)."""
        self._connect_database_until_ok()
        if self.stop.is_set():
            return self.totals
        self._consumer = consumer = self._make_consumer()
        log.info(
            "consumer_started",
            group=self.options.group,
            topic=self.topic,
            max_batch=self.options.max_batch,
            exit_when_idle_s=self.options.exit_when_idle_s,
        )
        next_progress = time.monotonic() + self.options.progress_interval_s
        next_partition_check = time.monotonic() + self.options.partitions_check_interval_s
        progress_mark = (0, 0, time.monotonic())
        self._last_activity = time.monotonic()
        try:
            while not self.stop.is_set():
                self._heartbeat = time.monotonic()
                if not self._database_ok:
                    self._wait_for_database(consumer)
                    continue
                if self.tracker.generation != self._synced_generation and not self._sync_positions(consumer):
                    continue
                polled_at = time.monotonic()
                try:
                    records = consumer.poll(timeout_ms=self.options.poll_timeout_ms)
                except KafkaError as exc:
                    # Broker restarts, coordinator moves, rebalances: kafka-python reconnects by
                    # itself; re-read our positions afterwards in case the assignment changed.
                    log.warning("kafka_poll_failed", error=repr(exc), retry_in_s=1.0)
                    self._last_kafka_error = time.monotonic()
                    self._synced_generation = -1
                    self.stop.wait(1.0)
                    continue
                if records:
                    self._process(consumer, records)
                    self._last_activity = time.monotonic()
                elif time.monotonic() - polled_at < 0.01:
                    # poll() can return at once with nothing (no assignment yet, topic gone):
                    # don't spin a core.
                    self.stop.wait(0.1)
                now = time.monotonic()
                self._update_lag(consumer)
                if now >= self._next_alert_clock:
                    self._advance_alert_clocks(consumer)
                    self._next_alert_clock = now + 1.0
                if now >= next_progress:
                    progress_mark = self._log_progress(progress_mark)
                    next_progress = now + self.options.progress_interval_s
                if now >= next_partition_check and self._database_ok:
                    self._ensure_partitions_ahead()
                    next_partition_check = now + self.options.partitions_check_interval_s
                if not records and self._idle_long_enough(consumer, now):
                    log.info("idle_exit", idle_seconds=self.options.exit_when_idle_s)
                    break
        finally:
            self._log_progress(progress_mark)
            try:
                consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("consumer_close_failed", error=repr(exc))
            self.sink.close()
            log.info(
                "consumer_stopped",
                consumed=self.totals.consumed,
                inserted=self.totals.inserted,
                dead_lettered=self.totals.dead_lettered,
                batches=self.totals.batches,
                failed_batches=self.totals.failed_batches,
            )
        return self.totals

    def _idle_long_enough(self, consumer: KafkaConsumer, now: float) -> bool:
        """Bounded mode: nothing new for the idle time, and the whole group is caught up.

        "Caught up" is checked on every partition of the topic - not only the ones this
        replica owns - against the positions stored in PostgreSQL: right after a crash, a dead
        member may still hold partitions until its session expires, and leaving then would
        leave their messages unread.
        """
        idle = self.options.exit_when_idle_s
        if idle is None or now - self._last_activity < idle:
            return False
        if self._group_caught_up(consumer):
            return True
        self._last_activity = now  # not caught up (or cannot tell): keep going
        return False

    def _group_caught_up(self, consumer: KafkaConsumer) -> bool:
        try:
            partitions = [TopicPartition(self.topic, p) for p in consumer.partitions_for_topic(self.topic) or ()]
            ends = consumer.end_offsets(partitions, timeout_ms=5_000) if partitions else {}
            stored = self.sink.load_positions(tp.partition for tp in partitions)
        except KafkaError:
            return False
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)
            return False
        if not partitions or len(ends) != len(partitions):
            return False
        for tp in partitions:
            end = ends.get(tp)
            position = stored.get(tp.partition)
            if end is None or (end > 0 and (position is None or position < end)):
                return False
        return True

    # ------------------------------------------------------------------ database availability
    def _connect_database_until_ok(self) -> None:
        backoff = self.options.backoff_initial_s
        while not self.stop.is_set():
            try:
                self.sink.ping()
                self._ensure_partitions_ahead()
                self._set_database_ok(True)
                return
            except CONNECTION_ERRORS as exc:
                self._set_database_ok(False)
                log.warning("database_unavailable", error=str(exc).strip(), retry_in_s=backoff)
                self.sink.discard_connection()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.options.backoff_max_s)

    def _ensure_partitions_ahead(self) -> None:
        try:
            self.sink.partitions.ensure_ahead(self.sink.connection())
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)

    def _set_database_ok(self, ok: bool) -> None:
        self._database_ok = ok
        m.DATABASE_UP.set(1 if ok else 0)

    def _database_lost(self, exc: BaseException) -> None:
        if self._database_ok:
            log.error("database_lost", error=str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        self._set_database_ok(False)
        self.sink.discard_connection()
        self._forget_positions()

    def _forget_positions(self) -> None:
        self.position.clear()
        self.stored.clear()
        self._synced_generation = -1

    def _wait_for_database(self, consumer: KafkaConsumer) -> None:
        """Outage: keep every partition paused and the membership alive until PostgreSQL is back."""
        backoff = self.options.backoff_initial_s
        log.warning("pausing_consumption", reason="PostgreSQL unavailable")
        while not self.stop.is_set():
            retry_at = time.monotonic() + backoff
            while time.monotonic() < retry_at and not self.stop.is_set():
                self._heartbeat = time.monotonic()
                try:
                    assigned = consumer.assignment()  # may change while we wait: pause newcomers too
                    if assigned:
                        consumer.pause(*assigned)
                    consumer.poll(timeout_ms=200)  # paused: returns nothing, but keeps us in the group
                except KafkaError as exc:
                    log.debug("kafka_error_while_paused", error=repr(exc))
                    self.stop.wait(0.2)
            try:
                self.sink.ping()
            except CONNECTION_ERRORS as exc:
                self.sink.discard_connection()
                backoff = min(backoff * 2, self.options.backoff_max_s)
                log.warning(
                    "database_still_unavailable",
                    error=str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                    retry_in_s=backoff,
                )
                continue
            self._set_database_ok(True)
            self._forget_positions()
            try:
                paused = consumer.paused()
                if paused:
                    consumer.resume(*paused)
            except KafkaError as exc:
                log.warning("resume_failed", error=repr(exc))
            log.info("resuming_consumption")
            return

    # ------------------------------------------------------------------ positions
    def _sync_positions(self, consumer: KafkaConsumer) -> bool:
        """Load stored positions of every owned partition and seek there. False on DB failure."""
        generation, assigned = self.tracker.snapshot()
        mine = {tp for tp in assigned if tp.topic == self.topic}
        try:
            stored = self.sink.load_positions(tp.partition for tp in mine)
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)
            return False
        position: dict[int, int] = {}
        try:
            for tp in mine:
                offset = stored[tp.partition]
                if offset is None:
                    # Nothing stored yet: start where the group last committed, else earliest.
                    committed = consumer.committed(tp)
                    if committed is not None:
                        consumer.seek(tp, committed)
                        position[tp.partition] = committed
                    else:
                        consumer.seek_to_beginning(tp)
                        position[tp.partition] = consumer.position(tp)
                else:
                    consumer.seek(tp, offset)
                    position[tp.partition] = offset
        except (KafkaError, AssertionError, ValueError) as exc:
            # The assignment changed while we were seeking; the next round starts over.
            log.info("position_sync_retry", error=repr(exc))
            self._synced_generation = -1
            return False
        try:
            self.sink.load_alert_state(position)
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)
            return False
        self.position = position
        self.stored = {p: stored[p] for p in position}
        self._synced_generation = generation
        m.REBALANCES.inc()
        m.ASSIGNED_PARTITIONS.set(len(position))
        for label in list(m.LAG._metrics):
            if int(label[0]) not in position:
                m.LAG.remove(*label)
        log.info(
            "partitions_synced",
            partitions=sorted(position),
            positions=position,
            stored=sum(1 for v in self.stored.values() if v is not None),
        )
        self._last_activity = time.monotonic()
        return True

    # ------------------------------------------------------------------ batches
    def _process(self, consumer: KafkaConsumer, records: dict[Any, Any]) -> None:
        started = time.perf_counter()
        batch = build_batch(records, self.stored, self.position, self.options.limits)
        if not batch.positions:
            return
        try:
            self._write_with_rejects(batch)
        except FencedError as exc:
            m.BATCHES.labels("fenced").inc()
            self.totals.failed_batches += 1
            log.warning("batch_fenced", error=str(exc), rows=batch.rows)
            self._forget_positions()
            return
        except CONNECTION_ERRORS as exc:
            m.BATCHES.labels("database_unavailable").inc()
            self.totals.failed_batches += 1
            self._database_lost(exc)
            return
        except psycopg2.Error as exc:
            m.BATCHES.labels("database_error").inc()
            self.totals.failed_batches += 1
            log.error(
                "batch_failed", error=str(exc).strip(), rows=batch.rows, retry_in_s=self.options.backoff_initial_s
            )
            self._forget_positions()
            self.stop.wait(self.options.backoff_initial_s)
            return
        committed_at = datetime.now(UTC)
        self._account(batch, committed_at, time.perf_counter() - started)
        offsets = {}
        for update in batch.positions:
            self.position[update.partition] = update.next_offset
            self.stored[update.partition] = update.next_offset
            offsets[TopicPartition(self.topic, update.partition)] = OffsetAndMetadata(update.next_offset, "", -1)
        try:
            # A copy for kafka-consumer-groups and lag exporters; PostgreSQL stays the truth.
            consumer.commit_async(offsets=offsets)
        except KafkaError as exc:
            log.debug("kafka_commit_failed", error=repr(exc))

    def _write_with_rejects(self, batch: Batch) -> None:
        """Write the batch; if PostgreSQL refuses a row the validator let through, dead-letter
        that row and write the rest (one bad row never stops the pipeline)."""
        try:
            self.sink.write(batch)
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            log.warning("batch_rejected_rows", error=str(exc).strip().splitlines()[0], rows=batch.rows)
            rejected = self.sink.find_rejected_lines(batch.copy_lines)
            if not rejected:
                raise
            batch.reject_rows(rejected)
            self.sink.write(batch)

    def _account(self, batch: Batch, committed_at: datetime, seconds: float) -> None:
        totals = self.totals
        totals.batches += 1
        totals.consumed += batch.consumed
        totals.inserted += batch.rows
        totals.dead_lettered += len(batch.dead_letters)
        m.BATCHES.labels("committed").inc()
        m.MESSAGES_CONSUMED.inc(batch.consumed)
        m.ROWS_INSERTED.inc(batch.rows)
        m.BATCH_SIZE.observe(batch.consumed)
        m.BATCH_SECONDS.observe(seconds)
        m.LAST_COMMIT.set(committed_at.timestamp())
        if batch.rows:
            m.COPY_SECONDS.observe(self.sink.last_copy_seconds)
        for newest in batch.newest.values():
            m.END_TO_END_SECONDS.observe(max(0.0, (committed_at - newest).total_seconds()))
        for letter in batch.dead_letters:
            m.DEAD_LETTERS.labels(letter.reason).inc()
            totals.dead_by_reason[letter.reason] = totals.dead_by_reason.get(letter.reason, 0) + 1
        log.debug(
            "batch_committed",
            consumed=batch.consumed,
            rows=batch.rows,
            dead_letters=len(batch.dead_letters),
            seconds=round(seconds, 4),
        )

    # ------------------------------------------------------------------ alerts
    def _advance_alert_clocks(self, consumer: KafkaConsumer) -> None:
        """Silence needs a clock that moves without readings: for partitions that are fully
        consumed (nothing waiting in Kafka), the wall clock stands in for the readings' clock."""
        alerts = self.sink.alerts
        if alerts is None or not alerts.rules.silence or not self._database_ok:
            return
        wall = datetime.now(UTC) - timedelta(seconds=self.options.alert_clock_grace_s)
        fence: dict[int, int] = {}  # idle partition → its stored position (writes are fenced on it)
        for partition, next_offset in self.position.items():
            stored = self.stored.get(partition)
            try:
                highwater = consumer.highwater(TopicPartition(self.topic, partition))
            except KafkaError:
                continue
            if highwater is not None and next_offset >= highwater and stored is not None:
                fence[partition] = stored
        if not fence:
            return
        evaluation = alerts.engine.evaluate_clock(dict.fromkeys(fence, wall))
        if not evaluation.writes_anything:
            alerts.engine.apply(evaluation)
            return
        try:
            self.sink.write_alert_clock(evaluation, fence)
        except FencedError as exc:
            log.warning("alert_clock_fenced", error=str(exc))
            self._forget_positions()
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)
        except psycopg2.Error as exc:
            log.error("alert_clock_failed", error=str(exc).strip())
            self._forget_positions()

    # ------------------------------------------------------------------ observability
    def _update_lag(self, consumer: KafkaConsumer) -> None:
        for partition, next_offset in self.position.items():
            try:
                highwater = consumer.highwater(TopicPartition(self.topic, partition))
            except KafkaError:
                continue
            if highwater is not None:
                m.LAG.labels(str(partition)).set(max(0, highwater - next_offset))

    def _log_progress(self, mark: tuple[int, int, float]) -> tuple[int, int, float]:
        consumed, _inserted, since = mark
        now = time.monotonic()
        elapsed = max(now - since, 1e-9)
        t = self.totals
        if t.consumed != consumed:
            log.info(
                "progress",
                consumed=t.consumed,
                inserted=t.inserted,
                dead_lettered=t.dead_lettered,
                batches=t.batches,
                rate=round((t.consumed - consumed) / elapsed, 1),
                partitions=sorted(self.position),
            )
        return (t.consumed, t.inserted, now)
