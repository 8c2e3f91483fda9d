"""Streaming exports of ``sensores`` to CSV and XLSX, with bounded memory at any table size.

CSV goes through PostgreSQL's ``COPY … TO STDOUT`` straight into the file (the fastest path
measured in bench/, and the server formats the rows). XLSX streams a server-side cursor into
openpyxl's write-only workbook and starts a new sheet every 1,048,575 rows (Excel's limit).
Every file is written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal
from uuid import UUID

import psycopg2.extensions
from openpyxl import Workbook
from psycopg2 import sql

from iot_common.logging import get_logger

log = get_logger(__name__)

COLUMNS = ("sensor_id", "timestamp", "temperatura", "umidade")
EXCEL_MAX_ROWS = 1_048_576  # per sheet, header included
Format = Literal["csv", "xlsx"]
Engine = Literal["copy", "pandas"]
# ISO-8601 in UTC with an explicit offset, e.g. 2026-11-27T21:35:05.114827+00:00
_TIMESTAMP_SQL = """to_char("timestamp" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


@dataclass(frozen=True)
class ExportFilter:
    """Which readings to export: [since, until) in UTC, and optionally some sensors."""

    since: datetime | None = None
    until: datetime | None = None
    sensors: tuple[UUID, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"--{name} must be timezone-aware (UTC)")
        if self.since and self.until and self.since >= self.until:
            raise ValueError(f"--since ({self.since.isoformat()}) must be before --until ({self.until.isoformat()})")

    def where(self) -> tuple[sql.Composable, list[object]]:
        clauses: list[sql.Composable] = []
        params: list[object] = []
        if self.since is not None:
            clauses.append(sql.SQL('"timestamp" >= %s'))
            params.append(self.since)
        if self.until is not None:
            clauses.append(sql.SQL('"timestamp" < %s'))
            params.append(self.until)
        if self.sensors:
            clauses.append(sql.SQL("sensor_id = ANY(%s::uuid[])"))
            params.append([str(s) for s in self.sensors])
        if not clauses:
            return sql.SQL(""), params
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), params


def select_query(flt: ExportFilter) -> tuple[sql.Composed, list[object]]:
    """Rows in export order: by time, then sensor (deterministic across runs)."""
    where, params = flt.where()
    query = (
        sql.SQL("SELECT sensor_id::text, " + _TIMESTAMP_SQL + ' AS "timestamp", temperatura, umidade FROM sensores')
        + where
        + sql.SQL(' ORDER BY "timestamp", sensor_id')
    )
    return query, params


def count_rows(conn: psycopg2.extensions.connection, flt: ExportFilter) -> int:
    where, params = flt.where()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM sensores") + where, params)
        row = cur.fetchone()
    return int(row[0]) if row else 0


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """A temporary path next to ``final``, renamed onto it only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; exports are meant to be shared
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files left by a killed run (never under a final name) are removed."""
    if directory.is_dir():
        for stale in directory.glob(".sensores*.tmp"):
            stale.unlink(missing_ok=True)


@dataclass
class ExportResult:
    path: Path
    rows: int
    seconds: float
    sheets: int = 1


def write_csv(
    conn: psycopg2.extensions.connection, flt: ExportFilter, final: Path, engine: Engine = "copy"
) -> ExportResult:
    started = time.perf_counter()
    query, params = select_query(flt)
    with atomic_file(final) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        rows = _csv_by_copy(conn, query, params, out) if engine == "copy" else _csv_by_pandas(conn, query, params, out)
    return ExportResult(final, rows, time.perf_counter() - started)


def _csv_by_copy(conn: psycopg2.extensions.connection, query: sql.Composed, params: list[object], out: IO[str]) -> int:
    with conn.cursor() as cur:
        bound = cur.mogrify(query, params).decode()
        counter = _LineCounter(out)
        cur.copy_expert(f"COPY ({bound}) TO STDOUT WITH (FORMAT csv, HEADER)", counter, size=1 << 20)
    return max(counter.lines - 1, 0)


class _LineCounter:
    """A file wrapper counting newlines of what COPY writes (the row count, header included).

    Timestamps, UUIDs and numbers never contain a newline, so lines = rows + 1.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self.lines = 0

    def write(self, data: str | bytes) -> int:
        text = data.decode() if isinstance(data, bytes) else data
        self.lines += text.count("\n")
        return self._out.write(text)


def _csv_by_pandas(
    conn: psycopg2.extensions.connection, query: sql.Composed, params: list[object], out: IO[str]
) -> int:
    import pandas as pd  # noqa: PLC0415 - ~0.5 s to import; only this engine needs it

    rows = 0
    with conn.cursor(name="export_pandas") as cur:
        cur.itersize = 50_000
        cur.execute(query, params)
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        while chunk := cur.fetchmany(50_000):
            frame = pd.DataFrame(chunk, columns=list(COLUMNS))
            frame.to_csv(out, header=False, index=False)
            rows += len(frame)
    return rows


def write_xlsx(
    conn: psycopg2.extensions.connection,
    flt: ExportFilter,
    final: Path,
    max_rows_per_sheet: int = EXCEL_MAX_ROWS - 1,
) -> ExportResult:
    """Stream rows into a write-only workbook, a new sheet every ``max_rows_per_sheet`` rows."""
    started = time.perf_counter()
    query, params = select_query(flt)
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("sensores")
    sheet.append(list(COLUMNS))
    sheets, rows, in_sheet = 1, 0, 0
    with conn.cursor(name="export_xlsx") as cur:
        cur.itersize = 20_000
        cur.execute(query, params)
        for row in cur:
            if in_sheet == max_rows_per_sheet:
                sheets += 1
                sheet = workbook.create_sheet(f"sensores_{sheets}")
                sheet.append(list(COLUMNS))
                in_sheet = 0
            sheet.append(row)
            in_sheet += 1
            rows += 1
    with atomic_file(final) as tmp:
        workbook.save(tmp)
    if sheets > 1:
        log.info(
            "xlsx_split",
            path=str(final),
            sheets=sheets,
            rows=rows,
            rows_per_sheet=max_rows_per_sheet,
            reason="Excel allows 1,048,576 rows per sheet",
        )
    return ExportResult(final, rows, time.perf_counter() - started, sheets)


def parse_utc(value: str, name: str) -> datetime:
    """An ISO-8601 date or date-time; naive values are taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--{name} {value!r} is not an ISO-8601 date or date-time (e.g. 2026-11-27T00:00:00Z)"
        ) from None
    if parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
