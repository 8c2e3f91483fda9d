"""Streaming exports of ``sensores`` (or its minute/hour rollups) to CSV and XLSX, with bounded
memory at any table size.

CSV goes through PostgreSQL's ``COPY … TO STDOUT`` straight into the file (the fastest path
measured in bench/, and the server formats the rows; times are ISO 8601 with the +00:00 offset).
XLSX streams a server-side cursor into openpyxl's write-only workbook, with real date-time cells
in UTC (said in the header), number formats, a frozen header row, filters and column widths, and
starts a new sheet every 1,048,575 rows (Excel's limit). Every file is written under a temporary
name and renamed, so a reader never sees half a file.
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
from typing import IO, TYPE_CHECKING, Literal
from uuid import UUID

import psycopg2.extensions
from psycopg2 import sql

from iot_common.logging import get_logger

if TYPE_CHECKING:  # openpyxl (with numpy) is ~0.4 s to import: only XLSX exports load it
    from openpyxl import Workbook
    from openpyxl.worksheet._write_only import WriteOnlyWorksheet

log = get_logger(__name__)

EXCEL_MAX_ROWS = 1_048_576  # per sheet, header included
Format = Literal["csv", "xlsx"]
Engine = Literal["copy", "pandas"]
Rollup = Literal["minute", "hour"]


def _excel_serial(column: str) -> str:
    """SQL: ``column`` as an Excel serial date-time in UTC (days since 1899-12-30, as a float).

    Handing openpyxl the number with a date style costs the same as a text cell; a Python
    datetime per cell halved the XLSX export's speed (measured: 24k vs 18k vs 8k rows/s)."""
    return f"extract(epoch FROM {column}) / 86400.0 + 25569"


def _iso_utc(column: str) -> str:
    """SQL: ``column`` as ISO 8601 in UTC with an explicit offset, e.g. 2026-11-27T21:35:05.114827+00:00."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


@dataclass(frozen=True)
class Column:
    """One exported column: CSV and XLSX headers, the SQL for each format, the XLSX cell format
    (only where a plain value would mislead: times; numbers stay General, full precision) and width."""

    name: str
    xlsx_header: str
    csv_sql: str
    xlsx_sql: str
    number_format: str | None = None
    width: float = 14.0


@dataclass(frozen=True)
class Source:
    """What an export reads: the raw readings or one of their rollups."""

    table: str
    time_column: str
    columns: tuple[Column, ...]

    @property
    def headers(self) -> list[str]:
        return [c.name for c in self.columns]


_SENSOR = Column("sensor_id", "sensor_id", "sensor_id::text", "sensor_id::text", None, 38.0)
READINGS = Source(
    "sensores",
    '"timestamp"',
    (
        _SENSOR,
        Column(
            "timestamp",
            "timestamp (UTC)",
            _iso_utc('"timestamp"'),
            _excel_serial('"timestamp"'),
            "yyyy-mm-dd hh:mm:ss.000",
            24.0,
        ),
        Column("temperatura", "temperatura (°C)", "temperatura", "temperatura"),
        Column("umidade", "umidade (%)", "umidade", "umidade"),
    ),
)


def _rollup_source(table: str) -> Source:
    stats = [
        Column(f"{quantity}_{stat}", f"{quantity} {stat} ({unit})", f"{quantity}_{stat}", f"{quantity}_{stat}")
        for quantity, unit in (("temperatura", "°C"), ("umidade", "%"))
        for stat in ("media", "min", "max")
    ]
    return Source(
        table,
        "bucket",
        (
            _SENSOR,
            Column("bucket", "bucket (UTC)", _iso_utc("bucket"), _excel_serial("bucket"), "yyyy-mm-dd hh:mm", 18.0),
            Column("leituras", "leituras", "leituras", "leituras", None, 10.0),
            *stats,
        ),
    )


ROLLUPS: dict[Rollup, Source] = {"minute": _rollup_source("sensores_minuto"), "hour": _rollup_source("sensores_hora")}
COLUMNS = tuple(READINGS.headers)  # the CSV header of a readings export


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

    def where(self, time_column: str = '"timestamp"') -> tuple[sql.Composable, list[object]]:
        clauses: list[sql.Composable] = []
        params: list[object] = []
        if self.since is not None:
            clauses.append(sql.SQL(time_column + " >= %s"))
            params.append(self.since)
        if self.until is not None:
            clauses.append(sql.SQL(time_column + " < %s"))
            params.append(self.until)
        if self.sensors:
            clauses.append(sql.SQL("sensor_id = ANY(%s::uuid[])"))
            params.append([str(s) for s in self.sensors])
        if not clauses:
            return sql.SQL(""), params
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), params


def select_query(
    flt: ExportFilter, source: Source = READINGS, fmt: Format = "csv"
) -> tuple[sql.Composed, list[object]]:
    """Rows in export order: by time, then sensor (deterministic across runs)."""
    where, params = flt.where(source.time_column)
    select = ", ".join(f'{c.csv_sql if fmt == "csv" else c.xlsx_sql} AS "{c.name}"' for c in source.columns)
    query = (
        sql.SQL(f"SELECT {select} FROM {source.table}") + where + sql.SQL(f" ORDER BY {source.time_column}, sensor_id")
    )
    return query, params


def count_rows(conn: psycopg2.extensions.connection, flt: ExportFilter, source: Source = READINGS) -> int:
    where, params = flt.where(source.time_column)
    with conn.cursor() as cur:
        cur.execute(sql.SQL(f"SELECT count(*) FROM {source.table}") + where, params)
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
    conn: psycopg2.extensions.connection,
    flt: ExportFilter,
    final: Path,
    engine: Engine = "copy",
    source: Source = READINGS,
) -> ExportResult:
    started = time.perf_counter()
    query, params = select_query(flt, source, "csv")
    if engine == "copy":
        with atomic_file(final) as tmp, open(tmp, "wb") as raw:
            rows = _csv_by_copy(conn, query, params, raw)
    else:
        with atomic_file(final) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
            rows = _csv_by_pandas(conn, query, params, out, source.headers)
    return ExportResult(final, rows, time.perf_counter() - started)


def _csv_by_copy(
    conn: psycopg2.extensions.connection, query: sql.Composed, params: list[object], out: IO[bytes]
) -> int:
    with conn.cursor() as cur:
        bound = cur.mogrify(query, params).decode()
        counter = _LineCounter(out)
        cur.copy_expert(f"COPY ({bound}) TO STDOUT WITH (FORMAT csv, HEADER)", counter, size=1 << 20)
    return max(counter.lines - 1, 0)


class _LineCounter:
    """A binary file wrapper counting newlines of what COPY writes (the row count, header included).

    Timestamps, UUIDs and numbers never contain a newline, so lines = rows + 1. COPY's bytes go
    to the file as they are: no decoding and re-encoding of every row.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.lines = 0

    def write(self, data: bytes | str) -> int:
        chunk = data if isinstance(data, bytes) else data.encode()
        self.lines += chunk.count(b"\n")
        return self._out.write(chunk)


