"""The kafka-python internals the consumer relies on are where we expect them.

These fail loudly when kafka-python changes under us (its version is pinned in
common/pyproject.toml): the decode guard and the topic-id lookup depend on them.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import Fetcher

from iot_consumer.decoding import GuardedPartitionRecords, PartitionDecodeError, install_decode_guard


def test_kafka_python_is_the_pinned_version() -> None:
    """The hooks below were read against 3.0.12; a new version must be re-read first."""
    assert version("kafka-python") == "3.0.12"


def test_fetcher_builds_partition_records_through_its_own_attribute() -> None:
    """install_decode_guard replaces `PartitionRecords` on the fetcher instance: that only works
    while the fetcher creates them as `self.PartitionRecords(...)`."""
    assert "self.PartitionRecords(" in inspect.getsource(Fetcher._parse_fetched_data)
    assert hasattr(Fetcher.PartitionRecords, "take")
    assert hasattr(Fetcher.PartitionRecords, "drain")


def test_guard_is_installed_on_a_real_consumer() -> None:
    """A consumer with no broker still has its fetcher; the guard lands on it, not on the class."""
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 8, 0))
    try:
        install_decode_guard(consumer)
        assert consumer._fetcher.PartitionRecords is GuardedPartitionRecords
        assert Fetcher.PartitionRecords is not GuardedPartitionRecords
        assert consumer._client.cluster.topic_id("absent") is None  # positions.topic_id_of relies on it
    finally:
        consumer.close()


def test_a_batch_that_cannot_be_decoded_is_drained_and_named() -> None:
    """The failure kafka-python would spin on (an exhausted record generator still counted as
    pending) becomes one PartitionDecodeError naming partition and offset, and the records
    object is drained so the fetcher moves on."""

    class Broken:
        def next_batch(self) -> None:
            raise RuntimeError("Libraries for snappy compression codec not found")

    records = GuardedPartitionRecords(42, TopicPartition("t", 3), Broken())
    with pytest.raises(PartitionDecodeError) as caught:
        records.take(10)
    assert (caught.value.partition.partition, caught.value.offset, caught.value.error) == (3, 42, "RuntimeError")
    assert not records  # drained: kafka-python no longer counts it as pending
