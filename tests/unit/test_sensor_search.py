"""The dashboard's sensor picker searches by id prefix: which prefixes make a range, and which
range they make (the query then scans only that range of the rollup's key)."""

from __future__ import annotations

import uuid

import pytest

from iot_dashboard.queries import sensor_id_range


def test_a_prefix_becomes_the_inclusive_range_of_ids_that_start_with_it() -> None:
    """Dashes and case do not matter; every id with the prefix lies inside the range."""
    low, high = sensor_id_range("3F2A-") or ("", "")
    assert (low, high) == ("3f2a0000-0000-0000-0000-000000000000", "3f2affff-ffff-ffff-ffff-ffffffffffff")
    inside = uuid.UUID("3f2a1234-5678-4abc-8def-0123456789ab")
    assert uuid.UUID(low) <= inside <= uuid.UUID(high)


def test_a_whole_id_is_a_range_of_one() -> None:
    """A full id (any case) finds exactly that sensor."""
    sensor = str(uuid.uuid4())
    assert sensor_id_range(sensor.upper()) == (sensor, sensor)


@pytest.mark.parametrize("prefix", ["", "   ", "xyz", "3f2a'; DROP TABLE sensores; --", "0" * 33])
def test_what_cannot_start_a_sensor_id_searches_nothing(prefix: str) -> None:
    """Empty, non-hex (an injection attempt among them) or too long: no query runs."""
    assert sensor_id_range(prefix) is None
