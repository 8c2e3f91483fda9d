"""Decompressing a record batch without trusting what it expands to.

kafka-python decompresses a compressed batch whole (``DefaultRecordBatch._maybe_uncompress``):
the fetch bounds a batch's compressed bytes (1 MiB per partition), not what they become, and
1 MiB of zstd can expand to gigabytes - an out-of-memory kill at the same offset on every
restart. :func:`decompress_records` reads the same codecs the same way (kafka-python's codec
check, libraries and readers, xerial snappy framing), in steps, up to a limit
(``ReadingLimits.max_batch_bytes``, CONSUMER_MAX_BATCH_BYTES), and raises
:class:`BatchTooLarge` past it. The native decoder calls it once per compressed batch; for
kafka-python's own decoder (the Python path) :func:`install_bounded_decompression` puts it in
place of ``_maybe_uncompress``. What happens to a batch past the limit (one dead letter for all
its offsets, the partition goes on) is decoding.py's.
"""

from __future__ import annotations

import gzip
import io
import struct
from typing import Any

from kafka import codec as codec_module
from kafka.record.default_records import DefaultRecordBatch

from iot_common.schema import DEFAULT_LIMITS

try:  # python-snappy's own backend (a locked dependency): its parser of snappy's length preamble
    import cramjam
except ImportError:  # then python-snappy is missing too, and _assert_has_codec says so first
    cramjam = None  # type: ignore[assignment]

CODEC_NAMES = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
# Decompressed in steps of this size, so that a batch over the limit costs a small multiple of
# the limit (the output so far, one step, the codec's own window), whatever it claims or expands to.
_STEP = 1 << 20


class BatchTooLarge(ValueError):
    """A compressed batch whose records decompress to more than ``limit`` bytes."""

    def __init__(self, codec: int, compressed: int, limit: int) -> None:
        super().__init__(
            f"{CODEC_NAMES.get(codec, codec)} batch of {compressed:,} bytes decompresses to more than "
            f"{limit:,} (CONSUMER_MAX_BATCH_BYTES)"
        )
        self.codec = codec
        self.compressed = compressed
        self.limit = limit


