"""The consumer's writer thread: batch k goes to PostgreSQL while batch k+1 is polled and decoded.

psycopg2 releases the GIL while it waits for the server (COPY, the rollup upserts, COMMIT), so
the main thread can decode the next poll meanwhile. At most one batch is in flight, and the
loop waits for it (:meth:`BatchWriter.settle`) before it touches the database itself
(position syncs, alert clocks, housekeeping) or builds on its outcome. Nothing else about a
batch changes: the same transaction carries its rows, rollups, dead letters and positions, and
a batch built while its predecessor was in flight fences on the positions that predecessor
commits (:meth:`BatchWriter.pending_positions`) - if the predecessor fails, the successor is
dropped unwritten and every position is re-read from PostgreSQL, as after any failed write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from iot_consumer.batch import Batch


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of one write: the batch as written (or None) and the error (or None)."""

    submitted: Batch
    started: float  # perf_counter when the batch was built
    batch: Batch | None
    error: BaseException | None


class BatchWriter:
    """One worker thread, at most one batch in flight."""

    def __init__(self, write: Callable[[Batch, float], Batch]) -> None:
        self._write = write
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iot-consumer-writer")
        self._inflight: tuple[Batch, float, Future[Batch]] | None = None

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def submit(self, batch: Batch, started: float) -> None:
        assert self._inflight is None, "settle the batch in flight first"
        self._inflight = (batch, started, self._pool.submit(self._write, batch, started))

    def pending_positions(self, committed: Mapping[int, int | None]) -> dict[int, int | None]:
        """``committed`` as it will be once the batch in flight commits (partitions it moves)."""
        if self._inflight is None:
            return dict(committed)
        ahead = dict(committed)
        for update in self._inflight[0].positions:
            if update.partition in committed:
                ahead[update.partition] = update.next_offset
        return ahead

    def settle(self, waited: Callable[[float], None] | None = None) -> Written | None:
        """Wait for the batch in flight (None when there is none) and return how it went."""
        if self._inflight is None:
            return None
        batch, started, future = self._inflight
        self._inflight = None
        before = time.perf_counter()
        try:
            written = future.result()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which handles each kind
            outcome = Written(batch, started, None, exc)
        else:
            outcome = Written(batch, started, written, None)
        if waited is not None:
            waited(time.perf_counter() - before)
        return outcome

    def close(self) -> None:
        self._pool.shutdown(wait=True)
