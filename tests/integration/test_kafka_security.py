"""SASL_SSL with SCRAM-SHA-512 over TLS (how managed Kafka services are reached), against the
local broker's SASL_SSL listener (stack/stack.sh: private CA, SCRAM user)."""

from __future__ import annotations

from pathlib import Path

import psycopg2.extensions

from tests.helpers import Service, Stack, scalar

SASL_PORT = 9095


def sasl_env(env: dict[str, str], stack: Stack, password: str | None = None) -> dict[str, str]:
    return {
        **env,
        "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{SASL_PORT}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "iot",
        "KAFKA_SASL_PASSWORD": password or stack.secret("STACK_SCRAM_PASSWORD"),
        "KAFKA_SSL_CAFILE": str(stack.stack_dir / "kafka" / "tls" / "ca.pem"),
        "KAFKA_BOOTSTRAP_TIMEOUT_MS": "30000",
    }


def test_pipeline_over_sasl_ssl_scram(
    stack: Stack, env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Producer and consumer configured only through KAFKA_* variables move readings over
    TLS with SCRAM-SHA-512; the password shows up in neither log."""
    secure = sasl_env(env, stack)
    producer = Service(
        ["iot-producer", "--sensors", "10", "--count", "500", "--rate", "2000"], secure, tmp_path / "p.log"
    )
    assert producer.wait(120) == 0, producer.log_path.read_text()[-3000:]
    consumer = Service(["iot-consumer", "run", "--exit-when-idle", "4"], secure, tmp_path / "c.log")
    assert consumer.wait(180) == 0, consumer.log_path.read_text()[-3000:]
    assert scalar(db, "SELECT count(*) FROM sensores") == 500
    for log in (producer.log_path, consumer.log_path):
        assert stack.secret("STACK_SCRAM_PASSWORD") not in log.read_text()


def test_wrong_scram_password_fails_at_start_with_a_clear_message(
    stack: Stack, env: dict[str, str], tmp_path: Path
) -> None:
    """A wrong SCRAM password fails at start (exit 2) with a readable message that never shows the password."""
    secure = {**sasl_env(env, stack, password="not-the-password"), "KAFKA_BOOTSTRAP_TIMEOUT_MS": "8000"}
    producer = Service(["iot-producer", "--count", "10"], secure, tmp_path / "p.log")
    assert producer.wait(120) == 2
    text = producer.log_path.read_text()
    assert f"no Kafka broker reachable at localhost:{SASL_PORT}" in text
    assert "not-the-password" not in text
