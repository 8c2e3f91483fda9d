"""The alert state machine: one alert per episode, hysteresis, minimum durations, silence,
and resuming from stored state gives the same alerts as never stopping."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from iot_consumer.alerts.engine import AlertEngine, AlertEvent, Evaluation
from iot_consumer.alerts.rules import load_rules, parse_rules
from iot_consumer.readings import Reading
from iot_consumer.summary import summary_of, to_micros

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SENSOR = str(uuid.UUID(int=1))
OTHER = str(uuid.UUID(int=2))

TEMPERATURE_ONLY = parse_rules(
    """
    [[rule]]
    name = "temperatura_alta"
    severity = "critical"
    metric = "temperatura"
    above = 30.0
    clear_below = 29.5
    for_seconds = 5
    clear_for_seconds = 5
    """,
    "test",
)


def temps(values: Sequence[float], sensor: str = SENSOR, start: int = 0, partition: int = 0) -> list[Reading]:
    """One reading per second with the given temperatures (humidity a steady 50 %)."""
    return [Reading(partition, sensor, T0 + timedelta(seconds=start + i), v, 50.0) for i, v in enumerate(values)]


def run(engine: AlertEngine, readings: Iterable[Reading], batch: int = 7) -> list[AlertEvent]:
    """Feed readings in batches, adopting each evaluation as if its transaction committed."""
    events: list[AlertEvent] = []
    chunk: list[Reading] = []
    for reading in readings:
        chunk.append(reading)
        if len(chunk) == batch:
            ev = engine.evaluate(summary_of(chunk))
            engine.apply(ev)
            events += ev.events
            chunk = []
    if chunk:
        ev = engine.evaluate(summary_of(chunk))
        engine.apply(ev)
        events += ev.events
    return events


def kinds(events: list[AlertEvent]) -> list[str]:
    return [e.kind for e in events]


def test_a_spike_opens_one_alert_and_closes_it_once() -> None:
    """A spike opens one alert once it lasted for_seconds, stamped with when it began, and closes it
    after clear_for_seconds below the clear level, with the peak value."""
    engine = AlertEngine(TEMPERATURE_ONLY)
    events = run(engine, temps([25.0] * 10 + [35.0] * 20 + [25.0] * 10))
    assert kinds(events) == ["opened", "closed"]
    opened, closed = events
    assert opened.state.alert_id == closed.state.alert_id
    assert opened.state.since == T0 + timedelta(seconds=10)  # the condition began at the first hot reading
    assert opened.at == T0 + timedelta(seconds=15)  # ... and had lasted for_seconds = 5
    assert closed.at == T0 + timedelta(seconds=35)  # below 29.5 from second 30, for 5 s
    assert closed.state.peak == 35.0
    assert engine.states == {}


def test_a_value_hovering_at_the_threshold_does_not_flap() -> None:
    """Hysteresis: four minutes hovering around 30 °C give one alert, not dozens."""
    hovering = [29.6, 30.4, 29.8, 30.6, 29.7, 30.2, 30.3, 29.9] * 30  # four minutes either side of 30
    engine = AlertEngine(TEMPERATURE_ONLY)
    events = run(engine, temps([31.0] * 6 + hovering + [28.0] * 6))
    assert kinds(events) == ["opened", "closed"]


def test_a_short_excursion_never_opens() -> None:
    """Excursions shorter than for_seconds never open an alert and leave no state behind."""
    engine = AlertEngine(TEMPERATURE_ONLY)
    # above 30 for 5 readings = 4 s between first and last: shorter than for_seconds
    events = run(engine, temps([25.0, 31, 32, 33, 32, 31, 25.0] * 10))
    assert events == []
    assert engine.states == {}


def test_clearing_needs_clear_for_seconds_and_a_rebound_keeps_the_same_alert() -> None:
    """A dip shorter than clear_for_seconds does not close the alert: a rebound continues the same one."""
    engine = AlertEngine(TEMPERATURE_ONLY)
    events = run(engine, temps([33.0] * 6 + [29.0] * 3 + [33.0] * 3 + [29.0] * 3 + [33.0] + [28.0] * 6))
    assert kinds(events) == ["opened", "closed"]


def test_a_below_rule_mirrors_an_above_rule() -> None:
    """A `below` rule opens and closes like an `above` rule, and its peak is the lowest value."""
    rules = parse_rules(
        '[[rule]]\nname = "umidade_baixa"\nmetric = "umidade"\nbelow = 30.0\nclear_above = 32.0\nfor_seconds = 2\n',
        "test",
    )
    engine = AlertEngine(rules)
    humidity = [50.0] * 3 + [25.0, 24.0, 20.0, 29.0, 31.0, 29.5, 33.0, 50.0]
    readings = [Reading(0, SENSOR, T0 + timedelta(seconds=i), 25.0, h) for i, h in enumerate(humidity)]
    events = run(engine, readings, batch=2)
    assert kinds(events) == ["opened", "closed"]
    assert events[0].at == T0 + timedelta(seconds=5)
    assert events[1].state.peak == 20.0  # the worst value is the lowest one
    assert events[1].at == T0 + timedelta(seconds=9)


def test_sensors_are_independent() -> None:
    """One sensor's spike opens an alert for that sensor only."""
    engine = AlertEngine(TEMPERATURE_ONLY)
    mixed = sorted(temps([35.0] * 10) + temps([25.0] * 10, sensor=OTHER), key=lambda r: r[2])
    events = run(engine, mixed)
    assert [(e.kind, e.state.sensor_id) for e in events] == [("opened", SENSOR)]


