"""The writer (iot_consumer.writer): the loop's only way to PostgreSQL; one batch in flight, its
outcome handed back whole; nothing reaches the sink while a batch may still be using it."""

from __future__ import annotations

import threading
from typing import cast

import pytest

from iot_consumer.batch import Batch, PositionUpdate
from iot_consumer.sink import PostgresSink
from iot_consumer.writer import Writer, Written


class FakeSink:
    """Stands for the sink's identity only (no database is touched in these tests)."""

    closed = False

    def close(self) -> None:
        self.closed = True


def batch_moving(*moves: tuple[int, int | None, int]) -> Batch:
    batch = Batch()
    batch.positions = [PositionUpdate(p, expected, new) for p, expected, new in moves]
    return batch


def writer_with(
    write: object, outcomes: list[Written], *, overlap: bool = True, waited: list[float] | None = None
) -> tuple[Writer, FakeSink]:
    sink = FakeSink()

    def settled(outcome: Written) -> bool:
        outcomes.append(outcome)
        return outcome.error is None

    return (
        Writer(
            cast(PostgresSink, sink),
            write,  # type: ignore[arg-type]
            settled,
            overlap=overlap,
            waited=waited.append if waited is not None else None,
        ),
        sink,
    )


def test_a_batch_built_while_another_is_in_flight_fences_on_what_that_one_commits() -> None:
    """pending_positions: the partitions the in-flight batch moves, at their new offsets; a partition
    no longer owned (dropped from the committed view by a rebalance) is not brought back."""
    release = threading.Event()
    outcomes: list[Written] = []
    writer, _ = writer_with(lambda _sink, b, _started: (release.wait(5), b)[1], outcomes)
    try:
        assert writer.pending_positions({0: 10, 1: None}) == {0: 10, 1: None}
        writer.submit(batch_moving((0, 10, 25), (1, None, 7), (2, 3, 9)), 0.0)
        assert writer.busy
        assert writer.pending_positions({0: 10, 1: None}) == {0: 25, 1: 7}
        release.set()
        assert writer.settle() is True
        (outcome,) = outcomes
        assert outcome.error is None
        assert outcome.batch is outcome.submitted
        assert writer.pending_positions({0: 10}) == {0: 10}  # nothing in flight any more
        assert writer.settle() is True  # nothing to settle: nothing handed on
        assert len(outcomes) == 1
    finally:
        writer.close()


def test_the_database_is_reached_only_after_the_batch_in_flight_settled() -> None:
    """writer.database() - the loop's one way to the sink outside a batch - first waits for the
    batch in flight and accounts it, so no caller can race the writer thread's connection."""
    release = threading.Event()
    outcomes: list[Written] = []
    writer, sink = writer_with(lambda _sink, b, _started: (release.wait(5), b)[1], outcomes)
    try:
        writer.submit(batch_moving((0, 1, 2)), 0.0)
        threading.Timer(0.2, release.set).start()
        with writer.database() as handle:
            assert handle is cast(PostgresSink, sink)
            assert not writer.busy
            assert len(outcomes) == 1  # accounted before the caller got the sink
    finally:
        writer.close()
    assert sink.closed


def test_a_failed_write_comes_back_as_its_error_with_the_batch() -> None:
    """The loop handles fenced/outage/refused writes from the outcome, as it did inline."""

    def fail(_sink: object, batch: Batch, started: float) -> Batch:
        raise RuntimeError("server closed the connection")

    waited: list[float] = []
    outcomes: list[Written] = []
    writer, _ = writer_with(fail, outcomes, waited=waited)
    try:
        submitted = batch_moving((0, 1, 2))
        writer.submit(submitted, 1.5)
        assert writer.settle() is False
        (outcome,) = outcomes
        assert isinstance(outcome.error, RuntimeError)
        assert (outcome.batch, outcome.submitted, outcome.started) == (None, submitted, 1.5)
        assert len(waited) == 1
        assert waited[0] >= 0
    finally:
        writer.close()


def test_without_overlap_a_batch_is_written_and_accounted_at_once() -> None:
    """CONSUMER_WRITE_OVERLAP=false: submit writes inline and returns the loop's verdict; nothing
    is ever in flight."""

    def fail(_sink: object, batch: Batch, started: float) -> Batch:
        raise RuntimeError("refused")

    outcomes: list[Written] = []
    writer, _ = writer_with(lambda _sink, b, _started: b, outcomes, overlap=False)
    assert writer.submit(batch_moving((0, 1, 2)), 0.0) is True
    assert not writer.busy
    assert outcomes[0].error is None
    failing, _ = writer_with(fail, outcomes, overlap=False)
    assert failing.submit(batch_moving((0, 2, 3)), 0.0) is False
    assert isinstance(outcomes[1].error, RuntimeError)
    writer.close()
    failing.close()


def test_only_one_batch_is_ever_in_flight() -> None:
    """Submitting a second batch before settling the first is a programming error, caught at once."""
    release = threading.Event()
    outcomes: list[Written] = []
    writer, _ = writer_with(lambda _sink, b, _started: (release.wait(5), b)[1], outcomes)
    try:
        writer.submit(batch_moving((0, 1, 2)), 0.0)
        with pytest.raises(AssertionError):
            writer.submit(batch_moving((0, 2, 3)), 0.0)
    finally:
        release.set()
        writer.close()
