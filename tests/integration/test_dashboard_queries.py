"""The dashboard's fleet-wide panels against the real pipeline's tables: what the fleet rollup
answers (the band, the fleet's mean, the sensors heard, the headline) equals what the readings
say, counted exactly while few rows hold it and estimated from the sketches beyond."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pandas as pd
import psycopg2.extensions
import pytest

from iot_dashboard import queries as q
from tests.helpers import Stack, rollup_mismatches, scalar, send_raw
from tests.integration.test_consumer import consume

SENSORS = 3000


def fleet_readings(now: datetime) -> list[tuple[bytes, bytes]]:
    """3,000 sensors: each one reading in each of the last three complete minutes (sensor i
    only from minute i % 3 on: 1,000, 2,000, then 3,000 sensors per minute) and one now."""
    rng = random.Random(24)
    sensors = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(SENSORS)]
    minute = now.replace(second=0, microsecond=0)
    out = []
    for index, sensor in enumerate(sensors):
        for back in range(3 - index % 3, 0, -1):
            stamp = minute - timedelta(minutes=back) + timedelta(seconds=rng.uniform(0, 59))
            value = {
                "sensor_id": sensor,
                "timestamp": stamp.isoformat(),
                "temperatura": rng.uniform(20, 30),
                "umidade": rng.uniform(30, 80),
            }
            out.append((sensor.encode(), orjson.dumps(value)))
        value = {"sensor_id": sensor, "timestamp": now.isoformat(), "temperatura": 25.0, "umidade": 50.0}
        out.append((sensor.encode(), orjson.dumps(value)))
    return out


def test_fleet_panels_read_the_fleet_rollup_and_agree_with_the_readings(
    stack: Stack, env: dict[str, str], topic: str, db: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """3,000 sensors through the consumer: the band per minute equals min / mean / max over the
    readings; the sensors heard are 3,000 exactly, and ≈3,000 (within 10 %) from the sketches when
    the exact count may read only 100 rows; the most deviating sensors are those of the full
    per-sensor ranking; the headline from the fleet rollup counts the last complete minute."""
    now = datetime.now(UTC)
    send_raw(stack.bootstrap, topic, fleet_readings(now))
    assert consume(env, tmp_path, 4).wait(180) == 0
    assert scalar(db, "SELECT count(*) FROM sensores") == SENSORS * 3
    assert rollup_mismatches(db) == []
    db.autocommit = True

    band = q.fleet_band(db, timedelta(hours=1), timedelta(minutes=1))
    with db.cursor() as cur:
        cur.execute(
            """SELECT date_trunc('minute', "timestamp", 'UTC') AS t, min(temperatura), avg(temperatura),
                      max(temperatura), min(umidade), avg(umidade), max(umidade)
                 FROM sensores GROUP BY 1 ORDER BY 1"""
        )
        expected = cur.fetchall()
    assert len(band) == len(expected) >= 4
    columns = ["temperatura_min", "temperatura", "temperatura_max", "umidade_min", "umidade", "umidade_max"]
    for (_, row), want in zip(band.iterrows(), expected, strict=True):
        assert pd.Timestamp(str(row["t"])) == pd.Timestamp(want[0])
        assert [float(row[c]) for c in columns] == pytest.approx([float(v) for v in want[1:]], rel=1e-9)

    assert q.sensors_heard(db, timedelta(hours=1)) == q.Count(SENSORS)
    estimated = q.sensors_heard(db, timedelta(hours=1), exact_limit=100)
    assert not estimated.exact
    assert abs(estimated.sensors - SENSORS) <= 0.1 * SENSORS

    with db.cursor() as cur:
        cur.execute(
            """WITH per_sensor AS (SELECT sensor_id, avg(temperatura) AS mean FROM sensores GROUP BY 1),
                    fleet AS (SELECT avg(temperatura) AS mean FROM sensores)
               SELECT sensor_id::text FROM per_sensor ORDER BY abs(mean - (SELECT mean FROM fleet)) DESC, sensor_id
               LIMIT 12"""
        )
        ranking = [r[0] for r in cur.fetchall()]
    assert q.most_deviating(db, timedelta(hours=1), 12) == ranking

    exact = q.throughput(db, env["CONSUMER_GROUP"])
    assert exact.sensors_reporting.exact
    for _attempt in range(2):  # a minute may end between the query and the check: once more
        minute = scalar(db, "SELECT date_trunc('minute', now()) - interval '1 minute'")
        estimated_flow = q.throughput(db, env["CONSUMER_GROUP"], exact_limit=10)
        if scalar(db, "SELECT date_trunc('minute', now()) - interval '1 minute'") == minute:
            break
    in_minute = scalar(
        db, "SELECT count(*) FROM sensores WHERE date_trunc('minute', \"timestamp\", 'UTC') = %s", (minute,)
    )
    assert in_minute in (1000, 2000, 3000)
    assert estimated_flow.readings_per_second == in_minute / 60
    assert not estimated_flow.sensors_reporting.exact
    assert abs(estimated_flow.sensors_reporting.sensors - in_minute) <= 0.1 * in_minute