def test_evaluation_changes_nothing_until_applied() -> None:
    """A batch whose transaction fails must leave the engine as PostgreSQL has it."""
    engine = AlertEngine(TEMPERATURE_ONLY)
    failed = engine.evaluate(summary_of(temps([35.0] * 10)))
    assert kinds(failed.events) == ["opened"]
    assert engine.states == {}
    retried = engine.evaluate(summary_of(temps([35.0] * 10)))
    engine.apply(retried)
    assert kinds(retried.events) == ["opened"]
    assert len(engine.open_alerts()) == 1


SILENCE = parse_rules('[[rule]]\nname = "sensor_silencioso"\nsilent_for_seconds = 60\n', "test")


def test_a_silent_sensor_opens_an_alert_on_the_partitions_clock_and_its_next_reading_closes_it() -> None:
    """Silence is measured on the partition's event-time clock (other sensors' readings move it);
    the silent sensor's next reading closes the alert."""
    engine = AlertEngine(SILENCE)
    both = sorted(temps([25.0] * 10) + temps([25.0] * 120, sensor=OTHER), key=lambda r: r[2])
    events = run(engine, both, batch=5)
    assert [(e.kind, e.state.sensor_id) for e in events] == [("opened", SENSOR)]
    assert events[0].at == T0 + timedelta(seconds=9 + 60)
    back = run(engine, temps([25.0], start=130))
    assert [(e.kind, e.state.sensor_id) for e in back] == [("closed", SENSOR)]


def test_silence_on_an_idle_partition_follows_the_clock_it_is_given() -> None:
    """On an idle partition silence follows the clock the consumer supplies, opening once."""
    engine = AlertEngine(SILENCE)
    run(engine, temps([25.0] * 3))
    last = T0 + timedelta(seconds=2)
    early = engine.evaluate_clock({0: last + timedelta(seconds=59)})
    engine.apply(early)
    assert early.events == []
    late = engine.evaluate_clock({0: last + timedelta(seconds=61)})
    engine.apply(late)
    assert kinds(late.events) == ["opened"]
    again = engine.evaluate_clock({0: last + timedelta(seconds=200)})
    assert again.events == []  # opens once


def test_a_replayed_backlog_does_not_look_silent() -> None:
    """After downtime the readings arrive late but their own clock has no gap."""
    engine = AlertEngine(SILENCE)
    both = sorted(temps([25.0] * 300) + temps([25.0] * 300, sensor=OTHER), key=lambda r: r[2])
    assert run(engine, both, batch=500) == []


