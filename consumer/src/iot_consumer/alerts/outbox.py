"""Publishes committed alert events from ``alert_outbox`` to Kafka (transactional outbox).

Runs on its own thread with its own connection, so a slow or absent broker never stalls the
consumer's batches. Events are deleted only after Kafka acknowledged them (acks=all,
idempotent producer), so each reaches the topic at least once; consumers of the topic can
de-duplicate on ``(alert_id, event)``. One replica publishes at a time (advisory lock), in
commit order, so a sensor's "closed" never overtakes its "opened".
"""

from __future__ import annotations

import contextlib
import threading

import psycopg2
import psycopg2.extensions
from kafka import KafkaProducer
from kafka.errors import KafkaError

from iot_common.errors import summary
from iot_common.logging import get_logger
from iot_common.postgres import connect
from iot_common.retry import Backoff
from iot_common.settings import KafkaSettings, PostgresSettings
from iot_consumer import metrics as m

log = get_logger(__name__)

OUTBOX_LOCK_KEY = 0x10_7_3017_0003
BATCH = 500


class OutboxPublisher:
    def __init__(self, kafka: KafkaSettings, postgres: PostgresSettings, interval_s: float = 2.0) -> None:
        self._kafka = kafka
        self._postgres = postgres
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-outbox", daemon=True)
        self._conn: psycopg2.extensions.connection | None = None
        self._producer: KafkaProducer | None = None

    def start(self) -> OutboxPublisher:
        self._thread.start()
        return self

    def notify(self) -> None:
        """New events were committed: publish now rather than at the next interval."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Publish what is pending (bounded by ``timeout_s``), then stop."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._close()

    def _run(self) -> None:
        backoff = Backoff(wait_initial=1.0, wait_max=30.0)
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            stopping = self._stopping.is_set()
            try:
                while self.drain_once() == BATCH:
                    pass
                backoff.reset()
            except (psycopg2.Error, KafkaError, OSError) as exc:
                m.ALERT_PUBLISH_ERRORS.inc()
                delay = backoff.next_delay()
                log.warning("alert_publish_failed", error=summary(exc), retry_in_s=round(delay, 2))
                self._close()
                if not stopping:
                    self._stopping.wait(delay)
            if stopping:
                return

    def drain_once(self) -> int:
        """Publish up to one batch of pending events; return how many were published."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (OUTBOX_LOCK_KEY,))
                row = cur.fetchone()
                if not (row and row[0]):
                    conn.rollback()
                    return 0  # another replica is publishing
                cur.execute("SELECT count(*) FROM alert_outbox")
                count_row = cur.fetchone()
                m.ALERT_OUTBOX_BACKLOG.set(int(count_row[0]) if count_row else 0)
                cur.execute(
                    "SELECT id, topic, message_key, payload FROM alert_outbox ORDER BY id LIMIT %s FOR UPDATE",
                    (BATCH,),
                )
                pending = cur.fetchall()
                if not pending:
                    conn.rollback()
                    return 0
                producer = self._kafka_producer()
                futures = [
                    producer.send(topic, key=bytes(key) if key is not None else None, value=bytes(payload))
                    for _, topic, key, payload in pending
                ]
                producer.flush(timeout=30)
                for future in futures:
                    future.get(timeout=1)  # raises if Kafka refused it: nothing is deleted
                cur.execute("DELETE FROM alert_outbox WHERE id = ANY(%s)", ([row[0] for row in pending],))
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        m.ALERT_EVENTS_PUBLISHED.inc(len(pending))
        m.ALERT_OUTBOX_BACKLOG.dec(len(pending))
        log.info("alert_events_published", events=len(pending))
        return len(pending)

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._postgres, application_name="iot-consumer:alert-outbox")
            self._conn.autocommit = False
        return self._conn

    def _kafka_producer(self) -> KafkaProducer:
        if self._producer is None:
            options = self._kafka.client_options()
            options["client_id"] = f"{self._kafka.client_id}-alerts"
            self._producer = KafkaProducer(
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_block_ms=10_000,  # unknown topic or no broker: fail this round, keep the events
                **options,
            )
        return self._producer

    def _close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except KafkaError as exc:
                log.debug("alert_producer_close_failed", error=repr(exc))
            self._producer = None
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None
