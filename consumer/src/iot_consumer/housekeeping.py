"""Retention and storage accounting for ``sensores`` and its rollups.

Expired partitions are detached and dropped whole (``iot_drop_expired_partitions``), never
deleted row by row: no dead tuples, no vacuum debt, the disk space returns at once. Each table
keeps its own number of days (raw readings for weeks, minute rollups for months, hour rollups
for years; 0 keeps everything). The consumer runs it on its clock (``--housekeeping-interval``)
on its own connection, between batches; replicas take turns through an advisory lock, and a
drop that would wait more than a few seconds for the table lock is postponed to the next round
instead of stalling the writers queued behind it. ``iot-consumer retention`` runs it by hand.
The fleet rollups (one row per bucket, not per sensor) follow their per-sensor rollup in the same
transaction: rows older than its oldest kept bucket are deleted (``iot_expire_fleet_rollups``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from iot_common.errors import summary
from iot_common.logging import get_logger
from iot_consumer import metrics as m
from iot_consumer.migrations import PARTITION_LOCK_KEY

log = get_logger(__name__)

# Any fixed 64-bit number: one replica drops, the others skip that round.
RETENTION_LOCK_KEY = 0x10_7_3017_0003
TABLES = ("sensores", "sensores_minuto", "sensores_hora")


class RetentionConfigError(ValueError):
    """Retention periods that would make the rollups end before the data they summarise."""


@dataclass(frozen=True, slots=True)
class Retention:
    """Days kept per table; 0 keeps everything."""

    raw_days: int = 0
    minute_rollup_days: int = 0
    hour_rollup_days: int = 0
    # Dead letters are deleted this many days after they were written (0 keeps them all).
    dead_letter_days: int = 0

    def __post_init__(self) -> None:
        if self.dead_letter_days < 0:
            raise RetentionConfigError(
                f"DEAD_LETTER_RETENTION_DAYS={self.dead_letter_days}: must be 0 (keep everything) or a number of days"
            )
        named = (
            ("RETENTION_DAYS", self.raw_days),
            ("MINUTE_ROLLUP_RETENTION_DAYS", self.minute_rollup_days),
            ("HOUR_ROLLUP_RETENTION_DAYS", self.hour_rollup_days),
        )
        for name, days in named:
            if days < 0:
                raise RetentionConfigError(f"{name}={days}: must be 0 (keep everything) or a number of days")
        # A coarser table must reach at least as far back as a finer one, or long dashboard
        # windows and rollup exports would show holes where raw data still exists.
        for (fine_name, fine), (coarse_name, coarse) in itertools.pairwise(named):
            if coarse and (not fine or coarse < fine):
                raise RetentionConfigError(
                    f"{coarse_name}={coarse} keeps less than {fine_name}={fine or 'everything'}: "
                    "rollups must be kept at least as long as the data below them"
                )

    def days(self) -> dict[str, int]:
        return dict(zip(TABLES, (self.raw_days, self.minute_rollup_days, self.hour_rollup_days), strict=True))

    @property
    def enabled(self) -> bool:
        return any(self.days().values()) or self.dead_letter_days > 0


@dataclass(frozen=True, slots=True)
class DroppedPartition:
    table: str
    partition: str
    upper_bound: datetime
    bytes: int


@dataclass(frozen=True, slots=True)
class TableStorage:
    table: str
    partitions: int
    bytes: int


class RetentionPostponedError(RuntimeError):
    """Another session held the table lock longer than the drop may wait."""


def drop_expired(
    conn: psycopg2.extensions.connection, retention: Retention, now: datetime, *, dry_run: bool = False
) -> list[DroppedPartition] | None:
    """Drop every partition that ends at or before ``now`` minus its table's retention.

    One transaction; None when another replica holds the retention lock (it is doing this).
    ``dry_run`` reports what would go and rolls back. Raises RetentionPostponedError when a
    table lock could not be had within the function's lock_timeout.
    """
    dropped: list[DroppedPartition] = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK_KEY,))
            row = cur.fetchone()
            if not (row and row[0]):
                conn.rollback()
                return None
            # Partition DDL of any kind is serialised (see migrations.DailyPartitions).
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
            _record_policy_as_owner(cur, retention)
            for table, days in retention.days().items():
                if days <= 0:
                    continue
                cur.execute(
                    "SELECT partition_name, upper_bound, bytes FROM iot_drop_expired_partitions(%s::regclass, %s)",
                    (table, now - timedelta(days=days)),
                )
                dropped += [DroppedPartition(table, str(p), u, int(b)) for p, u, b in cur.fetchall()]
            # the fleet rollups keep what the per-sensor ones still hold (nothing older)
            cur.execute("SELECT iot_expire_fleet_rollups()")
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    except psycopg2.errors.LockNotAvailable as exc:
        conn.rollback()
        raise RetentionPostponedError(str(exc).strip()) from exc
    except BaseException:
        conn.rollback()
        raise
    return dropped


def _record_policy_as_owner(cur: psycopg2.extensions.cursor, retention: Retention) -> None:
    """Run by the schema's owner, the retention asked for becomes the database's
    (``retention_policy``): the drop function refuses anything newer, whoever calls it. A
    service role cannot write it, so its RETENTION_DAYS can only ask for what the owner set."""
    cur.execute("SELECT pg_get_userbyid(relowner) = current_user FROM pg_class WHERE oid = 'sensores'::regclass")
    row = cur.fetchone()
    if not (row and row[0]):
        return
    for table, days in retention.days().items():
        if days > 0:
            _upsert_policy(cur, table, days)


def _upsert_policy(cur: psycopg2.extensions.cursor, table: str, days: int) -> None:
    cur.execute(
        """INSERT INTO retention_policy (relation, keep_days) VALUES (%s::regclass, %s)
           ON CONFLICT (relation) DO UPDATE SET keep_days = EXCLUDED.keep_days, updated_at = now()""",
        (table, days),
    )


def set_retention_policy(conn: psycopg2.extensions.connection, retention: Retention) -> dict[str, int | None]:
    """Run by the schema's owner (`iot-consumer migrate`): the retention the deployment asks
    for becomes the database's, so the consumers - which run as a service role that cannot
    write ``retention_policy`` - may drop what expired and nothing newer. A table kept whole
    (0 days) has no policy: the drop function then refuses every drop of it. What is set now:
    table -> days (None: kept whole)."""
    with conn.cursor() as cur:
        for table, days in retention.days().items():
            if days > 0:
                _upsert_policy(cur, table, days)
            else:
                cur.execute("DELETE FROM retention_policy WHERE relation = %s::regclass", (table,))
    conn.commit()
    return {table: days or None for table, days in retention.days().items()}


# Dead letters deleted per transaction: a long backlog expires without one huge delete.
DEAD_LETTERS_PER_EXPIRY = 10_000


def expire_dead_letters(conn: psycopg2.extensions.connection, days: int, now: datetime) -> int:
    """Delete the dead letters written more than ``days`` ago, in bounded transactions; the count."""
    deleted = 0
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT iot_expire_dead_letters(%s, %s)", (now - timedelta(days=days), DEAD_LETTERS_PER_EXPIRY))
            row = cur.fetchone()
            conn.commit()
            chunk = int(row[0]) if row and row[0] is not None else 0
            deleted += chunk
            if chunk < DEAD_LETTERS_PER_EXPIRY:
                return deleted


def storage(conn: psycopg2.extensions.connection) -> list[TableStorage]:
    """Partitions and bytes on disk (with indexes and TOAST) of sensores and each rollup."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT p.relname, count(c.oid), coalesce(sum(pg_total_relation_size(c.oid)), 0)
               FROM pg_class p
               LEFT JOIN pg_inherits i ON i.inhparent = p.oid
               LEFT JOIN pg_class c ON c.oid = i.inhrelid
               WHERE p.relname = ANY(%s) AND p.relkind = 'p'
               GROUP BY p.relname ORDER BY p.relname""",
            (list(TABLES),),
        )
        found = [TableStorage(str(t), int(n), int(b)) for t, n, b in cur.fetchall()]
        cur.execute("SELECT pg_total_relation_size('dead_letters')")
        row = cur.fetchone()
        found.append(TableStorage("dead_letters", 0, int(row[0]) if row else 0))
    conn.rollback()
    return found


class Housekeeper:
    """What the running consumer does on its housekeeping clock: retention rounds (logged and
    counted; a failed round is retried at the next one) and the tables' sizes as metrics.
    Connection errors propagate: the loop owns database outages."""

    def __init__(self, retention: Retention, retry_in_s: float) -> None:
        self.retention = retention
        self.retry_in_s = retry_in_s

    def apply_retention(self, conn: psycopg2.extensions.connection) -> bool:
        """One retention round; True when partitions were dropped."""
        if self.retention.dead_letter_days:
            self._expire_dead_letters(conn)
        try:
            dropped = drop_expired(conn, self.retention, datetime.now(UTC))
        except RetentionPostponedError as exc:
            m.RETENTION_ERRORS.labels("lock_timeout").inc()
            log.warning("retention_postponed", error=summary(exc), retry_in_s=self.retry_in_s)
            return False
        except psycopg2.OperationalError:
            raise
        except psycopg2.Error as exc:
            m.RETENTION_ERRORS.labels(type(exc).__name__).inc()
            log.error("retention_failed", error=summary(exc), retry_in_s=self.retry_in_s)
            return False
        if dropped is None:  # another replica holds this round
            return False
        m.RETENTION_LAST_RUN.set(time.time())
        for part in dropped:
            m.PARTITIONS_DROPPED.labels(part.table).inc()
            m.BYTES_FREED.labels(part.table).inc(part.bytes)
            log.info(
                "partition_dropped",
                table=part.table,
                partition=part.partition,
                ended=part.upper_bound.isoformat(),
                bytes=part.bytes,
            )
        # One line per round held (hourly by default): that retention runs at all is visible.
        log.info("retention_applied", dropped=len(dropped), days=self.retention.days())
        return bool(dropped)

    def _expire_dead_letters(self, conn: psycopg2.extensions.connection) -> None:
        try:
            deleted = expire_dead_letters(conn, self.retention.dead_letter_days, datetime.now(UTC))
        except psycopg2.OperationalError:
            raise
        except psycopg2.Error as exc:
            conn.rollback()
            m.RETENTION_ERRORS.labels(type(exc).__name__).inc()
            log.error("dead_letter_expiry_failed", error=summary(exc), retry_in_s=self.retry_in_s)
            return
        if deleted:
            m.DEAD_LETTERS_EXPIRED.inc(deleted)
            log.info("dead_letters_expired", deleted=deleted, older_than_days=self.retention.dead_letter_days)

    def measure_storage(self, conn: psycopg2.extensions.connection) -> bool:
        """Set the table size gauges; True."""
        for table in storage(conn):
            m.TABLE_BYTES.labels(table.table).set(table.bytes)
            m.TABLE_PARTITIONS.labels(table.table).set(table.partitions)
        return True