def _reload(engine: AlertEngine) -> AlertEngine:
    """What a restarted replica builds from the stored states (and the newest readings)."""
    fresh = AlertEngine(engine.rules)
    fresh.reset([0], list(engine.states.values()), dict(engine.last_seen))
    return fresh


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(min_value=27.0, max_value=33.0, allow_nan=False), min_size=1, max_size=120),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=6),
    batch=st.integers(min_value=1, max_value=20),
)
def test_resuming_from_stored_state_gives_the_alerts_of_an_uninterrupted_run(
    values: list[float], cuts: list[int], batch: int
) -> None:
    """Restarting from the stored state at any cut points gives exactly the alerts of an uninterrupted run."""
    rules = load_rules(None)
    readings = temps(values)
    straight = run(AlertEngine(rules), readings, batch)
    engine = AlertEngine(rules)
    resumed: list[AlertEvent] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(readings)]:
        resumed += run(engine, readings[previous:cut], batch)
        engine = _reload(engine)
        previous = max(previous, cut)
    assert [(e.kind, e.state.rule, e.at) for e in resumed] == [(e.kind, e.state.rule, e.at) for e in straight]
    # and every episode opens before it closes, once
    opened = [e.state.alert_id for e in straight if e.kind == "opened"]
    closed = [e.state.alert_id for e in straight if e.kind == "closed"]
    assert len(set(opened)) == len(opened)
    assert closed == opened[: len(closed)]


def test_an_empty_evaluation_writes_nothing() -> None:
    """Readings that change no state produce nothing to write (no transaction work per batch)."""
    assert not Evaluation().writes_anything
    engine = AlertEngine(TEMPERATURE_ONLY)
    assert not engine.evaluate(summary_of(temps([25.0] * 50))).writes_anything


def test_a_reading_stamped_tomorrow_cannot_push_the_partition_clock_past_the_wall_clock() -> None:
    """One device stamped 23 h ahead (inside the accepted clock skew) among sensors reporting now:
    the partition's clock stays at the wall clock, so the others are not declared silent and the
    partition's silence detection is not blind until tomorrow."""
    engine = AlertEngine(SILENCE)
    now = datetime.now(UTC)
    fleet = [Reading(0, str(uuid.UUID(int=10 + i)), now - timedelta(seconds=1), 25.0, 50.0) for i in range(5)]
    engine.apply(engine.evaluate(summary_of(fleet)))
    ahead = engine.evaluate(summary_of([Reading(0, SENSOR, now + timedelta(hours=23), 25.0, 50.0)]))
    assert ahead.events == []
    assert ahead.clocks[0] <= datetime.now(UTC)
    engine.apply(ahead)
    assert engine.clocks[0] <= datetime.now(UTC)
    # and the clock still moves on with the wall clock: a sensor quiet for 61 s is silent
    later = engine.evaluate_clock({0: now + timedelta(seconds=61)})
    assert {e.state.sensor_id for e in later.events if e.kind == "opened"} == {
        str(uuid.UUID(int=10 + i)) for i in range(5)
    }


# ---------------------------------------------------------------------- fleets, storms
STORMY = parse_rules(
    '[[rule]]\nname = "sensor_silencioso"\nsilent_for_seconds = 60\nstorm_share = 0.2\nstorm_min_sensors = 100\n',
    "test",
)


def fleet(count: int, first: int = 1000) -> list[str]:
    return [str(uuid.UUID(int=first + i)) for i in range(count)]


def heard(engine: AlertEngine, sensors: Iterable[str], at: datetime, partition: int = 0) -> Evaluation:
    ev = engine.evaluate(summary_of([Reading(partition, s, at, 25.0, 50.0) for s in sensors]))
    engine.apply(ev)
    return ev


def sweep(engine: AlertEngine, at: datetime, partitions: Iterable[int] = (0,)) -> Evaluation:
    ev = engine.evaluate_clock(dict.fromkeys(partitions, at))
    engine.apply(ev)
    return ev


def opened(ev: Evaluation) -> list[AlertEvent]:
    return [e for e in ev.events if e.kind == "opened"]


