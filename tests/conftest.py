"""Fixtures shared by all tests.

Integration tests talk to the real Kafka broker and PostgreSQL server of the local stack
(`make stack-up`; `make test` starts it). Each test gets its own topic and its own database,
so tests never see each other's data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from tests.helpers import Service, Stack, create_topic, delete_topic

REPO = Path(__file__).resolve().parent.parent


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The running local stack; started here if it is not up yet."""
    info = Stack.from_env(REPO)
    kafka_host, _, kafka_port = info.bootstrap.split(",")[0].rpartition(":")
    if not (_port_open(int(kafka_port), kafka_host) and _port_open(info.postgres_port)):
        subprocess.run([str(REPO / "stack" / "stack.sh"), "up"], check=True)
    return info


@pytest.fixture
def topic(stack: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh 6-partition topic for this test (deleted afterwards)."""
    marker = request.node.get_closest_marker("partitions")
    partitions = marker.args[0] if marker else 6
    name = f"test_{request.node.name[:40].replace('[', '_').replace(']', '')}_{uuid.uuid4().hex[:8]}"
    create_topic(stack.bootstrap, name, partitions, stack.replication_factor)
    yield name
    delete_topic(stack.bootstrap, name)


@pytest.fixture
def database(stack: Stack) -> Iterator[str]:
    """A fresh database owned by the project's role (dropped afterwards)."""
    name = f"iot_test_{uuid.uuid4().hex[:12]}"
    admin = stack.admin_connection()
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(stack.pg_user)))
    admin.close()
    yield name
    admin = stack.admin_connection()  # a fresh one: the test may have restarted the server
    with admin.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.close()


@pytest.fixture
def env(stack: Stack, topic: str, database: str) -> dict[str, str]:
    """Environment for a service process pointed at this test's topic and database."""
    return stack.service_env(topic=topic, database=database, CONSUMER_GROUP=f"test-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def db(stack: Stack, database: str) -> Iterator[psycopg2.extensions.connection]:
    """A connection to this test's database as the project's role (autocommit)."""
    conn = stack.connect(database)
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """Kill any service process a test started and did not wait for (e.g. after a failure)."""
    yield
    while Service.started:
        service = Service.started.pop()
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=30)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration is marked `integration` (selectable with -m)."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "partitions(n): partitions of the test's topic (default 6)")
    os.environ.setdefault("LOG_FORMAT", "json")


@pytest.fixture
def alerts_topic(stack: Stack, topic: str) -> Iterator[str]:
    """A 3-partition topic for this test's alert events, next to its readings topic."""
    name = f"{topic}_alertas"
    create_topic(stack.bootstrap, name, 3)
    yield name
    delete_topic(stack.bootstrap, name)
