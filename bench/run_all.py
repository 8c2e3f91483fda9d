"""`make bench`: every benchmark in one unattended run, then docs/BENCHMARKS.md.

Runs bench.compare (Kafka → PostgreSQL against the peers and the limits, latency), the consumer
benchmark (decoders and writer thread, medians) and profile, the producer benchmark, the exporter
benchmark and the codec benchmark, and writes their tables (plus the dashboard and rollup tables of
their own targets, when saved), the machine and the
reproduce command into docs/BENCHMARKS.md (the analysis part is kept from docs/benchmarks-analysis.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

from bench.common import REPO, RESULTS, machine

STEPS = [
    ["-m", "bench.compare", "--readings", "1000000"],
    ["-m", "bench.consumer_bench", "--readings", "1000000"],
    ["-m", "bench.consumer_profile", "--readings", "300000"],
    ["-m", "bench.producer_bench", "--readings", "200000"],
    ["-m", "bench.exporter_bench", "--rows", "300000"],
    ["-m", "bench.codec_bench", "--readings", "200000"],
]


def main() -> None:
    started = time.monotonic()
    compose_only = "--compose-only" in sys.argv  # rewrite the doc from the saved tables
    if not compose_only:
        for step in STEPS:
            print(f"[bench] python {' '.join(step)}", flush=True)
            subprocess.run([sys.executable, *step], check=True, cwd=REPO)
    minutes = (time.monotonic() - started) / 60

    def body(name: str) -> str:
        text = (RESULTS / f"{name}.md").read_text()
        return "\n".join(line for line in text.splitlines() if not line.startswith(("<!--", "Machine:")))

    def optional(name: str, heading: str) -> str:
        """Tables of the benchmarks `make bench` does not run (their own targets), when saved."""
        return f"{heading}\n{body(name)}" if (RESULTS / f"{name}.md").exists() else ""

    analysis = (REPO / "docs" / "benchmarks-analysis.md").read_text()
    duration = "" if compose_only else f" in {minutes:.0f} minutes, unattended"
    doc = f"""# Benchmarks

Measured by `make bench` on {datetime.now(UTC):%Y-%m-%d}{duration}.

**Machine:** {machine()}.
Everything (broker, database, pipelines) shares those cores, as on a small VM.

**Reproduce:** `make bench` (installs Quix Streams into `.bench/venv-quix` and the Debezium
JDBC sink plugin from Maven Central on first use; raw tables land in `bench/results/`).

## Kafka → PostgreSQL
{body("compare")}
### iot-consumer: native decoder, writer thread and Python path (docs/PERFORMANCE.md)
{body("consumer_bench")}
{body("consumer_profile")}
## Producer
{body("producer_bench")}
## Exporter
{body("exporter_bench")}
## Compression codecs
{body("codec_bench")}
{optional("dashboard_bench", "## Dashboard at scale (make bench-dashboard)")}
{optional("rollup_bench", "## What the rollups cost the consumer (make bench-rollups)")}
{analysis}"""
    (REPO / "docs" / "BENCHMARKS.md").write_text(doc)
    print(f"[bench] wrote docs/BENCHMARKS.md ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
