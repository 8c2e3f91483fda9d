"""How the consumer takes records out of kafka-python's fetcher, and what it does when a
fetched batch cannot be decoded.

kafka-python (3.0.12) decodes a fetched partition lazily in ``Fetcher.PartitionRecords``: a
generator over the record batches. When that generator raises (a codec whose library is
missing, a corrupt batch, a failed CRC), ``poll()`` re-raises once - and from then on the
exhausted generator yields nothing while the partition's records still count as pending, so
``Fetcher.fetched_records`` spins for ever inside ``poll()``: a core at 100 %, no log line,
no progress, and a SIGTERM whose handler never gets back to the loop. We install a subclass
on the consumer's fetcher that drains the broken batch (so kafka-python moves on) and raises
:class:`PartitionDecodeError`, which names the partition and offset. The consumer then
pauses that partition, retries with backoff and reports it (see ``stalls.py``); the
partition's position has not moved, so the retry fetches the same records again.

The hook depends on kafka-python's internals: the version is pinned in common/pyproject.toml
and tests/unit/test_kafka_hooks.py fails loudly if the hook point moves.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.errors import KafkaError


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
        except Exception as exc:
            offset = int(self.next_fetch_offset)
            self.drain()  # an exhausted generator must not stay "pending" (kafka-python would loop)
            raise PartitionDecodeError(self.topic_partition, offset, exc) from exc
        return records


def install_decode_guard(consumer: KafkaConsumer) -> None:
    """Make ``consumer``'s fetcher build :class:`GuardedPartitionRecords` (this consumer only)."""
    fetcher = consumer._fetcher
    fetcher.PartitionRecords = GuardedPartitionRecords
