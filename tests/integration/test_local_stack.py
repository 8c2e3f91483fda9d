"""stack/stack.sh on a clean checkout: what `make test` does first on a fresh machine.

The shared stack of the other tests was made once and lives on; these start one of their own in
a new STACK_DIR, the way a fresh clone meets it.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.helpers import REPO, end_offsets, free_port, read_env_file, send_raw

STACK_SH = REPO / "stack" / "stack.sh"


def stack_sh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK_SH), *args], env=env, capture_output=True, text=True, check=False)


@pytest.fixture
def private_checkout(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A STACK_DIR inside a directory only its owner may enter (as /root/... or pytest's own
    tmp is), and the environment that points stack.sh at it on a free port."""
    home = tmp_path / "private"
    home.mkdir(mode=0o700)
    stack_dir = home / "checkout" / ".stack"
    env = {**os.environ, "STACK_DIR": str(stack_dir), "POSTGRES_PORT": str(free_port())}
    for name in ("POSTGRES_PASSWORD", "CONSUMER_DB_PASSWORD", "EXPORTER_DB_PASSWORD", "DASHBOARD_DB_PASSWORD"):
        env.pop(name, None)  # this stack generates its own
    yield stack_dir, env
    stack_sh(env, "down", "postgres")
    data_home = stack_dir / "postgres"
    if data_home.is_symlink():  # the data were kept outside, where the 'postgres' user may go
        subprocess.run(["rm", "-rf", str(data_home.resolve())], check=True)


def test_a_fresh_stack_dir_comes_up_even_where_the_postgres_user_may_not_enter(
    private_checkout: tuple[Path, dict[str, str]],
) -> None:
    """The CI failure of 2026-12-01 (initdb refused: the server was given a data path through
    .stack/, which dev-secrets makes 0700): a fresh STACK_DIR starts PostgreSQL, the generated
    passwords sign in, and .stack/ and its secrets file stay private. As root the server runs as
    'postgres', who cannot enter the checkout: its data live outside (the case CI meets); as
    another user it is that user's own server."""
    stack_dir, env = private_checkout
    up = stack_sh(env, "up", "postgres")
    assert up.returncode == 0, up.stderr
    assert "Permission denied" not in up.stderr
    status = stack_sh(env, "status")
    assert "postgres  running" in status.stdout, status.stdout + status.stderr

    secrets_file = stack_dir / "secrets.env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack_dir.stat().st_mode) & 0o077 == 0, ".stack/ must be private"
    if os.geteuid() == 0:
        assert (stack_dir / "postgres").is_symlink(), "the data must live where 'postgres' may go"
    secrets = read_env_file(secrets_file)
    conn = psycopg2.connect(
        host="localhost",
        port=int(env["POSTGRES_PORT"]),
        user="iot_consumer",
        password=secrets["CONSUMER_DB_PASSWORD"],
        dbname="iot",
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == ("iot_consumer",)
    finally:
        conn.close()

    down = stack_sh(env, "down", "postgres")
    assert down.returncode == 0, down.stderr
    status = stack_sh(env, "status")
    assert "postgres  stopped" in status.stdout


def free_port_block(span: int = 30) -> int:
    """A base port with base .. base+span all free (a three-node cluster's nine ports)."""
    for base in range(29_000, 60_000, 100):
        if all(not _listening(port) for port in range(base, base + span)):
            return base
    raise RuntimeError("no block of free ports for a three-node Kafka")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_brokers_3_runs_three_replicating_nodes_on_localhost_that_serve_with_one_down(tmp_path: Path) -> None:
    """`make stack-up BROKERS=3` as a user runs it: three KRaft nodes on localhost (ports +10 per
    node), the topic replicated 3 times with min.insync.replicas 2; with one node killed -9 an
    acks=all producer is still acknowledged and every message is in the topic; `down` leaves no
    node running and the one-node default is untouched."""
    base = free_port_block()
    env = {
        **os.environ,
        "STACK_DIR": str(tmp_path / ".stack"),
        "KAFKA_BROKERS": "3",
        "KAFKA_PORT": str(base),
        "KAFKA_CONTROLLER_PORT": str(base + 1),
        "KAFKA_SASL_PORT": str(base + 3),
        "KAFKA_PARTITIONS": "3",
    }
    shared_jars = Path(os.environ.get("STACK_DIR", REPO / ".stack")) / "kafka" / "libs"
    if shared_jars.is_dir():
        env["KAFKA_LIBS"] = str(shared_jars)  # the main stack's (its stamp says they are current)
    bootstrap = ",".join(f"localhost:{base + 10 * n}" for n in range(3))
    try:
        up = stack_sh(env, "up", "kafka")
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}" in up.stderr
        status = stack_sh(env, "status")
        assert status.stdout.count("kafka     running") == 3, status.stdout
        assert "ReplicationFactor: 3" in status.stdout, status.stdout
        assert "min.insync.replicas=2" in status.stdout, status.stdout

        killed = stack_sh(env, "node", "kill", "2")
        assert killed.returncode == 0, killed.stderr
        send_raw(bootstrap, "iot_sensores", [(b"k%d" % i, b"v%d" % i) for i in range(300)])
        assert sum(end_offsets(bootstrap, "iot_sensores").values()) == 300
        restarted = stack_sh(env, "node", "up", "2")
        assert restarted.returncode == 0, restarted.stderr
    finally:
        down = stack_sh(env, "down", "kafka")
    assert down.returncode == 0, down.stderr
    left = subprocess.run(["pgrep", "-f", str(tmp_path / ".stack")], capture_output=True, text=True, check=False)
    assert left.stdout == "", f"processes left behind: {left.stdout}"
    assert not (tmp_path / ".stack" / "kafka" / "data").exists(), "the one-node layout must stay apart"