def test_a_fleet_falling_silent_together_opens_one_storm_not_one_alert_per_sensor() -> None:
    """1,000 sensors, 900 fall silent together (a gateway died): one storm alert for the partition,
    holding 900 with the fleet's size - no per-sensor alert, no per-sensor state."""
    engine = AlertEngine(STORMY)
    sensors = fleet(1000)
    heard(engine, sensors, T0)
    heard(engine, sensors[900:], T0 + timedelta(seconds=50))
    ev = sweep(engine, T0 + timedelta(seconds=62))
    assert [(e.kind, e.state.rule, e.state.sensor_id, e.known) for e in ev.events] == [
        ("opened", "sensor_silencioso:storm", "00000000-0000-0000-0000-000000000000", 1000)
    ]
    (storm,) = list(engine.states.values())
    assert storm.is_storm
    assert storm.last_value == 900
    assert storm.peak == 900
    assert engine.storm_sensors(STORMY.silence[0]) == 900
    assert engine.open_counts() == {"sensor_silencioso:storm": 1}
    # the rest of the fleet going quiet joins the same storm
    ev = sweep(engine, T0 + timedelta(seconds=115))
    assert ev.events == []
    assert engine.states[(storm.sensor_id, storm.rule)].last_value == 1000


def test_the_storm_closes_when_the_fleet_is_back_and_the_sensors_still_silent_get_their_own_alerts() -> None:
    """Back from the outage, all but 30 report: the storm closes (fewer than half its share silent),
    and the 30 - silent on their own now - each open an alert of their own, stamped from their own
    last reading."""
    engine = AlertEngine(STORMY)
    sensors = fleet(1000)
    heard(engine, sensors, T0)
    sweep(engine, T0 + timedelta(seconds=61))
    back = T0 + timedelta(seconds=300)
    ev = heard(engine, sensors[30:], back)
    assert [(e.kind, e.state.rule) for e in ev.events] == [("closed", "sensor_silencioso:storm")]
    assert ev.events[0].state.last_value == 30
    ev = sweep(engine, back + timedelta(seconds=1))
    assert sorted(e.state.sensor_id for e in opened(ev)) == sorted(sensors[:30])
    assert {e.at for e in opened(ev)} == {T0 + timedelta(seconds=60)}
    assert engine.storm_sensors(STORMY.silence[0]) == 0


def test_sensors_silent_on_their_own_keep_their_own_alerts() -> None:
    """Three sensors of a thousand fall silent: three alerts, no storm - once the storm window
    (5 s past their deadline) has shown that no more fell silent with them; stamped with the deadline."""
    engine = AlertEngine(STORMY)
    sensors = fleet(1000)
    heard(engine, sensors, T0)
    heard(engine, sensors[3:], T0 + timedelta(seconds=40))
    assert opened(sweep(engine, T0 + timedelta(seconds=61))) == []
    ev = sweep(engine, T0 + timedelta(seconds=66))
    assert sorted(e.state.sensor_id for e in opened(ev)) == sorted(sensors[:3])
    assert {e.at for e in opened(ev)} == {T0 + timedelta(seconds=60)}
    assert all(e.state.rule == "sensor_silencioso" for e in ev.events)


def test_a_storm_survives_a_restart_as_one_alert() -> None:
    """A replica restarted during a storm (stored states and newest readings) keeps the one storm
    alert open, counts its sensors again, and opens no per-sensor alert."""
    engine = AlertEngine(STORMY)
    sensors = fleet(500)
    heard(engine, sensors, T0)
    sweep(engine, T0 + timedelta(seconds=61))
    fresh = _reload(engine)
    ev = sweep(fresh, T0 + timedelta(seconds=70))
    assert ev.events == []
    assert fresh.storm_sensors(STORMY.silence[0]) == 500
    assert fresh.open_counts() == {"sensor_silencioso:storm": 1}


def test_mass_silence_below_the_storm_size_opens_a_bounded_number_per_evaluation() -> None:
    """Without a storm (its minimum not reached) each evaluation opens at most its bound; the
    others stay due and open in the next evaluations - every one of them, once."""
    rules = parse_rules(
        '[[rule]]\nname = "sensor_silencioso"\nsilent_for_seconds = 60\nstorm_min_sensors = 100000\n', "test"
    )
    engine = AlertEngine(rules, max_silence_opens=100)
    sensors = fleet(250)
    heard(engine, sensors, T0)
    counts = [len(opened(sweep(engine, T0 + timedelta(seconds=61 + i)))) for i in range(4)]
    assert counts == [100, 100, 50, 0]
    assert len(engine.open_alerts()) == 250


