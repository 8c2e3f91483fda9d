"""How the consumer takes records out of kafka-python's fetcher: natively when it can, and what
it does when a fetched batch cannot be decoded.

**Native decoding.** kafka-python keeps group membership, fetching and positions; what it fetched
for a partition (the raw record batches) is handed to ``iot_fastpath`` (a C extension,
consumer/fastpath), which checks CRCs, validates the strict common form of a reading and writes
its COPY row in one pass. A take then returns a :class:`NativeRows` (all those rows at once)
followed by ordinary ``ConsumerRecord`` objects for the records outside the strict form, which
the Python validator - the reference - judges as before. A compressed batch (gzip, snappy, lz4,
zstd) is decompressed with kafka-python's own codecs, bounded, one call per batch
(decompression.py), and its records parsed natively like any other; one that expands past the
limit becomes a single :class:`BatchDeadLetter` for all its offsets, on both decoders. Batches in older
message formats continue on kafka-python's own decoder, as do fetches with aborted
transactions or a consumer with deserializers. Without the extension everything runs on
the Python path (``decoder_available()``).

kafka-python (3.0.12) decodes a fetched partition lazily in ``Fetcher.PartitionRecords``: a
generator over the record batches. When that generator raises (a codec whose library is
missing, a corrupt batch, a failed CRC), ``poll()`` re-raises once - and from then on the
exhausted generator yields nothing while the partition's records still count as pending, so
``Fetcher.fetched_records`` spins for ever inside ``poll()``: a core at 100 %, no log line,
no progress, and a SIGTERM whose handler never gets back to the loop. We install a subclass
on the consumer's fetcher that drains the broken batch (so kafka-python moves on) and raises
:class:`PartitionDecodeError`, which names the partition and offset. The consumer then
pauses that partition, retries with backoff and reports it (see ``outages.py``); the
partition's position has not moved, so the retry fetches the same records again.

The hook depends on kafka-python's internals: the version is pinned in common/pyproject.toml
and tests/unit/test_kafka_hooks.py fails loudly if the hook point moves.
"""

from __future__ import annotations

import itertools
import struct
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import ModuleType
from typing import Any, ClassVar

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError, KafkaError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords

from iot_common.logging import get_logger
from iot_common.schema import DEFAULT_LIMITS, ReadingLimits, RejectReason
from iot_consumer.decompression import (
    BatchTooLarge,
    OversizedBatch,
    decompress_records,
    install_bounded_decompression,
)
from iot_consumer.summary import to_micros

try:
    import iot_fastpath
except ImportError:  # not built (a platform without a C compiler): the Python path does everything
    iot_fastpath = None  # type: ignore[assignment]
fastpath: ModuleType | None = iot_fastpath

log = get_logger(__name__)


class Decoder(StrEnum):
    """The consumer's choice of decoder (CONSUMER_DECODER)."""

    AUTO = "auto"
    NATIVE = "native"
    PYTHON = "python"


def decoder_available() -> bool:
    """True when the native decoder (iot_fastpath) is importable."""
    return fastpath is not None


class PartitionDecodeError(KafkaError):  # type: ignore[misc]
    """A fetched batch of ``partition`` at or after ``offset`` could not be decoded."""

    retriable = True

    def __init__(self, partition: TopicPartition, offset: int, cause: BaseException) -> None:
        super().__init__(f"partition {partition.partition} at offset {offset}: {cause!r}")
        self.partition = partition
        self.offset = offset
        self.cause = cause

    @property
    def error(self) -> str:
        """A bounded label for metrics: the underlying error's class name."""
        return type(self.cause).__name__


class GuardedPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """``PartitionRecords`` whose failure is final and named, never a silent spin."""

    def take(self, n: int | None = None) -> list[Any]:
        try:
            records: list[Any] = super().take(n)
        except OversizedBatch as exc:
            # Dead-lettered whole, and the partition goes on after it (the rest of this fetch is
            # fetched again from there): one crafted batch must not hold the partition.
            letter = oversized_batch(self.topic_partition.topic, self.topic_partition.partition, exc.raw, exc.cause)
            self.next_fetch_offset = letter.offset + 1
            self.drain()
            return [letter]
        except Exception as exc:
            offset = int(self.next_fetch_offset)
            self.drain()  # an exhausted generator must not stay "pending" (kafka-python would loop)
            raise PartitionDecodeError(self.topic_partition, offset, exc) from exc
        return records


