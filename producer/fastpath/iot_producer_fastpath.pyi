"""Type stubs of the C extension (producer/fastpath/iot_producer_fastpath.c)."""

def encode_records(
    keys: list[bytes],
    stamps_us: list[int],
    temperatures: list[float],
    humidities: list[float],
    start: int,
    first_timestamp_ms: int,
    first_offset_delta: int,
    room: int,
    at_least_one: bool,
    /,
) -> tuple[bytes, int, int]: ...
def murmur2(key: bytes, /) -> int: ...