def _read_bounded(stream: Any, codec: int, compressed: int, limit: int) -> bytes:
    """Everything ``stream`` (a decompressing reader) yields, or BatchTooLarge past ``limit``."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_STEP, limit + 1 - size))
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise BatchTooLarge(codec, compressed, limit)
        parts.append(chunk)


def _snappy_block(block: bytes, codec: int, compressed: int, budget: int) -> bytes:
    """One raw snappy block, decompressed only when the length it declares (its preamble, read
    by the library's own parser: the decompressor allocates that much and holds the block to
    it) fits ``budget``; a preamble it cannot read fails as the decompressor would."""
    try:
        declared = int(cramjam.snappy.decompress_raw_len(block))
    except Exception:  # noqa: BLE001 - the decompressor's own error follows
        declared = 0
    if declared > budget:
        raise BatchTooLarge(codec, compressed, budget)
    return bytes(codec_module.snappy.decompress(block))


def _snappy_bounded(data: bytes, limit: int) -> bytes:
    """kafka-python's ``snappy_decode`` (one raw block, or xerial's framing read block by block
    the same way, a bad block size included), each block held to what is left of ``limit``."""
    codec = DefaultRecordBatch.CODEC_SNAPPY
    if not codec_module._detect_xerial_stream(data):
        return _snappy_block(data, codec, len(data), limit)
    parts: list[bytes] = []
    size = 0
    body = data[16:]
    cursor = 0
    while cursor < len(body):
        (block_size,) = struct.unpack_from("!i", body, cursor)
        cursor += 4
        end = cursor + block_size
        try:
            part = _snappy_block(body[cursor:end], codec, len(data), limit - size)
        except BatchTooLarge:
            raise BatchTooLarge(codec, len(data), limit) from None
        size += len(part)
        parts.append(part)
        cursor = end
    return b"".join(parts)


def _lz4_bounded(data: bytes, limit: int) -> bytes:
    """kafka-python's ``lz4.frame.decompress`` (the first frame; an unfinished one fails), read in
    steps: ``max_length`` is what python-lz4 allocates per call, whatever the frame needs."""
    codec = DefaultRecordBatch.CODEC_LZ4
    decompressor = codec_module.lz4.LZ4FrameDecompressor()  # lz4.frame, as kafka-python imports it
    parts: list[bytes] = []
    size = 0
    pending = data
    idle = 0
    while not decompressor.eof:
        chunk = decompressor.decompress(pending, max_length=min(_STEP, limit + 1 - size))
        pending = b""
        size += len(chunk)
        if size > limit:
            raise BatchTooLarge(codec, len(data), limit)
        parts.append(chunk)
        idle = 0 if chunk else idle + 1
        if idle and (decompressor.needs_input or idle > 1):
            # lz4.frame.decompress (kafka-python's) refuses a frame that ends early, likewise
            raise RuntimeError("LZ4F_decompress failed: the frame ended before its end mark")
    return b"".join(parts)


def decompress_records(codec: int, data: bytes, limit: int = DEFAULT_LIMITS.max_batch_bytes) -> bytes:
    """A compressed batch's records, decompressed as kafka-python's decoder does it
    (``DefaultRecordBatch._maybe_uncompress``: the same codec check, the same libraries and
    readers, xerial snappy framing included), but never past ``limit`` bytes: BatchTooLarge
    instead, having held a small multiple of the limit. One call per batch."""
    DefaultRecordBatch._assert_has_codec(DefaultRecordBatch, codec)
    compressed = len(data)
    if codec == DefaultRecordBatch.CODEC_GZIP:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="r") as gz:
            return _read_bounded(gz, codec, compressed, limit)
    if codec == DefaultRecordBatch.CODEC_SNAPPY:
        return _snappy_bounded(data, limit)
    if codec == DefaultRecordBatch.CODEC_LZ4:
        return _lz4_bounded(data, limit)
    reader = codec_module.zstd.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    with reader:
        return _read_bounded(reader, codec, compressed, limit)


class _PythonPathBound:
    """The limit kafka-python's own decoder keeps to (the Python path, and formats the extension
    leaves to it): set by install_decode_guard / install_native_decoder; one consumer per process."""

    limit = DEFAULT_LIMITS.max_batch_bytes


def install_bounded_decompression(limit: int) -> None:
    """kafka-python decompresses a batch whole (``DefaultRecordBatch._maybe_uncompress``): a
    crafted batch of 1 MiB can expand to gigabytes and take the process down on every restart.
    Process-wide, kafka-python's decoder now decompresses through :func:`decompress_records`,
    bounded by ``limit``; a batch past it raises :class:`BatchTooLarge` with its offsets."""
    _PythonPathBound.limit = limit
    if getattr(DefaultRecordBatch._maybe_uncompress, "bounded", False):
        return

    def maybe_uncompress(self: Any) -> None:
        if not self._decompressed:
            codec = self.compression_type
            if codec != self.CODEC_NONE:
                data = bytes(memoryview(self._buffer)[self._pos :])
                try:
                    records = decompress_records(codec, data, _PythonPathBound.limit)
                except BatchTooLarge as exc:
                    raise OversizedBatch(exc, bytes(self._buffer)) from exc
                self._buffer = bytearray(records)
                self._pos = 0
        self._decompressed = True

    maybe_uncompress.bounded = True  # type: ignore[attr-defined]
    maybe_uncompress.original = DefaultRecordBatch._maybe_uncompress  # type: ignore[attr-defined]
    DefaultRecordBatch._maybe_uncompress = maybe_uncompress


class OversizedBatch(Exception):
    """kafka-python's decoder met a batch over the limit: ``raw`` is the whole record batch."""

    def __init__(self, cause: BatchTooLarge, raw: bytes) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.raw = raw
