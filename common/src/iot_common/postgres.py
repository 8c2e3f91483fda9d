"""PostgreSQL connections for the services (psycopg2)."""

from __future__ import annotations

import psycopg2
import psycopg2.extensions

from iot_common.settings import PostgresSettings


def connect(settings: PostgresSettings, application_name: str | None = None) -> psycopg2.extensions.connection:
    """Open a connection whose session time zone is UTC (timestamps are UTC in and out)."""
    kwargs = settings.connect_kwargs()
    if application_name:
        kwargs["application_name"] = application_name
    conn: psycopg2.extensions.connection = psycopg2.connect(options="-c TimeZone=UTC", **kwargs)
    return conn
