"""The alert state machine, per (sensor, rule), driven by the readings' own timestamps.

Threshold rule::

    normal --violates--> pending --still violating for for_seconds--> firing (alert OPENED)
    pending --back within threshold--> normal (nothing was ever opened)
    firing --cleared--> clearing --still cleared for clear_for_seconds--> normal (alert CLOSED)
    clearing --not cleared any more--> firing (same alert stays open)

"Violates" uses the threshold, "cleared" the clear level on the safe side of it, so a value
hovering between the two keeps an open alert open and never opens a second one.

Silence rule: a sensor whose last reading is older than ``silent_for_seconds`` on its
partition's clock opens an alert; its next reading closes it. A partition's clock is the newest
reading timestamp seen on it, moved on by the wall clock only while the partition is fully
consumed - so replaying a backlog after downtime does not make every sensor look silent.

The engine reads a batch through its summary (summary.py), whichever decoder made it; the
rules' plain definition over every reading, :meth:`AlertEngine.evaluate_readings`, is what the
tests hold :meth:`AlertEngine.evaluate` to.

The engine is pure: :meth:`AlertEngine.evaluate` returns what *would* change and
:meth:`AlertEngine.apply` adopts it only after the batch's transaction committed, so a failed
or fenced batch leaves the in-memory state as it was in PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from iot_consumer.alerts.rules import RuleSet, Severity, SilenceRule, ThresholdRule
from iot_consumer.readings import Reading
from iot_consumer.summary import BatchSummary

Phase = Literal["pending", "firing", "clearing"]
StateKey = tuple[str, str]  # (sensor_id, rule name)
# (kafka partition, sensor_id text, timestamp UTC, temperatura, umidade)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AlertState:
    """A (sensor, rule) that is not normal. Absent from the engine's map means normal."""

    sensor_id: str
    rule: str
    partition: int
    phase: Phase
    since: datetime  # when the condition began (first violating reading, or last reading before silence)
    alert_id: uuid.UUID | None = None  # set once the alert is open
    opened_at: datetime | None = None
    peak: float | None = None
    last_value: float | None = None
    clear_since: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.alert_id is not None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    kind: Literal["opened", "closed"]
    state: AlertState
    severity: Severity
    at: datetime  # opened_at or closed_at


@dataclass(slots=True)
class Evaluation:
    """What a batch changes: new states (None = back to normal), events, clocks."""

    states: dict[StateKey, AlertState | None] = field(default_factory=dict)
    events: list[AlertEvent] = field(default_factory=list)
    peaks: set[StateKey] = field(default_factory=set)  # open alerts whose peak moved
    seen: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    clocks: dict[int, datetime] = field(default_factory=dict)

    @property
    def writes_anything(self) -> bool:
        return bool(self.states or self.events)


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


