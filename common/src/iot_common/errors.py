"""One way to put an exception into a log line or a table column."""

from __future__ import annotations


def summary(exc: BaseException, limit: int = 500) -> str:
    """The first line of the error's message (psycopg2 adds context lines), or its repr when
    the message is empty; at most ``limit`` characters."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else repr(exc)
    return first[:limit]
