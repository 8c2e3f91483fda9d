"""Publishing readings to Kafka with acks=all and idempotence, counting what the broker acknowledged.

Two ways in, one client: with the native encoder (iot_producer_fastpath) readings are gathered per
partition and appended to kafka-python's batches many at a time (iot_producer.accumulator);
without it, or for a reading the encoder has no exact form for, each goes through
``KafkaProducer.send()``. Both give the same records (tests/unit/test_producer_fastpath.py), and
kafka-python's sender does the rest for both: idempotence, retries, delivery timeout.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.partitioner.default import DefaultPartitioner
from kafka.structs import TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from iot_common.logging import get_logger
from iot_common.schema import SensorReading
from iot_common.settings import KafkaSettings
from iot_producer.accumulator import PartitionReadings, RecordAppender, Unencodable, key_hash, native_available
from iot_producer.simulation import epoch_us, utc_from_us

log = get_logger(__name__)

PRODUCED = Counter("iot_producer_readings_produced_total", "Readings handed to the Kafka client")
ACKNOWLEDGED = Counter("iot_producer_readings_acknowledged_total", "Readings acknowledged by the broker (acks=all)")
FAILED = Counter("iot_producer_readings_failed_total", "Readings that failed for good after retries", ["error"])
SEND_LATENCY = Histogram(
    "iot_producer_send_latency_seconds",
    "Time from hand-off to the broker's acknowledgement: per reading on the python encoder, per "
    "append of one partition's readings on the native one",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT = Gauge("iot_producer_in_flight", "Readings sent but not yet acknowledged or failed")
ROOM_WAITS = Counter(
    "iot_producer_in_flight_waits_total", "Times generation paused because max_in_flight readings were unanswered"
)

COMPRESSION_CHOICES = ("none", "gzip", "snappy", "lz4", "zstd")

# Readings handed to the client and not yet answered for, at most: kafka-python's accumulator
# itself has no bound, so with the broker away it would grow until the delivery timeout. About
# 40 MB of records; the generator waits (without CPU) until acknowledgements make room.
DEFAULT_MAX_IN_FLIGHT = 200_000


class Encoder(StrEnum):
    """How readings become Kafka records (PRODUCER_ENCODER)."""

    AUTO = "auto"  # native when installed, else python
    NATIVE = "native"  # iot_producer_fastpath, many readings per call (fails at start without it)
    PYTHON = "python"  # one KafkaProducer.send() per reading: the reference


class CachingKeyPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """Kafka's default (murmur2) key → partition mapping, computed once per key.

    kafka-python hashes every key in pure Python (~18 µs, the largest per-message cost in
    the profile); sensors reuse the same keys, so the answer is memoised per (topic, key,
    partition count), and hashed natively where iot_producer_fastpath is installed. Same
    partitions as the Java client and kafka-python's default.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bytes, int], int] = {}

    def partition(
        self, topic: str, key: Any, serialized_key: bytes | None, value: Any, serialized_value: Any, cluster: Any
    ) -> int:
        partitions = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not partitions:  # no key, or no metadata yet: kafka-python's own answer (or error)
            return int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
        assert serialized_key is not None
        cache_key = (topic, serialized_key, len(partitions))
        found = self._cache.get(cache_key)
        if found is None:
            found = sorted(partitions)[(key_hash(serialized_key) & 0x7FFFFFFF) % len(partitions)]
            self._cache[cache_key] = found
        return found


class PublisherError(RuntimeError):
    """The publisher cannot start (broker unreachable, codec missing, ...)."""


@dataclass
class DeliveryCounts:
    produced: int = 0
    acknowledged: int = 0
    failed: int = 0

    @property
    def in_flight(self) -> int:
        return self.produced - self.acknowledged - self.failed


