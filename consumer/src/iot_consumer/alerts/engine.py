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
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from iot_consumer.alerts.fleet import LastSeen, SilenceWheel
from iot_consumer.alerts.rules import RuleSet, Severity, SilenceRule, ThresholdRule
from iot_consumer.readings import Reading
from iot_consumer.summary import BatchSummary, from_micros, to_micros

Phase = Literal["pending", "firing", "clearing"]
StateKey = tuple[str, str]  # (sensor_id, rule name)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

STORM_SUFFIX = ":storm"
# One evaluation opens at most this many alerts of a silence rule; the others stay due and open
# in the next ones (each is a batch's or an idle sweep's transaction: bounded work per commit).
MAX_SILENCE_OPENS_PER_EVALUATION = 5_000
# ... and forgets at most this many sensors (a dict deletion each), the others staying due.
MAX_FORGOTTEN_PER_EVALUATION = 100_000


def storm_rule_name(rule: SilenceRule) -> str:
    """The rule name a silence storm is stored under (no rule file can name a rule with ':')."""
    return rule.name + STORM_SUFFIX


def storm_sensor_id(partition: int) -> str:
    """A storm belongs to its partition (it moves with the partition on a rebalance, and two
    replicas never share one): the id it is stored under in place of a sensor's."""
    return f"00000000-0000-0000-0000-{partition:012x}"


@dataclass(frozen=True, slots=True)
class AlertState:
    """A (sensor, rule) that is not normal. Absent from the engine's map means normal.

    A storm (see :class:`SilenceRule`) is a state too, of its partition's storm id and the rule's
    storm name; ``peak`` is the most sensors it held silent, ``last_value`` how many it holds."""

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

    @property
    def is_storm(self) -> bool:
        return self.rule.endswith(STORM_SUFFIX)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    kind: Literal["opened", "closed"]
    state: AlertState
    severity: Severity
    at: datetime  # opened_at or closed_at
    known: int | None = None  # storms: the sensors known on the partition then


@dataclass(slots=True)
class Evaluation:
    """What a batch changes: new states (None = back to normal), events, clocks."""

    states: dict[StateKey, AlertState | None] = field(default_factory=dict)
    events: list[AlertEvent] = field(default_factory=list)
    peaks: set[StateKey] = field(default_factory=set)  # open alerts whose peak moved
    seen: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    clocks: dict[int, datetime] = field(default_factory=dict)
    # taken from the silence wheels: (rule index, partition, deadline µs, sensor), pushed back
    # if this evaluation is never adopted
    silenced: list[tuple[int, int, int, str]] = field(default_factory=list)
    storm_joins: list[tuple[int, int, str]] = field(default_factory=list)  # (rule index, partition, sensor)
    storm_leaves: list[tuple[int, int, str]] = field(default_factory=list)
    storms_over: list[tuple[int, int]] = field(default_factory=list)  # (rule index, partition)
    silence_opens: int = 0
    # taken from the forget wheel: (partition, deadline µs, sensor) not heard for forget_after
    forgotten: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def writes_anything(self) -> bool:
        return bool(self.states or self.events)


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


