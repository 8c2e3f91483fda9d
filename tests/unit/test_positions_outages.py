"""Offset-gap classification, retry schedules and trouble bookkeeping, without any server."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from iot_common.retry import Backoff
from iot_consumer.gaps import GapKind, classify
from iot_consumer.outages import StallWatch, Troubles

OLD, NEW = uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("position", "start", "end", "stored_id", "topic_id", "kind", "lost"),
    [
        (50, 0, 100, OLD, OLD, None, None),  # inside the log
        (100, 0, 100, OLD, OLD, None, None),  # at the end: caught up, nothing waiting
        (0, 0, 0, None, NEW, None, None),  # empty log, nothing stored about the id yet
        (150, 0, 100, OLD, OLD, GapKind.AHEAD_OF_LOG, None),  # log re-created or truncated
        (10, 40, 100, OLD, OLD, GapKind.BEHIND_LOG_START, 30),  # retention deleted 30 unread
        (50, 0, 100, OLD, NEW, GapKind.TOPIC_RECREATED, None),  # same offsets, another log
        (50, 0, 100, None, NEW, None, None),  # positions written before topic ids were stored
    ],
)
def test_gaps_are_classified_with_their_numbers(
    position: int,
    start: int,
    end: int,
    stored_id: uuid.UUID | None,
    topic_id: uuid.UUID | None,
    kind: GapKind | None,
    lost: int | None,
) -> None:
    """A position the log holds is no gap; each other case has its kind and, for retention,
    the exact number of records deleted before anyone read them."""
    gap = classify(3, position, start, end, stored_id, topic_id)
    if kind is None:
        assert gap is None
        return
    assert gap is not None
    assert (gap.kind, gap.records_lost) == (kind, lost)
    assert "partition 3" in gap.describe()


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    """Delays double from wait_initial, never exceed wait_max, and are jittered (not lockstep)."""
    backoff = Backoff(wait_initial=0.5, wait_max=8.0, wait_jitter=0.5)
    delays = [backoff.next_delay() for _ in range(10)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(d <= 8.0 for d in delays)
    assert delays[-1] >= 7.5
    assert len({round(d, 6) for d in delays[:4]}) == 4
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_backoff_rejects_nonsense() -> None:
    """A schedule whose first wait exceeds its cap is refused at construction."""
    with pytest.raises(ValueError, match="wait_initial"):
        Backoff(wait_initial=5, wait_max=1)


def test_backoff_wait_returns_at_once_when_stop_is_set() -> None:
    """Waiting happens on the stop flag: a stop request ends the wait immediately."""
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert Backoff(wait_initial=30, wait_max=30, wait_jitter=0).wait(stop)
    assert time.monotonic() - started < 1.0


def test_troubles_count_attempts_and_become_persistent() -> None:
    """Each failure counts an attempt with a growing retry time; only a trouble older than
    stall_after_s makes the replica unready; recovery forgets it."""
    troubles = Troubles(stall_after_s=0.05, wait_initial=0.01, wait_max=1.0)
    first = troubles.failed("partition 2", "UnsupportedCodecError", "snappy", partition=2, offset=7)
    assert first.attempts == 1
    assert not troubles.persistent()
    time.sleep(0.06)
    again = troubles.failed("partition 2", "UnsupportedCodecError", "snappy", partition=2, offset=7)
    assert again is first
    assert again.attempts == 2
    assert [t.what for t in troubles.persistent()] == ["partition 2"]
    time.sleep(again.retry_at - time.monotonic() + 0.01)
    assert [t.partition for t in troubles.partitions_due()] == [2]
    troubles.recovered("partition 2")
    assert not troubles.active
    assert not troubles.persistent()


def test_a_partition_with_messages_waiting_and_no_progress_is_stalled() -> None:
    """Whatever the cause: lag > 0 and the same position for stall_after_s = stalled; moving
    on, or having nothing waiting, clears it; partitions no longer owned are forgotten."""
    watch = StallWatch(stall_after_s=30)
    watch.update({0: 100, 1: 50}, {0: 10, 1: 0}, [], now=1000.0)
    watch.update({0: 100, 1: 50}, {0: 10, 1: 0}, [], now=1029.0)
    assert watch.stalled == {}
    watch.update({0: 100, 1: 50}, {0: 12, 1: 0}, ["partition 0"], now=1031.0)
    assert watch.stalled == {0: (12, 31.0)}
    assert watch.reasons() == ["partition 0: 12 messages waiting, no progress for 31 s"]
    watch.update({0: 105, 1: 50}, {0: 7, 1: 0}, [], now=1032.0)  # it moved
    assert watch.stalled == {}
    watch.update({0: 105, 1: 50}, {0: 0, 1: 0}, [], now=1099.0)  # (updates come every second)
    watch.update({1: 50}, {1: 3}, [], now=1100.0)  # partition 0 revoked; 1 starts waiting now
    watch.update({1: 50}, {1: 3}, [], now=1128.0)
    assert watch.stalled == {}
