"""The consumer's main loop: poll → validate → one PostgreSQL transaction → Kafka commit.

Guarantees (see docs/RELIABILITY.md):
- positions live in PostgreSQL and move in the same transaction as the rows, so a crash at
  any instant neither loses nor duplicates a reading;
- after every rebalance and every fetch error, the positions of all owned partitions are
  re-read from PostgreSQL, checked against Kafka's log (``positions.py``) and sought to;
- nothing stops progress silently: outages, undecodable batches, refused writes and offset
  gaps are retried with backoff, logged, counted and shown on ``/readyz`` (``outages.py``).

This module only composes and turns the loop. Each concern has its own module: the Kafka side
(``polling.py``), the writes and what moves after a commit (``writing.py``, through the one
database handle of ``writer.py``), health, lag and progress (``watching.py``), what runs on a
clock (``timers.py``), positions (``positions.py``), outages (``outages.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from iot_common.http import Health
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.postgres import CONNECTION_ERRORS
from iot_common.schema import DEFAULT_LIMITS, ReadingLimits
from iot_common.settings import KafkaSettings
from iot_consumer import metrics as m
from iot_consumer.decoding import decoder_available
from iot_consumer.housekeeping import Housekeeper, Retention
from iot_consumer.metrics import Totals
from iot_consumer.outages import DatabaseOutage, Troubles
from iot_consumer.polling import Polling
from iot_consumer.positions import OffsetGapPolicy, PartitionPositions, group_caught_up
from iot_consumer.sink import CopyFormat, PostgresSink
from iot_consumer.timers import Timers
from iot_consumer.watching import Watch
from iot_consumer.writer import Writer, Written
from iot_consumer.writing import BatchWriting, write_batch

log = get_logger(__name__)

# How often an idle replica checks that PostgreSQL still answers.
DATABASE_CHECK_S = 5.0


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
        self.options = options
        self.stop = stop
        self.topic = kafka.topic
        self.native = options.native_decoder and decoder_available()
        # The native rows' COPY format is the sink's to choose (binary only where it can take them).
        self.binary_rows = self.native and sink.copy_format is CopyFormat.BINARY
        self._duplicates = sink.duplicates.value
        self.positions = PartitionPositions(kafka.topic, options.on_offset_gap)
        self.troubles = Troubles(options.stall_after_s, options.backoff_initial_s, options.backoff_max_s)
        self.totals = Totals()
        self.watch = Watch(
            self.topic, self.positions, self.troubles, self.totals, options.stall_after_s, options.liveness_timeout_s
        )
        # The loop's only handle on PostgreSQL (writer.py): batches, and everything else through
        # writer.database(), which settles the batch in flight first.
        self.writer = Writer(
            sink, write_batch, self._settled, overlap=options.write_overlap, waited=m.WRITER_WAIT_SECONDS.inc
        )
        self.database = DatabaseOutage(
            self.writer,
            stop,
            self.watch.beat,
            options.backoff_initial_s,
            options.backoff_max_s,
            on_lost=self.positions.forget,  # positions read through a lost connection are re-read
        )
        self.writing = BatchWriting(
            self.topic, options.limits, self.writer, self.database, self.positions, self.troubles, self.totals, stop
        )
        self.polling = Polling(kafka, options.group, self.positions, self.troubles, self.writer, self.database, stop)
        self.housekeeper = Housekeeper(options.retention, retry_in_s=options.housekeeping_interval_s)
        self.timers = Timers(
            {
                "second": 1.0,
                "progress": options.progress_interval_s,
                "day_partitions": options.day_partitions_check_interval_s,
                "database_check": DATABASE_CHECK_S,
                "housekeeping": options.housekeeping_interval_s,
                "storage": options.storage_interval_s,
            },
            first_in={"second": 0.0, "housekeeping": 5.0, "storage": 5.0},
        )
        self._consumer: KafkaConsumer | None = None
        self._last_activity = time.monotonic()

    def _settled(self, outcome: Written) -> bool:
        return self.writing.settled(outcome)

    # ------------------------------------------------------------------ health
    def readiness(self) -> Health:
        """/readyz: see :meth:`Watch.readiness`."""
        return self.watch.readiness(self.database.ok, self._consumer is not None)

    def liveness(self) -> Health:
        """/healthz: see :meth:`Watch.liveness`."""
        return self.watch.liveness()

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> None:
        """Consume until stopped (signal, or idle timeout in bounded mode)."""
        self.database.connect_until_ok(lambda sink: sink.day_partitions.ensure_ahead(sink.connection()))
        if self.stop.is_set():
            return
        options = self.options
        consumer = self.polling.make_consumer(
            options.max_batch, options.session_timeout_ms, self.native, options.limits, self.binary_rows
        )
        self._consumer = self.writing.kafka = consumer
        log.info(
            "consumer_started",
            group=options.group,
            topic=self.topic,
            max_batch=options.max_batch,
            exit_when_idle_s=options.exit_when_idle_s,
            on_offset_gap=options.on_offset_gap.value,
            decoder="native" if self.native else "python",
            copy_format="binary" if self.binary_rows else "text",
            on_duplicate=self._duplicates,
        )
        m.NATIVE_DECODER.set(1 if self.native else 0)
        if not self.native and options.native_decoder:
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
            self.watch.log_progress()
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
        self.watch.beat()
        if not self.database.ok:
            self.writer.settle()
            self.database.wait(consumer)
            self.positions.forget()
            return False
        if self.positions.needs_sync():
            if not self.polling.sync(consumer):
                return False
            self._last_activity = time.monotonic()
        self.polling.retry_blocked_partitions(consumer)
        polled_at = time.monotonic()
        records = self.polling.poll(consumer, self.options.poll_timeout_ms)
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

    def _process(self, consumer: KafkaConsumer, records: dict[Any, Any]) -> None:
        started = time.perf_counter()
        batch = self.writing.build(records)
        self.polling.read_again_from_cuts(consumer, batch)
        self.writing.submit(batch, started)

    def _rest_seconds(self) -> float:
        """How long an idle loop may sleep: until a partition's retry or a halted partition's
        re-check is due, at most one poll's wait (kafka-python's heartbeats run on their own thread)."""
        now = time.monotonic()
        due = [t.retry_at for t in self.troubles.active.values() if t.partition is not None]
        due += [h.recheck_at for h in self.positions.halted.values()]
        due.append(self.timers.next_at("second"))
        wait = min(due) - now
        return min(self.options.poll_timeout_ms / 1000, max(0.01, wait))

    # ------------------------------------------------------------------ on a clock
    def _periodic(self, consumer: KafkaConsumer) -> None:
        """What runs on a clock rather than per batch."""
        now = time.monotonic()
        timers = self.timers
        if timers.due("second", now):
            self.writing.move_past_skipped_offsets(consumer)
            lags = self.watch.look(consumer, now)
            self.writing.advance_alert_clocks(lags, self.options.alert_clock_grace_s)
        if timers.due("database_check", now) and now - self._last_activity >= DATABASE_CHECK_S:
            # An idle replica writes nothing, so it would not notice PostgreSQL going away
            # (and stay "ready"): ask it, at most every few seconds and only while idle.
            self._on_database(lambda sink: sink.ping())
        if timers.due("progress", now):
            self.watch.log_progress()
        if self.database.ok and timers.due("day_partitions", now):
            self._on_database(lambda sink: sink.day_partitions.ensure_ahead(sink.connection()))
        if self.database.ok and timers.due("housekeeping", now) and self.options.retention.enabled:
            dropped = self._on_database(lambda sink: self.housekeeper.apply_retention(sink.connection()))
            if dropped:
                with self.writer.database() as sink:
                    sink.day_partitions.forget()  # a late reading may need a dropped day again
        if self.database.ok and timers.due("storage", now):
            self._on_database(lambda sink: self.housekeeper.measure_storage(sink.connection()))

    def _on_database(self, job: Callable[[PostgresSink], object]) -> bool:
        """Run ``job`` between batches (the writer settled first); False if the database went
        away or the job said so."""
        try:
            with self.writer.database() as sink:
                return job(sink) is not False
        except CONNECTION_ERRORS as exc:
            self.database.lost(exc)
            return False

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
            self.database.lost(exc)
            return False
        if caught_up:
            return True
        self._last_activity = now  # not caught up (or cannot tell): keep going
        return False