class ReadingPublisher:
    """Sends readings keyed by sensor id; callbacks count acknowledgements and failures.

    Callbacks mostly run on kafka-python's I/O thread, but also on the caller's (a send() that
    fails at once, a future already done): ``acknowledged`` and ``failed`` change under a lock;
    only the main thread writes ``produced``.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        compression: str = "none",
        linger_ms: int = 5,
        batch_size: int = 64 * 1024,
        encoder: Encoder = Encoder.AUTO,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if compression not in COMPRESSION_CHOICES:
            raise PublisherError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSION_CHOICES)}")
        if encoder is Encoder.NATIVE and not native_available():
            raise PublisherError(
                "PRODUCER_ENCODER=native but the native encoder (iot_producer_fastpath) is not installed: "
                "make dev builds it; PRODUCER_ENCODER=auto falls back to kafka-python's send()"
            )
        if max_in_flight < 1:
            raise PublisherError("max_in_flight must be at least 1")
        self.topic = settings.topic
        self.counts = DeliveryCounts()
        self._first_error: str | None = None
        self._max_in_flight = max_in_flight
        self._room = threading.Condition()
        self._counting = threading.Lock()
        self.room_waits = 0  # times generation paused for acknowledgements (logged at the end)
        self._waiting_for_room = False
        self._pending: dict[int, PartitionReadings] = {}
        self._partition_of: dict[bytes, int] = {}
        self._partition_count = 0
        self._partitioner = CachingKeyPartitioner()
        options: dict[str, Any] = settings.client_options()
        options["client_id"] = f"{settings.client_id}-producer"
        try:
            self._producer = KafkaProducer(
                acks="all",
                enable_idempotence=True,
                # Idempotence keeps order and drops duplicates across retries, so retry freely
                # until delivery_timeout_ms.
                retries=2**31 - 1,
                max_in_flight_requests_per_connection=5,
                partitioner=self._partitioner,
                compression_type=None if compression == "none" else compression,
                linger_ms=linger_ms,
                batch_size=batch_size,
                reconnect_backoff_max_ms=5_000,  # default 30 s: slow to come back after a broker restart
                allow_auto_create_topics=False,
                metrics_enabled=False,  # client-side metrics cost CPU per record; ours are below
                **options,
            )
        except KafkaTimeoutError:
            raise PublisherError(
                f"no Kafka broker reachable at {settings.bootstrap_servers} "
                f"within {settings.bootstrap_timeout_ms / 1000:.0f} s (KAFKA_BOOTSTRAP_SERVERS; for TLS/SASL "
                "problems see the broker's log: kafka-python reports them as timeouts)"
            ) from None
        except RuntimeError as exc:  # kafka-python: "Libraries for lz4 compression codec not found"
            raise PublisherError(f"compression {compression!r} unavailable: {exc}") from None
        if not self._producer.partitions_for(self.topic):
            self._producer.close(timeout=1)
            raise PublisherError(f"topic {self.topic!r} does not exist (KAFKA_TOPIC)")
        native = encoder is Encoder.NATIVE or (encoder is Encoder.AUTO and native_available())
        self._appender = RecordAppender(self._producer) if native else None
        self.encoder = Encoder.NATIVE if native else Encoder.PYTHON

    def _on_ack(self, started: float, _metadata: object) -> None:
        SEND_LATENCY.observe(time.monotonic() - started)
        with self._counting:
            self.counts.acknowledged += 1
        ACKNOWLEDGED.inc()
        IN_FLIGHT.dec()
        if self._waiting_for_room:
            self._make_room()

    def _on_error(self, exc: BaseException, count: int = 1) -> None:
        with self._counting:
            self.counts.failed += count
        FAILED.labels(type(exc).__name__).inc(count)
        IN_FLIGHT.dec(count)
        if self._first_error is None:
            self._first_error = repr(exc)
            log.error("send_failed", error=repr(exc))
        if self._waiting_for_room:
            self._make_room()

    def _on_append_done(self, count: int, latency_s: float, error: BaseException | None) -> None:
        """One native append answered for (kafka-python's I/O thread)."""
        if error is not None:
            self._on_error(error, count)
            return
        SEND_LATENCY.observe(latency_s)
        with self._counting:
            self.counts.acknowledged += count
        ACKNOWLEDGED.inc(count)
        IN_FLIGHT.dec(count)
        if self._waiting_for_room:
            self._make_room()

    def _make_room(self) -> None:
        with self._room:
            self._room.notify_all()

    def wait_for_room(self, stop: threading.Event | Any, until: float | None = None) -> None:
        """Block, without CPU, while ``max_in_flight`` readings are unanswered, until stop or the
        monotonic deadline ``until`` (the generator checks before each chunk, so a chunk may
        take it up to a chunk's size past the bound)."""
        if self.counts.in_flight < self._max_in_flight:
            return
        self.room_waits += 1
        ROOM_WAITS.inc()
        with self._room:
            self._waiting_for_room = True
            try:
                while self.counts.in_flight >= self._max_in_flight and not stop.is_set():
                    timeout = 0.5 if until is None else min(0.5, until - time.monotonic())
                    if timeout <= 0:
                        break
                    self._room.wait(timeout)
            finally:
                self._waiting_for_room = False

    def publish(self, reading: SensorReading, key: bytes) -> None:
        """Hand one reading to the client (blocks only when its buffer is full)."""
        try:
            # The reading's own time as the record's (CreateTime), as the native encoder writes it.
            timestamp_ms = epoch_us(reading.timestamp) // 1000
            future = self._producer.send(self.topic, value=reading.to_json(), key=key, timestamp_ms=timestamp_ms)
        except KafkaError as exc:
            self.counts.produced += 1
            PRODUCED.inc()
            IN_FLIGHT.inc()
            self._on_error(exc)
            return
        self.counts.produced += 1
        PRODUCED.inc()
        IN_FLIGHT.inc()
        future.add_callback(self._on_ack, time.monotonic())
        future.add_errback(self._on_error)

    def add(self, key: bytes, sensor_id: UUID, stamp_us: int, temperature: float, humidity: float) -> None:
        """Queue one reading for :meth:`send_pending` (native), or send it now (python)."""
        if self._appender is None:
            self.publish(SensorReading(sensor_id, utc_from_us(stamp_us), temperature, humidity), key)
            return
        partition = self._partition_of.get(key)
        if partition is None:
            try:
                partition = self._partition_for(key)
            except KafkaError as exc:  # no metadata for the topic within max_block_ms
                self.counts.produced += 1
                PRODUCED.inc()
                IN_FLIGHT.inc()
                self._on_error(exc)
                return
        pending = self._pending.get(partition)
        if pending is None:
            pending = self._pending[partition] = PartitionReadings()
        pending.add(key, stamp_us, temperature, humidity)

    def _partition_for(self, key: bytes) -> int:
        """Kafka's default partition of ``key`` (murmur2, as send() would choose), remembered
        until the topic's partition count changes."""
        partitions = self._producer._metadata.partitions_for_topic(self.topic)
        if not partitions:  # as send() does: wait for the topic's metadata (KafkaTimeoutError)
            partitions = self._producer.partitions_for(self.topic)
        if len(partitions) != self._partition_count:
            self._partition_count = len(partitions)
            self._partition_of.clear()
        partition = self._partitioner.partition(self.topic, key, key, None, None, self._producer._metadata)
        self._partition_of[key] = partition
        return partition

    def send_pending(self) -> None:
        """Append every queued reading to its partition's batch (native encoder)."""
        appender = self._appender
        if appender is None:
            return
        partitions = self._producer._metadata.partitions_for_topic(self.topic)
        if partitions is not None and len(partitions) != self._partition_count:
            self._partition_of.clear()  # partitions were added: keys map anew from the next reading
        for partition, readings in self._pending.items():
            count = len(readings)
            if not count:
                continue
            self.counts.produced += count  # before the append: its callback may run at once
            IN_FLIGHT.inc(count)
            tp = TopicPartition(self.topic, partition)
            try:
                appender.append(tp, readings, self._on_append_done)
                PRODUCED.inc(count)
            except Unencodable as exc:
                # A reading the encoder has no exact form for (a configured range far outside
                # the usual): the rest of this partition's readings go through send(), into a
                # batch of their own.
                self.counts.produced -= count - exc.appended
                IN_FLIGHT.dec(count - exc.appended)
                PRODUCED.inc(exc.appended)
                appender.close_open_batch(tp)
                self._send_one_by_one(readings, exc.appended)
            except KafkaError as exc:
                PRODUCED.inc(count)
                self._on_error(exc, count)
            finally:
                readings.clear()

    def _send_one_by_one(self, readings: PartitionReadings, start: int) -> None:
        for index in range(start, len(readings)):
            key, stamp_us = readings.keys[index], readings.stamps_us[index]
            reading = SensorReading(
                UUID(key.decode()), utc_from_us(stamp_us), readings.temperatures[index], readings.humidities[index]
            )
            self.publish(reading, key)

    def close(self, timeout_s: float = 30.0) -> DeliveryCounts:
        """Flush what is buffered (waiting for acknowledgements), then close."""
        try:
            self.send_pending()
        except Exception as exc:  # noqa: BLE001 - whatever it was, what is buffered still goes out
            log.error("send_pending_failed", error=repr(exc))
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            log.error("flush_failed", error=repr(exc))
        self._producer.close(timeout=timeout_s)
        return self.counts

    @property
    def first_error(self) -> str | None:
        return self._first_error
