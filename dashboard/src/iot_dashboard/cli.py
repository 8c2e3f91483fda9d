"""``iot-dashboard``: serve the live dashboard (Streamlit) on DASHBOARD_HOST:DASHBOARD_PORT."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg2
import typer

from iot_common.cli import fail, setup_service
from iot_common.postgres import connect
from iot_common.settings import ConfigError, KafkaSettings, PostgresSettings, load_settings
from iot_dashboard.settings import DashboardSettings

app = typer.Typer(add_completion=False, help=__doc__)

APP = Path(__file__).with_name("app.py")


@app.command()
def serve(
    check_database: bool = typer.Option(
        True, "--check-database/--no-check-database", help="Fail at start if PostgreSQL refuses the login."
    ),
) -> None:
    """Validate the settings, then hand the process over to Streamlit (SIGTERM stops it).

    Settings: DASHBOARD_PORT (8501), DASHBOARD_REFRESH_SECONDS (5), DASHBOARD_WINDOW,
    DASHBOARD_CONSUMER_GROUP, POSTGRES_* (use the read-only role iot_dashboard), KAFKA_* (lag).
    """
    setup_service("iot-dashboard")
    try:
        dashboard = load_settings(DashboardSettings)
        postgres = load_settings(PostgresSettings)
        load_settings(KafkaSettings)
    except ConfigError as exc:
        fail(str(exc))
    if check_database:
        try:
            connect(postgres, application_name="iot-dashboard:check").close()
        except psycopg2.OperationalError as exc:
            fail(f"cannot connect to {postgres.describe()}: {str(exc).strip()}", code=1)
    args = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        dashboard.host,
        "--server.port",
        str(dashboard.port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--theme.base",
        "light",
        "--client.toolbarMode",
        "viewer",
    ]
    os.execv(sys.executable, args)  # noqa: S606 - same interpreter, fixed arguments


def main() -> None:
    app()


if __name__ == "__main__":
    main()
