"""Every JSON log line names its service, whichever thread writes it."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from iot_common.logging import configure_logging, get_logger


def test_lines_from_other_threads_name_the_service_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer logs from its writer and alert-outbox threads as well as the main one: each
    line carries service, level, event and a UTC timestamp (the service was bound to the main
    thread's context only, so the outbox thread's warnings had no service)."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO", "json", service="iot-consumer")
    try:
        log = get_logger("test")
        log.info("from_main")
        worker = threading.Thread(target=lambda: log.warning("from_a_thread", detail="x"))
        worker.start()
        worker.join()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["from_main", "from_a_thread"]
        for line in lines:
            assert line["service"] == "iot-consumer"
            assert line["timestamp"].endswith("Z")
    finally:
        logging.getLogger().handlers.clear()
