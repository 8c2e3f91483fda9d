"""Dashboard settings (``DASHBOARD_*``), on top of the shared ``POSTGRES_*`` and ``KAFKA_*``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Window = Literal["5 min", "15 min", "1 h", "6 h", "24 h", "7 d", "30 d"]
WINDOWS: dict[str, int] = {
    "5 min": 300,
    "15 min": 900,
    "1 h": 3600,
    "6 h": 21_600,
    "24 h": 86_400,
    "7 d": 604_800,
    "30 d": 2_592_000,
}


MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256  # the sign-in field's limit (app.py)


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DASHBOARD_", extra="ignore")

    host: str = "0.0.0.0"  # noqa: S104 - reachable from outside a container/pod
    port: int = Field(8501, ge=1, le=65535)
    refresh_seconds: float = Field(5.0, ge=1.0, le=3600.0)
    window: Window = "15 min"
    max_sensors: int = Field(12, ge=1, le=200)  # series drawn by default (the busiest first)
    consumer_group: str = "iot-consumer"  # whose stored positions give the lag
    lag_from_kafka: bool = True  # compare positions with Kafka's end offsets (else: positions only)
    # The page asks for it before showing anything (the chart sets it from a Secret). Unset: no
    # login, for a page only reachable through `kubectl port-forward` or on localhost.
    password: SecretStr | None = None
    # Dashed reference lines on the charts (the default alert thresholds).
    temperature_limit: float = 30.0
    humidity_min: float = 30.0
    humidity_max: float = 80.0

    @field_validator("password")
    @classmethod
    def _long_enough(cls, password: SecretStr | None) -> SecretStr | None:
        if password is None:
            return None
        length = len(password.get_secret_value())
        if length < MIN_PASSWORD_LENGTH:
            raise ValueError(f"must be at least {MIN_PASSWORD_LENGTH} characters (a guesser finds a shorter one fast)")
        if length > MAX_PASSWORD_LENGTH:
            raise ValueError(f"must be at most {MAX_PASSWORD_LENGTH} characters (what the sign-in form accepts)")
        return password