def _csv_by_pandas(
    conn: psycopg2.extensions.connection, query: sql.Composed, params: list[object], out: IO[str], headers: list[str]
) -> int:
    import pandas as pd  # noqa: PLC0415 - ~0.5 s to import; only this engine needs it

    rows = 0
    with conn.cursor(name="export_pandas") as cur:
        cur.itersize = 50_000
        cur.execute(query, params)
        writer = csv.writer(out)
        writer.writerow(headers)
        while chunk := cur.fetchmany(50_000):
            frame = pd.DataFrame(chunk, columns=headers)
            frame.to_csv(out, header=False, index=False)
            rows += len(frame)
    return rows


def _new_sheet(workbook: Workbook, title: str, source: Source) -> WriteOnlyWorksheet:
    """A sheet with column widths and a frozen, bold header row (units and UTC said there)."""
    from openpyxl.cell import WriteOnlyCell  # noqa: PLC0415 - see TYPE_CHECKING above
    from openpyxl.styles import Font  # noqa: PLC0415
    from openpyxl.utils import get_column_letter  # noqa: PLC0415

    sheet = workbook.create_sheet(title)
    for index, column in enumerate(source.columns, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = column.width
    sheet.freeze_panes = "A2"
    header = []
    for column in source.columns:
        cell = WriteOnlyCell(sheet, value=column.xlsx_header)
        cell.font = Font(bold=True)
        header.append(cell)
    sheet.append(header)
    return sheet


def _close_sheet(sheet: WriteOnlyWorksheet, source: Source, rows: int) -> None:
    """Filters over the header and every row of the sheet."""
    from openpyxl.utils import get_column_letter  # noqa: PLC0415 - see TYPE_CHECKING above

    sheet.auto_filter.ref = f"A1:{get_column_letter(len(source.columns))}{rows + 1}"


def write_xlsx(
    conn: psycopg2.extensions.connection,
    flt: ExportFilter,
    final: Path,
    max_rows_per_sheet: int = EXCEL_MAX_ROWS - 1,
    source: Source = READINGS,
) -> ExportResult:
    """Stream rows into a write-only workbook, a new sheet every ``max_rows_per_sheet`` rows.

    Times are date-time cells (Excel has no time zones: the values are UTC, as the header says),
    so a spreadsheet sorts, filters and charts them as dates.
    """
    from openpyxl import Workbook  # noqa: PLC0415 - see TYPE_CHECKING above
    from openpyxl.cell import WriteOnlyCell  # noqa: PLC0415

    started = time.perf_counter()
    query, params = select_query(flt, source, "xlsx")
    formatted = [index for index, c in enumerate(source.columns) if c.number_format]
    workbook = Workbook(write_only=True)
    sheet = _new_sheet(workbook, source.table, source)
    # One styled prototype per formatted column: each cell shares its style (setting
    # number_format per cell looks the style up again every time).
    styles = {}
    for index in formatted:
        prototype = WriteOnlyCell(sheet, value=0)
        prototype.number_format = source.columns[index].number_format
        styles[index] = prototype._style
    sheets, rows, in_sheet = 1, 0, 0
    with conn.cursor(name="export_xlsx") as cur:
        cur.itersize = 20_000
        cur.execute(query, params)
        for row in cur:
            if in_sheet == max_rows_per_sheet:
                _close_sheet(sheet, source, in_sheet)
                sheets += 1
                sheet = _new_sheet(workbook, f"{source.table}_{sheets}", source)
                in_sheet = 0
            values: list[object] = list(row)
            for index, style in styles.items():
                cell = WriteOnlyCell(sheet, value=values[index])
                cell._style = style
                values[index] = cell
            sheet.append(values)
            in_sheet += 1
            rows += 1
    _close_sheet(sheet, source, in_sheet)
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
