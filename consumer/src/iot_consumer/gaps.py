"""Offset gaps: a stored position that Kafka's log no longer holds, classified with its numbers.

Pure data and one function, shared by the consumer's positions (which act on a gap), the sink
(which records it) and the CLI (which shows it); see positions.py for the policy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class GapKind(StrEnum):
    TOPIC_RECREATED = "topic_recreated"
    AHEAD_OF_LOG = "ahead_of_log"
    BEHIND_LOG_START = "behind_log_start"


@dataclass(frozen=True)
class OffsetGap:
    """Partition ``partition`` should go on at ``position``, which its log does not hold."""

    partition: int
    kind: GapKind
    position: int
    log_start: int
    log_end: int
    stored_topic_id: uuid.UUID | None = None
    topic_id: uuid.UUID | None = None

    @property
    def records_lost(self) -> int | None:
        """Records removed before anyone read them (known only for ``behind_log_start``)."""
        return self.log_start - self.position if self.kind is GapKind.BEHIND_LOG_START else None

    def log_fields(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "kind": self.kind.value,
            "stored_position": self.position,
            "log_start": self.log_start,
            "log_end": self.log_end,
            "records_lost": self.records_lost,
            "detail": self.describe(),
        }

    def describe(self) -> str:
        if self.kind is GapKind.TOPIC_RECREATED:
            return (
                f"partition {self.partition}: topic re-created (id {self.stored_topic_id} -> {self.topic_id}); "
                f"stored position {self.position}, new log {self.log_start}..{self.log_end}"
            )
        if self.kind is GapKind.AHEAD_OF_LOG:
            return (
                f"partition {self.partition}: stored position {self.position} is beyond the log end {self.log_end} "
                "(log re-created or truncated)"
            )
        return (
            f"partition {self.partition}: stored position {self.position} is before the log start {self.log_start}: "
            f"{self.records_lost} records were deleted unread (retention)"
        )


def classify(
    partition: int,
    position: int,
    log_start: int,
    log_end: int,
    stored_topic_id: uuid.UUID | None,
    topic_id: uuid.UUID | None,
) -> OffsetGap | None:
    """The gap between a position and the partition's log, or None when the log holds it."""
    if stored_topic_id is not None and topic_id is not None and stored_topic_id != topic_id:
        kind = GapKind.TOPIC_RECREATED
    elif position > log_end:
        kind = GapKind.AHEAD_OF_LOG
    elif position < log_start:
        kind = GapKind.BEHIND_LOG_START
    else:
        return None
    return OffsetGap(partition, kind, position, log_start, log_end, stored_topic_id, topic_id)