def test_silence_found_by_an_evaluation_that_never_committed_is_found_again() -> None:
    """An evaluation whose transaction failed is not adopted: the next one finds the same silence."""
    engine = AlertEngine(SILENCE)
    heard(engine, [SENSOR, OTHER], T0)
    lost = engine.evaluate_clock({0: T0 + timedelta(seconds=61)})
    assert len(opened(lost)) == 2  # ... and never applied
    again = sweep(engine, T0 + timedelta(seconds=62))
    assert sorted(e.state.sensor_id for e in opened(again)) == sorted([SENSOR, OTHER])


def test_finding_silence_looks_at_the_sensors_due_not_at_the_fleet() -> None:
    """100,000 known sensors, all heard recently: a batch and a sweep take (almost) nothing from
    the silence wheel - what they look at is what is due, counted, not timed. (No storm can
    form under this rule, so no storm window delays the alerts.)"""
    engine = AlertEngine(
        parse_rules('[[rule]]\nname = "sensor_silencioso"\nsilent_for_seconds = 60\nstorm_min_sensors = 1000000\n', "t")
    )
    sensors = fleet(100_000)
    for start in range(0, len(sensors), 10_000):
        heard(engine, sensors[start : start + 10_000], T0 + timedelta(seconds=start // 10_000))
    wheel = engine._wheels[0]
    assert wheel.entries == 100_000
    before = wheel.taken
    heard(engine, sensors[:500], T0 + timedelta(seconds=30))
    sweep(engine, T0 + timedelta(seconds=31))
    assert wheel.taken - before == 0
    # when the first 10,000 are due, a sweep takes those (and puts back the 500 heard since)
    sweep(engine, T0 + timedelta(seconds=61))
    assert wheel.taken - before == 10_000
    assert len(engine.open_alerts()) == 5_000  # the bound per evaluation; the rest stay due
    sweep(engine, T0 + timedelta(seconds=61.5))  # the next 10,000 are due only from second 61 on
    assert len(engine.open_alerts()) == 9_500


def test_sensors_not_heard_for_the_look_back_are_forgotten_and_a_flood_of_new_ids_stays_bounded() -> None:
    """A device inventing 1,000 new ids a minute for an hour, with a 10-minute look-back: the
    engine never knows more than the ids of the last 10 minutes (and one minute's due), each
    forgotten id counted once; a sensor heard all along is never forgotten."""
    engine = AlertEngine(SILENCE, forget_after=timedelta(minutes=10))
    sizes = []
    for minute in range(60):
        at = T0 + timedelta(minutes=minute)
        heard(engine, [*fleet(1000, first=10_000 + 1000 * minute), SENSOR], at)
        sizes.append(len(engine.last_seen))
    assert max(sizes) <= 11 * 1000 + 1
    assert SENSOR in engine.last_seen
    assert engine.forgotten == 60 * 1000 - (len(engine.last_seen) - 1)
    assert sum(engine._known.values()) == len(engine.last_seen)


def test_a_forgotten_sensor_keeps_its_open_alert_until_it_is_heard_again() -> None:
    """Silent past the look-back: forgotten (as a restart would not reload it), its silence alert
    still open; its next reading closes that alert and makes it known again."""
    engine = AlertEngine(SILENCE, forget_after=timedelta(minutes=10))
    heard(engine, [SENSOR], T0)
    assert len(opened(sweep(engine, T0 + timedelta(seconds=61)))) == 1
    sweep(engine, T0 + timedelta(minutes=11))
    assert SENSOR not in engine.last_seen
    assert len(engine.open_alerts()) == 1
    ev = heard(engine, [SENSOR], T0 + timedelta(minutes=20))
    assert [(e.kind, e.state.sensor_id) for e in ev.events] == [("closed", SENSOR)]
    assert SENSOR in engine.last_seen
    assert engine.open_alerts() == []


def test_forgetting_is_bounded_per_evaluation_and_undone_when_the_evaluation_never_commits() -> None:
    """2,500 sensors due to be forgotten with a bound of 1,000: an evaluation that never commits
    forgets nothing, and the next ones forget 1,000, 1,000, 500."""
    engine = AlertEngine(TEMPERATURE_ONLY, forget_after=timedelta(minutes=10), max_forgotten=1000)
    heard(engine, fleet(2500), T0)
    later = T0 + timedelta(minutes=11)
    lost = engine.evaluate_clock({0: later})
    assert len(lost.forgotten) == 1000  # ... and never applied
    counts = [len(sweep(engine, later + timedelta(seconds=i)).forgotten) for i in range(4)]
    assert counts == [1000, 1000, 500, 0]
    assert len(engine.last_seen) == 0


def test_a_storm_outliving_the_look_back_closes_as_its_sensors_are_forgotten_as_after_a_restart() -> None:
    """900 of 1,000 silent past a 10-minute look-back: forgotten, so the storm (which a restarted
    replica could not count either) closes, holding none; the 100 still reporting stay known."""
    engine = AlertEngine(STORMY, forget_after=timedelta(minutes=10))
    sensors = fleet(1000)
    heard(engine, sensors, T0)
    events: list[AlertEvent] = []
    for minute in range(1, 13):
        events += heard(engine, sensors[900:], T0 + timedelta(minutes=minute, seconds=1)).events
        if minute == 1:
            assert engine.open_counts() == {"sensor_silencioso:storm": 1}
    assert [(e.kind, e.state.rule, e.state.last_value) for e in events] == [
        ("opened", "sensor_silencioso:storm", 900),
        ("closed", "sensor_silencioso:storm", 0),
    ]
    assert engine.open_counts() == {}
    assert len(engine.last_seen) == 100
    assert engine.storm_sensors(STORMY.silence[0]) == 0


def test_a_fleet_whose_last_readings_spread_over_seconds_is_still_one_storm() -> None:
    """A gateway of 540 sensors reporting about once a second dies: their last readings spread
    over two seconds, so no single evaluation finds 100 silent on any of its three partitions
    (90 + 90 each) - the storm window counts those falling silent within 5 s of each other
    together: one storm per partition holding all 180, no alert of their own."""
    engine = AlertEngine(STORMY)
    sensors = fleet(540)
    for partition in range(3):
        own = sensors[partition * 180 : (partition + 1) * 180]
        heard(engine, own[:90], T0, partition)
        heard(engine, own[90:], T0 + timedelta(seconds=1.5), partition)
    events: list[AlertEvent] = []
    for tick in range(60, 70):
        events += sweep(engine, T0 + timedelta(seconds=tick + 0.1), range(3)).events
    assert sorted((e.kind, e.state.rule, e.state.partition, e.state.last_value) for e in events) == [
        ("opened", "sensor_silencioso:storm", partition, 180.0) for partition in range(3)
    ]
    assert engine.storm_sensors(STORMY.silence[0]) == 540


def test_an_old_reading_sent_again_does_not_make_a_sensor_look_silent_earlier() -> None:
    """Heard at +50 s, then a gateway re-sends its reading of +0 s: the sensor was still heard at
    +50, so at +61 s it is not silent (its last heard never moves backwards)."""
    engine = AlertEngine(SILENCE)
    heard(engine, [SENSOR, OTHER], T0)
    heard(engine, [SENSOR, OTHER], T0 + timedelta(seconds=50))
    heard(engine, [SENSOR], T0)
    assert engine.last_seen[SENSOR][1] == T0 + timedelta(seconds=50)
    assert opened(sweep(engine, T0 + timedelta(seconds=61))) == []


def test_two_wheel_entries_of_one_sensor_open_one_alert() -> None:
    """A stale silence-wheel entry beside a fresh one (a sensor forgotten, then heard again before
    the stale entry was taken): both fall due together, one alert opens."""
    engine = AlertEngine(SILENCE)
    heard(engine, [SENSOR], T0)
    engine._wheels[0].push(0, to_micros(T0) + 60_000_000, SENSOR)  # the stale twin
    ev = sweep(engine, T0 + timedelta(seconds=61))
    assert [e.state.sensor_id for e in opened(ev)] == [SENSOR]
