"""The consumer's own form of one valid reading, shared by every stage below the loop.

It lives apart from all of them so that none has to import another to name it (the batch builder,
the rollups, the alert engine and dead-letter replay all take it).
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple


class Reading(NamedTuple):
    """One valid reading: the Kafka partition it came from, the sensor, its UTC time and values."""

    partition: int
    sensor_id: str
    timestamp: datetime
    temperatura: float
    umidade: float
