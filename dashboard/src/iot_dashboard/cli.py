"""``iot-dashboard``: serve the live dashboard (Streamlit) on DASHBOARD_HOST:DASHBOARD_PORT."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import typer
from streamlit.web import bootstrap

from iot_common.cli import fail, setup_service
from iot_common.http import start_observability_server
from iot_common.logging import get_logger
from iot_common.postgres import connect
from iot_common.settings import ConfigError, KafkaSettings, PostgresSettings, load_settings
from iot_dashboard import metrics as _metrics  # noqa: F401 - registered before the first page view
from iot_dashboard.settings import DashboardSettings

app = typer.Typer(add_completion=False, help=__doc__)

APP = Path(__file__).with_name("app.py")
log = get_logger(__name__)


@app.command()
def serve(
    check_database: bool = typer.Option(
        True, "--check-database/--no-check-database", help="Fail at start if PostgreSQL refuses the login."
    ),
) -> None:
    """Validate the settings, start /metrics, /healthz and /readyz, then run Streamlit in this
    process (SIGTERM stops it).

    The observability server starts here rather than in the page script: Streamlit runs the
    script only when a browser opens the page, and a scraper must not see "connection refused"
    until someone does.

    Settings: DASHBOARD_PORT (8501), DASHBOARD_REFRESH_SECONDS (5), DASHBOARD_WINDOW,
    DASHBOARD_CONSUMER_GROUP, DASHBOARD_PASSWORD (asked for before the page shows anything),
    POSTGRES_* (use the read-only role iot_dashboard), KAFKA_* (lag, with DASHBOARD_LAG_FROM_KAFKA).
    """
    observability = setup_service("iot-dashboard")
    try:
        dashboard = load_settings(DashboardSettings)
        postgres = load_settings(PostgresSettings)
        if dashboard.lag_from_kafka:
            load_settings(KafkaSettings)
    except ConfigError as exc:
        fail(str(exc))
    if check_database:
        try:
            connect(postgres, application_name="iot-dashboard:check").close()
        except psycopg2.OperationalError as exc:
            fail(f"cannot connect to {postgres.describe()}: {str(exc).strip()}", code=1)
    start_observability_server(observability.metrics_host, observability.metrics_port)
    # Streamlit's command-line flags, as `streamlit run` passes them (dots written as underscores).
    flags: dict[str, object] = {
        "server_address": dashboard.host,
        "server_port": dashboard.port,
        "server_headless": True,
        "server_fileWatcherType": "none",
        "browser_gatherUsageStats": False,
        "theme_base": "light",
        "client_toolbarMode": "viewer",
    }
    bootstrap.load_config_options(flags)
    log.info(
        "dashboard_serving",
        address=f"http://{dashboard.host}:{dashboard.port}/",
        metrics_port=observability.metrics_port,
        database=postgres.describe(),
        login=dashboard.password is not None,
        lag_from_kafka=dashboard.lag_from_kafka,
    )
    if dashboard.password is None and dashboard.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("dashboard_without_login", host=dashboard.host, hint="set DASHBOARD_PASSWORD")
    bootstrap.run(str(APP), False, [], flags)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
