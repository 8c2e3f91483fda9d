"""The consumer's main loop: poll → validate → one PostgreSQL transaction → Kafka commit.

Guarantees (see docs/RELIABILITY.md):
- positions live in PostgreSQL and move in the same transaction as the rows, so a crash at
  any instant neither loses nor duplicates a reading;
- after every rebalance and every fetch error, the positions of all owned partitions are
  re-read from PostgreSQL, checked against Kafka's log (``positions.py``) and sought to;
- nothing stops progress silently: outages, undecodable batches, refused writes and offset
  gaps are retried with backoff, logged, counted and shown on ``/readyz`` (``outages.py``).

This module orchestrates; positions, outages, decoding, batches, the sink and the alert
stage each live in their own module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata

from iot_common.errors import summary
from iot_common.http import Health
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.postgres import CONNECTION_ERRORS
from iot_common.schema import DEFAULT_LIMITS, ReadingLimits
from iot_common.settings import KafkaSettings
from iot_consumer import metrics as m
from iot_consumer.batch import Batch, PositionUpdate, build_batch
from iot_consumer.decoding import (
    PartitionDecodeError,
    decoder_available,
    install_decode_guard,
    install_native_decoder,
)
from iot_consumer.housekeeping import Housekeeper, Retention
from iot_consumer.metrics import Totals
from iot_consumer.outages import DatabaseOutage, StallWatch, Troubles, pause_partition, resume_partition
from iot_consumer.positions import OffsetGapPolicy, PartitionPositions, group_caught_up, topic_id_of
from iot_consumer.sink import FencedError, PostgresSink
from iot_consumer.writer import Writer, Written

log = get_logger(__name__)

WRITE = "write"
POLL = "poll"
SYNC = "position sync"
# How often an idle replica checks that PostgreSQL still answers.
DATABASE_CHECK_S = 5.0


def partition_key(partition: int) -> str:
    return f"partition {partition}"


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
    day_partitions_check_interval_s: float = 600.0
    # Idle partitions' silence clock trails the wall clock by this much (producer-to-us latency).
    alert_clock_grace_s: float = 2.0
    on_offset_gap: OffsetGapPolicy = OffsetGapPolicy.FAIL
    # Decode fetched records with iot_fastpath (when installed); False = the Python path only.
    native_decoder: bool = True
    # Write batch k on a writer thread while batch k+1 is polled and decoded (writer.py).
    write_overlap: bool = True
    # Messages waiting and no progress this long (or an error repeating this long) = not ready.
    stall_after_s: float = 30.0
    # The loop not turning for this long = not alive (Kubernetes restarts the pod).
    liveness_timeout_s: float = 120.0
    retention: Retention = field(default_factory=Retention)
    housekeeping_interval_s: float = 3600.0
    storage_interval_s: float = 60.0


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
        self.options = options
        self.stop = stop
        self.topic = kafka.topic
        self.positions = PartitionPositions(kafka.topic, options.on_offset_gap)
        self.troubles = Troubles(options.stall_after_s, options.backoff_initial_s, options.backoff_max_s)
        # The loop's only handle on PostgreSQL (writer.py): batches, and everything else through
        # writer.database(), which settles the batch in flight first.
        self.writer = Writer(
            sink, self._write, self._finished, overlap=options.write_overlap, waited=m.WRITER_WAIT_SECONDS.inc
        )
        self._duplicates = sink.duplicates.value
        self.database = DatabaseOutage(self.writer, stop, self._beat, options.backoff_initial_s, options.backoff_max_s)
        self.totals = Totals()
        self.housekeeper = Housekeeper(options.retention, retry_in_s=options.housekeeping_interval_s)
        self._consumer: KafkaConsumer | None = None
        self.native = options.native_decoder and decoder_available()
        self._started = time.monotonic()
        self._heartbeat = time.monotonic()
        self._last_activity = time.monotonic()
        self.stalls = StallWatch(options.stall_after_s)
        self._progress_mark = (0, time.monotonic())  # (consumed, when) at the last progress line
        now = time.monotonic()
        self._next = {
            "second": now,
            "progress": now + options.progress_interval_s,
            "day_partitions": now + options.day_partitions_check_interval_s,
            "database_check": now + DATABASE_CHECK_S,
            "housekeeping": now + 5.0,
            "storage": now + 5.0,
        }

    def _beat(self) -> None:
        self._heartbeat = time.monotonic()

    # ------------------------------------------------------------------ health
    def readiness(self) -> Health:
        """Ready while PostgreSQL accepts writes and every owned partition makes progress.

        Not ready: the database is down; an error has kept repeating for ``stall_after_s``
        (a partition that cannot be decoded, polls failing, writes refused); a partition is
        halted by the offset-gap policy; messages wait on a partition that has not moved for
        ``stall_after_s``; or no partition is assigned a minute after start.
        """
        if not self.database.ok:
            return Health(False, "PostgreSQL unreachable")
        if self._consumer is None:
            return Health(False, "Kafka consumer not started")
        reasons = self.troubles.reasons()
        reasons += [f"halted by offset gap: {h.gap.describe()}" for h in self.positions.halted.values()]
        reasons += self.stalls.reasons()
        if reasons:
            return Health(False, "; ".join(reasons))
        owned = len(self.positions.position) + len(self.positions.halted)
        if not owned and time.monotonic() - self._started > 60.0:
            return Health(False, "no partition assigned (group not formed, or more replicas than partitions)")
        return Health(True, f"{len(self.positions.position)} partitions")

    def liveness(self) -> Health:
        """Alive while the main loop turns (a loop stuck for ``liveness_timeout_s`` asks for a restart)."""
        stalled = time.monotonic() - self._heartbeat
        if stalled > self.options.liveness_timeout_s:
            return Health(False, f"main loop stalled for {stalled:.0f} s")
        return Health(True)

    # ------------------------------------------------------------------ lifecycle
    def _make_consumer(self) -> KafkaConsumer:
        options = self.kafka_settings.client_options()
        options["client_id"] = f"{self.kafka_settings.client_id}-consumer"
        consumer = KafkaConsumer(
            group_id=self.options.group,
            enable_auto_commit=False,  # positions are committed to PostgreSQL, Kafka gets a copy
            # Never let the client jump on its own: an offset out of range raises, and the
            # offset-gap policy (positions.py) decides, loudly.
            auto_offset_reset="none",
            max_poll_records=self.options.max_batch,
            # 1 MiB per partition (was 4): measured with the native decoder, 1 process owning 6
            # partitions, 300k readings: 202 → 113 MB peak RSS for 10 % less throughput.
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            isolation_level="read_committed",
            session_timeout_ms=self.options.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.options.session_timeout_ms // 5),
            # Default 30 s: after a broker restart the client would wait that long to reconnect.
            reconnect_backoff_max_ms=5_000,
            metrics_enabled=False,  # client-side metrics cost CPU per record; ours are enough
            **options,
        )
        if self.native:
            install_native_decoder(consumer, self.options.limits)
        else:
            install_decode_guard(consumer)
        consumer.subscribe([self.topic], listener=self.positions.tracker)
        return consumer

    def run(self) -> None:
        """Consume until stopped (signal, or idle timeout in bounded mode)."""
        self.database.connect_until_ok(lambda sink: sink.day_partitions.ensure_ahead(sink.connection()))
        if self.stop.is_set():
            return
        self._consumer = consumer = self._make_consumer()
        log.info(
            "consumer_started",
            group=self.options.group,
            topic=self.topic,
            max_batch=self.options.max_batch,
            exit_when_idle_s=self.options.exit_when_idle_s,
            on_offset_gap=self.options.on_offset_gap.value,
            decoder="native" if self.native else "python",
            on_duplicate=self._duplicates,
        )
        m.NATIVE_DECODER.set(1 if self.native else 0)
        if not self.native and self.options.native_decoder:
            log.warning(
                "native_decoder_missing",
                detail="iot_fastpath is not installed: every record takes the Python path (slower)",
            )
        self._last_activity = time.monotonic()
        try:
            while not self.stop.is_set():
                if self._turn(consumer):
                    break
        finally:
            self.writer.close()  # the batch in flight commits (or not) before anything closes
            self._log_progress()
            try:
                consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("consumer_close_failed", error=repr(exc))
            log.info(
                "consumer_stopped",
                consumed=self.totals.consumed,
                inserted=self.totals.inserted,
                dead_lettered=self.totals.dead_lettered,
                batches=self.totals.batches,
                failed_batches=self.totals.failed_batches,
            )

    def _turn(self, consumer: KafkaConsumer) -> bool:
        """One turn of the loop; True when bounded mode is done."""
        self._beat()
        if not self.database.ok:
            self.writer.settle()
            self.database.wait(consumer)
            self.positions.forget()
            return False
        if self.positions.needs_sync() and not self._sync(consumer):
            return False
        self._retry_blocked_partitions(consumer)
        polled_at = time.monotonic()
        records = self._poll(consumer)
        if records is None:
            return False
        if records:
            self._process(consumer, records)
            self._last_activity = time.monotonic()
        else:
            self.writer.settle()  # nothing to overlap with: let the batch in flight land now
            if time.monotonic() - polled_at < 0.01:
                # poll() can return at once with nothing (no assignment yet, all paused, halted
                # or backing off, topic gone): rest until something is due, as long as a poll
                # would have waited.
                self.stop.wait(self._rest_seconds())
        self._periodic(consumer)
        if not records and self._idle_long_enough(consumer, time.monotonic()):
            log.info("idle_exit", idle_seconds=self.options.exit_when_idle_s)
            return True
        return False

    def _rest_seconds(self) -> float:
        """How long an idle loop may sleep: until a partition's retry or a halted partition's
        re-check is due, at most one poll's wait (kafka-python's heartbeats run on their own thread)."""
        now = time.monotonic()
        due = [t.retry_at for t in self.troubles.active.values() if t.partition is not None]
        due += [h.recheck_at for h in self.positions.halted.values()]
        due.append(self._next["second"])
        wait = min(due) - now
        return min(self.options.poll_timeout_ms / 1000, max(0.01, wait))

    def _database_lost(self, exc: BaseException) -> None:
        self.database.lost(exc)
        self.positions.forget()

    def _check_database(self) -> None:
        try:
            with self.writer.database() as sink:
                sink.ping()
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)

    def _ensure_day_partitions_ahead(self) -> None:
        try:
            with self.writer.database() as sink:
                sink.day_partitions.ensure_ahead(sink.connection())
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)

    def _housekeeping(self, job: Callable[[psycopg2.extensions.connection], bool]) -> bool:
        """Run a housekeeping job on the sink's connection (between batches); False if the database went away."""
        try:
            with self.writer.database() as sink:
                return job(sink.connection())
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)
            return False

    # ------------------------------------------------------------------ positions and polling
    def _sync(self, consumer: KafkaConsumer) -> bool:
        try:
            with self.writer.database() as sink:
                synced = self.positions.sync(consumer, sink)
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)
            return False
        except FencedError as exc:  # another replica moved a gap's position first
            log.info("position_sync_retry", error=str(exc))
            self.positions.invalidate()
            return False
        if not synced:
            error = self.positions.sync_error
            trouble = self.troubles.failed(SYNC, type(error).__name__, summary(error) if error else "assignment moved")
            self.stop.wait(max(0.0, trouble.retry_at - time.monotonic()))
            return False
        self.troubles.recovered(SYNC)
        self.troubles.forget_partitions_except(set(self.positions.position) | set(self.positions.halted))
        self._last_activity = time.monotonic()
        return True

    def _retry_blocked_partitions(self, consumer: KafkaConsumer) -> None:
        """Resume partitions whose backoff after a fetch/decode error has passed."""
        for trouble in self.troubles.partitions_due():
            assert trouble.partition is not None
            trouble.retry_at = float("inf")  # the next failure sets a new time; success clears it
            if trouble.partition in self.positions.position:
                resume_partition(consumer, self.topic, trouble.partition)

    def _poll(self, consumer: KafkaConsumer) -> dict[Any, Any] | None:
        """One poll; None when it failed (handled here: paused, counted, retried with backoff)."""
        try:
            records: dict[Any, Any] = consumer.poll(timeout_ms=self.options.poll_timeout_ms)
        except PartitionDecodeError as exc:
            m.POLL_ERRORS.labels(exc.error).inc()
            partition = exc.partition.partition
            self.troubles.failed(
                partition_key(partition), exc.error, summary(exc.cause), partition=partition, offset=exc.offset
            )
            pause_partition(consumer, self.topic, partition)
            return None
        except NoOffsetForPartitionError:
            # Partitions assigned during this poll have no position until _sync seeks them.
            self.positions.invalidate()
            return None
        except OffsetOutOfRangeError as exc:
            # The log no longer holds a position (retention, topic re-created): re-check every
            # owned partition against its log; the offset-gap policy decides what happens.
            m.POLL_ERRORS.labels("OffsetOutOfRangeError").inc()
            out_of_range = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            for tp, offset in out_of_range.items():
                self.troubles.failed(
                    partition_key(tp.partition),
                    "OffsetOutOfRangeError",
                    "fetch offset outside the log",
                    partition=tp.partition,
                    offset=int(offset),
                )
            self.positions.invalidate()
            return None
        except KafkaError as exc:
            # Broker restarts, coordinator moves, rebalances: kafka-python reconnects by itself;
            # re-read our positions afterwards in case the assignment changed.
            m.POLL_ERRORS.labels(type(exc).__name__).inc()
            trouble = self.troubles.failed(POLL, type(exc).__name__, summary(exc))
            self.positions.invalidate()
            self.stop.wait(max(0.0, trouble.retry_at - time.monotonic()))
            return None
        self.troubles.recovered(POLL)
        return records

    # ------------------------------------------------------------------ batches
    def _process(self, consumer: KafkaConsumer, records: dict[Any, Any]) -> None:
        started = time.perf_counter()
        writer = self.writer
        # Built while the previous batch may still be in flight: on the positions it will commit.
        batch = build_batch(
            records,
            writer.pending_positions(self.positions.stored),
            writer.pending_positions(self.positions.position),  # type: ignore[arg-type]
            self.options.limits,
        )
        self._read_again_from_cuts(consumer, batch)
        if not writer.settle():
            return  # the previous batch failed: positions are re-read, these records fetched again
        if batch.positions:
            writer.submit(batch, started)

    def _read_again_from_cuts(self, consumer: KafkaConsumer, batch: Batch) -> None:
        """A partition the batch stopped early (too many days, see batch.DayBudget) is fetched
        again from its first record left out."""
        for partition, offset in batch.cuts.items():
            m.BATCH_CUTS.inc()
            log.info("batch_cut", partition=partition, offset=offset, days=len(batch.days), reason="day budget")
            consumer.seek(TopicPartition(self.topic, partition), offset)

    @staticmethod
    def _write(sink: PostgresSink, batch: Batch, started: float) -> Batch:
        """Write a batch (on the writer thread, or inline) and count it in the metrics right
        after its commit, so /metrics never lags the rows PostgreSQL shows."""
        written = sink.write_with_rejects(batch)
        seconds = time.perf_counter() - started
        if written.consumed:  # not a position-only move (``_move_past_skipped_offsets``)
            m.record_batch(written, datetime.now(UTC), seconds, sink.last_copy_seconds, sink.last_rollup_seconds)
        return written

    def _finished(self, outcome: Written) -> bool:
        """Account a write (the writer calls this when it settles): positions move on after a
        commit; any failure makes them re-read."""
        consumer = self._consumer
        assert consumer is not None
        batch = outcome.batch or outcome.submitted
        exc = outcome.error
        if isinstance(exc, FencedError):
            m.BATCHES.labels("fenced").inc()
            self.totals.failed_batches += 1
            log.warning("batch_fenced", error=str(exc), rows=batch.rows)
            self.positions.forget()
            return False
        if isinstance(exc, CONNECTION_ERRORS):
            m.BATCHES.labels("database_unavailable").inc()
            self.totals.failed_batches += 1
            self._database_lost(exc)
            return False
        if isinstance(exc, psycopg2.Error):
            # Not a bad row (those are dead-lettered) and not an outage: a refused privilege,
            # a full disk, a broken schema. Retry the same records with backoff until it passes.
            m.BATCHES.labels("database_error").inc()
            m.WRITE_ERRORS.labels(type(exc).__name__).inc()
            self.totals.failed_batches += 1
            first = min(batch.positions, key=lambda u: u.partition)
            trouble = self.troubles.failed(
                WRITE, type(exc).__name__, summary(exc), partition=None, offset=first.expected
            )
            self.positions.forget()
            self.stop.wait(max(0.0, trouble.retry_at - time.monotonic()))
            return False
        if exc is not None:
            raise exc
        self.totals.add(batch)
        self.troubles.recovered(WRITE)
        offsets = {}
        for update in batch.positions:
            self.positions.advanced(update.partition, update.next_offset)
            self.troubles.recovered(partition_key(update.partition))
            offsets[TopicPartition(self.topic, update.partition)] = OffsetAndMetadata(update.next_offset, "", -1)
        try:
            # A copy for kafka-consumer-groups and lag exporters; PostgreSQL stays the truth.
            consumer.commit_async(offsets=offsets)
        except KafkaError as exc:
            log.debug("kafka_commit_failed", error=repr(exc))
        return True

    # ------------------------------------------------------------------ once a second
    def _watch_progress(self, consumer: KafkaConsumer, now: float) -> dict[int, int]:
        """Lag per partition (returned), stalls (outages.StallWatch), and a topic re-created under us."""
        lags = self.positions.update_lag(consumer)
        self.stalls.update(self.positions.position, lags, [t.what for t in self.troubles.active.values()], now)
        m.BLOCKED.set(1 if self.troubles.persistent() else 0)
        # A topic deleted and created again under the same name gets a new id: re-check
        # every position against the new log before another record is read.
        topic_id = topic_id_of(consumer, self.topic)
        if topic_id is not None and self.positions.topic_id is not None and topic_id != self.positions.topic_id:
            log.warning("topic_id_changed", topic=self.topic, old=str(self.positions.topic_id), new=str(topic_id))
            self.positions.invalidate()
        return lags

    def _move_past_skipped_offsets(self, consumer: KafkaConsumer) -> None:
        """Offsets kafka-python stepped over without returning a record - a transaction's commit
        or abort marker, aborted records, compacted gaps - move the stored position too, in a
        transaction fenced like a batch (no rows). Otherwise a partition whose newest record is a
        commit marker shows lag 1 for ever: not ready, and bounded mode never exits.

        Once every batch polled so far has settled, kafka-python's position is past exactly the
        records we were given, so anything beyond ours was skipped by the client. Partitions in
        trouble (a batch that could not be decoded) keep their position.
        """
        if not self.database.ok or not self.positions.position or not self.writer.settle() or not self.database.ok:
            return
        updates: list[PositionUpdate] = []
        for partition, ours in self.positions.position.items():
            if partition_key(partition) in self.troubles.active:
                continue
            try:
                theirs = consumer._subscription.position(TopicPartition(self.topic, partition))
            except (KeyError, KafkaError):
                continue
            if theirs is not None and theirs.offset > ours:
                updates.append(PositionUpdate(partition, self.positions.stored.get(partition), int(theirs.offset)))
        if updates:
            log.debug("positions_past_skipped_offsets", moves={u.partition: u.next_offset for u in updates})
            self.writer.submit(Batch(positions=updates), time.perf_counter())

    def _advance_alert_clocks(self, lags: dict[int, int]) -> None:
        """Silence needs a clock that moves without readings (see AlertStage.evaluate_idle)."""
        # the engine and the connection are the writer's while a batch is in flight
        try:
            with self.writer.database() as sink:
                alerts = sink.alerts
                if alerts is None or not self.database.ok:
                    return
                fence = self.positions.caught_up(lags)
                evaluation = alerts.evaluate_idle(fence, self.options.alert_clock_grace_s)
                if evaluation is None:
                    return
                sink.write_alert_clock(evaluation, fence)
        except FencedError as exc:
            log.warning("alert_clock_fenced", error=str(exc))
            self.positions.forget()
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)
        except psycopg2.Error as exc:
            log.error("alert_clock_failed", error=summary(exc))
            self.positions.forget()

    def _periodic(self, consumer: KafkaConsumer) -> None:
        """What runs on a clock rather than per batch."""
        now = time.monotonic()
        if now >= self._next["second"]:
            self._move_past_skipped_offsets(consumer)
            lags = self._watch_progress(consumer, now)
            self._advance_alert_clocks(lags)
            self._next["second"] = now + 1.0
        if now >= self._next["database_check"]:
            # An idle replica writes nothing, so it would not notice PostgreSQL going away
            # (and stay "ready"): ask it, at most every few seconds and only while idle.
            if now - self._last_activity >= DATABASE_CHECK_S:
                self._check_database()
            self._next["database_check"] = now + DATABASE_CHECK_S
        if now >= self._next["progress"]:
            self._log_progress()
            self._next["progress"] = now + self.options.progress_interval_s
        if now >= self._next["day_partitions"] and self.database.ok:
            self._ensure_day_partitions_ahead()
            self._next["day_partitions"] = now + self.options.day_partitions_check_interval_s
        if now >= self._next["housekeeping"] and self.database.ok:
            if self.options.retention.enabled and self._housekeeping(self.housekeeper.apply_retention):
                with self.writer.database() as sink:
                    sink.day_partitions.forget()  # a late reading may need a dropped day again
            self._next["housekeeping"] = now + self.options.housekeeping_interval_s
        if now >= self._next["storage"] and self.database.ok:
            self._housekeeping(self.housekeeper.measure_storage)
            self._next["storage"] = now + self.options.storage_interval_s

    def _log_progress(self) -> None:
        consumed, since = self._progress_mark
        now = time.monotonic()
        elapsed = max(now - since, 1e-9)
        t = self.totals
        self._progress_mark = (t.consumed, now)
        if t.consumed != consumed:
            log.info(
                "progress",
                consumed=t.consumed,
                inserted=t.inserted,
                dead_lettered=t.dead_lettered,
                batches=t.batches,
                rate=round((t.consumed - consumed) / elapsed, 1),
                partitions=sorted(self.positions.position),
            )

    # ------------------------------------------------------------------ bounded mode
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
        try:
            with self.writer.database() as sink:
                caught_up = group_caught_up(consumer, sink, self.topic)
        except CONNECTION_ERRORS as exc:
            self._database_lost(exc)
            return False
        if caught_up:
            return True
        self._last_activity = now  # not caught up (or cannot tell): keep going
        return False
