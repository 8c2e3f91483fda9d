"""Capped exponential backoff with jitter, the one retry schedule every service uses.

Parameter names follow hynek/stamina (``wait_initial``, ``wait_max``, ``wait_jitter``,
``wait_exp_base``). Jitter matters: replicas that fail together (a database restart) would
otherwise retry in lockstep. Waiting happens on the service's stop flag, so SIGTERM cuts a
wait short instead of sitting it out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol


class Waiter(Protocol):
    """Anything with ``wait(timeout) -> bool`` that returns True when asked to stop
    (:class:`iot_common.lifecycle.StopFlag`, :class:`threading.Event`)."""

    def wait(self, timeout: float) -> bool: ...


@dataclass
class Backoff:
    """The delays of one run of failures: ``wait_initial · base^k`` capped at ``wait_max``,
    plus up to ``wait_jitter`` seconds of random jitter; :meth:`reset` after a success."""

    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0
    wait_exp_base: float = 2.0
    attempts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.wait_initial <= self.wait_max:
            raise ValueError(f"need 0 < wait_initial ({self.wait_initial}) <= wait_max ({self.wait_max})")
        if self.wait_jitter < 0 or self.wait_exp_base < 1:
            raise ValueError("wait_jitter must be >= 0 and wait_exp_base >= 1")

    def next_delay(self) -> float:
        """The delay before the next attempt (counts one more failure)."""
        exponent = min(self.attempts, 64)  # past this the cap holds anyway; avoids float overflow
        self.attempts += 1
        base = min(self.wait_initial * self.wait_exp_base**exponent, self.wait_max)
        return min(base + random.uniform(0, self.wait_jitter), self.wait_max)

    def peek(self) -> float:
        """The un-jittered delay the next failure would get (for log lines such as ``retry_in_s``)."""
        return min(self.wait_initial * self.wait_exp_base ** min(self.attempts, 64), self.wait_max)

    def wait(self, stop: Waiter) -> bool:
        """Sleep the next delay on ``stop``; True if stop was requested meanwhile."""
        return stop.wait(self.next_delay())

    def reset(self) -> None:
        self.attempts = 0
