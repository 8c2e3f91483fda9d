"""Dead letters after the fact: list them, and replay them once the cause is fixed.

A replay re-validates each stored raw payload with today's rules (a field now accepted, a
limit widened) and moves the readings that pass into ``sensores`` - in one transaction that
also marks those dead letters replayed and writes an audit row in ``dead_letter_replays``.
A dead letter is replayed only while ``replayed_at`` is NULL, under ``FOR UPDATE``: a second
replay, or two at once, can never insert a reading twice. Rows keep their Kafka partition and
offset, so ``iot-consumer verify`` still accounts for every message exactly once (a replayed
dead letter counts as its row). The rows and their rollups are written by the consumer's own
``sink.store_rows``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg2.extensions

from iot_common.schema import InvalidReading, ReadingLimits, validate_reading
from iot_consumer.batch import Batch
from iot_consumer.migrations import create_day_partitions
from iot_consumer.rollups import REPLAY_SLOT
from iot_consumer.sink import store_rows

CHUNK = 1000


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: by reason(s) and by when they were dead-lettered (UTC)."""

    group: str
    reasons: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses = ["consumer_group = %(group)s", "replayed_at IS NULL"]
        params: dict[str, Any] = {"group": self.group}
        if self.reasons:
            clauses.append("reason = ANY(%(reasons)s)")
            params["reasons"] = list(self.reasons)
        if self.since is not None:
            clauses.append("dead_lettered_at >= %(since)s")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("dead_lettered_at < %(until)s")
            params["until"] = self.until
        return " AND ".join(clauses), params

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "reasons": list(self.reasons),
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None,
            }
        )


def summarize(
    conn: psycopg2.extensions.connection, which: DeadLetterFilter
) -> list[tuple[str, int, datetime, datetime]]:
    """(reason, count, first, last) of the dead letters not replayed yet."""
    where, params = which.where()
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT reason, count(*), min(dead_lettered_at), max(dead_lettered_at)
                FROM dead_letters WHERE {where} GROUP BY reason ORDER BY count(*) DESC, reason""",
            params,
        )
        rows = [(str(r), int(n), first, last) for r, n, first, last in cur.fetchall()]
    conn.rollback()
    return rows


def samples(
    conn: psycopg2.extensions.connection, which: DeadLetterFilter, limit: int
) -> list[tuple[int, int, int, str, str, bytes | None]]:
    """The newest ``limit`` dead letters: (id, partition, offset, reason, detail, payload)."""
    where, params = which.where()
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT id, kafka_partition, kafka_offset, reason, detail, payload FROM dead_letters
                WHERE {where} ORDER BY id DESC LIMIT %(limit)s""",
            {**params, "limit": limit},
        )
        rows = [
            (int(i), int(p), int(o), str(r), str(d), bytes(b) if b is not None else None) for i, p, o, r, d, b in cur
        ]
    conn.rollback()
    return rows


@dataclass
class ReplayResult:
    replay_id: int | None = None
    examined: int = 0
    replayed: int = 0
    still_invalid: int = 0
    skipped: int = 0  # payload truncated or absent: nothing to re-validate
    still_invalid_by_reason: dict[str, int] = field(default_factory=dict)


def replay(
    conn: psycopg2.extensions.connection,
    which: DeadLetterFilter,
    limits: ReadingLimits,
    *,
    dry_run: bool = False,
) -> ReplayResult:
    """Re-validate matching dead letters; move the valid ones into ``sensores`` exactly once.

    One transaction for the whole run (rows, marks and the audit row commit together, or
    nothing does); with ``dry_run`` it is rolled back and only the counts are returned.
    """
    result = ReplayResult()
    where, params = which.where()
    now = datetime.now(UTC)
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(
                """INSERT INTO dead_letter_replays (consumer_group, filter, examined, replayed, still_invalid, skipped)
                   VALUES (%s, %s, 0, 0, 0, 0) RETURNING id""",
                (which.group, which.as_json().decode()),
            )
            row = cur.fetchone()
            assert row is not None
            result.replay_id = int(row[0])
            last_id = 0
            while True:
                cur.execute(
                    f"""SELECT id, kafka_partition, kafka_offset, payload, payload_truncated FROM dead_letters
                        WHERE {where} AND id > %(after)s ORDER BY id LIMIT %(chunk)s FOR UPDATE""",
                    {**params, "after": last_id, "chunk": CHUNK},
                )
                chunk = cur.fetchall()
                if not chunk:
                    break
                last_id = int(chunk[-1][0])
                rows = Batch()  # what a consumer batch of these readings would write (no positions)
                replayed_ids: list[int] = []
                for letter_id, partition, offset, payload, truncated in chunk:
                    result.examined += 1
                    if payload is None or truncated:
                        result.skipped += 1
                        continue
                    try:
                        reading = validate_reading(bytes(payload), limits, now)
                    except InvalidReading as exc:
                        result.still_invalid += 1
                        reason = exc.reason.value
                        result.still_invalid_by_reason[reason] = result.still_invalid_by_reason.get(reason, 0) + 1
                        continue
                    rows.add_reading(reading, int(partition), int(offset))
                    replayed_ids.append(int(letter_id))
                if replayed_ids:
                    create_day_partitions(cur, rows.days)
                    store_rows(cur, rows, slot=REPLAY_SLOT)
                    cur.execute(
                        "UPDATE dead_letters SET replayed_at = now(), replay_id = %s WHERE id = ANY(%s)",
                        (result.replay_id, replayed_ids),
                    )
                    result.replayed += len(replayed_ids)
            cur.execute(
                """UPDATE dead_letter_replays SET examined = %s, replayed = %s, still_invalid = %s, skipped = %s
                   WHERE id = %s""",
                (result.examined, result.replayed, result.still_invalid, result.skipped, result.replay_id),
            )
        if dry_run:
            conn.rollback()
            result.replay_id = None
        else:
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return result
