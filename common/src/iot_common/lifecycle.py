"""Graceful shutdown: SIGTERM/SIGINT set a flag that the service's loop checks."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from iot_common.logging import get_logger

log = get_logger(__name__)


class StopFlag:
    """Set once the process has been asked to stop; loops poll it between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> StopFlag:
        """Route SIGTERM and SIGINT to this flag (main thread only)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            log.warning("second_stop_signal", signal=name)
        else:
            log.info("stop_requested", signal=name)
        self.signal_name = name
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early when stop is requested."""
        return self._event.wait(timeout)
