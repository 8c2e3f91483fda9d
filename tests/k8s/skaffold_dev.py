"""Test-only: one `skaffold dev` in the background, as a kind user runs it on the test node.

It is the README's command, started by tests/k8s/readme.py's ReadmeShell: inside the node's
network namespace, from a git copy of the checkout (the test edits a service's source there,
never in the checkout), with a kubeconfig whose context and cluster are named as kind names
them (`kind-iot`). Skaffold then treats the node as a kind cluster and loads what the local
Docker daemon built with `kind load docker-image`, which tests/k8s/shims/kind turns into
`cluster.sh import`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

# Where scripts/install-tools.sh puts the skaffold it builds.
SKAFFOLD = Path(os.environ.get("IOT_TOOLS_CACHE", Path.home() / ".cache" / "iot-monitor" / "bin")) / "skaffold"


class SkaffoldDev:
    """One `skaffold dev` in the background; its output collected line by line."""

    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        """``process``: ReadmeShell.spawn("skaffold dev") - bash execs skaffold, so the SIGINT
        of interrupt() reaches skaffold itself."""
        self.process = process
        self.lines: list[str] = []
        self._log = log.open("a")
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._log.write(line)
            self._log.flush()
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def output(self, start: int = 0) -> str:
        with self._seen:
            return "\n".join(self.lines[start:])

    def wait_for(self, pattern: str, *, start: int = 0, timeout: float) -> int:
        """Block (no polling) until a line from index ``start`` on matches; that line's index.
        Fails with the output when skaffold exits first or the time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = start
        with self._seen:
            while True:
                for index in range(checked, len(self.lines)):
                    if regex.search(self.lines[index]):
                        return index
                checked = max(checked, len(self.lines))
                remaining = deadline - time.monotonic()
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"skaffold dev exited {self.process.returncode} before {pattern!r}:\n{self.output()[-6000:]}"
                    )
                if remaining <= 0:
                    raise AssertionError(
                        f"no {pattern!r} from skaffold dev in {timeout:.0f}s:\n{self.output()[-6000:]}"
                    )
                self._seen.wait(min(remaining, 5))

    def interrupt(self, timeout: float = 300) -> int:
        """Ctrl-C: skaffold cleans up (uninstalls what it deployed) and exits; its exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """Whatever state it is in: gone, its output read to the end."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        if not self._log.closed:
            self._log.close()
