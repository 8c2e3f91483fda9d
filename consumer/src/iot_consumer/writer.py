"""The consumer's only way to PostgreSQL: batches through :meth:`Writer.submit`, everything else
through :meth:`Writer.database`.

With overlap on, batch k goes to PostgreSQL on a writer thread while batch k+1 is polled and
decoded: psycopg2 releases the GIL while it waits for the server (COPY, the rollup upserts,
COMMIT). At most one batch is in flight. Nothing else about a batch changes: the same transaction
carries its rows, rollups, dead letters and positions, and a batch built while its predecessor
was in flight fences on the positions that predecessor commits (:meth:`Writer.pending_positions`)
- if the predecessor fails, the successor is dropped unwritten and every position is re-read from
PostgreSQL, as after any failed write.

The rule "settle the batch in flight before touching the database" is kept by structure, not by
memory: the loop holds no sink. :meth:`Writer.database` is the one way to it, and it settles the
batch in flight first (its outcome goes to ``on_settled``, the loop's accounting) - so position
syncs, alert clocks, housekeeping and bounded mode's check can never race the writer thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from iot_consumer.batch import Batch
from iot_consumer.sink import PostgresSink


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of one write: the batch as written (or None) and the error (or None)."""

    submitted: Batch
    started: float  # perf_counter when the batch was built
    batch: Batch | None
    error: BaseException | None


# (sink, batch, started) → the batch as written (a natively decoded one may be rebuilt)
WriteBatch = Callable[[PostgresSink, Batch, float], Batch]


class Writer:
    """Owns the sink; at most one batch in flight (on its thread when ``overlap``)."""

    def __init__(
        self,
        sink: PostgresSink,
        write: WriteBatch,
        on_settled: Callable[[Written], bool],
        *,
        overlap: bool,
        waited: Callable[[float], None] | None = None,
    ) -> None:
        self._sink = sink
        self._write = write
        self._on_settled = on_settled
        self._waited = waited
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iot-consumer-writer") if overlap else None
        self._inflight: tuple[Batch, float, Future[Batch]] | None = None

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def submit(self, batch: Batch, started: float) -> bool:
        """Write ``batch``: on the writer thread (True; its outcome comes at the next settle), or
        at once without overlap (``on_settled``'s verdict)."""
        assert self._inflight is None, "settle the batch in flight first"
        if self._pool is None:
            try:
                outcome = Written(batch, started, self._write(self._sink, batch, started), None)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which handles each kind
                outcome = Written(batch, started, None, exc)
            return self._on_settled(outcome)
        self._inflight = (batch, started, self._pool.submit(self._write, self._sink, batch, started))
        return True

    def pending_positions(self, committed: Mapping[int, int | None]) -> dict[int, int | None]:
        """``committed`` as it will be once the batch in flight commits (partitions it moves)."""
        if self._inflight is None:
            return dict(committed)
        ahead = dict(committed)
        for update in self._inflight[0].positions:
            if update.partition in committed:
                ahead[update.partition] = update.next_offset
        return ahead

    def settle(self) -> bool:
        """Wait for the batch in flight and hand its outcome to ``on_settled``; False if it failed
        (True when nothing was in flight)."""
        if self._inflight is None:
            return True
        batch, started, future = self._inflight
        self._inflight = None
        before = time.perf_counter()
        try:
            written = future.result()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which handles each kind
            outcome = Written(batch, started, None, exc)
        else:
            outcome = Written(batch, started, written, None)
        if self._waited is not None:
            self._waited(time.perf_counter() - before)
        return self._on_settled(outcome)

    @contextmanager
    def database(self) -> Iterator[PostgresSink]:
        """The sink, with no batch in flight: the one way to the database outside a batch."""
        self.settle()
        yield self._sink

    def close(self) -> None:
        """Settle the batch in flight, stop the thread, close the connection."""
        try:
            self.settle()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._sink.close()
