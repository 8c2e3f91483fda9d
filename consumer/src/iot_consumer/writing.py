"""The consumer's writes: a poll's records become a batch, the writer commits it, and only then
do positions move on (in memory and, as a copy, in Kafka). Also the writes that carry no rows:
positions past offsets Kafka skipped, and alert clocks of idle partitions."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg2
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from iot_common.errors import summary
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.postgres import CONNECTION_ERRORS
from iot_common.schema import ReadingLimits
from iot_consumer import metrics as m
from iot_consumer.batch import Batch, PositionUpdate, build_batch
from iot_consumer.metrics import Totals
from iot_consumer.outages import DatabaseOutage, Troubles, partition_key
from iot_consumer.position_store import FencedError
from iot_consumer.positions import PartitionPositions
from iot_consumer.sink import PostgresSink
from iot_consumer.writer import Writer, Written

log = get_logger(__name__)

WRITE = "write"


def write_batch(sink: PostgresSink, batch: Batch, started: float) -> Batch:
    """Write a batch (on the writer thread, or inline) and count it in the metrics right
    after its commit, so /metrics never lags the rows PostgreSQL shows."""
    written = sink.write_with_rejects(batch)
    seconds = time.perf_counter() - started
    if written.consumed:  # not a position-only move (``move_past_skipped_offsets``)
        m.record_batch(written, datetime.now(UTC), seconds, sink.last_copy_seconds, sink.last_rollup_seconds)
    return written


class BatchWriting:
    """From a poll's records to committed positions, through the :class:`Writer`."""

    def __init__(
        self,
        topic: str,
        limits: ReadingLimits,
        writer: Writer,
        database: DatabaseOutage,
        positions: PartitionPositions,
        troubles: Troubles,
        totals: Totals,
        stop: StopFlag,
    ) -> None:
        self.topic = topic
        self.limits = limits
        self.writer = writer
        self.database = database
        self.positions = positions
        self.troubles = troubles
        self.totals = totals
        self.stop = stop
        self.kafka: KafkaConsumer | None = None  # gets a copy of every committed position

    def build(self, records: dict[Any, Any]) -> Batch:
        """The batch of a poll's ``records``, built while the previous batch may still be in
        flight: on the positions that one will commit."""
        writer = self.writer
        return build_batch(
            records,
            writer.pending_positions(self.positions.stored),
            writer.pending_positions(self.positions.position),  # type: ignore[arg-type]
            self.limits,
        )

    def submit(self, batch: Batch, started: float) -> None:
        """Hand ``batch`` to the writer once the batch in flight has settled."""
        if not self.writer.settle():
            return  # the previous batch failed: positions are re-read, these records fetched again
        if batch.positions:
            self.writer.submit(batch, started)

    def settled(self, outcome: Written) -> bool:
        """Account a write (the writer calls this when it settles): positions move on after a
        commit; any failure makes them re-read."""
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
            self.database.lost(exc)
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
        if self.kafka is not None:
            try:
                # A copy for kafka-consumer-groups and lag exporters; PostgreSQL stays the truth.
                self.kafka.commit_async(offsets=offsets)
            except KafkaError as exc:
                log.debug("kafka_commit_failed", error=repr(exc))
        return True

    def move_past_skipped_offsets(self, consumer: KafkaConsumer) -> None:
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

    def advance_alert_clocks(self, lags: dict[int, int], grace_s: float) -> None:
        """Silence needs a clock that moves without readings (see AlertStage.evaluate_idle)."""
        # the engine and the connection are the writer's while a batch is in flight
        try:
            with self.writer.database() as sink:
                alerts = sink.alerts
                if alerts is None or not self.database.ok:
                    return
                fence = self.positions.caught_up(lags)
                evaluation = alerts.evaluate_idle(fence, grace_s)
                if evaluation is None:
                    return
                sink.write_alert_clock(evaluation, fence)
        except FencedError as exc:
            log.warning("alert_clock_fenced", error=str(exc))
            self.positions.forget()
        except CONNECTION_ERRORS as exc:
            self.database.lost(exc)
        except psycopg2.Error as exc:
            log.error("alert_clock_failed", error=summary(exc))
            self.positions.forget()
