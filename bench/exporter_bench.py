"""Exporter throughput: our CSV (COPY) and XLSX (streamed) paths against the naive pandas way
(pandas.read_sql of the whole table, then to_csv / to_excel), on the same rows.

usage: python -m bench.exporter_bench [--rows 300000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS, STACK, Process, Table, cli, connect, drop_database, fmt, fresh_database, save
from tests.integration.test_exporter import seed_rows

NAIVE = """
import sys, pandas as pd, psycopg2
conn = psycopg2.connect(host="localhost", port={port}, user="{user}", password="{password}", dbname="{db}")
frame = pd.read_sql('SELECT sensor_id, "timestamp", temperatura, umidade FROM sensores ORDER BY "timestamp", sensor_id', conn)
if sys.argv[1] == "csv":
    frame.to_csv(sys.argv[2], index=False)
else:
    frame["timestamp"] = frame["timestamp"].dt.tz_localize(None)  # to_excel refuses tz-aware datetimes
    frame.to_excel(sys.argv[2], index=False, engine="openpyxl")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    database = fresh_database("export")
    out = Path(tempfile.mkdtemp(prefix="iot-export-bench-"))
    try:
        conn = connect(database)
        seed_rows(conn, args.rows)
        conn.close()
        env = STACK.service_env(topic="unused", database=database)
        naive_script = out / "naive.py"
        naive_script.write_text(
            NAIVE.format(port=STACK.postgres_port, user=STACK.pg_user, password=STACK.pg_password, db=database)
        )
        runs = {
            ("CSV", "iot-exporter (COPY TO STDOUT, streamed)"): cli(
                "iot-exporter", "export", "--format", "csv", "--out", str(out / "ours")
            ),
            ("CSV", "iot-exporter --engine pandas (50k-row chunks)"): cli(
                "iot-exporter", "export", "--format", "csv", "--engine", "pandas", "--out", str(out / "chunks")
            ),
            ("CSV", "naive: pandas.read_sql + to_csv"): [
                sys.executable,
                str(naive_script),
                "csv",
                str(out / "naive.csv"),
            ],
            ("XLSX", "iot-exporter (server-side cursor → write-only workbook)"): cli(
                "iot-exporter", "export", "--format", "xlsx", "--out", str(out / "ours")
            ),
            ("XLSX", "naive: pandas.read_sql + to_excel (openpyxl)"): [
                sys.executable,
                str(naive_script),
                "xlsx",
                str(out / "naive.xlsx"),
            ],
        }
        measured = {}
        for (fmt_name, label), command in runs.items():
            result = Process(command, env, RESULTS / "exporter-bench.log").wait()
            if result.returncode != 0:
                raise RuntimeError(f"{label} failed; see {RESULTS / 'exporter-bench.log'}")
            measured[(fmt_name, label)] = result
        rows = []
        for fmt_name in ("CSV", "XLSX"):
            naive = next(m for (f, label), m in measured.items() if f == fmt_name and label.startswith("naive"))
            for (f, label), m in measured.items():
                if f != fmt_name:
                    continue
                rows.append(
                    [
                        fmt_name,
                        label,
                        fmt(args.rows / m.wall_s),
                        f"{naive.wall_s / m.wall_s:.1f}×",
                        fmt(m.peak_rss_mb),
                        fmt(m.cpu_s, 1),
                    ]
                )
    finally:
        drop_database(database)
        shutil.rmtree(out, ignore_errors=True)
    table = Table(
        f"Export of {args.rows:,} rows (sensor_id, timestamp, temperatura, umidade), ordered by time",
        ["format", "path", "rows/s", "speed vs naive", "peak RSS MB", "CPU s (exporter process)"],
        rows,
        [
            "rows/s = rows ÷ wall time of the whole command (start-up and imports included).",
            "Peak RSS of the naive path grows with the table; ours stays flat (see tests: 2,000,000 rows < 300 MB).",
            f"Reproduce: python -m bench.exporter_bench --rows {args.rows}",
        ],
    )
    save("exporter_bench", [table])


if __name__ == "__main__":
    os.environ.setdefault("LOG_FORMAT", "json")
    main()
