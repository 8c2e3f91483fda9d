"""The container images, built for real with Docker and run against the native stack.

Needs a Docker daemon. Without one the module is skipped, unless IOT_REQUIRE_IMAGE_TESTS=1
(set by .ci/run, which installs and starts Docker), in which case the absence is a failure.
The base image is a locally made stand-in for python:3.11-slim (docker/local-base-image.sh),
passed as the PYTHON_IMAGE build argument: no registry is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers import REPO, Stack, free_port, require_docker, scalar

BASE = os.environ.get("IOT_BASE_IMAGE", "iot-monitor/python-base:bookworm")
TAG = "test"
SERVICES = ("producer", "consumer", "exporter", "dashboard")


def docker(
    *args: str, check: bool = True, timeout: float = 600, secrets: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The docker CLI; ``secrets`` reach it in its environment (pass ``-e NAME`` without a value),
    never in its argv."""
    env = {**os.environ, **(secrets or {})}
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    require_docker("IOT_REQUIRE_IMAGE_TESTS")
    subprocess.run([str(REPO / "docker" / "local-base-image.sh"), BASE], check=True, timeout=900)
    subprocess.run(
        [str(REPO / "docker" / "build-images.sh"), TAG],
        check=True,
        timeout=1800,
        env={**os.environ, "PYTHON_IMAGE": BASE},
    )
    return {service: f"iot-{service}:{TAG}" for service in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_cli_help_runs_as_non_root_on_a_read_only_root(images: dict[str, str], service: str) -> None:
    """Each image's entrypoint is its typer CLI; it runs as uid 10001 with a read-only root."""
    result = docker("run", "--rm", "--read-only", "--cap-drop", "ALL", images[service], "--help", check=False)
    assert result.returncode == 0, result.stderr
    assert f"Usage: iot-{service}" in result.stdout  # the service's own CLI answered
    uid = docker("run", "--rm", "--entrypoint", "id", images[service], "-u").stdout.strip()
    assert uid == "10001"
    config = json.loads(docker("image", "inspect", images[service]).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == [f"iot-{service}"]


@pytest.mark.parametrize("service", SERVICES)
def test_final_image_has_no_compiler_and_a_shared_library_package(images: dict[str, str], service: str) -> None:
    """Multi-stage: no gcc/cc in the final image; iot_common is an installed package."""
    probe = docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        images[service],
        "-c",
        "command -v gcc cc || true; python3 -c 'import iot_common, sys; print(iot_common.__file__)'",
    )
    lines = probe.stdout.split()
    assert lines[-1].startswith("/opt/iot/lib/")
    assert "site-packages/iot_common" in lines[-1]
    assert not [line for line in lines[:-1] if line.endswith(("gcc", "/cc"))]


@pytest.mark.parametrize(
    ("service", "probe"),
    [
        ("consumer", "import iot_fastpath; from iot_consumer.decoding import decoder_available as a; print(a())"),
        (
            "producer",
            "import iot_producer_fastpath; from iot_producer.accumulator import native_available as a; print(a())",
        ),
    ],
    ids=["consumer", "producer"],
)
def test_image_ships_its_native_part(images: dict[str, str], service: str, probe: str) -> None:
    """The consumer's C decoder and the producer's C encoder are compiled in the build stage and
    import in the final image (no compiler there), and the service says it will use them."""
    result = docker("run", "--rm", "--entrypoint", "python3", images[service], "-c", probe)
    assert result.stdout.split()[-1] == "True"


def test_servers_declare_a_healthcheck(images: dict[str, str]) -> None:
    """Each long-running image declares a HEALTHCHECK on its own health endpoint."""
    for service, path in (("producer", "/healthz"), ("consumer", "/readyz"), ("dashboard", "/_stcore/health")):
        config = json.loads(docker("image", "inspect", images[service]).stdout)[0]["Config"]
        assert path in " ".join(config["Healthcheck"]["Test"])


def test_containers_move_readings_from_kafka_into_postgres(
    images: dict[str, str], stack: Stack, topic: str, database: str, tmp_path: Path
) -> None:
    """Producer and consumer containers (host network) against the native Kafka and
    PostgreSQL: every produced reading becomes a row."""
    env = [
        "-e",
        f"KAFKA_BOOTSTRAP_SERVERS={stack.bootstrap}",
        "-e",
        f"KAFKA_TOPIC={topic}",
        "-e",
        f"POSTGRES_DB={database}",
        "-e",
        f"POSTGRES_PORT={stack.postgres_port}",
        "-e",
        "POSTGRES_PASSWORD",
        "-e",
        "METRICS_PORT=0",
    ]
    produced = docker(
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        *env,
        images["producer"],
        "--sensors",
        "10",
        "--count",
        "500",
        "--rate",
        "1000",
        check=False,
        secrets={"POSTGRES_PASSWORD": stack.pg_password},
    )
    assert produced.returncode == 0, produced.stderr[-2000:]
    consumed = docker(
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        *env,
        "-e",
        f"CONSUMER_GROUP=img-{uuid.uuid4().hex[:8]}",
        images["consumer"],
        "run",
        "--exit-when-idle",
        "3",
        check=False,
        secrets={"POSTGRES_PASSWORD": stack.pg_password},
    )
    assert consumed.returncode == 0, consumed.stderr[-2000:]
    conn = stack.connect(database)
    try:
        assert scalar(conn, "SELECT count(*) FROM sensores") == 500
    finally:
        conn.close()
    export_dir = tmp_path / "exports"
    export_dir.mkdir()
    os.chmod(export_dir, 0o777)
    exported = docker(
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        *env,
        "-v",
        f"{export_dir}:/exports",
        images["exporter"],
        "export",
        "--format",
        "csv",
        check=False,
        secrets={"POSTGRES_PASSWORD": stack.pg_password},
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (export_dir / "sensores_exportado.csv").read_text().count("\n") == 501


def test_dashboard_container_serves_the_page_on_a_read_only_root(
    images: dict[str, str], stack: Stack, database: str
) -> None:
    """The dashboard image, as the read-only role against the native PostgreSQL, answers
    Streamlit's health check with a read-only root file system (HOME on a tmpfs)."""
    port = free_port()
    name = f"iot-dashboard-test-{uuid.uuid4().hex[:8]}"
    started = docker(
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-e",
        f"POSTGRES_DB={database}",
        "-e",
        f"POSTGRES_PORT={stack.postgres_port}",
        "-e",
        "POSTGRES_USER=iot_dashboard",
        "-e",
        "POSTGRES_PASSWORD",
        "-e",
        f"DASHBOARD_PORT={port}",
        "-e",
        "METRICS_PORT=0",
        images["dashboard"],
        check=False,
        secrets={"POSTGRES_PASSWORD": stack.role_password("iot_dashboard")},
    )
    assert started.returncode == 0, started.stderr
    try:
        body = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and body != "ok":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=3) as response:
                    body = response.read().decode()
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        assert body == "ok", docker("logs", name, check=False).stderr[-3000:]
    finally:
        docker("rm", "-f", name, check=False)