class AlertEngine:
    """State of every (sensor, rule) on the partitions this replica owns."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._threshold = [(rule, 3 if rule.metric == "temperatura" else 4) for rule in rules.threshold]
        self.states: dict[StateKey, AlertState] = {}
        self.last_seen: dict[str, tuple[int, datetime]] = {}  # sensor → (partition, newest timestamp)
        self.clocks: dict[int, datetime] = {}  # partition → its clock (see module docstring)
        self._by_partition: dict[int, set[str]] = {}

    # ------------------------------------------------------------------ state management
    def reset(
        self,
        partitions: Iterable[int],
        states: Iterable[AlertState],
        last_seen: Mapping[str, tuple[int, datetime]],
    ) -> None:
        """Forget everything and adopt what PostgreSQL holds for ``partitions`` (after a rebalance)."""
        owned = set(partitions)
        self.states = {(s.sensor_id, s.rule): s for s in states if s.partition in owned}
        self.last_seen = {sensor: seen for sensor, seen in last_seen.items() if seen[0] in owned}
        self._by_partition = {}
        for sensor, (partition, _) in self.last_seen.items():
            self._by_partition.setdefault(partition, set()).add(sensor)
        self.clocks = {}
        for partition, stamp in self.last_seen.values():
            if partition not in self.clocks or stamp > self.clocks[partition]:
                self.clocks[partition] = stamp
        _no_later_than_now(self.clocks)

    def apply(self, evaluation: Evaluation) -> None:
        """Adopt an evaluation whose writes committed."""
        for key, state in evaluation.states.items():
            if state is None:
                self.states.pop(key, None)
            else:
                self.states[key] = state
        for sensor, seen in evaluation.seen.items():
            self.last_seen[sensor] = seen
            self._by_partition.setdefault(seen[0], set()).add(sensor)
        for partition, clock in evaluation.clocks.items():
            if partition not in self.clocks or clock > self.clocks[partition]:
                self.clocks[partition] = clock

    def open_alerts(self) -> list[AlertState]:
        return [s for s in self.states.values() if s.is_open]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, summary: BatchSummary) -> Evaluation:
        """What a batch changes: its readings (in partition order) through every rule, then silence.

        Only sensors that can change state are run through the rules: those with a state now,
        and those whose batch minimum or maximum violates a threshold (rules compare one way, so
        the extremes decide). Every other reading would leave its sensor normal; the newest
        readings and the partition clocks come from the summary for all of them.
        """
        ev = Evaluation()
        interesting = {sensor for sensor, _rule in self.states}
        threshold = self._threshold
        for sensor, t_min, t_max, h_min, h_max, newest_us, newest_partition in summary.sensors():
            ev.seen[sensor] = (newest_partition, _EPOCH + timedelta(microseconds=newest_us))
            if sensor in interesting:
                continue
            for rule, index in threshold:
                low, high = (t_min, t_max) if index == 3 else (h_min, h_max)
                if rule.violates(low) or rule.violates(high):
                    interesting.add(sensor)
                    break
        for partition, newest_us in summary.clocks():
            ev.clocks[partition] = _EPOCH + timedelta(microseconds=newest_us)
        _no_later_than_now(ev.clocks)
        readings = [
            Reading(partition, sensor, _EPOCH + timedelta(microseconds=stamp_us), t, h)
            for partition, sensor, stamp_us, t, h in (summary.readings_of(interesting) if interesting else ())
        ]
        self._run(ev, readings)
        return ev

    def evaluate_readings(self, readings: Iterable[Reading]) -> Evaluation:
        """The rules' definition: every reading (in partition order) through every rule, then
        silence. The reference the tests hold :meth:`evaluate` to (the consumer uses :meth:`evaluate`)."""
        ev = Evaluation()
        seen = ev.seen
        clocks = ev.clocks
        listed = readings if isinstance(readings, list) else list(readings)
        for partition, sensor, stamp, _, _ in listed:
            # a sensor's newest reading by (timestamp, partition): independent of arrival order
            newest = seen.get(sensor)
            if newest is None or stamp > newest[1] or (stamp == newest[1] and partition > newest[0]):
                seen[sensor] = (partition, stamp)
            clock = clocks.get(partition)
            if clock is None or stamp > clock:
                clocks[partition] = stamp
        _no_later_than_now(clocks)
        self._run(ev, listed)
        return ev

    def _run(self, ev: Evaluation, readings: list[Reading]) -> None:
        """The rules over ``readings`` (in partition order), then silence against ``ev.clocks``."""
        work = ev.states
        base = self.states
        silence = self.rules.silence
        threshold = self._threshold
        for reading in readings:
            partition, sensor, stamp, _, _ = reading
            for silence_rule in silence:
                key = (sensor, silence_rule.name)
                state = work[key] if key in work else base.get(key)
                if state is not None:
                    self._close(ev, key, state, silence_rule.severity, stamp, None)
            for rule, index in threshold:
                key = (sensor, rule.name)
                state = work[key] if key in work else base.get(key)
                value: float = reading[index]  # type: ignore[assignment]
                if state is None and not rule.violates(value):
                    continue  # the common case: normal and staying normal
                self._step(ev, key, state, rule, partition, stamp, value)
        if silence:
            clocks = ev.clocks
            self._check_silence(ev, {p: c for p, c in clocks.items() if c > self.clocks.get(p, c - _TICK)})

    def evaluate_clock(self, clocks: Mapping[int, datetime]) -> Evaluation:
        """Move partitions' clocks on without readings (idle, caught-up partitions) and check for silence."""
        ev = Evaluation()
        for partition, clock in clocks.items():
            current = self.clocks.get(partition)
            if current is None or clock > current:
                ev.clocks[partition] = clock
        if self.rules.silence and ev.clocks:
            self._check_silence(ev, ev.clocks)
        return ev

    def _step(
        self,
        ev: Evaluation,
        key: StateKey,
        state: AlertState | None,
        rule: ThresholdRule,
        partition: int,
        stamp: datetime,
        value: float,
    ) -> None:
        violating = rule.violates(value)
        if state is None:  # violating, or we would not be here
            state = AlertState(key[0], rule.name, partition, "pending", stamp, peak=value, last_value=value)
            if rule.for_seconds <= 0:
                self._open(ev, key, state, rule.severity, stamp)
            else:
                ev.states[key] = state
            return
        if state.phase == "pending":
            if not violating:
                ev.states[key] = None
                return
            peak = value if state.peak is None or rule.worse(value, state.peak) else state.peak
            state = replace(state, peak=peak, last_value=value)
            if _seconds(stamp, state.since) >= rule.for_seconds:
                self._open(ev, key, state, rule.severity, stamp)
            else:
                ev.states[key] = state
            return
        # firing or clearing: an open alert
        if state.peak is None or rule.worse(value, state.peak):
            state = replace(state, peak=value, last_value=value)
            ev.peaks.add(key)
        if rule.cleared(value):
            clear_since = state.clear_since or stamp
            if _seconds(stamp, clear_since) >= rule.clear_for_seconds:
                self._close(ev, key, state, rule.severity, stamp, value)
                return
            if state.phase != "clearing":
                ev.states[key] = replace(state, phase="clearing", clear_since=clear_since, last_value=value)
            elif key in ev.peaks:
                ev.states[key] = state
        elif state.phase == "clearing":
            ev.states[key] = replace(state, phase="firing", clear_since=None, last_value=value)
        elif key in ev.peaks:
            ev.states[key] = state

    def _open(self, ev: Evaluation, key: StateKey, state: AlertState, severity: Severity, at: datetime) -> None:
        opened = replace(state, phase="firing", alert_id=uuid.uuid4(), opened_at=at)
        ev.states[key] = opened
        ev.events.append(AlertEvent("opened", opened, severity, at))

    def _close(
        self, ev: Evaluation, key: StateKey, state: AlertState, severity: Severity, at: datetime, value: float | None
    ) -> None:
        ev.states[key] = None
        ev.peaks.discard(key)
        closed = state if value is None else replace(state, last_value=value)
        ev.events.append(AlertEvent("closed", closed, severity, at))

    def _check_silence(self, ev: Evaluation, clocks: Mapping[int, datetime]) -> None:
        for partition, clock in clocks.items():
            sensors = set(self._by_partition.get(partition, ()))
            sensors.update(s for s, (p, _) in ev.seen.items() if p == partition)
            for rule in self.rules.silence:
                self._silent_sensors(ev, rule, partition, clock, sensors)

    def _silent_sensors(
        self, ev: Evaluation, rule: SilenceRule, partition: int, clock: datetime, sensors: Iterable[str]
    ) -> None:
        limit = timedelta(seconds=rule.silent_for_seconds)
        for sensor in sensors:
            last = ev.seen.get(sensor) or self.last_seen.get(sensor)
            if last is None or last[0] != partition or clock - last[1] < limit:
                continue
            key = (sensor, rule.name)
            if (ev.states[key] if key in ev.states else self.states.get(key)) is not None:
                continue  # already open
            state = AlertState(sensor, rule.name, partition, "firing", last[1])
            self._open(ev, key, state, rule.severity, last[1] + limit)


def _no_later_than_now(clocks: dict[int, datetime]) -> None:
    """A partition's clock never runs ahead of the wall clock: one reading stamped tomorrow
    (inside the accepted clock skew) would otherwise declare every other sensor there silent,
    then blind the partition's silence detection until tomorrow came."""
    now = datetime.now(UTC)
    for partition, clock in clocks.items():
        if clock > now:
            clocks[partition] = now


# Silence is checked when a partition's clock moved on; the first batch of a partition counts as moved.
_TICK = timedelta(microseconds=1)
