"""iot-exporter against the real server: exact files, bounded memory, Excel's sheet limit,
atomic daily files, CronJob-friendly exit codes and Pushgateway reports."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar
from xml.etree import ElementTree

import pandas as pd
import psycopg2.extensions
import pytest
from openpyxl import load_workbook
from openpyxl.worksheet.worksheet import Worksheet

from iot_consumer.migrations import DailyPartitions, migrate
from iot_consumer.rollups import REBUILD_SQL
from iot_exporter.export import COLUMNS
from tests.helpers import BIN, run_measured, scalar

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def seed_rows(db: psycopg2.extensions.connection, count: int, start: datetime = DAY, span_s: float = 86_000) -> None:
    """``count`` readings of 100 sensors spread over [start, start + span_s), generated in SQL."""
    migrate(db)
    db.autocommit = False
    DailyPartitions().ensure(db, {(start + timedelta(days=d)).date() for d in range(-1, 3)})
    db.autocommit = True
    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO sensores (sensor_id, "timestamp", temperatura, umidade, kafka_partition, kafka_offset)
               SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i %% 100), 12, '0'))::uuid,
                      %s::timestamptz + (i::bigint * %s) * interval '1 microsecond',
                      20 + (i %% 1000) / 100.0, 30 + (i %% 5000) / 100.0, i %% 6, i
               FROM generate_series(0, %s - 1) AS i""",
            (start, int(span_s * 1_000_000 / count), count),
        )


