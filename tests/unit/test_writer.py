"""The writer thread (iot_consumer.writer): one batch in flight, its outcome handed back whole."""

from __future__ import annotations

import threading

import pytest

from iot_consumer.batch import Batch, PositionUpdate
from iot_consumer.writer import BatchWriter


def batch_moving(*moves: tuple[int, int | None, int]) -> Batch:
    batch = Batch()
    batch.positions = [PositionUpdate(p, expected, new) for p, expected, new in moves]
    return batch


def test_a_batch_built_while_another_is_in_flight_fences_on_what_that_one_commits() -> None:
    """pending_positions: the partitions the in-flight batch moves, at their new offsets; a partition
    no longer owned (dropped from the committed view by a rebalance) is not brought back."""
    release = threading.Event()
    writer = BatchWriter(lambda b, _started: (release.wait(5), b)[1])
    try:
        assert writer.pending_positions({0: 10, 1: None}) == {0: 10, 1: None}
        writer.submit(batch_moving((0, 10, 25), (1, None, 7), (2, 3, 9)), 0.0)
        assert writer.busy
        assert writer.pending_positions({0: 10, 1: None}) == {0: 25, 1: 7}
        release.set()
        outcome = writer.settle()
        assert outcome is not None
        assert outcome.error is None
        assert outcome.batch is outcome.submitted
        assert writer.pending_positions({0: 10}) == {0: 10}  # nothing in flight any more
        assert writer.settle() is None
    finally:
        writer.close()


def test_a_failed_write_comes_back_as_its_error_with_the_batch() -> None:
    """The loop handles fenced/outage/refused writes from the outcome, as it did inline."""

    def fail(batch: Batch, started: float) -> Batch:
        raise RuntimeError("server closed the connection")

    waited: list[float] = []
    writer = BatchWriter(fail)
    try:
        submitted = batch_moving((0, 1, 2))
        writer.submit(submitted, 1.5)
        outcome = writer.settle(waited.append)
        assert outcome is not None
        assert isinstance(outcome.error, RuntimeError)
        assert (outcome.batch, outcome.submitted, outcome.started) == (None, submitted, 1.5)
        assert len(waited) == 1
        assert waited[0] >= 0
    finally:
        writer.close()


def test_only_one_batch_is_ever_in_flight() -> None:
    """Submitting a second batch before settling the first is a programming error, caught at once."""
    release = threading.Event()
    writer = BatchWriter(lambda b, _started: (release.wait(5), b)[1])
    try:
        writer.submit(batch_moving((0, 1, 2)), 0.0)
        with pytest.raises(AssertionError):
            writer.submit(batch_moving((0, 2, 3)), 0.0)
    finally:
        release.set()
        writer.settle()
        writer.close()
