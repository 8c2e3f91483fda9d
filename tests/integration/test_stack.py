"""The local stack is real: a Kafka 4.3.1 broker and a PostgreSQL server answering on their ports."""

from __future__ import annotations

import uuid

from kafka import KafkaAdminClient

from tests.helpers import Stack, partitions_of, read_topic, scalar, send_raw


def test_topic_iot_sensores_has_six_partitions(stack: Stack) -> None:
    """`make stack-up` creates the pipeline's topic with 6 partitions."""
    assert partitions_of(stack.bootstrap, "iot_sensores") == set(range(6))


def test_broker_is_kafka_4_in_kraft_mode(stack: Stack) -> None:
    """The broker speaks Kafka 4.x (KRaft: no ZooKeeper) and reports one node."""
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
    try:
        cluster = admin.describe_cluster()
        assert len(cluster["brokers"]) == 1
        assert admin._client.check_version() >= (4, 0)
    finally:
        admin.close()


def test_kafka_round_trip(stack: Stack, topic: str) -> None:
    """What is produced with acks=all can be read back, keys and values intact."""
    messages = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(100)]
    send_raw(stack.bootstrap, topic, messages)
    got = {(r.key, r.value) for r in read_topic(stack.bootstrap, topic)}
    assert got == set(messages)


def test_postgres_accepts_the_project_role(stack: Stack, database: str) -> None:
    """The project's role logs in over TCP with its password; sessions run in UTC."""
    conn = stack.connect(database)
    try:
        assert scalar(conn, "SELECT current_user") == stack.pg_user
        assert scalar(conn, "SHOW TimeZone") == "UTC"
        assert int(scalar(conn, "SHOW server_version_num")) >= 150000
        marker = str(uuid.uuid4())
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (v text)")
            cur.execute("INSERT INTO t VALUES (%s)", (marker,))
        assert scalar(conn, "SELECT v FROM t") == marker
    finally:
        conn.close()
