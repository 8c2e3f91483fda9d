"""Runs a command and writes what it used: exit code, CPU seconds, peak RSS (test/bench harness).

A child's ``ru_maxrss`` also counts the memory of the process that started it: Linux records
the address space's high-water mark when ``exec`` replaces it, and after ``fork``/``vfork``
that space is the parent's - so a 300 MB test runner measures every child it starts at
≥ 300 MB (even /bin/true). Started through this small launcher, the command inherits the
launcher's ~10 MB instead, and its own peak is what gets reported. SIGTERM and SIGINT are
passed on to the command.

usage: python tests/measure.py REPORT.json -- COMMAND [ARGS...]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    report = Path(sys.argv[1])
    child = subprocess.Popen(sys.argv[3:])
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda number, _frame: child.send_signal(number))
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    report.write_text(
        json.dumps({"returncode": code, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss})
    )
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
