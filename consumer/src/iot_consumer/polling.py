"""The Kafka side of the consumer: the client, its assignment and positions, and every way a
poll can fail (each handled here: paused, counted, retried with backoff, never a crash)."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from iot_common.errors import summary
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.postgres import CONNECTION_ERRORS
from iot_common.schema import ReadingLimits
from iot_common.settings import KafkaSettings
from iot_consumer import metrics as m
from iot_consumer.batch import Batch
from iot_consumer.decoding import PartitionDecodeError, install_decode_guard, install_native_decoder
from iot_consumer.outages import DatabaseOutage, Troubles, partition_key, pause_partition, resume_partition
from iot_consumer.position_store import FencedError
from iot_consumer.positions import PartitionPositions
from iot_consumer.writer import Writer

log = get_logger(__name__)

POLL = "poll"
SYNC = "position sync"


class Polling:
    """Polls one topic for a consumer group, its positions kept by :class:`PartitionPositions`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        group: str,
        positions: PartitionPositions,
        troubles: Troubles,
        writer: Writer,
        database: DatabaseOutage,
        stop: StopFlag,
    ) -> None:
        self.kafka = kafka
        self.group = group
        self.topic = kafka.topic
        self.positions = positions
        self.troubles = troubles
        self.writer = writer
        self.database = database
        self.stop = stop

    def make_consumer(
        self, max_batch: int, session_timeout_ms: int, native: bool, limits: ReadingLimits, binary_rows: bool = False
    ) -> KafkaConsumer:
        options = self.kafka.client_options()
        options["client_id"] = f"{self.kafka.client_id}-consumer"
        consumer = KafkaConsumer(
            group_id=self.group,
            enable_auto_commit=False,  # positions are committed to PostgreSQL, Kafka gets a copy
            # Never let the client jump on its own: an offset out of range raises, and the
            # offset-gap policy (positions.py) decides, loudly.
            auto_offset_reset="none",
            max_poll_records=max_batch,
            # 1 MiB per partition (was 4): measured with the native decoder, 1 process owning 6
            # partitions, 300k readings: 202 → 113 MB peak RSS for 10 % less throughput.
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            isolation_level="read_committed",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(1000, session_timeout_ms // 5),
            # Default 30 s: after a broker restart the client would wait that long to reconnect.
            reconnect_backoff_max_ms=5_000,
            metrics_enabled=False,  # client-side metrics cost CPU per record; ours are enough
            **options,
        )
        if native:
            install_native_decoder(consumer, limits, binary_rows)
        else:
            install_decode_guard(consumer, limits)
        consumer.subscribe([self.topic], listener=self.positions.tracker)
        return consumer

    def sync(self, consumer: KafkaConsumer) -> bool:
        """Re-read the owned partitions' positions from PostgreSQL, check them against Kafka's
        log and seek there (positions.py); False when that has to be tried again."""
        try:
            with self.writer.database() as sink:
                synced = self.positions.sync(consumer, sink)
        except CONNECTION_ERRORS as exc:
            self.database.lost(exc)
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
        return True

    def retry_blocked_partitions(self, consumer: KafkaConsumer) -> None:
        """Resume partitions whose backoff after a fetch/decode error has passed."""
        for trouble in self.troubles.partitions_due():
            assert trouble.partition is not None
            trouble.retry_at = float("inf")  # the next failure sets a new time; success clears it
            if trouble.partition in self.positions.position:
                resume_partition(consumer, self.topic, trouble.partition)

    def poll(self, consumer: KafkaConsumer, timeout_ms: int) -> dict[Any, Any] | None:
        """One poll; None when it failed (handled here: paused, counted, retried with backoff)."""
        try:
            records: dict[Any, Any] = consumer.poll(timeout_ms=timeout_ms)
        except PartitionDecodeError as exc:
            m.POLL_ERRORS.labels(exc.error).inc()
            partition = exc.partition.partition
            self.troubles.failed(
                partition_key(partition), exc.error, summary(exc.cause), partition=partition, offset=exc.offset
            )
            pause_partition(consumer, self.topic, partition)
            return None
        except NoOffsetForPartitionError:
            # Partitions assigned during this poll have no position until sync() seeks them.
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

    def read_again_from_cuts(self, consumer: KafkaConsumer, batch: Batch) -> None:
        """A partition the batch stopped early (too many days, see batch.DayBudget) is fetched
        again from its first record left out."""
        for partition, offset in batch.cuts.items():
            m.BATCH_CUTS.inc()
            log.info("batch_cut", partition=partition, offset=offset, days=len(batch.days), reason="day budget")
            consumer.seek(TopicPartition(self.topic, partition), offset)
