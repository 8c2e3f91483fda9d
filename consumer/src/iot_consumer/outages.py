"""What stops progress, and how the consumer waits it out without going quiet.

Three kinds of trouble, each retried with capped, jittered backoff (never a busy loop),
logged on every attempt, counted, and visible on ``/readyz`` once it persists:

- the database is unreachable (:class:`DatabaseOutage`): every partition is paused and the
  loop keeps polling so the member stays in its group; it resumes by itself;
- one partition cannot be read (:class:`Troubles`, e.g. a batch that cannot be decoded):
  that partition is paused and retried, the others go on;
- polling or writing fails as a whole (a broker error, a PostgreSQL error that is not a bad
  row): the loop waits and retries.

Nothing here blocks the stop flag: SIGTERM cuts every wait short.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from iot_common.errors import summary
from iot_common.lifecycle import StopFlag
from iot_common.logging import get_logger
from iot_common.postgres import CONNECTION_ERRORS
from iot_common.retry import Backoff
from iot_consumer import metrics as m
from iot_consumer.sink import PostgresSink
from iot_consumer.writer import Writer

log = get_logger(__name__)


@dataclass
class Trouble:
    """One thing that keeps failing: since when, how often, the last error."""

    what: str
    error: str
    detail: str
    since: float
    backoff: Backoff
    attempts: int = 0
    retry_at: float = 0.0
    partition: int | None = None
    offset: int | None = None


@dataclass
class Troubles:
    """Failures that stop progress, keyed by what fails (``partition 3``, ``poll``, ``write``)."""

    stall_after_s: float = 30.0
    wait_initial: float = 0.5
    wait_max: float = 30.0
    active: dict[str, Trouble] = field(default_factory=dict)

    def failed(
        self, what: str, error: str, detail: str, *, partition: int | None = None, offset: int | None = None
    ) -> Trouble:
        """Count one more failure of ``what``; the returned trouble says when to retry."""
        now = time.monotonic()
        trouble = self.active.get(what)
        if trouble is None:
            trouble = Trouble(what, error, detail, now, Backoff(self.wait_initial, self.wait_max, self.wait_initial))
            self.active[what] = trouble
        trouble.error, trouble.detail = error, detail
        trouble.partition, trouble.offset = partition, offset
        trouble.attempts += 1
        delay = trouble.backoff.next_delay()
        trouble.retry_at = now + delay
        log.warning(
            "progress_blocked",
            what=what,
            partition=partition,
            offset=offset,
            error=error,
            detail=detail,
            attempt=trouble.attempts,
            failing_for_s=round(now - trouble.since, 1),
            retry_in_s=round(delay, 2),
        )
        return trouble

    def recovered(self, what: str) -> None:
        trouble = self.active.pop(what, None)
        if trouble is not None:
            log.info(
                "progress_resumed",
                what=what,
                partition=trouble.partition,
                attempts=trouble.attempts,
                blocked_for_s=round(time.monotonic() - trouble.since, 1),
            )

    def partitions_due(self) -> list[Trouble]:
        """Partition troubles whose retry time has come (the caller resumes them)."""
        now = time.monotonic()
        return [t for t in self.active.values() if t.partition is not None and t.retry_at <= now]

    def persistent(self) -> list[Trouble]:
        """Troubles older than ``stall_after_s``: what makes the replica not ready."""
        now = time.monotonic()
        return [t for t in self.active.values() if now - t.since >= self.stall_after_s]

    def forget_partitions_except(self, owned: set[int]) -> None:
        """After a rebalance: partitions no longer owned are no longer ours to report."""
        for trouble in list(self.active.values()):
            if trouble.partition is not None and trouble.partition not in owned:
                del self.active[trouble.what]

    def reasons(self) -> list[str]:
        """One line per persistent trouble, for ``/readyz``."""
        now = time.monotonic()
        lines = []
        for t in self.persistent():
            where = f", offset {t.offset}" if t.offset is not None else ""
            lines.append(
                f"{t.what}: {t.error}: {t.detail} (failing for {now - t.since:.0f} s, {t.attempts} attempts{where})"
            )
        return lines


class StallWatch:
    """The last line of defence: a partition with messages waiting whose position has not
    moved for ``stall_after_s`` is *stalled*, whatever the cause (known or not)."""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self._standing: dict[int, tuple[int, float]] = {}  # partition → (position, since)
        self.stalled: dict[int, tuple[int, float]] = {}  # partition → (lag, seconds without progress)
        self._next_log = 0.0

    def update(self, positions: dict[int, int], lags: dict[int, int], blocked_by: list[str], now: float) -> None:
        stalled: dict[int, tuple[int, float]] = {}
        for partition, position in positions.items():
            lag = lags.get(partition, 0)
            standing = self._standing.get(partition)
            if lag == 0 or standing is None or standing[0] != position:
                self._standing[partition] = (position, now)
            elif now - standing[1] >= self.stall_after_s:
                stalled[partition] = (lag, now - standing[1])
        for partition in self._standing.keys() - positions.keys():
            del self._standing[partition]
        if stalled and (stalled.keys() != self.stalled.keys() or now >= self._next_log):
            log.warning(
                "partitions_stalled",
                partitions={p: {"lag": lag, "no_progress_s": round(s)} for p, (lag, s) in stalled.items()},
                blocked_by=blocked_by,
            )
            self._next_log = now + self.stall_after_s
        elif self.stalled and not stalled:
            log.info("partitions_progressing", previously_stalled=sorted(self.stalled))
        self.stalled = stalled
        m.STALLED_PARTITIONS.set(len(stalled))

    def reasons(self) -> list[str]:
        return [
            f"partition {p}: {lag} messages waiting, no progress for {seconds:.0f} s"
            for p, (lag, seconds) in sorted(self.stalled.items())
        ]


class DatabaseOutage:
    """Connects to PostgreSQL, notices when it is lost, and waits for it with the partitions paused."""

    def __init__(
        self,
        writer: Writer,
        stop: StopFlag,
        heartbeat: Callable[[], None],
        wait_initial: float = 0.5,
        wait_max: float = 30.0,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.writer = writer
        self.stop = stop
        self.heartbeat = heartbeat
        self.on_lost = on_lost  # what else a lost connection invalidates (the positions read through it)
        self.wait_initial = wait_initial
        self.wait_max = wait_max
        self.ok = False

    def _set_ok(self, ok: bool) -> None:
        self.ok = ok
        m.DATABASE_UP.set(1 if ok else 0)

    def connect_until_ok(self, prepare: Callable[[PostgresSink], None]) -> None:
        """At start: retry until PostgreSQL answers and ``prepare`` (e.g. day partitions) ran."""
        backoff = Backoff(self.wait_initial, self.wait_max)
        while not self.stop.is_set():
            self.heartbeat()
            try:
                with self.writer.database() as sink:
                    sink.ping()
                    prepare(sink)
                self._set_ok(True)
                return
            except CONNECTION_ERRORS as exc:
                self._set_ok(False)
                self._discard_connection()
                delay = backoff.next_delay()
                log.warning("database_unavailable", error=summary(exc), retry_in_s=round(delay, 2))
                self.stop.wait(delay)

    def lost(self, exc: BaseException) -> None:
        """A connection error anywhere: drop the connection; the loop will wait for the database."""
        if self.ok:
            log.error("database_lost", error=summary(exc))
        self._set_ok(False)
        self._discard_connection()
        if self.on_lost is not None:
            self.on_lost()

    def _discard_connection(self) -> None:
        with self.writer.database() as sink:
            sink.discard_connection()

    def wait(self, consumer: KafkaConsumer) -> None:
        """Outage: keep every partition paused and the membership alive until PostgreSQL is back."""
        backoff = Backoff(self.wait_initial, self.wait_max)
        log.warning("pausing_consumption", reason="PostgreSQL unavailable")
        while not self.stop.is_set():
            retry_at = time.monotonic() + backoff.next_delay()
            while time.monotonic() < retry_at and not self.stop.is_set():
                self.heartbeat()
                try:
                    assigned = consumer.assignment()  # may change while we wait: pause newcomers too
                    if assigned:
                        consumer.pause(*assigned)
                    consumer.poll(timeout_ms=200)  # paused: returns nothing, but keeps us in the group
                except KafkaError as exc:
                    log.debug("kafka_error_while_paused", error=repr(exc))
                    self.stop.wait(0.2)
            try:
                with self.writer.database() as sink:
                    sink.ping()
            except CONNECTION_ERRORS as exc:
                self._discard_connection()
                log.warning("database_still_unavailable", error=summary(exc), retry_in_s=round(backoff.peek(), 2))
                continue
            self._set_ok(True)
            try:
                paused = consumer.paused()
                if paused:
                    consumer.resume(*paused)
            except KafkaError as exc:
                log.warning("resume_failed", error=repr(exc))
            log.info("resuming_consumption")
            return


def partition_key(partition: int) -> str:
    """The name a partition's own trouble is kept under in :class:`Troubles`."""
    return f"partition {partition}"


def pause_partition(consumer: KafkaConsumer, topic: str, partition: int) -> None:
    try:
        consumer.pause(TopicPartition(topic, partition))
    except (KafkaError, ValueError, AssertionError) as exc:  # no longer assigned: nothing to pause
        log.debug("pause_failed", partition=partition, error=repr(exc))


def resume_partition(consumer: KafkaConsumer, topic: str, partition: int) -> None:
    try:
        consumer.resume(TopicPartition(topic, partition))
    except (KafkaError, ValueError, AssertionError) as exc:
        log.debug("resume_failed", partition=partition, error=repr(exc))