class AlertEngine:
    """State of every (sensor, rule) on the partitions this replica owns.

    What a batch costs grows with the batch, not with the fleet: threshold rules run only for
    the batch's sensors that can change state, and silence is found through one timer wheel per
    silence rule (see fleet.py) instead of a look at every known sensor."""

    def __init__(
        self,
        rules: RuleSet,
        max_silence_opens: int = MAX_SILENCE_OPENS_PER_EVALUATION,
        forget_after: timedelta | None = None,
        max_forgotten: int = MAX_FORGOTTEN_PER_EVALUATION,
    ) -> None:
        """``forget_after``: a sensor not heard for that long on its partition's clock is
        forgotten (None: never) - what a restart does too, which reloads only the sensors heard
        within the look-back; so a device flooding new ids costs memory for that long, not for ever."""
        self.rules = rules
        self.max_silence_opens = max_silence_opens
        self.forget_us = None if forget_after is None else round(forget_after.total_seconds() * 1_000_000)
        self.max_forgotten = max_forgotten
        self.forgotten = 0  # sensors forgotten so far (a metric)
        self._threshold = [(rule, 3 if rule.metric == "temperatura" else 4) for rule in rules.threshold]
        self._silence_index = {rule.name: index for index, rule in enumerate(rules.silence)}
        self._storm_index = {storm_rule_name(rule): index for index, rule in enumerate(rules.silence)}
        self._limits_us = [round(rule.silent_for_seconds * 1_000_000) for rule in rules.silence]
        self._storm_windows_us = [round(rule.storm_window_seconds * 1_000_000) for rule in rules.silence]
        self.states: dict[StateKey, AlertState] = {}
        self.last_seen = LastSeen()  # sensor → (partition, newest timestamp)
        self.clocks: dict[int, datetime] = {}  # partition → its clock (see module docstring)
        self._stateful: Counter[str] = Counter()  # sensor → how many of its (sensor, rule) are not normal
        self._open_by_rule: Counter[str] = Counter()
        self._known: Counter[int] = Counter()  # partition → sensors known there
        self._silent_open: list[Counter[int]] = [Counter() for _ in rules.silence]  # per-sensor alerts open
        self._wheels = [SilenceWheel() for _ in rules.silence]
        self._forget_wheel = SilenceWheel()  # every known sensor, at last heard + forget_after
        self._members: list[dict[int, set[str]]] = [{} for _ in rules.silence]  # storm → sensors it holds
        self._storm_partitions: list[set[int]] = [set() for _ in rules.silence]  # partitions with a storm open
        self._unadopted: Evaluation | None = None

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
        self.last_seen = LastSeen()
        if isinstance(last_seen, LastSeen):
            for sensor, partition, stamp_us in last_seen.entries():
                if partition in owned:
                    self.last_seen.note(sensor, partition, stamp_us)
        else:
            for sensor, (partition, stamp) in last_seen.items():
                if partition in owned:
                    self.last_seen.note(sensor, partition, to_micros(stamp))
        self._stateful = Counter(sensor for sensor, _rule in self.states)
        self._open_by_rule = Counter(s.rule for s in self.states.values() if s.is_open)
        self._known = Counter()
        self.clocks = {}
        newest: dict[int, int] = {}
        for _sensor, partition, stamp_us in self.last_seen.entries():
            self._known[partition] += 1
            if stamp_us > newest.get(partition, stamp_us - 1):
                newest[partition] = stamp_us
        self.clocks = {partition: from_micros(stamp_us) for partition, stamp_us in newest.items()}
        _no_later_than_now(self.clocks)
        self._silent_open = [Counter() for _ in self.rules.silence]
        self._storm_partitions = [set() for _ in self.rules.silence]
        for state in self.states.values():
            index = self._silence_index.get(state.rule)
            if index is not None and state.is_open:
                self._silent_open[index][state.partition] += 1
            index = self._storm_index.get(state.rule)
            if index is not None:
                self._storm_partitions[index].add(state.partition)
        self._members = [{} for _ in self.rules.silence]
        self._forget_wheel.clear()
        if self.forget_us is not None:
            for sensor, partition, stamp_us in self.last_seen.entries():
                self._forget_wheel.push(partition, stamp_us + self.forget_us, sensor)
        for index, (wheel, rule) in enumerate(zip(self._wheels, self.rules.silence, strict=True)):
            wheel.clear()
            limit = self._limits_us[index]
            for sensor, partition, stamp_us in self.last_seen.entries():
                if (sensor, rule.name) not in self.states:
                    wheel.push(partition, stamp_us + limit, sensor)
        self._unadopted = None

    def apply(self, evaluation: Evaluation) -> None:
        """Adopt an evaluation whose writes committed."""
        self._unadopted = None
        self._note_heard(evaluation.seen)
        for key, state in evaluation.states.items():
            before_state = self.states.get(key)
            if state is None:
                if before_state is None:
                    continue
                del self.states[key]
                self._stateful[key[0]] -= 1
                if not self._stateful[key[0]]:
                    del self._stateful[key[0]]
            else:
                self.states[key] = state
                if before_state is None:
                    self._stateful[key[0]] += 1
            silence = self._silence_index.get(key[1])
            if silence is not None:
                was_open = before_state is not None and before_state.is_open
                now_open = state is not None and state.is_open
                if was_open != now_open:
                    partition = (state or before_state).partition  # type: ignore[union-attr]
                    self._silent_open[silence][partition] += 1 if now_open else -1
                if was_open and not now_open:
                    self._arm(silence, key[0])  # heard again: armed for its next silence
            storm = self._storm_index.get(key[1])
            if storm is not None:
                if state is None:
                    self._storm_partitions[storm].discard(before_state.partition if before_state else -1)
                else:
                    self._storm_partitions[storm].add(state.partition)
        for event in evaluation.events:
            self._open_by_rule[event.state.rule] += 1 if event.kind == "opened" else -1
        for index, partition, sensor in evaluation.storm_leaves:
            self._members[index].get(partition, set()).discard(sensor)
            self._arm(index, sensor)
        for index, partition, sensor in evaluation.storm_joins:
            self._members[index].setdefault(partition, set()).add(sensor)
        for index, partition in evaluation.storms_over:
            # the sensors still silent are silent on their own now: due again, each gets its own alert
            for sensor in self._members[index].pop(partition, set()):
                self._arm(index, sensor)
        for partition, clock in evaluation.clocks.items():
            if partition not in self.clocks or clock > self.clocks[partition]:
                self.clocks[partition] = clock
        self._forget(evaluation.forgotten)

    def _note_heard(self, seen: Mapping[str, tuple[int, datetime]]) -> None:
        """The batch's newest reading per sensor becomes its last heard - never an older one (a
        reading sent again); a new sensor is armed on every silence wheel and the forget wheel."""
        for sensor, (partition, stamp) in seen.items():
            before = self.last_seen.of(sensor)
            stamp_us = to_micros(stamp)
            if before is not None and stamp_us < before[1]:
                continue
            self.last_seen.note(sensor, partition, stamp_us)
            if before is None:
                self._known[partition] += 1
                if self.forget_us is not None:
                    self._forget_wheel.push(partition, stamp_us + self.forget_us, sensor)
                for index, rule in enumerate(self.rules.silence):
                    if (sensor, rule.name) not in self.states:
                        self._arm(index, sensor)
            elif before[0] != partition:  # its entries follow it lazily (see _take_silent)
                self._known[before[0]] -= 1
                self._known[partition] += 1

    def _forget(self, forgotten: list[tuple[int, int, str]]) -> None:
        """Drop sensors not heard for forget_after. Their wheel entries go lazily (a forgotten
        sensor is skipped when taken); an open alert of their own stays open until they are heard
        again, as after a restart."""
        for partition, _deadline, sensor in forgotten:
            del self.last_seen.packed[sensor]
            self._known[partition] -= 1
            for members in self._members:
                members.get(partition, set()).discard(sensor)
        self.forgotten += len(forgotten)

    def _arm(self, index: int, sensor: str) -> None:
        known = self.last_seen.of(sensor)
        if known is not None:
            self._wheels[index].push(known[0], known[1] + self._limits_us[index], sensor)

    def _restore(self) -> None:
        """An evaluation that was never adopted (its transaction failed): what it took from the
        wheels goes back, so no silence is lost."""
        ev, self._unadopted = self._unadopted, None
        if ev is not None:
            for index, partition, deadline_us, sensor in ev.silenced:
                self._wheels[index].push(partition, deadline_us, sensor)
            for partition, deadline_us, sensor in ev.forgotten:
                self._forget_wheel.push(partition, deadline_us, sensor)

    def open_alerts(self) -> list[AlertState]:
        return [s for s in self.states.values() if s.is_open]

    def open_counts(self) -> Counter[str]:
        """Open alerts by rule name (storms under their storm name), kept as alerts open and close."""
        return +self._open_by_rule

    def storm_sensors(self, rule: SilenceRule) -> int:
        """Sensors held silent by this rule's open storms."""
        index = self._silence_index[rule.name]
        return sum(len(members) for members in self._members[index].values())

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, summary: BatchSummary) -> Evaluation:
        """What a batch changes: its readings (in partition order) through every rule, then silence.

        Only sensors that can change state are run through the rules: those with a state now,
        and those whose batch minimum or maximum violates a threshold (rules compare one way, so
        the extremes decide). Every other reading would leave its sensor normal; the newest
        readings and the partition clocks come from the summary for all of them.
        """
        self._restore()
        ev = Evaluation()
        interesting: set[str] = set()
        stateful = self._stateful
        threshold = self._threshold
        for sensor, t_min, t_max, h_min, h_max, newest_us, newest_partition in summary.sensors():
            ev.seen[sensor] = (newest_partition, _EPOCH + timedelta(microseconds=newest_us))
            if sensor in stateful:
                interesting.add(sensor)
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
        self._unadopted = ev
        return ev

    def evaluate_readings(self, readings: Iterable[Reading]) -> Evaluation:
        """The rules' definition: every reading (in partition order) through every rule, then
        silence. The reference the tests hold :meth:`evaluate` to (the consumer uses :meth:`evaluate`)."""
        self._restore()
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
        self._unadopted = ev
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
        moved = {p: c for p, c in ev.clocks.items() if c > self.clocks.get(p, c - _TICK)}
        if silence:
            self._storm_leaves(ev)
            self._check_silence(ev, moved)
        self._take_forgotten(ev, moved)

    def evaluate_clock(self, clocks: Mapping[int, datetime]) -> Evaluation:
        """Move partitions' clocks on without readings (idle, caught-up partitions) and check for silence."""
        self._restore()
        ev = Evaluation()
        for partition, clock in clocks.items():
            current = self.clocks.get(partition)
            if current is None or clock > current:
                ev.clocks[partition] = clock
        if self.rules.silence and ev.clocks:
            self._check_silence(ev, ev.clocks)
        self._take_forgotten(ev, ev.clocks)
        self._unadopted = ev
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

    # ------------------------------------------------------------------ forgetting
    def _take_forgotten(self, ev: Evaluation, clocks: Mapping[int, datetime]) -> None:
        """The sensors not heard for forget_after on the partitions whose clock moved - at most
        max_forgotten per evaluation, the others stay due. A sensor heard since (or in this
        batch) goes back at its true deadline; one that moved partition follows it."""
        if self.forget_us is None or not clocks:
            return
        wheel = self._forget_wheel
        limit = self.forget_us
        for partition, clock in clocks.items():
            clock_us = to_micros(clock)
            for sensor in wheel.take_due(partition, clock_us):
                known = self.last_seen.of(sensor)
                if known is None:
                    continue
                known_partition, known_us = known
                heard = ev.seen.get(sensor)
                if heard is not None:
                    known_partition, known_us = heard[0], max(known_us, to_micros(heard[1]))
                deadline = known_us + limit
                if known_partition != partition or deadline > clock_us or len(ev.forgotten) >= self.max_forgotten:
                    wheel.push(known_partition, deadline, sensor)  # (late is harmless: forgetting waits)
                    continue
                ev.forgotten.append((partition, deadline, sensor))

    # ------------------------------------------------------------------ silence and storms
    def _storm_leaves(self, ev: Evaluation) -> None:
        """Sensors held by a storm that were heard in this batch leave it."""
        for index, by_partition in enumerate(self._members):
            if not any(by_partition.values()):
                continue
            for sensor in ev.seen:
                known = self.last_seen.of(sensor)
                if known is not None and sensor in by_partition.get(known[0], ()):
                    ev.storm_leaves.append((index, known[0], sensor))

    def _check_silence(self, ev: Evaluation, clocks: Mapping[int, datetime]) -> None:
        newcomers: Counter[int] | None = None
        for index, rule in enumerate(self.rules.silence):
            for partition, clock in clocks.items():
                candidates = self._take_silent(ev, index, rule, partition, to_micros(clock))
                if candidates:
                    if newcomers is None:  # sensors this batch makes known (counted once)
                        newcomers = Counter(p for s, (p, _) in ev.seen.items() if s not in self.last_seen)
                    known = self._known[partition] + newcomers[partition]
                    self._silence_or_storm(ev, index, rule, partition, candidates, known, to_micros(clock))
            self._storms_in_balance(ev, index, rule, clocks)

    def _take_silent(
        self, ev: Evaluation, index: int, rule: SilenceRule, partition: int, clock_us: int
    ) -> list[tuple[int, int, str]]:
        """The due entries of the partition's wheel that are silent now: (last reading µs,
        deadline µs as the wheel knew it, sensor). The others go back, never later than due."""
        wheel = self._wheels[index]
        limit = self._limits_us[index]
        back: list[tuple[int, int, str]] = []
        silent: list[tuple[int, int, str]] = []
        for sensor in wheel.take_due(partition, clock_us):
            known = self.last_seen.of(sensor)
            if known is None:
                continue  # forgotten
            known_partition, known_us = known
            deadline = known_us + limit
            if known_partition != partition:  # the sensor moved: its entry follows it
                back.append((known_partition, deadline, sensor))
                continue
            heard = ev.seen.get(sensor)
            last_us = known_us
            if heard is not None:
                if heard[0] != partition:
                    back.append((partition, deadline, sensor))
                    continue
                last_us = max(known_us, to_micros(heard[1]))
            if last_us + limit > clock_us:
                back.append((partition, deadline, sensor))  # committed deadline: never later than the true one
                continue
            key = (sensor, rule.name)
            if (ev.states[key] if key in ev.states else self.states.get(key)) is not None:
                continue  # open already: armed again when it closes
            silent.append((last_us, deadline, sensor))
        for entry in back:
            wheel.push(*entry)
        return silent

    def _silence_or_storm(
        self,
        ev: Evaluation,
        index: int,
        rule: SilenceRule,
        partition: int,
        silent: list[tuple[int, int, str]],
        known: int,
        clock_us: int,
    ) -> None:
        """Open the silent sensors' alerts - at most ``max_silence_opens`` per evaluation - or,
        when they are a storm, one alert for the partition that holds them all. Where a storm
        could form, a sensor's own alert waits the storm window past its deadline (it goes back
        to the wheel, due, and is counted again with those falling silent after it)."""
        limit = timedelta(microseconds=self._limits_us[index])
        key = (storm_sensor_id(partition), storm_rule_name(rule))
        storm = ev.states[key] if key in ev.states else self.states.get(key)
        if storm is None:
            held = self._silent_open[index][partition] + len(silent)
            if len(silent) >= rule.storm_min_sensors and held >= rule.storm_share * known:
                since = from_micros(min(last for last, _, _ in silent))
                at = from_micros(max(last for last, _, _ in silent)) + limit
                count = float(len(silent))
                storm = AlertState(key[0], key[1], partition, "firing", since, peak=count, last_value=count)
                storm = replace(storm, alert_id=uuid.uuid4(), opened_at=at)
                ev.events.append(AlertEvent("opened", storm, rule.severity, at, known))
                ev.states[key] = storm
        if storm is not None:
            for _last, deadline, sensor in silent:
                ev.storm_joins.append((index, partition, sensor))
                ev.silenced.append((index, partition, deadline, sensor))
            return
        wheel = self._wheels[index]
        window_us = self._storm_windows_us[index] if known >= rule.storm_min_sensors else 0
        for last_us, deadline, sensor in silent:
            if ev.silence_opens >= self.max_silence_opens or deadline > clock_us - window_us:
                wheel.push(partition, deadline, sensor)  # still due: a later evaluation opens it
                continue
            if (sensor, rule.name) in ev.states:  # a stale entry beside a fresh one (forgotten, heard again)
                continue
            last = from_micros(last_us)
            state = AlertState(sensor, rule.name, partition, "firing", last)
            self._open(ev, (sensor, rule.name), state, rule.severity, last + limit)
            ev.silence_opens += 1
            ev.silenced.append((index, partition, deadline, sensor))

    def _storms_in_balance(self, ev: Evaluation, index: int, rule: SilenceRule, clocks: Mapping[int, datetime]) -> None:
        """Each open storm of the rule on the swept partitions (or that sensors left): how many it
        holds now; over once fewer than half its share are still silent."""
        name = storm_rule_name(rule)
        joins = Counter(p for i, p, _ in ev.storm_joins if i == index)
        leaves = Counter(p for i, p, _ in ev.storm_leaves if i == index)
        opened = {p for i, p, _ in ev.storm_joins if i == index}
        for partition in (set(clocks) | set(leaves)) & (self._storm_partitions[index] | opened):
            key = (storm_sensor_id(partition), name)
            storm = ev.states[key] if key in ev.states else self.states.get(key)
            if storm is None:
                continue
            held = len(self._members[index].get(partition, ())) + joins[partition] - leaves[partition]
            known = self._known[partition]
            if held < rule.storm_share * known / 2:
                clock = clocks.get(partition) or ev.clocks.get(partition) or self.clocks.get(partition)
                at = max(clock or storm.since, storm.opened_at or storm.since)
                closed = replace(storm, last_value=float(held))
                ev.states[key] = None
                ev.peaks.discard(key)
                ev.events.append(AlertEvent("closed", closed, rule.severity, at, known))
                ev.storms_over.append((index, partition))
            elif storm.last_value != held:
                ev.states[key] = replace(storm, peak=max(storm.peak or 0.0, float(held)), last_value=float(held))
                ev.peaks.add(key)


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
