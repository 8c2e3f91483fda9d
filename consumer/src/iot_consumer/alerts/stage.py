"""Alerting as a stage of the consumer's batch: evaluate, write in the batch's transaction,
adopt after commit, publish after commit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.extensions

from iot_common.errors import summary
from iot_common.logging import get_logger
from iot_common.postgres import CONNECTION_ERRORS
from iot_consumer import metrics as m
from iot_consumer.alerts.engine import AlertEngine, Evaluation, storm_rule_name
from iot_consumer.alerts.outbox import OutboxPublisher
from iot_consumer.alerts.rules import RuleSet
from iot_consumer.alerts.store import load_last_seen, load_states, write_evaluation
from iot_consumer.summary import BatchSummary

log = get_logger(__name__)


class AlertStage:
    def __init__(
        self,
        rules: RuleSet,
        group: str,
        alerts_topic: str,
        publisher: OutboxPublisher | None = None,
        silence_lookback: timedelta = timedelta(hours=1),
    ) -> None:
        self.rules = rules
        self.group = group
        self.alerts_topic = alerts_topic
        self.publisher = publisher
        longest = max((rule.silent_for_seconds for rule in rules.silence), default=0.0)
        self.silence_lookback = max(silence_lookback, timedelta(seconds=10 * longest))
        # a running replica forgets what a restarted one would not reload
        self.engine = AlertEngine(rules, forget_after=self.silence_lookback)
        for kind in ("batch", "idle"):
            m.ALERT_EVALUATION_SECONDS.labels(kind)
        self._series = [(rule.name, rule.severity) for rule in rules.all]
        self._series += [(storm_rule_name(rule), rule.severity) for rule in rules.silence]
        for name, severity in self._series:  # export every series at 0, so absent() and rate() work from the start
            m.ALERTS_OPENED.labels(name, severity)
            m.ALERTS_CLOSED.labels(name, severity)
            m.ALERTS_OPEN.labels(name, severity).set(0)
        for rule in rules.silence:
            m.ALERT_STORM_SENSORS.labels(rule.name).set(0)

    def load(self, conn: psycopg2.extensions.connection, partitions: list[int]) -> None:
        """Adopt the stored state of ``partitions`` (after every rebalance or failure)."""
        with conn.cursor() as cur:
            states = load_states(cur, self.group, partitions)
            last_seen = load_last_seen(cur, partitions, self.silence_lookback) if self.rules.silence else {}
        conn.rollback()
        self.engine.reset(partitions, states, last_seen)
        self._export_open()
        m.ALERT_SENSORS_KNOWN.set(len(self.engine.last_seen))
        log.info("alert_state_loaded", partitions=partitions, states=len(states), sensors_known=len(last_seen))

    def evaluate(self, batch: BatchSummary) -> Evaluation:
        """What the batch's readings change (written in the batch's transaction, adopted after)."""
        with m.ALERT_EVALUATION_SECONDS.labels("batch").time():
            return self.engine.evaluate(batch)

    def evaluate_idle(self, fence: dict[int, int], grace_s: float) -> Evaluation | None:
        """Silence needs a clock that moves without readings: for partitions that are fully
        consumed (``fence``: partition → its stored position), the wall clock less ``grace_s``
        stands in for the readings' clock. Returns what must be written (fenced on ``fence``),
        or None when nothing needs writing (then it is adopted at once)."""
        if not self.rules.silence or not fence:
            return None
        wall = datetime.now(UTC) - timedelta(seconds=grace_s)
        with m.ALERT_EVALUATION_SECONDS.labels("idle").time():
            evaluation = self.engine.evaluate_clock(dict.fromkeys(fence, wall))
        if not evaluation.writes_anything:
            self.engine.apply(evaluation)
            self._count_known(evaluation)
            return None
        return evaluation

    def write(self, cur: psycopg2.extensions.cursor, evaluation: Evaluation) -> bool:
        """Write inside the caller's transaction. A refusal (a bug, or a hand-edited table) must
        not stop readings from flowing: roll back to a savepoint, count it, keep the old state."""
        if not evaluation.writes_anything:
            return True
        cur.execute("SAVEPOINT alerts")
        try:
            write_evaluation(cur, self.group, self.alerts_topic, evaluation, self.rules)
        except CONNECTION_ERRORS:
            raise
        except psycopg2.Error as exc:
            cur.execute("ROLLBACK TO SAVEPOINT alerts")
            m.ALERT_WRITE_ERRORS.inc()
            log.error("alert_write_failed", error=summary(exc), events=len(evaluation.events))
            return False
        cur.execute("RELEASE SAVEPOINT alerts")
        return True

    def committed(self, evaluation: Evaluation) -> None:
        """The transaction holding ``evaluation`` committed: adopt it and tell the world."""
        self.engine.apply(evaluation)
        self._count_known(evaluation)
        if not evaluation.events:
            return
        for event in evaluation.events:
            counter = m.ALERTS_OPENED if event.kind == "opened" else m.ALERTS_CLOSED
            counter.labels(event.state.rule, event.severity).inc()
            state = event.state
            said = {"alert_id": str(state.alert_id), "rule": state.rule, "severity": event.severity}
            if state.is_storm:  # one line for the partition's storm, with its counts
                log.warning(
                    f"alert_storm_{event.kind}",
                    **said,
                    at=event.at.isoformat(),
                    partition=state.partition,
                    sensors_silent=int(state.last_value or 0),
                    sensors_known=event.known,
                )
            else:
                log.info(
                    f"alert_{event.kind}", **said, at=event.at.isoformat(), sensor_id=state.sensor_id, peak=state.peak
                )
        self._export_open()
        if self.publisher is not None:
            self.publisher.notify()

    def _count_known(self, evaluation: Evaluation) -> None:
        m.ALERT_SENSORS_KNOWN.set(len(self.engine.last_seen))
        if evaluation.forgotten:
            m.ALERT_SENSORS_FORGOTTEN.inc(len(evaluation.forgotten))
            log.info(
                "sensors_forgotten",
                sensors=len(evaluation.forgotten),
                known=len(self.engine.last_seen),
                after_s=self.silence_lookback.total_seconds(),
            )

    def _export_open(self) -> None:
        counts = self.engine.open_counts()
        for name, severity in self._series:
            m.ALERTS_OPEN.labels(name, severity).set(counts.get(name, 0))
        for rule in self.rules.silence:
            m.ALERT_STORM_SENSORS.labels(rule.name).set(self.engine.storm_sensors(rule))
