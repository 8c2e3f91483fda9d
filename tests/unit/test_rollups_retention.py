"""Rollup aggregation and retention settings, without any server."""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iot_consumer.decoding import fastpath
from iot_consumer.housekeeping import Retention, RetentionConfigError
from iot_consumer.readings import Reading
from iot_consumer.summary import BatchSummary, PythonSummary, to_micros

# The two implementations of the batch summary the rollups are written from (C when built).
SUMMARIES: list[type[BatchSummary] | None] = [PythonSummary, fastpath.Summary if fastpath is not None else None]

SENSORS = [str(uuid.UUID(int=i)) for i in range(1, 4)]
START = datetime(2026, 11, 27, 22, 58, tzinfo=UTC)

readings_strategy = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.sampled_from(SENSORS),
        st.integers(0, 4 * 3600).map(lambda s: START + timedelta(seconds=s, microseconds=s % 7 * 1000)),
        st.floats(-40, 85, allow_nan=False),
        st.floats(0, 100, allow_nan=False),
    ),
    max_size=300,
)


def group_by(readings: list[Reading], width: timedelta) -> dict[tuple[str, datetime], tuple[float, ...]]:
    """What `GROUP BY sensor_id, date_trunc(...)` gives: the reference the rollups must equal."""
    groups: dict[tuple[str, datetime], list[tuple[float, float]]] = defaultdict(list)
    for _partition, sensor, stamp, temperatura, umidade in readings:
        floor = datetime.fromtimestamp(stamp.timestamp() // width.total_seconds() * width.total_seconds(), UTC)
        groups[(sensor, floor)].append((temperatura, umidade))
    return {
        key: (
            len(values),
            math.fsum(t for t, _ in values),
            min(t for t, _ in values),
            max(t for t, _ in values),
            math.fsum(u for _, u in values),
            min(u for _, u in values),
            max(u for _, u in values),
        )
        for key, values in groups.items()
    }


def assert_same(
    found: dict[tuple[str, datetime], list[float]], expected: dict[tuple[str, datetime], tuple[float, ...]]
) -> None:
    assert found.keys() == expected.keys()
    for key, want in expected.items():
        got = found[key]
        assert got[0] == want[0]
        assert (got[2], got[3], got[5], got[6]) == (want[2], want[3], want[5], want[6])
        assert got[1] == pytest.approx(want[1], rel=1e-9, abs=1e-9)
        assert got[4] == pytest.approx(want[4], rel=1e-9, abs=1e-9)


def buckets(
    kind: type[BatchSummary] | None, readings: list[Reading], seconds: int
) -> dict[tuple[str, datetime], list[float]]:
    """The rollup rows a summary of ``readings`` (in that order) writes, parsed."""
    if kind is None:
        pytest.skip("iot_fastpath is not built (make dev builds it)")
    summary = kind()
    for offset, (partition, sensor, stamp, temperatura, umidade) in enumerate(readings):
        summary.add_reading(partition, offset, sensor, to_micros(stamp), temperatura, umidade)
    found = {}
    for line in summary.rollup_copy(seconds).decode().splitlines():
        sensor, bucket, *values = line.split("\t")
        found[(sensor, datetime.fromisoformat(bucket))] = [float(v) for v in values]
    return found


@pytest.mark.parametrize("kind", SUMMARIES, ids=["python", "c"])
@settings(max_examples=200, deadline=None)
@given(readings=readings_strategy)
def test_minute_and_hour_buckets_equal_a_group_by_over_the_same_readings(
    kind: type[BatchSummary] | None, readings: list[Reading]
) -> None:
    """Per sensor and UTC minute (and hour, merged from the minutes): the same count, min and
    max as a GROUP BY, and the same sums up to rounding - whatever the order of the readings."""
    assert_same(buckets(kind, readings, 60), group_by(readings, timedelta(minutes=1)))
    assert_same(buckets(kind, readings, 3600), group_by(readings, timedelta(hours=1)))
    assert_same(buckets(kind, list(reversed(readings)), 60), group_by(readings, timedelta(minutes=1)))


@pytest.mark.parametrize("kind", SUMMARIES, ids=["python", "c"])
def test_a_late_reading_lands_in_its_own_past_bucket(kind: type[BatchSummary] | None) -> None:
    """A reading from yesterday, in a batch of today's, updates yesterday's minute and hour."""
    sensor = SENSORS[0]
    today = datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)
    late = datetime(2026, 11, 27, 23, 59, 59, 999000, tzinfo=UTC)
    readings = [Reading(0, sensor, today, 25.0, 50.0), Reading(0, sensor, late, 21.0, 40.0)]
    minutes = buckets(kind, readings, 60)
    assert set(minutes) == {(sensor, today.replace(second=0)), (sensor, late.replace(second=0, microsecond=0))}
    hours = buckets(kind, readings, 3600)
    assert hours[(sensor, datetime(2026, 11, 27, 23, tzinfo=UTC))][:4] == [1, 21.0, 21.0, 21.0]


@pytest.mark.parametrize(
    ("raw", "minute", "hour", "problem"),
    [
        (30, 90, 730, None),
        (0, 0, 0, None),  # keep everything
        (30, 0, 0, None),  # rollups kept for ever
        (30, 30, 30, None),
        (30, 7, 730, "MINUTE_ROLLUP_RETENTION_DAYS=7 keeps less than RETENTION_DAYS=30"),
        (0, 90, 0, "MINUTE_ROLLUP_RETENTION_DAYS=90 keeps less than RETENTION_DAYS=everything"),
        (30, 90, 60, "HOUR_ROLLUP_RETENTION_DAYS=60 keeps less than MINUTE_ROLLUP_RETENTION_DAYS=90"),
        (-1, 0, 0, "RETENTION_DAYS=-1"),
    ],
)
def test_retention_refuses_rollups_kept_shorter_than_the_data_below_them(
    raw: int, minute: int, hour: int, problem: str | None
) -> None:
    """A coarser table must reach as far back as a finer one (else long windows show holes);
    the setting that breaks the rule is named."""
    if problem is None:
        assert Retention(raw, minute, hour).days() == {
            "sensores": raw,
            "sensores_minuto": minute,
            "sensores_hora": hour,
        }
        return
    with pytest.raises(RetentionConfigError, match=problem):
        Retention(raw, minute, hour)
