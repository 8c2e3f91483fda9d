"""What every service's CLI does before its real work: settings, logging, readable failures."""

from __future__ import annotations

from typing import NoReturn

import typer

from iot_common.logging import configure_logging
from iot_common.settings import ConfigError, ObservabilitySettings, load_settings

EXIT_CONFIG_ERROR = 2


def fail(message: str, code: int = EXIT_CONFIG_ERROR) -> NoReturn:
    """Print a one-line error for a human and exit (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def setup_service(service: str) -> ObservabilitySettings:
    """Read the observability settings and configure logging, or exit 2 with the reason."""
    try:
        settings = load_settings(ObservabilitySettings)
    except ConfigError as exc:
        fail(str(exc))
    configure_logging(settings.log_level, settings.log_format, service=service)
    return settings