def exporter(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "iot-exporter"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def expected_frame(db: psycopg2.extensions.connection, where: str = "") -> pd.DataFrame:
    with db.cursor() as cur:
        cur.execute(
            f'SELECT sensor_id::text, "timestamp", temperatura, umidade FROM sensores {where} ORDER BY "timestamp", sensor_id'
        )
        rows = cur.fetchall()
    frame = pd.DataFrame(rows, columns=["sensor_id", "timestamp", "temperatura", "umidade"])
    frame["timestamp"] = frame["timestamp"].map(lambda t: t.isoformat(timespec="microseconds"))
    return frame


def test_ten_thousand_rows_round_trip_through_csv_and_xlsx(
    env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """10,000 known rows → CSV and XLSX hold exactly those rows, in order, columns in the
    seed's order, timestamps ISO-8601 UTC, numbers as numbers."""
    seed_rows(db, 10_000)
    result = exporter(env, "export", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    expected = expected_frame(db)

    csv = pd.read_csv(tmp_path / "sensores_exportado.csv", dtype={"sensor_id": str, "timestamp": str})
    assert list(csv.columns) == ["sensor_id", "timestamp", "temperatura", "umidade"]
    pd.testing.assert_frame_equal(csv, expected)
    assert csv["timestamp"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00").all()

    workbook = load_workbook(tmp_path / "sensores_exportado.xlsx")
    assert workbook.sheetnames == ["sensores"]
    sheet = workbook["sensores"]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == ("sensor_id", "timestamp (UTC)", "temperatura (°C)", "umidade (%)")
    xlsx = pd.DataFrame(rows[1:], columns=list(COLUMNS))
    # Real date-time cells (UTC, as the header says): a spreadsheet sorts and charts them as dates.
    assert all(isinstance(v, datetime) for v in xlsx["timestamp"])
    drift = [
        abs(cell.replace(tzinfo=UTC) - datetime.fromisoformat(text))
        for cell, text in zip(xlsx["timestamp"], expected["timestamp"], strict=True)
    ]
    assert max(drift) <= timedelta(milliseconds=1)  # Excel keeps times to the millisecond
    pd.testing.assert_frame_equal(xlsx.drop(columns="timestamp"), expected.drop(columns="timestamp"))
    assert all(isinstance(v, float) for v in xlsx["temperatura"])
    assert_spreadsheet_ready(sheet, rows=10_000, columns="D")
    assert sheet["B2"].is_date
    assert sheet["B2"].number_format == "yyyy-mm-dd hh:mm:ss.000"
    assert sheet["C2"].number_format == "General"  # numbers at full precision


def assert_spreadsheet_ready(sheet: Worksheet, rows: int, columns: str) -> None:
    """Header frozen and bold, filters over every row, the sensor id column wide enough."""
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:{columns}{rows + 1}"
    assert sheet["A1"].font.b
    assert sheet.column_dimensions["A"].width >= 36


def test_rollup_exports_hold_the_per_sensor_aggregates_of_each_minute_and_hour(
    env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """`export --rollup minute|hour` writes one row per sensor and bucket - count, mean, min,
    max - equal to a GROUP BY over the readings; XLSX with date-time buckets."""
    seed_rows(db, 20_000)
    with db.cursor() as cur:  # the rollups as the consumer keeps them: what migration 5 computes
        cur.execute(REBUILD_SQL)
    for rollup, unit in (("minute", "minute"), ("hour", "hour")):
        result = exporter(env, "export", "--out", str(tmp_path), "--rollup", rollup)
        assert result.returncode == 0, result.stderr
        table = f"sensores_{'minuto' if rollup == 'minute' else 'hora'}"
        got = pd.read_csv(tmp_path / f"{table}_exportado.csv", dtype={"sensor_id": str, "bucket": str})
        with db.cursor() as cur:
            cur.execute(
                f"""SELECT sensor_id::text, date_trunc('{unit}', "timestamp", 'UTC') AS bucket, count(*),
                           avg(temperatura), min(temperatura), max(temperatura),
                           avg(umidade), min(umidade), max(umidade)
                    FROM sensores GROUP BY 1, 2 ORDER BY 2, 1"""
            )
            expected = cur.fetchall()
        assert len(got) == len(expected) > 0
        assert list(got.columns) == [
            "sensor_id",
            "bucket",
            "leituras",
            "temperatura_media",
            "temperatura_min",
            "temperatura_max",
            "umidade_media",
            "umidade_min",
            "umidade_max",
        ]
        for row, want in zip(got.itertuples(index=False), expected, strict=True):
            assert row.sensor_id == want[0]
            assert datetime.fromisoformat(str(row.bucket)) == want[1]
            assert row.leituras == want[2]
            assert row[3:] == pytest.approx(want[3:], rel=1e-9)
        sheet = load_workbook(tmp_path / f"{table}_exportado.xlsx")[table]
        assert sheet["B1"].value == "bucket (UTC)"
        assert sheet["B2"].is_date
        assert_spreadsheet_ready(sheet, rows=len(expected), columns="I")


def test_filters_select_time_range_and_sensors(
    env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """--since/--until (UTC, half-open) and repeated --sensor narrow the export."""
    seed_rows(db, 5_000)
    sensors = ["00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"]
    since, until = "2026-11-20T06:00:00Z", "2026-11-20T12:00:00+00:00"
    result = exporter(
        env,
        "export",
        "--out",
        str(tmp_path),
        "--format",
        "csv",
        "--since",
        since,
        "--until",
        until,
        "--sensor",
        sensors[0],
        "--sensor",
        sensors[1],
    )
    assert result.returncode == 0, result.stderr
    got = pd.read_csv(tmp_path / "sensores_exportado.csv", dtype={"sensor_id": str, "timestamp": str})
    expected = expected_frame(
        db,
        f"WHERE \"timestamp\" >= '{since}' AND \"timestamp\" < '{until}' AND sensor_id IN ('{sensors[0]}', '{sensors[1]}')",
    )
    assert len(expected) > 0
    pd.testing.assert_frame_equal(got, expected)
    assert not (tmp_path / "sensores_exportado.xlsx").exists()


def xlsx_sheet_rows(path: Path) -> dict[str, int]:
    """Rows per sheet, counted in each sheet's XML (fast for millions of rows)."""
    ns_main = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    ns_rel = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
    with zipfile.ZipFile(path) as archive:
        rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
        targets = {rel.get("Id"): rel.get("Target", "") for rel in rels}
        workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        counts = {}
        for sheet in workbook.iter(f"{ns_main}sheet"):
            target = targets[sheet.get(f"{ns_rel}id")].lstrip("/")
            member = target if target.startswith("xl/") else f"xl/{target}"
            with archive.open(member) as xml:
                count, tail = 0, b""
                while chunk := xml.read(1 << 20):
                    window = tail + chunk  # a tag may straddle two chunks
                    count += window.count(b"<row ") + window.count(b"<row>")
                    tail = window[-4:]
            counts[str(sheet.get("name"))] = count
    return counts


@pytest.mark.slow
def test_two_million_rows_bounded_memory_and_sheet_split(
    env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """2,000,000 rows: the CSV export stays under 300 MB peak RSS; the XLSX export splits into
    two sheets of 1,048,575 + 951,425 data rows (each with its header)."""
    seed_rows(db, 2_000_000)
    code, peak_mb, run = run_measured(
        [str(BIN / "iot-exporter"), "export", "--out", str(tmp_path), "--format", "csv"],
        env,
        600,
        tmp_path / "csv-export-usage.json",
    )
    assert code == 0, run.stderr
    assert peak_mb < 300, f"CSV export peak RSS {peak_mb:.0f} MB"
    with open(tmp_path / "sensores_exportado.csv", "rb") as handle:
        assert sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) == 2_000_001

    result = exporter(env, "export", "--out", str(tmp_path), "--format", "xlsx", timeout=900)
    assert result.returncode == 0, result.stderr
    assert xlsx_sheet_rows(tmp_path / "sensores_exportado.xlsx") == {"sensores": 1_048_576, "sensores_2": 951_426}
    assert "xlsx_split" in result.stderr


def test_daily_files_are_stable_and_empty_days_skipped(
    env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """`daily --day D --backfill 2` writes one file pair per day with data, skips empty days;
    a second run produces the same content."""
    seed_rows(db, 3_000, start=DAY, span_s=86_399)
    args = ("daily", "--day", "2026-11-21", "--backfill", "2", "--out", str(tmp_path))
    first = exporter(env, *args)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sensores_2026-11-20.csv", "sensores_2026-11-20.xlsx"]
    assert "day_empty_skipped" in first.stderr
    csv_before = (tmp_path / "sensores_2026-11-20.csv").read_bytes()
    xlsx_before = list(load_workbook(tmp_path / "sensores_2026-11-20.xlsx", read_only=True)["sensores"].values)
    second = exporter(env, *args)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "sensores_2026-11-20.csv").read_bytes() == csv_before
    assert list(load_workbook(tmp_path / "sensores_2026-11-20.xlsx", read_only=True)["sensores"].values) == xlsx_before
    assert csv_before.count(b"\n") == 3_001


def test_killed_run_leaves_no_partial_file_under_the_final_name(
    env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """SIGKILL in the middle of a daily export: the final name holds nothing (or the previous
    complete file), never a partial one; the next run cleans up and completes."""
    seed_rows(db, 400_000, start=DAY, span_s=86_000)
    proc = subprocess.Popen(
        [str(BIN / "iot-exporter"), "daily", "--day", "2026-11-20", "--out", str(tmp_path), "--format", "xlsx"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3.0)
    assert proc.poll() is None, "export finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "sensores_2026-11-20.xlsx").exists()
    result = exporter(env, "daily", "--day", "2026-11-20", "--out", str(tmp_path), "--format", "xlsx")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["sensores_2026-11-20.xlsx"]
    assert xlsx_sheet_rows(tmp_path / "sensores_2026-11-20.xlsx") == {"sensores": 400_001}


def test_failures_exit_non_zero_with_a_clear_message(
    env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """CronJob semantics: database unreachable / unwritable directory → 1; bad arguments → 2."""
    seed_rows(db, 10)
    down = exporter({**env, "POSTGRES_PORT": "1"}, "export", "--out", str(tmp_path))
    assert down.returncode == 1
    assert "cannot connect to postgresql://" in down.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = exporter(env, "export", "--out", str(blocker / "sub"))
    assert unwritable.returncode == 1
    assert "cannot create output directory" in unwritable.stderr
    for args, message in (
        (("export", "--since", "2026-11-02", "--until", "2026-11-01"), "must be before"),
        (("export", "--since", "last tuesday"), "not an ISO-8601"),
        (("export", "--format", "pdf"), "unknown format"),
        (("daily", "--day", "2026-13-01"), "not a date"),
        (("export", "--sensor", "nope"), "not a UUID"),
    ):
        bad = exporter(env, *args, "--out", str(tmp_path))
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr, (args, bad.stderr)


class _Pushgateway(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, str]]] = []

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        _Pushgateway.received.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    do_POST = _record  # noqa: N815
    do_PUT = _record  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_pushgateway_gets_pushadd_so_a_failure_keeps_the_last_success(
    env: dict[str, str], db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """With PUSHGATEWAY_URL, success pushes last-success time, rows and duration; a failed run
    pushes only its failure time with POST (pushadd), which leaves the success metrics alone."""
    seed_rows(db, 500)
    server = HTTPServer(("127.0.0.1", 0), _Pushgateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    _Pushgateway.received.clear()
    try:
        ok = exporter({**env, "PUSHGATEWAY_URL": url}, "export", "--out", str(tmp_path), "--format", "csv")
        assert ok.returncode == 0, ok.stderr
        failed = exporter(
            {**env, "PUSHGATEWAY_URL": url, "POSTGRES_DB": f"missing_{uuid.uuid4().hex[:6]}"},
            "export",
            "--out",
            str(tmp_path),
        )
        assert failed.returncode == 1
    finally:
        server.shutdown()
    (method1, path1, body1), (method2, _, body2) = _Pushgateway.received
    assert method1 == method2 == "POST"
    assert path1 == "/metrics/job/iot-exporter/command/export"
    assert "iot_exporter_last_success_timestamp_seconds" in body1
    assert re.search(r"^iot_exporter_rows_exported 500\.0$", body1, re.M)
    assert "iot_exporter_last_failure_timestamp_seconds" in body2
    assert "last_success" not in body2
    assert scalar(db, "SELECT count(*) FROM sensores") == 500
