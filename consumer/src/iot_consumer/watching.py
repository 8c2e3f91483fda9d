"""Watching the consumer from outside: readiness and liveness, lag, stalls, progress lines."""

from __future__ import annotations

import time

from kafka import KafkaConsumer

from iot_common.http import Health
from iot_common.logging import get_logger
from iot_consumer import metrics as m
from iot_consumer.metrics import Totals
from iot_consumer.outages import StallWatch, Troubles
from iot_consumer.positions import PartitionPositions, topic_id_of

log = get_logger(__name__)


class Watch:
    """What /readyz and /healthz say, and the once-a-second look at lag and progress."""

    def __init__(
        self,
        topic: str,
        positions: PartitionPositions,
        troubles: Troubles,
        totals: Totals,
        stall_after_s: float,
        liveness_timeout_s: float,
    ) -> None:
        self.topic = topic
        self.positions = positions
        self.troubles = troubles
        self.totals = totals
        self.stalls = StallWatch(stall_after_s)
        self.liveness_timeout_s = liveness_timeout_s
        self._started = time.monotonic()
        self._heartbeat = time.monotonic()
        self._progress_mark = (0, time.monotonic())  # (consumed, when) at the last progress line

    def beat(self) -> None:
        """The main loop turned (liveness)."""
        self._heartbeat = time.monotonic()

    def readiness(self, database_ok: bool, kafka_started: bool) -> Health:
        """Ready while PostgreSQL accepts writes and every owned partition makes progress.

        Not ready: the database is down; an error has kept repeating for ``stall_after_s``
        (a partition that cannot be decoded, polls failing, writes refused); a partition is
        halted by the offset-gap policy; messages wait on a partition that has not moved for
        ``stall_after_s``; or no partition is assigned a minute after start.
        """
        if not database_ok:
            return Health(False, "PostgreSQL unreachable")
        if not kafka_started:
            return Health(False, "Kafka consumer not started")
        reasons = self.troubles.reasons()
        reasons += [f"halted by offset gap: {h.gap.describe()}" for h in self.positions.halted.values()]
        reasons += self.stalls.reasons()
        if reasons:
            return Health(False, "; ".join(reasons))
        owned = len(self.positions.position) + len(self.positions.halted)
        if not owned and time.monotonic() - self._started > 60.0:
            return Health(False, "no partition assigned (group not formed, or more replicas than partitions)")
        return Health(True, f"{len(self.positions.position)} partitions")

    def liveness(self) -> Health:
        """Alive while the main loop turns (a loop stuck for ``liveness_timeout_s`` asks for a restart)."""
        stalled = time.monotonic() - self._heartbeat
        if stalled > self.liveness_timeout_s:
            return Health(False, f"main loop stalled for {stalled:.0f} s")
        return Health(True)

    def look(self, consumer: KafkaConsumer, now: float) -> dict[int, int]:
        """Lag per partition (returned), stalls (outages.StallWatch), and a topic re-created under us."""
        lags = self.positions.update_lag(consumer)
        self.stalls.update(self.positions.position, lags, [t.what for t in self.troubles.active.values()], now)
        m.BLOCKED.set(1 if self.troubles.persistent() else 0)
        # A topic deleted and created again under the same name gets a new id: re-check
        # every position against the new log before another record is read.
        topic_id = topic_id_of(consumer, self.topic)
        if topic_id is not None and self.positions.topic_id is not None and topic_id != self.positions.topic_id:
            log.warning("topic_id_changed", topic=self.topic, old=str(self.positions.topic_id), new=str(topic_id))
            self.positions.invalidate()
        return lags

    def log_progress(self) -> None:
        consumed, since = self._progress_mark
        now = time.monotonic()
        elapsed = max(now - since, 1e-9)
        t = self.totals
        self._progress_mark = (t.consumed, now)
        if t.consumed != consumed:
            log.info(
                "progress",
                consumed=t.consumed,
                inserted=t.inserted,
                dead_lettered=t.dead_lettered,
                batches=t.batches,
                rate=round((t.consumed - consumed) / elapsed, 1),
                partitions=sorted(self.positions.position),
            )
