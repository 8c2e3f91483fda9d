"""PostgreSQL side of the consumer: one transaction per batch (rows + their rollups + dead
letters + positions).

The stored positions are the source of truth for where consumption stands. A batch commits
only if every partition's stored position is still the one this process started from; a
replica that lost a partition in a rebalance ("zombie") therefore cannot write it.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

import psycopg2
import psycopg2.extensions
from psycopg2.extras import execute_values

from iot_common.errors import summary
from iot_common.logging import get_logger
from iot_common.postgres import connect
from iot_common.settings import PostgresSettings
from iot_consumer import rollups
from iot_consumer.alerts.engine import Evaluation
from iot_consumer.alerts.stage import AlertStage
from iot_consumer.batch import MAX_STORED_KEY, MAX_STORED_PAYLOAD, Batch, DeadLetter
from iot_consumer.duplicates import DuplicatePolicy, insert_new_readings
from iot_consumer.gaps import OffsetGap
from iot_consumer.schema import DailyPartitions

log = get_logger(__name__)

COPY_SQL = (
    'COPY sensores (sensor_id, "timestamp", temperatura, umidade, kafka_partition, kafka_offset, extras) FROM STDIN'
)


class StoredPosition(NamedTuple):
    """A row of ``consumer_positions``: the next offset, and the id of the topic it belongs to."""

    next_offset: int
    topic_id: uuid.UUID | None


class FencedError(RuntimeError):
    """Stored positions moved under us: another replica owns (or owned) the partition."""


class PostgresSink:
    """Owns the consumer's connection and writes batches atomically."""

    def __init__(
        self,
        settings: PostgresSettings,
        group: str,
        topic: str,
        days_ahead: int = 2,
        alerts: AlertStage | None = None,
        duplicates: DuplicatePolicy = DuplicatePolicy.KEEP,
    ) -> None:
        self._settings = settings
        self.alerts = alerts
        self.duplicates = duplicates
        self.group = group
        self.topic = topic
        self.day_partitions = DailyPartitions(days_ahead)  # PostgreSQL's daily partitions of sensores
        self._conn: psycopg2.extensions.connection | None = None
        self.last_copy_seconds = 0.0
        self.last_rollup_seconds = 0.0
        # The topic's id as Kafka reports it, stored with every position (detects a re-created topic).
        self.topic_id: uuid.UUID | None = None

    # ------------------------------------------------------------------ connection
    def connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._settings, application_name=f"iot-consumer:{self.group}")
            self._conn.autocommit = False
            self.day_partitions.forget()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
            finally:
                self._conn.close()
        self._conn = None

    def _rollback(self, conn: psycopg2.extensions.connection) -> None:
        """After a failed transaction: roll back, or drop a connection that cannot even do that."""
        if not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                self.discard_connection()

    def discard_connection(self) -> None:
        """Forget a connection that failed (it may be half-open)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None

    def ping(self) -> None:
        conn = self.connection()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.rollback()

    # ------------------------------------------------------------------ positions
    def load_positions(self, partitions: Iterable[int]) -> dict[int, StoredPosition | None]:
        """Stored positions of ``partitions`` (None where nothing is stored yet)."""
        wanted = sorted(set(partitions))
        conn = self.connection()
        with conn.cursor() as cur:
            cur.execute(
                """SELECT kafka_partition, next_offset, topic_id FROM consumer_positions
                   WHERE consumer_group = %s AND topic = %s AND kafka_partition = ANY(%s)""",
                (self.group, self.topic, wanted),
            )
            found = {
                int(p): StoredPosition(int(o), uuid.UUID(str(t)) if t is not None else None)
                for p, o, t in cur.fetchall()
            }
        conn.rollback()
        return {p: found.get(p) for p in wanted}

    def record_gap_and_move(
        self, gap: OffsetGap, expected: int | None, new_offset: int, action: str, skipped: int
    ) -> None:
        """Record an offset gap in ``offset_gaps`` and move the stored position past it, in one
        transaction fenced like a batch (a replica that lost the partition cannot move it)."""
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    """INSERT INTO offset_gaps (consumer_group, topic, kafka_partition, kind, stored_position,
                           log_start, log_end, records_lost, action, new_position, records_skipped,
                           old_topic_id, topic_id)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                    (
                        self.group,
                        self.topic,
                        gap.partition,
                        gap.kind.value,
                        gap.position,
                        gap.log_start,
                        gap.log_end,
                        gap.records_lost,
                        action,
                        new_offset,
                        skipped,
                        str(gap.stored_topic_id) if gap.stored_topic_id else None,
                        str(gap.topic_id) if gap.topic_id else None,
                    ),
                )
                self._set_position(cur, gap.partition, expected, new_offset)
            conn.commit()
        except BaseException:
            self._rollback(conn)
            raise

    def load_alert_state(self, partitions: Iterable[int]) -> None:
        if self.alerts is not None:
            self.alerts.load(self.connection(), sorted(set(partitions)))

    def write_alert_clock(self, evaluation: Evaluation, fence: dict[int, int]) -> None:
        """Write alerts found by moving idle partitions' clocks on (no rows, no new positions).

        Fenced like a batch: only while ``consumer_positions`` still holds ``fence`` for
        every partition involved, so a replica that lost them cannot open alerts for them.
        """
        assert self.alerts is not None
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    """SELECT kafka_partition, next_offset FROM consumer_positions
                       WHERE consumer_group = %s AND topic = %s AND kafka_partition = ANY(%s) FOR UPDATE""",
                    (self.group, self.topic, sorted(fence)),
                )
                found = {int(p): int(o) for p, o in cur.fetchall()}
                if found != fence:
                    raise FencedError(f"stored positions {found} are no longer {fence}")
                written = self.alerts.write(cur, evaluation)
            conn.commit()
        except BaseException:
            self._rollback(conn)
            raise
        if written:
            self.alerts.committed(evaluation)

    # ------------------------------------------------------------------ writing
    def write(self, batch: Batch) -> None:
        """Write the batch's rows, dead letters and positions in one transaction, or nothing.

        Raises FencedError when a stored position is not the expected one, and the
        psycopg2 error otherwise; the transaction is rolled back in both cases.
        """
        conn = self.connection()
        if batch.days:
            self.day_partitions.ensure(conn, batch.days)
        alerts = self.alerts
        evaluation = None
        if alerts is not None:
            evaluation = (
                alerts.evaluate(batch.readings) if batch.summary is None else alerts.evaluate_summary(batch.summary)
            )
        alerts_written = False
        try:
            with conn.cursor() as cur:
                if batch.rows and self.duplicates is DuplicatePolicy.DROP:
                    started = time.perf_counter()
                    batch.duplicates_dropped = insert_new_readings(cur, batch.copy_payload(), batch.rows)
                    self.last_copy_seconds, self.last_rollup_seconds = time.perf_counter() - started, 0.0
                elif batch.rows:
                    self._copy(cur, batch.copy_payload())
                    started = time.perf_counter()
                    summary = batch.summary
                    if summary is None:
                        rollups.upsert(cur, batch.readings)
                    else:
                        rollups.upsert_staged(cur, summary.rollup_copy(60), summary.rollup_copy(3600))
                    self.last_rollup_seconds = time.perf_counter() - started
                if batch.dead_letters:
                    self._insert_dead_letters(cur, batch.dead_letters)
                if alerts is not None and evaluation is not None:
                    alerts_written = alerts.write(cur, evaluation)
                self._advance_positions(cur, batch)
            conn.commit()
        except BaseException:
            self._rollback(conn)
            raise
        if alerts is not None and evaluation is not None and alerts_written:
            alerts.committed(evaluation)

    def write_with_rejects(self, batch: Batch) -> Batch:
        """Write the batch; if PostgreSQL refuses a row the validator let through, dead-letter
        that row and write the rest (one bad row never stops the pipeline). Returns what was
        written (a natively decoded batch is rebuilt on the Python path to find the row)."""
        try:
            self.write(batch)
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            log.warning("batch_rejected_rows", error=summary(exc), rows=batch.rows)
            if batch.rebuild is not None:
                batch = batch.rebuild()
            rejected = self.find_rejected_lines(batch.copy_lines)
            if not rejected:
                raise
            batch.reject_rows(rejected)
            self.write(batch)
        return batch

    def _copy(self, cur: psycopg2.extensions.cursor, payload: bytes) -> None:
        started = time.perf_counter()
        cur.copy_expert(COPY_SQL, io.BytesIO(payload), size=1 << 20)
        self.last_copy_seconds = time.perf_counter() - started

    def _insert_dead_letters(self, cur: psycopg2.extensions.cursor, letters: list[DeadLetter]) -> None:
        rows = [
            (
                self.group,
                letter.topic,
                letter.partition,
                letter.offset,
                datetime.fromtimestamp(letter.kafka_timestamp_ms / 1000, UTC)
                if letter.kafka_timestamp_ms is not None
                else None,
                psycopg2.Binary(letter.key[:MAX_STORED_KEY]) if letter.key is not None else None,
                psycopg2.Binary(letter.payload[:MAX_STORED_PAYLOAD]) if letter.payload is not None else None,
                letter.payload_size,
                letter.payload_size > MAX_STORED_PAYLOAD,
                len(letter.key) if letter.key is not None else None,
                letter.key is not None and len(letter.key) > MAX_STORED_KEY,
                letter.reason,
                letter.detail[:1000],
            )
            for letter in letters
        ]
        execute_values(
            cur,
            """INSERT INTO dead_letters (consumer_group, topic, kafka_partition, kafka_offset, kafka_timestamp,
                   message_key, payload, payload_size, payload_truncated, key_size, key_truncated, reason, detail)
               VALUES %s""",
            rows,
            page_size=1000,
        )

    def _advance_positions(self, cur: psycopg2.extensions.cursor, batch: Batch) -> None:
        for update in batch.positions:
            self._set_position(cur, update.partition, update.expected, update.next_offset)

    def _set_position(self, cur: psycopg2.extensions.cursor, partition: int, expected: int | None, new: int) -> None:
        """Move ``partition`` from ``expected`` (None: no row yet) to ``new``, or raise FencedError."""
        topic_id = str(self.topic_id) if self.topic_id is not None else None
        if expected is None:
            cur.execute(
                """INSERT INTO consumer_positions (consumer_group, topic, kafka_partition, next_offset, topic_id)
                   VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                (self.group, self.topic, partition, new, topic_id),
            )
        else:
            cur.execute(
                """UPDATE consumer_positions
                   SET next_offset = %s, topic_id = coalesce(%s::uuid, topic_id), updated_at = now()
                   WHERE consumer_group = %s AND topic = %s AND kafka_partition = %s AND next_offset = %s""",
                (new, topic_id, self.group, self.topic, partition, expected),
            )
        if cur.rowcount != 1:
            raise FencedError(f"partition {partition}: stored position is no longer {expected}")

    def find_rejected_lines(self, lines: list[str]) -> list[tuple[int, str]]:
        """Indexes of COPY lines PostgreSQL refuses, each tried alone under a savepoint.

        Only used after a batch failed with a data error the validator did not foresee, so
        one bad row is dead-lettered instead of stopping the pipeline.
        """
        conn = self.connection()
        rejected: list[tuple[int, str]] = []
        try:
            with conn.cursor() as cur:
                for index, line in enumerate(lines):
                    cur.execute("SAVEPOINT probe")
                    try:
                        cur.copy_expert(COPY_SQL, io.BytesIO(line.encode()))
                    except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
                        rejected.append((index, summary(exc)))
                    cur.execute("ROLLBACK TO SAVEPOINT probe")
        finally:
            conn.rollback()
        return rejected
