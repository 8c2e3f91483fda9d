"""Typed settings read from environment variables, shared by every service.

Each group has its own prefix (``KAFKA_``, ``POSTGRES_``, ...). A bad value fails at start
with :class:`ConfigError`, whose message names the environment variable and says what is
expected, so an operator can fix a Deployment without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# What Kafka accepts as a topic name.
TOPIC_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is meant for a human operator."""


class KafkaSettings(BaseSettings):
    """Where the Kafka cluster is and how to authenticate to it (``KAFKA_*``)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("localhost:9092", min_length=1)
    topic: str = Field("iot_sensores", pattern=TOPIC_NAME_PATTERN)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    client_id: str = "iot-monitor"
    request_timeout_ms: int = Field(30_000, ge=1_000)
    # How long a client may take to reach the cluster at start before giving up.
    bootstrap_timeout_ms: int = Field(15_000, ge=1_000)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                f"KAFKA_{name.upper()}"
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs {', '.join(missing)}")
        if self.ssl_cafile is not None and not self.ssl_cafile.is_file():
            raise ValueError(f"KAFKA_SSL_CAFILE={self.ssl_cafile} is not a readable file")
        return self

    def client_options(self) -> dict[str, Any]:
        """Connection and security options for any kafka-python client."""
        options: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
        }
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_password is not None  # checked by the validator
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        if self.ssl_cafile is not None:
            options["ssl_cafile"] = str(self.ssl_cafile)
        return options


class PostgresSettings(BaseSettings):
    """How to reach the PostgreSQL database (``POSTGRES_*``)."""

    model_config = SettingsConfigDict(env_prefix="POSTGRES_", extra="ignore")

    host: str = "localhost"
    port: int = Field(5432, ge=1, le=65535)
    db: str = "iot"
    user: str = "iot"
    password: SecretStr  # no default: a committed password would be everyone's (docs/SECURITY.md)
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout: int = Field(5, ge=1, le=300)
    application_name: str = "iot-monitor"

    def libpq_parameters(self) -> dict[str, Any]:
        """The connection parameters as settings hold them (no session options: services connect
        through ``iot_common.postgres.connect_kwargs``, which adds UTC); the password stays out of
        any DSN string."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.db,
            "user": self.user,
            "password": self.password.get_secret_value(),
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
            "application_name": self.application_name,
        }

    def describe(self) -> str:
        """Where we connect, for logs (no password)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.db}"


class ObservabilitySettings(BaseSettings):
    """Logging, the metrics/health HTTP server and shutdown (``LOG_LEVEL``, ``LOG_FORMAT``,
    ``METRICS_*``, ``SHUTDOWN_TIMEOUT_S``)."""

    model_config = SettingsConfigDict(extra="ignore")

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a pod's metrics port must be reachable by Prometheus
    # 0 picks a free port (useful when several processes run on one machine); -1 disables.
    metrics_port: int = Field(8000, ge=-1, le=65535)
    # After SIGTERM, a process still running this long is ended by force (exit 1): no state
    # may keep it alive past Kubernetes' grace period (30 s by default). Safe for the consumer:
    # its positions are in PostgreSQL, an unfinished transaction simply rolls back.
    shutdown_timeout_s: float = Field(25.0, gt=0, le=3600)


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def _env_name(settings_cls: type[BaseSettings], location: tuple[int | str, ...]) -> str:
    prefix = str(settings_cls.model_config.get("env_prefix") or "")
    if not location:
        return prefix.rstrip("_") or settings_cls.__name__
    return f"{prefix}{location[0]}".upper()


def load_settings(settings_cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read ``settings_cls`` from the environment (``overrides`` win), or raise ConfigError.

    The error lists every bad variable at once, e.g.
    ``KAFKA_SECURITY_PROTOCOL='FOO': Input should be 'PLAINTEXT', 'SSL', ...``.
    """
    try:
        return settings_cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = _env_name(settings_cls, tuple(error["loc"]))
            message = str(error["msg"]).removeprefix("Value error, ")
            given = error.get("input")
            shown = "" if not error["loc"] or isinstance(given, dict) else f"={given!r}"
            if name.endswith("PASSWORD"):
                shown = ""
            problems.append(f"{name}{shown}: {message}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