class _LenientText(bytes):
    """A header key's bytes whose ``decode`` keeps what is not UTF-8 as ``\\xNN`` (text that
    encodes again: kafka-python re-encodes keys to count header bytes)."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes.decode(self, encoding, "backslashreplace")


class _LenientBuffer(bytearray):
    """A record batch's bytes whose slices decode leniently (see :func:`install_lenient_header_keys`)."""

    def __getitem__(self, index: Any) -> Any:
        item = bytearray.__getitem__(self, index)
        return _LenientText(item) if isinstance(index, slice) else item


def install_lenient_header_keys() -> None:
    """Header keys are bytes on the wire (``kcat -H`` sends any): kafka-python decodes them as
    strict UTF-8, and one key that is not would fail its whole batch again on every retry (the
    partition stuck for ever). On that error the batch is read again with lenient keys; the
    consumer never reads headers. Process-wide, once; the common case is untouched."""
    if getattr(DefaultRecordBatch._read_msg, "lenient_header_keys", False):
        return
    original = DefaultRecordBatch._read_msg

    def read_msg(self: Any, *args: Any, **kwargs: Any) -> Any:
        position = self._pos
        try:
            return original(self, *args, **kwargs)
        except UnicodeDecodeError:
            self._buffer = _LenientBuffer(self._buffer)
            self._pos = position
            return original(self, *args, **kwargs)

    read_msg.lenient_header_keys = True  # type: ignore[attr-defined]
    DefaultRecordBatch._read_msg = read_msg


def install_decode_guard(consumer: KafkaConsumer, limits: ReadingLimits = DEFAULT_LIMITS) -> None:
    """Make ``consumer``'s fetcher build :class:`GuardedPartitionRecords` (this consumer only),
    compressed batches bounded by ``limits.max_batch_bytes`` (:func:`install_bounded_decompression`)."""
    install_lenient_header_keys()
    install_bounded_decompression(limits.max_batch_bytes)
    fetcher = consumer._fetcher
    fetcher.PartitionRecords = GuardedPartitionRecords


@dataclass(frozen=True, slots=True)
class NativeRows:
    """The valid readings one take decoded natively: ``rows`` (an ``iot_fastpath.Rows``) holds
    their COPY text and compact values; ``buffer[start:end]`` the record batches they came from,
    so the Python path can decode them again (:meth:`records`) when it must judge them itself."""

    rows: Any
    topic: str
    partition: int
    buffer: Any
    start: int
    end: int

    def records(self) -> list[Any]:
        """These rows' records as kafka-python decodes them (ConsumerRecord, offset order)."""
        wanted = set(self.rows.offsets())
        found: list[Any] = []
        memory = MemoryRecords(bytes(self.buffer[self.start : self.end]))
        batch = memory.next_batch()
        while batch is not None:
            for record in batch:
                if record.offset in wanted:
                    found.append(_consumer_record(self.topic, self.partition, batch.leader_epoch, record))
            batch = memory.next_batch()
        return found


def _consumer_record(topic: str, partition: int, leader_epoch: int, record: Any) -> Any:
    return _record(
        topic, partition, leader_epoch, record.offset, record.timestamp, record.timestamp_type,
        record.key, record.value, record.headers,
    )  # fmt: skip


def _record(
    topic: str,
    partition: int,
    leader_epoch: int,
    offset: int,
    stamp: int,
    stamp_type: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
) -> Any:
    """A ``ConsumerRecord`` as kafka-python's fetcher builds it (no deserializers, no checksum)."""
    return ConsumerRecord(
        topic, partition, leader_epoch, offset, stamp, stamp_type, key, value, headers, None,
        len(key) if key is not None else -1, len(value) if value is not None else -1, _header_size(headers),
    )  # fmt: skip


