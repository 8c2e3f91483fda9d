"""PostgreSQL side of the consumer: one transaction per batch - its rows and their rollups,
its dead letters, the alert rows it causes and the positions it moves - or nothing.

:func:`store_rows` is the one place rows and rollups are written (the consumer's batches and a
dead-letter replay alike); positions, their fencing and the offset-gap records are the
:class:`~iot_consumer.position_store.PositionStore`'s. A batch commits only if every
partition's stored position is still the one this process started from; a replica that lost a
partition in a rebalance ("zombie") therefore cannot write it.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum

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
from iot_consumer.migrations import DailyPartitions
from iot_consumer.position_store import FencedError, PositionStore, StoredPosition

log = get_logger(__name__)

COPY_SQL = (
    'COPY sensores (sensor_id, "timestamp", temperatura, umidade, kafka_partition, kafka_offset, extras) FROM STDIN'
)
# The native decoder's rows in COPY BINARY: the same columns, values the server parses no text of.
COPY_BINARY_SQL = COPY_SQL + " WITH (FORMAT binary)"


class CopyFormat(StrEnum):
    """How the native decoder hands its rows to COPY. Binary: the server parses no number,
    timestamp or UUID (PostgreSQL's CPU per row is what bounds the fast path). Text: the
    reference, and what the Python path and ``--on-duplicate drop``'s staging table always use."""

    TEXT = "text"
    BINARY = "binary"


__all__ = ["COPY_BINARY_SQL", "COPY_SQL", "CopyFormat", "FencedError", "PostgresSink", "StoredPosition", "store_rows"]


def store_rows(
    cur: psycopg2.extensions.cursor,
    batch: Batch,
    duplicates: DuplicatePolicy = DuplicatePolicy.KEEP,
    slot: int | None = None,
) -> tuple[float, float]:
    """The batch's rows into ``sensores`` and its summary into the rollups, inside the caller's
    transaction (the days' partitions exist); fleet rows under ``slot`` (default: the batch's own,
    rollups.batch_slot). Sets ``batch.duplicates_dropped`` under ``DuplicatePolicy.DROP``.
    Returns the seconds spent on the rows and on the rollups."""
    if not batch.rows:
        return 0.0, 0.0
    started = time.perf_counter()
    slot = rollups.batch_slot(batch.summary) if slot is None else slot
    if duplicates is DuplicatePolicy.DROP:
        # The rows actually inserted feed the rollups, in the same statement (duplicates.py).
        batch.duplicates_dropped = insert_new_readings(cur, batch.copy_payload(), batch.rows, slot)
        return time.perf_counter() - started, 0.0
    if batch.native_binary:
        cur.copy_expert(COPY_BINARY_SQL, io.BytesIO(batch.binary_payload()), size=1 << 20)
        if batch.copy_lines:  # the Python path's rows of the same batch (fallbacks, extras)
            cur.copy_expert(COPY_SQL, io.BytesIO(batch.python_copy_payload()), size=1 << 20)
    else:
        cur.copy_expert(COPY_SQL, io.BytesIO(batch.copy_payload()), size=1 << 20)
    copied = time.perf_counter()
    rollups.upsert(cur, batch.summary, slot)
    return copied - started, time.perf_counter() - copied


def store_dead_letters(cur: psycopg2.extensions.cursor, group: str, letters: list[DeadLetter]) -> None:
    """Dead letters into ``dead_letters``, payloads and keys bounded (their true sizes kept)."""
    rows = [
        (
            group,
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
            letter.last_offset,
        )
        for letter in letters
    ]
    execute_values(
        cur,
        """INSERT INTO dead_letters (consumer_group, topic, kafka_partition, kafka_offset, kafka_timestamp,
               message_key, payload, payload_size, payload_truncated, key_size, key_truncated, reason, detail,
               kafka_last_offset)
           VALUES %s""",
        rows,
        page_size=1000,
    )


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
        copy_format: CopyFormat = CopyFormat.BINARY,
    ) -> None:
        self._settings = settings
        self.alerts = alerts
        self.duplicates = duplicates
        # Binary rows only where the batch goes straight into sensores: the drop policy's
        # staging COPY reads text (so the decoder is asked for text, and no batch can mix them).
        self.copy_format = copy_format if duplicates is DuplicatePolicy.KEEP else CopyFormat.TEXT
        self.group = group
        self.topic = topic
        self.positions = PositionStore(group, topic)
        self.day_partitions = DailyPartitions(days_ahead)  # PostgreSQL's daily partitions of sensores
        self._conn: psycopg2.extensions.connection | None = None
        self.last_copy_seconds = 0.0
        self.last_rollup_seconds = 0.0

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
        conn = self.connection()
        with conn.cursor() as cur:
            found = self.positions.load(cur, partitions)
        conn.rollback()
        return found

    def record_gap_and_move(
        self, gap: OffsetGap, expected: int | None, new_offset: int, action: str, skipped: int
    ) -> None:
        """Record an offset gap in ``offset_gaps`` and move the stored position past it, in one
        transaction fenced like a batch (a replica that lost the partition cannot move it)."""
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                self.positions.record_gap(cur, gap, expected, new_offset, action, skipped)
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
                self.positions.hold(cur, fence)
                written = self.alerts.write(cur, evaluation)
            conn.commit()
        except BaseException:
            self._rollback(conn)
            raise
        if written:
            self.alerts.committed(evaluation)

    # ------------------------------------------------------------------ writing
    def write(self, batch: Batch) -> None:
        """Write the batch's rows, rollups, dead letters, alert rows and positions in one
        transaction, or nothing.

        Raises FencedError when a stored position is not the expected one, and the
        psycopg2 error otherwise; the transaction is rolled back in both cases.
        """
        conn = self.connection()
        if batch.days:
            self.day_partitions.ensure(conn, batch.days)
        alerts = self.alerts
        evaluation = alerts.evaluate(batch.summary) if alerts is not None else None
        alerts_written = False
        try:
            with conn.cursor() as cur:
                self.last_copy_seconds, self.last_rollup_seconds = store_rows(cur, batch, self.duplicates)
                if batch.dead_letters:
                    store_dead_letters(cur, self.group, batch.dead_letters)
                if alerts is not None and evaluation is not None:
                    alerts_written = alerts.write(cur, evaluation)
                self.positions.advance(cur, batch.positions)
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
