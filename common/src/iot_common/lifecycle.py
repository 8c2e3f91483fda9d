"""Graceful shutdown: SIGTERM/SIGINT set a flag that the service's loop checks.

A flag alone trusts the loop to look at it, and a Python signal handler runs only when the
main thread gets back to Python code - not while it waits inside a C call (a COPY blocked on
a lock, a hung socket). So :meth:`StopFlag.install` blocks the two signals in every thread
and receives them on a thread of its own (``sigwait``): the flag is set whatever the main
thread is doing, and, with ``force_exit_after``, a watchdog ends the process that many
seconds later if it is still running. A deliberate second signal ends it at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from iot_common.logging import get_logger

log = get_logger(__name__)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


class StopFlag:
    """Set once the process has been asked to stop; loops poll it between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None
        self._force_exit_after: float | None = None
        self._first_signal_at = 0.0

    def install(self, force_exit_after: float | None = None) -> StopFlag:
        """Receive SIGTERM and SIGINT on a dedicated thread (call from the main thread, before
        starting other threads: they inherit the blocked signal mask)."""
        self._force_exit_after = force_exit_after
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        threading.Thread(target=self._receive_signals, name="stop-signals", daemon=True).start()
        return self

    def _receive_signals(self) -> None:
        while True:
            self.on_signal(signal.sigwait(STOP_SIGNALS))

    def on_signal(self, signum: int) -> None:
        """What a stop signal does (public so that tests can drive it without a signal)."""
        name = signal.Signals(signum).name
        if self._event.is_set():
            # A second signal a moment later is often the same request twice (a shell or a
            # wrapper forwarding it): only a deliberate second one means "now".
            if time.monotonic() - self._first_signal_at < 2.0:
                return
            log.warning("second_stop_signal", signal=name, action="exiting now")
            _exit_now(1)
        self._first_signal_at = time.monotonic()
        log.info("stop_requested", signal=name, force_exit_after_s=self._force_exit_after)
        self.signal_name = name
        self._event.set()
        if self._force_exit_after is not None:
            timer = threading.Timer(self._force_exit_after, self._force_exit)
            timer.daemon = True
            timer.name = "shutdown-watchdog"
            timer.start()

    def _force_exit(self) -> None:
        log.error("shutdown_forced", after_s=self._force_exit_after, reason="still running after the stop signal")
        _exit_now(1)

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early when stop is requested."""
        return self._event.wait(timeout)


def _exit_now(code: int) -> None:
    """Leave without running more Python code: the main thread may be stuck holding anything."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
