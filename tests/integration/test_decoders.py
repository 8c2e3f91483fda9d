"""Both decoders against the real broker and server: the native one (iot_fastpath) when it is
installed, the Python path when it is not - and the consumer says which one runs."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import psycopg2.extensions
import pytest
from kafka import KafkaProducer

from tests.helpers import BIN, Stack, end_offsets, scalar, send_raw, wait_until
from tests.integration.test_consumer import assert_exactly_once, consume, produce
from tests.integration.test_foreign_inputs import reading


def without_native_decoder(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The environment of a machine where the extension is missing (an import that fails first on the path)."""
    blocker = tmp_path / "no-fastpath"
    blocker.mkdir(exist_ok=True)
    (blocker / "iot_fastpath.py").write_text('raise ImportError("iot_fastpath is not installed here")\n')
    return {**env, "PYTHONPATH": str(blocker)}


def test_native_decoder_writes_exactly_once_and_says_so(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """With the extension (make dev builds it): decoder=native at start, the gauge at 1, every row
    counted under path="native", and exactly one row per reading."""
    assert produce(env, tmp_path, 3000, 50).wait(120) == 0
    consumer = consume(env, tmp_path, 600)
    wait_until(
        lambda: scalar(db, "SELECT count(*) FROM sensores") == 3000 if consumer.logged("consumer_started") else False,
        60,
        "rows",
    )
    assert consumer.event("consumer_started")["decoder"] == "native"
    assert consumer.metric("iot_consumer_native_decoder") == 1
    assert consumer.metric("iot_consumer_rows_decoded_total", path="native") == 3000
    assert consumer.metric("iot_consumer_rows_decoded_total", path="python") == 0
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert_exactly_once(db, stack, topic, 3000)
    assert scalar(db, "SELECT sum(leituras) FROM sensores_minuto") == 3000


def test_without_the_extension_the_python_path_does_everything_and_says_so(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """A machine without the C extension: the consumer warns at start (native_decoder_missing),
    the gauge is 0, every row is counted under path="python", nothing is lost or doubled."""
    assert produce(env, tmp_path, 3000, 50).wait(120) == 0
    consumer = consume(without_native_decoder(env, tmp_path), tmp_path, 600)
    wait_until(
        lambda: scalar(db, "SELECT count(*) FROM sensores") == 3000 if consumer.logged("consumer_started") else False,
        60,
        "rows",
    )
    assert consumer.logged("native_decoder_missing")
    assert consumer.event("consumer_started")["decoder"] == "python"
    assert consumer.metric("iot_consumer_native_decoder") == 0
    assert consumer.metric("iot_consumer_rows_decoded_total", path="python") == 3000
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    assert_exactly_once(db, stack, topic, 3000)
    assert scalar(db, "SELECT sum(leituras) FROM sensores_minuto") == 3000


def test_asking_for_the_native_decoder_without_it_fails_fast(env: dict[str, str], tmp_path: Path) -> None:
    """CONSUMER_DECODER=native where the extension is missing: exit 2 before touching anything,
    with a message that says how to get it."""
    done = subprocess.run(
        [str(BIN / "iot-consumer"), "run", "--decoder", "native"],
        env=without_native_decoder(env, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "native decoder (iot_fastpath) is not installed" in done.stderr + done.stdout


@pytest.mark.parametrize("decoder", ["native", "python"])
def test_transactions_committed_are_read_and_aborted_ones_never(
    stack: Stack,
    env: dict[str, str],
    topic: str,
    db: psycopg2.extensions.connection,
    tmp_path: Path,
    decoder: str,
) -> None:
    """A transactional producer (Kafka Connect's exactly-once sources, Flink) commits 50 readings,
    aborts 30, commits 20 more: 70 rows on either decoder, none of the aborted ones, no dead
    letter - and the stored positions move past the trailing commit markers (fenced, no rows):
    lag 0 on every partition, /readyz 200 past the stall time, and bounded mode exits by itself."""
    producer = KafkaProducer(
        bootstrap_servers=stack.bootstrap, transactional_id=f"txn-{uuid.uuid4().hex[:8]}", acks="all"
    )
    try:
        producer.init_transactions()
        for count, temperature, commit in ((50, 21.0, True), (30, 84.0, False), (20, 22.0, True)):
            producer.begin_transaction()
            for i in range(count):
                producer.send(topic, key=b"k%d" % i, value=reading(i, temperatura=temperature))
            producer.flush(60)
            if commit:
                producer.commit_transaction()
            else:
                producer.abort_transaction()
    finally:
        producer.close()
    consumer = consume({**env, "CONSUMER_DECODER": decoder}, tmp_path, 8.0, "--stall-after", "3")
    wait_until(
        lambda: consumer.logged("consumer_started") and scalar(db, "SELECT count(*) FROM sensores") == 70, 60, "rows"
    )
    ends = end_offsets(stack.bootstrap, topic)
    wait_until(
        lambda: scalar(db, "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions") == sum(ends.values()),
        30,
        "stored positions at the log ends (past the commit markers)",
    )
    time.sleep(4)  # past --stall-after: a partition left one offset short would be "stalled" by now
    status, body = consumer.get("/readyz")
    assert status == 200, body
    assert sum(consumer.metric("iot_consumer_lag", partition=str(p)) for p in ends) == 0
    assert consumer.wait(60) == 0  # bounded mode: the group is caught up
    assert scalar(db, "SELECT count(*) FROM sensores") == 70
    assert scalar(db, "SELECT count(*) FROM sensores WHERE temperatura = 84.0") == 0
    assert scalar(db, "SELECT count(*) FROM dead_letters") == 0


# The forms a device may send that the text row hands PostgreSQL as typed and the binary row
# as the value the decoder computed: they must end up the same bits in sensores.
EDGE_NUMBERS = ["-0", "-0.0", "0", "1e1", "2.5E+1", "25.000", "23.456789012345678", "29.999999999999996", "20"]


def edge_readings(now: datetime) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs: strict readings in every number and timestamp form, upper-case ids,
    and some only the Python path takes (extras, an offset timestamp) among them."""
    out: list[tuple[bytes, bytes]] = []
    for i in range(400):
        stamp = now - timedelta(minutes=5, microseconds=i * 1_001_001)
        form = i % 4
        text = (
            stamp.isoformat(),
            stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            stamp.isoformat(timespec="seconds"),
            stamp.astimezone(timezone(timedelta(hours=-3))).isoformat(),  # the Python path's
        )[form]
        sensor = str(uuid.UUID(int=i % 37 + 1))
        t = EDGE_NUMBERS[i % len(EDGE_NUMBERS)]
        h = EDGE_NUMBERS[(i * 7) % len(EDGE_NUMBERS)].replace("2", "4")
        extras = ', "bateria": 87' if i % 11 == 0 else ""
        body = f'{{"sensor_id": "{sensor.upper() if i % 2 else sensor}", "timestamp": "{text}", '
        body += f'"temperatura": {t}, "umidade": {h}{extras}}}'
        out.append((sensor.encode(), body.encode()))
    return out


def stored_bits(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    """Every row as the server stores it (doubles as their bits), and the minute rollups."""
    with conn.cursor() as cur:
        cur.execute(
            'SELECT sensor_id, "timestamp", float8send(temperatura), float8send(umidade), kafka_partition,'
            " kafka_offset, extras::text FROM sensores ORDER BY kafka_partition, kafka_offset"
        )
        rows = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cur.fetchall()]
        cur.execute("SELECT * FROM sensores_minuto ORDER BY 1, 2")
        return rows + cur.fetchall()


def test_copy_binary_stores_what_copy_text_stores_bit_for_bit(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """The same topic consumed twice, into two databases: CONSUMER_COPY_FORMAT=text (the
    reference) and binary (the default). Every stored row is identical - UUIDs, instants, each
    double to the bit (float8send: -0 as 0, -0.0 as -0.0, 1e1, 17 digits), partitions, offsets,
    extras of the Python path's rows beside the native ones - and so are the rollups; each says
    its format at start."""
    send_raw(stack.bootstrap, topic, edge_readings(datetime.now(UTC)))
    assert produce(env, tmp_path, 2000, 50).wait(120) == 0
    other = f"{env['POSTGRES_DB']}_text"
    admin = stack.admin_connection()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{other}" OWNER "{stack.pg_user}"')
    try:
        binary = consume(env, tmp_path, 4.0)
        text_env = {**env, "POSTGRES_DB": other, "CONSUMER_GROUP": env["CONSUMER_GROUP"] + "-text"}
        text = consume({**text_env, "CONSUMER_COPY_FORMAT": "text"}, tmp_path, 4.0)
        assert binary.wait(120) == 0, binary.log_path.read_text()[-2000:]
        assert text.wait(120) == 0, text.log_path.read_text()[-2000:]
        assert binary.event("consumer_started")["copy_format"] == "binary"
        assert text.event("consumer_started")["copy_format"] == "text"
        assert_exactly_once(db, stack, topic, 2400)
        text_db = stack.connect(other)
        try:
            assert stored_bits(db) == stored_bits(text_db)
            assert scalar(text_db, "SELECT count(*) FROM sensores WHERE extras IS NOT NULL") > 0
            assert (
                scalar(
                    text_db, "SELECT count(*) FROM sensores WHERE float8send(temperatura) = float8send(-0.0::float8)"
                )
                > 0
            )
        finally:
            text_db.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
        admin.close()
