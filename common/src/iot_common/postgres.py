"""PostgreSQL connections for the services (psycopg2)."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extensions

from iot_common.settings import PostgresSettings

# Errors that mean "the database is not reachable now", as opposed to "this statement is wrong".
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def connect_kwargs(settings: PostgresSettings, application_name: str | None = None) -> dict[str, Any]:
    """``psycopg2.connect`` arguments for a session whose time zone is UTC (timestamps are UTC
    in and out); also what a connection pool takes."""
    kwargs = settings.libpq_parameters()
    if application_name:
        kwargs["application_name"] = application_name
    kwargs["options"] = "-c TimeZone=UTC"
    return kwargs


def connect(settings: PostgresSettings, application_name: str | None = None) -> psycopg2.extensions.connection:
    """Open a connection whose session time zone is UTC."""
    conn: psycopg2.extensions.connection = psycopg2.connect(**connect_kwargs(settings, application_name))
    return conn
