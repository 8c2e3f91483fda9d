"""``iot-exporter``: export ``sensores`` to CSV/XLSX files, on demand or one file pair per UTC day."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated
from uuid import UUID

import psycopg2
import psycopg2.extensions
import typer
from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from iot_common.cli import fail, setup_service
from iot_common.logging import get_logger
from iot_common.postgres import connect
from iot_common.settings import ConfigError, PostgresSettings, load_settings
from iot_exporter.export import (
    READINGS,
    ROLLUPS,
    Engine,
    ExportFilter,
    ExportResult,
    Format,
    Source,
    count_rows,
    parse_utc,
    remove_stale_temporaries,
    write_csv,
    write_xlsx,
)

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
log = get_logger("iot_exporter")
EXIT_FAILED = 1


def _formats(value: str) -> tuple[Format, ...]:
    chosen: list[Format] = []
    for part in (p.strip().lower() for p in value.split(",") if p.strip()):
        if part == "csv":
            chosen.append("csv")
        elif part == "xlsx":
            chosen.append("xlsx")
        else:
            raise typer.BadParameter(f"unknown format {part!r}; use csv, xlsx or csv,xlsx", param_hint="--format")
    if not chosen:
        raise typer.BadParameter("at least one format is needed", param_hint="--format")
    return tuple(dict.fromkeys(chosen))


def _writable_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create output directory {out}: {exc.strerror}", code=EXIT_FAILED)
    probe = out / ".iot-exporter-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        fail(f"output directory {out} is not writable: {exc.strerror}", code=EXIT_FAILED)
    return out


class RunReport:
    """Pushes the run's outcome to a Pushgateway with pushadd, so a failed run does not
    erase the last success timestamp (only the metrics it sends are replaced)."""

    def __init__(self, command: str, pushgateway: str | None) -> None:
        self.command = command
        self.pushgateway = pushgateway
        self.started = time.time()

    def _push(self, fill: dict[str, tuple[str, float]]) -> None:
        if not self.pushgateway:
            return
        registry = CollectorRegistry()
        for name, (help_text, value) in fill.items():
            Gauge(name, help_text, registry=registry).set(value)
        try:
            pushadd_to_gateway(
                self.pushgateway,
                job="iot-exporter",
                grouping_key={"command": self.command},
                registry=registry,
                timeout=10,
            )
        except OSError as exc:
            log.warning("pushgateway_failed", url=self.pushgateway, error=str(exc))

    def success(self, rows: int) -> None:
        now = time.time()
        self._push(
            {
                "iot_exporter_last_success_timestamp_seconds": ("Unix time of the last successful export", now),
                "iot_exporter_rows_exported": ("Rows written by the last successful export", rows),
                "iot_exporter_duration_seconds": ("Duration of the last successful export", now - self.started),
            }
        )

    def failure(self) -> None:
        self._push(
            {"iot_exporter_last_failure_timestamp_seconds": ("Unix time of the last failed export", time.time())}
        )


def _connect(report: RunReport) -> psycopg2.extensions.connection:
    try:
        settings = load_settings(PostgresSettings)
    except ConfigError as exc:
        fail(str(exc))
    try:
        conn = connect(settings, application_name="iot-exporter")
    except psycopg2.OperationalError as exc:
        report.failure()
        fail(f"cannot connect to {settings.describe()}: {str(exc).strip()}", code=EXIT_FAILED)
    # One snapshot for the whole run: CSV and XLSX of the same export hold the same rows.
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return conn


def _export_files(
    conn: psycopg2.extensions.connection,
    flt: ExportFilter,
    out: Path,
    stem: str,
    formats: tuple[Format, ...],
    engine: Engine,
    source: Source = READINGS,
) -> list[ExportResult]:
    results = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        if fmt == "csv":
            result = write_csv(conn, flt, path, engine, source)
        else:
            result = write_xlsx(conn, flt, path, source=source)
        log.info(
            "file_written",
            path=str(path),
            format=fmt,
            rows=result.rows,
            sheets=result.sheets,
            seconds=round(result.seconds, 3),
            rows_per_second=round(result.rows / result.seconds) if result.seconds > 0 else None,
        )
        results.append(result)
    return results


OutOption = Annotated[Path, typer.Option("--out", envvar="EXPORT_DIR", help="Directory for the files.")]
FormatOption = Annotated[str, typer.Option("--format", envvar="EXPORT_FORMATS", help="csv, xlsx or csv,xlsx.")]
PushOption = Annotated[
    str | None, typer.Option(envvar="PUSHGATEWAY_URL", help="Push run metrics to this Prometheus Pushgateway.")
]
EngineOption = Annotated[
    str, typer.Option(envvar="EXPORT_CSV_ENGINE", help="CSV path: copy (PostgreSQL COPY, fastest) or pandas (chunks).")
]


@app.command()
def export(
    since: Annotated[str | None, typer.Option(help="Only readings at or after this UTC time (ISO-8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Only readings before this UTC time (ISO-8601).")] = None,
    sensor: Annotated[list[str] | None, typer.Option(help="Only this sensor id (repeatable).")] = None,
    out: OutOption = Path("."),
    fmt: FormatOption = "csv,xlsx",
    name: Annotated[
        str | None,
        typer.Option(
            help="File name without extension (default: sensores_exportado, or sensores_minuto/hora_exportado)."
        ),
    ] = None,
    engine: EngineOption = "copy",
    rollup: Annotated[
        str | None,
        typer.Option(
            help="Export the per-sensor aggregates by minute or hour (count, mean, min, max) instead of readings."
        ),
    ] = None,
    pushgateway_url: PushOption = None,
) -> None:
    """Export readings (or their rollups) to NAME.csv and NAME.xlsx (default: sensores_exportado.*)."""
    setup_service("iot-exporter")
    formats = _formats(fmt)
    if rollup is not None and rollup not in ROLLUPS:
        raise typer.BadParameter(f"unknown rollup {rollup!r}; use minute or hour", param_hint="--rollup")
    source = ROLLUPS[rollup] if rollup is not None else READINGS
    name = name or f"{source.table}_exportado"
    if engine not in ("copy", "pandas"):
        raise typer.BadParameter(f"unknown engine {engine!r}; use copy or pandas", param_hint="--engine")
    try:
        sensors = tuple(UUID(s) for s in sensor or [])
    except ValueError:
        raise typer.BadParameter(f"not a UUID: {sensor}", param_hint="--sensor") from None
    try:
        flt = ExportFilter(
            parse_utc(since, "since") if since else None,
            parse_utc(until, "until") if until else None,
            sensors,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    out = _writable_dir(out)
    report = RunReport("export", pushgateway_url)
    conn = _connect(report)
    try:
        remove_stale_temporaries(out)
        results = _export_files(conn, flt, out, name, formats, engine, source)  # type: ignore[arg-type]
    except (psycopg2.Error, OSError) as exc:
        report.failure()
        fail(f"export failed: {str(exc).strip()}", code=EXIT_FAILED)
    finally:
        conn.close()
    report.success(max(r.rows for r in results))


def _utc_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint="--day") from None


@app.command()
def daily(
    day: Annotated[str | None, typer.Option(help="UTC day to export (YYYY-MM-DD); default: yesterday.")] = None,
    backfill: Annotated[int, typer.Option(min=0, max=3650, help="Also export the N days before DAY.")] = 0,
    out: OutOption = Path("."),
    fmt: FormatOption = "csv,xlsx",
    engine: EngineOption = "copy",
    pushgateway_url: PushOption = None,
) -> None:
    """Write sensores_YYYY-MM-DD.csv/.xlsx per UTC day; re-runs replace files atomically, empty days are skipped."""
    setup_service("iot-exporter")
    formats = _formats(fmt)
    last = _utc_day(day) if day else datetime.now(UTC).date() - timedelta(days=1)
    days = [last - timedelta(days=i) for i in range(backfill, -1, -1)]
    out = _writable_dir(out)
    report = RunReport("daily", pushgateway_url)
    conn = _connect(report)
    total = 0
    try:
        remove_stale_temporaries(out)
        for current in days:
            start = datetime(current.year, current.month, current.day, tzinfo=UTC)
            flt = ExportFilter(start, start + timedelta(days=1))
            rows = count_rows(conn, flt)
            if rows == 0:
                log.info("day_empty_skipped", day=current.isoformat())
                continue
            _export_files(conn, flt, out, f"sensores_{current.isoformat()}", formats, engine)  # type: ignore[arg-type]
            total += rows
    except (psycopg2.Error, OSError) as exc:
        report.failure()
        fail(f"daily export failed: {str(exc).strip()}", code=EXIT_FAILED)
    finally:
        conn.close()
    log.info("daily_finished", days=[d.isoformat() for d in days], rows=total)
    report.success(total)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
