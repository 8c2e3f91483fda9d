"""Settings: typed values from the environment, readable errors naming the variable."""

from __future__ import annotations

import pytest

from iot_common.settings import ConfigError, KafkaSettings, ObservabilitySettings, PostgresSettings, load_settings


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no variables set, every service points at the local stack `make stack-up` starts."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "POSTGRES_HOST", "METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POSTGRES_PASSWORD", "from-the-stack-secrets")
    kafka = load_settings(KafkaSettings)
    assert kafka.bootstrap_servers == "localhost:9092"
    assert kafka.topic == "iot_sensores"
    assert load_settings(PostgresSettings).describe() == "postgresql://iot@localhost:5432/iot"
    assert load_settings(ObservabilitySettings).metrics_port == 8000


def test_the_database_password_has_no_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """No password is built in (a committed one would be everyone's): without POSTGRES_PASSWORD a
    service stops at start, saying which variable it needs."""
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="POSTGRES_PASSWORD: Field required"):
        load_settings(PostgresSettings)


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error says which variable is wrong and what it held."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "FOO")
    with pytest.raises(ConfigError, match=r"KAFKA_SECURITY_PROTOCOL='FOO'"):
        load_settings(KafkaSettings)


def test_non_numeric_port_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-numeric port is refused with the variable and the value given."""
    monkeypatch.setenv("POSTGRES_PORT", "fivefour")
    with pytest.raises(ConfigError, match="POSTGRES_PORT='fivefour'"):
        load_settings(PostgresSettings)


def test_sasl_requires_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """SASL without a username and password fails at start, listing what is missing."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.delenv("KAFKA_SASL_USERNAME", raising=False)
    with pytest.raises(ConfigError, match="KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD"):
        load_settings(KafkaSettings)


def test_sasl_options_reach_the_kafka_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cloud Kafka (SASL_SSL + SCRAM) is configured from the environment alone."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "a:9093, b:9093")
    options = load_settings(KafkaSettings).client_options()
    assert options["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "s3cret"


def test_password_never_appears_in_errors_or_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets stay out of error messages and of the settings' repr (which may be logged)."""
    monkeypatch.setenv("POSTGRES_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("POSTGRES_PORT", "99999")
    with pytest.raises(ConfigError) as caught:
        load_settings(PostgresSettings)
    assert "hunter2" not in str(caught.value)
    monkeypatch.setenv("POSTGRES_PORT", "5432")
    settings = load_settings(PostgresSettings)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.describe()


def test_missing_ca_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """A Kafka CA file that does not exist is refused at start, naming KAFKA_SSL_CAFILE."""
    monkeypatch.setenv("KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="KAFKA_SSL_CAFILE"):
        load_settings(KafkaSettings)