def _header_size(headers: list[tuple[str, bytes | None]]) -> int:
    return sum(len(k.encode()) + len(v or b"") for k, v in headers) if headers else -1


class NativeTake(list[Any]):
    """What a native take returns to kafka-python's fetcher: a :class:`NativeRows` and the
    fallback records (the item holding the take's last record comes last); ``len()`` is the number of *records* taken (the fetcher counts it against
    ``max_poll_records``), while iteration yields the items (``list.extend`` copies those)."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = 0

    def __len__(self) -> int:
        return self.taken


def expand(records_by_partition: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    """The same poll with every :class:`NativeRows` decoded again by kafka-python: the Python path's input."""
    expanded: dict[Any, list[Any]] = {}
    for tp, records in records_by_partition.items():
        out: list[Any] = []
        for record in records:
            if type(record) is NativeRows:
                out.extend(record.records())
            else:
                out.append(record)
        out.sort(key=lambda r: r.offset)
        expanded[tp] = out
    return expanded


@dataclass(frozen=True, slots=True)
class BatchDeadLetter:
    """A whole record batch that goes to ``dead_letters`` as one row (:class:`BatchTooLarge`):
    ``offset`` is its last offset (the position moves past it, as after a record), ``first_offset``
    its first; ``value`` the raw batch as fetched (compressed: bounded by the fetch)."""

    topic: str
    partition: int
    first_offset: int
    offset: int
    timestamp: int | None
    value: bytes
    reason: str
    detail: str
    key: None = None


def oversized_batch(topic: str, partition: int, raw: bytes, cause: BatchTooLarge) -> BatchDeadLetter:
    """The dead letter of ``raw``, a v2 record batch (its header read here) over the limit."""
    base_offset, _length = struct.unpack_from(">qi", raw, 0)
    (last_delta,) = struct.unpack_from(">i", raw, 23)
    (max_timestamp,) = struct.unpack_from(">q", raw, 35)
    last_offset = base_offset + max(0, last_delta)
    log.warning(
        "batch_dead_lettered",
        partition=partition,
        first_offset=base_offset,
        last_offset=last_offset,
        reason=RejectReason.BATCH_TOO_LARGE.value,
        detail=str(cause),
    )
    return BatchDeadLetter(
        topic,
        partition,
        base_offset,
        last_offset,
        max_timestamp,
        raw,
        RejectReason.BATCH_TOO_LARGE.value,
        f"offsets {base_offset}..{last_offset}: {cause}",
    )


class NativeDecoding:
    """The validation limits in the form ``iot_fastpath.Cursor.take`` wants them (per take: "now" moves)."""

    def __init__(self, limits: ReadingLimits, binary: bool = False) -> None:
        self.limits = limits
        # Rows in COPY BINARY rather than text (the sink's choice: PostgresSink.copy_format).
        self.binary = binary

    def take_bounds(self, now: datetime | None = None) -> tuple[float, float, float, float, int, int, int]:
        lim = self.limits
        earliest, latest = lim.window(now or datetime.now(UTC))
        return (
            lim.temperature_min,
            lim.temperature_max,
            lim.humidity_min,
            lim.humidity_max,
            lim.max_payload_bytes,
            to_micros(earliest),
            to_micros(latest),
        )


