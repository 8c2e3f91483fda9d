"""What the consumer does on a clock rather than per batch: named jobs, each due every so often."""

from __future__ import annotations

import time


class Timers:
    """Named jobs on the monotonic clock. A job is due once its time has come; :meth:`due` then
    schedules its next run one interval after ``now``. A job not asked about (its guard was
    false, e.g. the database is down) stays due, and runs as soon as it may."""

    def __init__(self, intervals: dict[str, float], first_in: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        self.intervals = dict(intervals)
        self._next = {name: now + (first_in or {}).get(name, interval) for name, interval in intervals.items()}

    def due(self, name: str, now: float) -> bool:
        if now < self._next[name]:
            return False
        self._next[name] = now + self.intervals[name]
        return True

    def next_at(self, name: str) -> float:
        """When ``name`` is next due (monotonic seconds)."""
        return self._next[name]
