"""The kafka-python internals the consumer relies on are where we expect them.

These fail loudly when kafka-python changes under us (its version is pinned in
common/pyproject.toml): the decode guard and the topic-id lookup depend on them.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka import codec as kafka_codec
from kafka.consumer.fetcher import Fetcher
from kafka.consumer.subscription_state import SubscriptionState
from kafka.errors import UnsupportedCodecError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords

from iot_common.schema import DEFAULT_LIMITS
from iot_consumer.decoding import (
    GuardedPartitionRecords,
    NativePartitionRecords,
    PartitionDecodeError,
    install_decode_guard,
    install_lenient_header_keys,
    install_native_decoder,
)
from iot_consumer.decompression import decompress_records


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


def test_native_decoder_hook_points_are_where_it_expects_them() -> None:
    """NativePartitionRecords reads MemoryRecords' raw buffer, hands the rest of a fetch to
    ``_unpack_records`` and relies on ``take``'s result being counted with ``len()``."""
    assert "_buffer" in MemoryRecords.__slots__
    params = list(inspect.signature(Fetcher.PartitionRecords.__init__).parameters)
    assert params[:9] == [
        "self",
        "fetch_offset",
        "tp",
        "records",
        "key_deserializer",
        "value_deserializer",
        "check_crcs",
        "isolation_level",
        "aborted_transactions",
    ]
    assert list(inspect.signature(Fetcher.PartitionRecords._unpack_records).parameters) == [
        "self",
        "tp",
        "records",
        "key_deserializer",
        "value_deserializer",
    ]
    append = inspect.getsource(Fetcher._append)
    assert "part_records = part.take(max_records)" in append
    assert "return len(part_records)" in append
    assert "drained[tp].extend(part_records)" in append


def test_native_decompression_uses_what_kafka_pythons_decoder_uses() -> None:
    """decoding.decompress_records mirrors DefaultRecordBatch._maybe_uncompress (kafka-python's,
    which install_bounded_decompression replaces and keeps): the same codec check
    (_assert_has_codec, so a missing library fails both paths alike), the same four functions,
    and inside them the readers decompress_records bounds (GzipFile, lz4.frame, xerial snappy
    blocks, zstandard's stream_reader across frames)."""
    method = DefaultRecordBatch._maybe_uncompress
    source = inspect.getsource(getattr(method, "original", method))
    assert "self._assert_has_codec(compression_type)" in source
    for call in (
        "gzip_decode(data)",
        "snappy_decode(data.tobytes())",
        "lz4_decode(data.tobytes())",
        "zstd_decode(data.tobytes())",
    ):
        assert call in source, call
    assert "gzip.GzipFile(fileobj=buf, mode='r')" in inspect.getsource(kafka_codec.gzip_decode)
    assert kafka_codec.lz4_decode is kafka_codec.lz4.decompress
    assert kafka_codec.lz4.__name__ == "lz4.frame"
    snappy = inspect.getsource(kafka_codec.snappy_decode)
    assert "_detect_xerial_stream(payload)" in snappy
    assert "struct.unpack_from('!i'" in snappy
    assert "stream_reader(io.BytesIO(payload), read_across_frames=True)" in inspect.getsource(kafka_codec.zstd_decode)
    assert list(inspect.signature(DefaultRecordBatch._assert_has_codec).parameters) == ["self", "compression_type"]
    with pytest.raises(UnsupportedCodecError):
        decompress_records(6, b"")


def test_native_decoder_is_installed_on_a_real_consumer() -> None:
    """install_native_decoder gives this consumer's fetcher its own PartitionRecords class,
    carrying the consumer's limits; kafka-python's class stays as it was."""
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 8, 0))
    try:
        install_native_decoder(consumer, DEFAULT_LIMITS)
        assert issubclass(consumer._fetcher.PartitionRecords, NativePartitionRecords)
        assert consumer._fetcher.PartitionRecords.decoding.limits is DEFAULT_LIMITS
        assert Fetcher.PartitionRecords is not consumer._fetcher.PartitionRecords
    finally:
        consumer.close()


def test_the_hooks_of_the_misbehaving_device_fixes_are_where_they_expect_them() -> None:
    """The lenient header-key re-read wraps DefaultRecordBatch._read_msg (once, process-wide),
    and positions past transaction markers read SubscriptionState.position(tp) (.offset)."""
    install_lenient_header_keys()
    install_lenient_header_keys()
    wrapped = DefaultRecordBatch._read_msg
    assert getattr(wrapped, "lenient_header_keys", False)
    originals = [cell.cell_contents for cell in wrapped.__closure__ or ()]
    assert any("h_key_len" in inspect.getsource(f) for f in originals if inspect.isfunction(f))
    state = SubscriptionState()
    tp = TopicPartition("t", 0)
    state.assign_from_user([tp])
    state.seek(tp, 42)
    assert state.position(tp).offset == 42