class NativePartitionRecords(GuardedPartitionRecords):
    """``PartitionRecords`` that hands the fetched bytes to ``iot_fastpath`` (see the module doc)."""

    decoding: ClassVar[NativeDecoding]

    def __init__(
        self,
        fetch_offset: int,
        tp: TopicPartition,
        records: Any,
        key_deserializer: Any = None,
        value_deserializer: Any = None,
        check_crcs: bool = True,
        isolation_level: Any = IsolationLevel.READ_UNCOMMITTED,
        aborted_transactions: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            fetch_offset,
            tp,
            records,
            key_deserializer,
            value_deserializer,
            check_crcs,
            isolation_level,
            aborted_transactions,
            **kwargs,
        )
        self._cursor: Any = None
        self._buffer: Any = None
        native = (
            fastpath is not None
            and isinstance(records, MemoryRecords)
            and key_deserializer is None
            and value_deserializer is None
            and check_crcs
            # kafka-python filters aborted transactions with what the fetch response lists
            and (isolation_level == IsolationLevel.READ_UNCOMMITTED or not aborted_transactions)
        )
        if native:
            assert fastpath is not None
            self._buffer = records._buffer
            limit = self.decoding.limits.max_batch_bytes
            self._cursor = fastpath.Cursor(
                self._buffer, fetch_offset, decompress=lambda codec, data: decompress_records(codec, data, limit)
            )

    def take(self, n: int | None = None) -> list[Any]:
        cursor = self._cursor
        if cursor is None:
            return super().take(n)
        assert fastpath is not None
        limit = n if n is not None else sys.maxsize
        tp = self.topic_partition
        start = cursor.batch_start
        try:
            rows, fallbacks, status, taken, last_is_row = cursor.take(
                limit, tp.partition, *self.decoding.take_bounds(), binary=self.decoding.binary
            )
        except fastpath.CorruptBatch as exc:
            offset: int = cursor.next_fetch_offset
            # A batch its codec could not decompress carries the codec's own error (the Python path's).
            codec_error = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
            if isinstance(codec_error, BatchTooLarge):
                # As on the Python path: dead-lettered whole, the partition goes on after it.
                raw = _batch_at(self._buffer, cursor.position)
                letter = oversized_batch(tp.topic, tp.partition, raw, codec_error)
                self.next_fetch_offset = letter.offset + 1
                (self.leader_epoch,) = struct.unpack_from(">i", raw, 12)  # the position's epoch
                self.drain()
                return [letter]
            self.drain()
            raise PartitionDecodeError(tp, offset, codec_error or CorruptRecordError(str(exc))) from exc
        self.next_fetch_offset = cursor.next_fetch_offset
        self.leader_epoch = cursor.leader_epoch
        self.records_read = cursor.records_read
        self.bytes_read = cursor.bytes_read
        result = NativeTake()
        native = NativeRows(rows, tp.topic, tp.partition, self._buffer, start, cursor.position) if rows else None
        if native is not None and not last_is_row:
            result.append(native)
        for offset, stamp, stamp_type, key, value, headers, _size in fallbacks:
            result.append(
                _record(tp.topic, tp.partition, self.leader_epoch, offset, stamp, stamp_type, key, value, headers)
            )
        if native is not None and last_is_row:
            # the take's last record is last in the list: the new position follows it (batch.py)
            result.append(native)
        result.taken = taken
        if status == "done":
            self.drain()
        elif status == "python":
            # A batch the extension does not read (compressed, older format): kafka-python's
            # decoder takes over from there for the rest of this fetch.
            self._cursor = None
            rest = MemoryRecords(bytes(self._buffer[cursor.position :]))
            self.record_iterator = itertools.dropwhile(
                self._maybe_skip_record, self._unpack_records(tp, rest, None, None)
            )
            if not taken:
                return super().take(n)
        return result


def _batch_at(buffer: Any, position: int) -> bytes:
    """The whole record batch that starts at ``position`` of a fetched buffer (framed already)."""
    (length,) = struct.unpack_from(">i", buffer, position + 8)
    return bytes(buffer[position : position + 12 + length])


def install_native_decoder(consumer: KafkaConsumer, limits: ReadingLimits, binary: bool = False) -> None:
    """Make ``consumer``'s fetcher decode natively (this consumer only), its rows in COPY BINARY
    when ``binary``; also guards like :func:`install_decode_guard`."""
    install_lenient_header_keys()
    install_bounded_decompression(limits.max_batch_bytes)
    decoding = NativeDecoding(limits, binary)
    records_class = type("ConsumerPartitionRecords", (NativePartitionRecords,), {"decoding": decoding})
    consumer._fetcher.PartitionRecords = records_class
