"""structlog set-up: one JSON object per line in containers, readable lines on a terminal.

Libraries that log through the standard library (kafka-python, ...) go through the same
renderer, so `kubectl logs` shows one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

from iot_common.settings import LogFormat, LogLevel


def _orjson_dumps(event: Any, default: Any) -> str:
    return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: LogLevel = "INFO", log_format: LogFormat = "auto", service: str | None = None) -> None:
    """Configure structlog and the standard library's root logger for this process."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        # the service on every line, from every thread (context variables stay in the thread that bound them)
        _ServiceName(service),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty below ERROR (every connection attempt, every rebalance step).
    logging.getLogger("kafka").setLevel(max(logging.ERROR, logging.getLevelName(level)))
    structlog.contextvars.clear_contextvars()


class _ServiceName:
    """A processor naming the service on each event (unless the event names one itself)."""

    def __init__(self, service: str | None) -> None:
        self.service = service

    def __call__(self, logger: Any, method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        if self.service:
            event.setdefault("service", self.service)
        return event


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named after its module."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
