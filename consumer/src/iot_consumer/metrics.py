"""Prometheus metrics of the consumer (prefix ``iot_consumer_``; no per-sensor labels)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from iot_consumer.batch import Batch

MESSAGES_CONSUMED = Counter("iot_consumer_messages_consumed_total", "Kafka messages taken into a batch")
ROWS_INSERTED = Counter("iot_consumer_rows_inserted_total", "Rows committed into sensores")
ROWS_DECODED = Counter(
    "iot_consumer_rows_decoded_total",
    "Rows committed, by the path that decoded them (native = iot_fastpath in one pass, python = validator)",
    ["path"],
)
WRITER_WAIT_SECONDS = Counter(
    "iot_consumer_writer_wait_seconds_total",
    "Time the main loop waited for the writer thread's batch (the part of writing not overlapped with decoding)",
)
NATIVE_DECODER = Gauge(
    "iot_consumer_native_decoder", "1 when records are decoded by iot_fastpath, 0 on the Python path"
)
DEAD_LETTERS = Counter("iot_consumer_dead_letters_total", "Messages committed to dead_letters", ["reason"])
BATCHES = Counter("iot_consumer_batches_total", "Batches by outcome", ["outcome"])
BATCH_SIZE = Histogram(
    "iot_consumer_batch_size",
    "Messages per committed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000),
)
COPY_SECONDS = Histogram(
    "iot_consumer_copy_duration_seconds",
    "Time of the COPY of one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SECONDS = Histogram(
    "iot_consumer_batch_duration_seconds",
    "Time from poll result to COMMIT (validation, COPY, positions)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
END_TO_END_SECONDS = Histogram(
    "iot_consumer_end_to_end_latency_seconds",
    "Commit time minus the reading's timestamp (newest reading of each partition in a batch)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
LAG = Gauge("iot_consumer_lag", "Messages behind the partition's high watermark", ["partition"])
ASSIGNED_PARTITIONS = Gauge("iot_consumer_assigned_partitions", "Partitions this replica owns")
REBALANCES = Counter("iot_consumer_rebalances_total", "Partition assignment changes seen")
DATABASE_UP = Gauge("iot_consumer_database_up", "1 while PostgreSQL accepts writes, 0 during an outage")
LAST_COMMIT = Gauge("iot_consumer_last_commit_timestamp_seconds", "Unix time of the last committed batch")

# Alerts (labels: rule and severity from the rules file - a handful of values).
ALERTS_OPENED = Counter("iot_consumer_alerts_opened_total", "Alerts opened", ["rule", "severity"])
ALERTS_CLOSED = Counter("iot_consumer_alerts_closed_total", "Alerts closed", ["rule", "severity"])
ALERTS_OPEN = Gauge("iot_consumer_alerts_open", "Alerts open on this replica's partitions", ["rule", "severity"])
ALERT_STORM_SENSORS = Gauge(
    "iot_consumer_alert_storm_sensors",
    "Sensors silent together in an open storm of the rule (one alert per partition instead of one per sensor)",
    ["rule"],
)
ALERT_SENSORS_KNOWN = Gauge(
    "iot_consumer_alert_sensors_known",
    "Sensors the alert engine knows on this replica's partitions (heard within the look-back)",
)
ALERT_SENSORS_FORGOTTEN = Counter(
    "iot_consumer_alert_sensors_forgotten_total", "Sensors forgotten after no reading for the silence look-back"
)
ALERT_WRITE_ERRORS = Counter(
    "iot_consumer_alert_write_errors_total", "Batches whose alert changes PostgreSQL refused (rows still written)"
)
ALERT_EVENTS_PUBLISHED = Counter("iot_consumer_alert_events_published_total", "Alert events acknowledged by Kafka")
ALERT_PUBLISH_ERRORS = Counter("iot_consumer_alert_publish_errors_total", "Failed rounds of publishing alert events")
ALERT_OUTBOX_BACKLOG = Gauge("iot_consumer_alert_outbox_backlog", "Alert events committed but not yet in Kafka")

# Progress and its obstacles (docs/RELIABILITY.md, "Nothing stalls silently").
POLL_ERRORS = Counter(
    "iot_consumer_poll_errors_total",
    "Failed polls by error class (broker errors, undecodable batches, offsets out of range)",
    ["error"],
)
WRITE_ERRORS = Counter(
    "iot_consumer_write_errors_total",
    "Batches PostgreSQL refused for a reason other than a bad row or a lost connection",
    ["error"],
)
STALLED_PARTITIONS = Gauge(
    "iot_consumer_stalled_partitions",
    "Owned partitions with messages waiting and no progress for longer than the stall threshold",
)
BLOCKED = Gauge(
    "iot_consumer_blocked",
    "1 while something keeps failing (a partition, polling, writing) for longer than the stall threshold",
)
HALTED_PARTITIONS = Gauge(
    "iot_consumer_halted_partitions",
    "Partitions stopped by the offset-gap policy 'fail' until the log holds their position again",
)
OFFSET_GAPS = Counter(
    "iot_consumer_offset_gaps_total",
    "Stored positions the Kafka log no longer holds, by kind and action taken",
    ["kind", "action"],
)
RECORDS_SKIPPED = Counter(
    "iot_consumer_records_skipped_total",
    "Records never written because the log lost them (retention) or a policy moved past them",
    ["kind"],
)
READINGS_WITH_EXTRAS = Counter(
    "iot_consumer_readings_with_extra_fields_total",
    "Readings stored with fields beyond the four known ones (kept in sensores.extras)",
)

ROLLUP_SECONDS = Histogram(
    "iot_consumer_rollup_duration_seconds",
    "Time of one batch's rollup upserts (sensores_minuto and sensores_hora)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# How long the alert engine takes: per batch (its readings), and per idle sweep (silence judged
# against the wall clock on caught-up partitions) - the costs that grow with the fleet.
ALERT_EVALUATION_SECONDS = Histogram(
    "iot_consumer_alert_evaluation_duration_seconds",
    "Time the alert engine takes to evaluate one batch (kind=batch) or one idle silence sweep (kind=idle)",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# Retention and storage (iot_consumer.housekeeping).
TABLE_BYTES = Gauge(
    "iot_consumer_table_bytes", "Bytes on disk of a table's partitions (indexes and TOAST included)", ["table"]
)
TABLE_PARTITIONS = Gauge("iot_consumer_table_partitions", "Partitions a table has", ["table"])
BATCH_CUTS = Counter(
    "iot_consumer_batch_cuts_total",
    "Batches stopped early at a record whose UTC day was over the per-batch budget (a device's dead clock)",
)
DUPLICATES_DROPPED = Counter(
    "iot_consumer_duplicates_dropped_total",
    "Readings not stored under --on-duplicate drop: their sensor and timestamp were already stored",
)
DEAD_LETTERS_EXPIRED = Counter(
    "iot_consumer_dead_letters_expired_total", "Dead letters deleted after DEAD_LETTER_RETENTION_DAYS"
)
PARTITIONS_DROPPED = Counter(
    "iot_consumer_retention_partitions_dropped_total", "Expired partitions detached and dropped", ["table"]
)
BYTES_FREED = Counter("iot_consumer_retention_bytes_freed_total", "Bytes the dropped partitions held", ["table"])
RETENTION_ERRORS = Counter(
    "iot_consumer_retention_errors_total", "Retention rounds that failed or were postponed", ["error"]
)
RETENTION_LAST_RUN = Gauge(
    "iot_consumer_retention_last_run_timestamp_seconds", "Unix time of the last retention round that completed"
)


@dataclass
class Totals:
    """What this process has done, for its progress and final log lines."""

    consumed: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    failed_batches: int = 0

    def add(self, batch: Batch) -> None:
        self.batches += 1
        self.consumed += batch.consumed
        self.inserted += batch.rows - batch.duplicates_dropped
        self.dead_lettered += len(batch.dead_letters)


def record_batch(
    batch: Batch, committed_at: datetime, seconds: float, copy_seconds: float, rollup_seconds: float
) -> None:
    """Account one committed batch."""
    BATCHES.labels("committed").inc()
    MESSAGES_CONSUMED.inc(batch.consumed)
    ROWS_INSERTED.inc(batch.rows - batch.duplicates_dropped)
    if batch.duplicates_dropped:
        DUPLICATES_DROPPED.inc(batch.duplicates_dropped)
    if batch.native_rows:
        ROWS_DECODED.labels("native").inc(batch.native_rows)
    if batch.copy_lines:
        ROWS_DECODED.labels("python").inc(len(batch.copy_lines))
    BATCH_SIZE.observe(batch.consumed)
    BATCH_SECONDS.observe(seconds)
    LAST_COMMIT.set(committed_at.timestamp())
    if batch.rows:
        COPY_SECONDS.observe(copy_seconds)
        ROLLUP_SECONDS.observe(rollup_seconds)
    if batch.with_extras:
        READINGS_WITH_EXTRAS.inc(batch.with_extras)
    for stamp in batch.last_by_offset.values():
        END_TO_END_SECONDS.observe(max(0.0, (committed_at - stamp).total_seconds()))
    for letter in batch.dead_letters:
        DEAD_LETTERS.labels(letter.reason).inc()
