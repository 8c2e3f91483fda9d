"""stack/stack.sh on a clean checkout: what `make test` does first on a fresh machine.

The shared stack of the other tests was made once and lives on; these start one of their own in
a new STACK_DIR, the way a fresh clone meets it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.helpers import REPO, free_port, read_env_file

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
