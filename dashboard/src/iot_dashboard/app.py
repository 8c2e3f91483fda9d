"""The Streamlit page. Run it with ``iot-dashboard`` (or ``make dashboard``), not directly.

Everything below the sidebar lives in one fragment that re-runs every
``DASHBOARD_REFRESH_SECONDS``: the page updates in place, without a reload, and a slow or
failing database shows as a message on the page instead of a blank screen.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import altair as alt
import pandas as pd
import psycopg2
import psycopg2.extensions
import psycopg2.pool
import streamlit as st
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from iot_common.logging import configure_logging, get_logger
from iot_common.postgres import connect_kwargs
from iot_common.settings import KafkaSettings, ObservabilitySettings, PostgresSettings, load_settings
from iot_dashboard import queries as q
from iot_dashboard.metrics import LOGINS, REFRESHES
from iot_dashboard.settings import MAX_PASSWORD_LENGTH, WINDOWS, DashboardSettings

log = get_logger("iot_dashboard")

SEVERITY_MARK = {"critical": "CRITICAL", "warning": "warning", "info": "info"}


@dataclass
class Runtime:
    """Process-wide resources, created once per server process (st.cache_resource)."""

    dashboard: DashboardSettings
    postgres: PostgresSettings
    kafka: KafkaSettings | None  # None: no Kafka access (DASHBOARD_LAG_FROM_KAFKA=false)
    pool: psycopg2.pool.ThreadedConnectionPool | None = None
    kafka_client: KafkaConsumer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def connection(self) -> psycopg2.extensions.connection:
        with self.lock:
            if self.pool is None:
                kwargs = connect_kwargs(self.postgres, application_name="iot-dashboard")
                self.pool = psycopg2.pool.ThreadedConnectionPool(1, 4, **kwargs)
            conn: psycopg2.extensions.connection = self.pool.getconn()
        conn.set_session(readonly=True, autocommit=True)
        return conn

    def release(self, conn: psycopg2.extensions.connection, broken: bool = False) -> None:
        with self.lock:
            if self.pool is not None:
                self.pool.putconn(conn, close=broken or bool(conn.closed))

    def end_offsets(self) -> dict[int, int] | None:
        """Kafka's end offset per partition of the readings topic, None when Kafka does not answer."""
        if self.kafka is None:
            return None
        with self.lock:
            try:
                if self.kafka_client is None:
                    options = self.kafka.client_options()
                    options["client_id"] = f"{self.kafka.client_id}-dashboard"
                    self.kafka_client = KafkaConsumer(enable_auto_commit=False, **options)
                client = self.kafka_client
                partitions = [
                    TopicPartition(self.kafka.topic, p) for p in client.partitions_for_topic(self.kafka.topic) or ()
                ]
                ends = client.end_offsets(partitions, timeout_ms=3_000) if partitions else {}
                return {tp.partition: int(offset) for tp, offset in ends.items()}
            except (KafkaError, ValueError, OSError) as exc:
                log.warning("kafka_unavailable", error=repr(exc))
                if self.kafka_client is not None:
                    with contextlib.suppress(KafkaError):
                        self.kafka_client.close()
                self.kafka_client = None
                return None


@st.cache_resource
def runtime() -> Runtime:
    """Settings were validated by the CLI before Streamlit started (in this process, with the
    metrics server already up); read them again here."""
    observability = load_settings(ObservabilitySettings)
    configure_logging(observability.log_level, observability.log_format, service="iot-dashboard")
    dashboard = load_settings(DashboardSettings)
    kafka = load_settings(KafkaSettings) if dashboard.lag_from_kafka else None
    rt = Runtime(dashboard, load_settings(PostgresSettings), kafka)
    log.info("dashboard_started", database=rt.postgres.describe(), refresh_seconds=rt.dashboard.refresh_seconds)
    return rt


LATEST_SHOWN = 50  # rows of "latest reading per sensor"
OPEN_ALERTS_SHOWN = 100  # rows of "open alerts" (storms first: one stands for many sensors)
SENSORS_FOUND = 50  # sensors the picker offers per search


def short(sensor_id: str) -> str:
    return sensor_id[:8]


def is_storm(rule: str) -> bool:
    return rule.endswith(":storm")


def ago(stamp: Any, now: datetime) -> str:
    if stamp is None or pd.isna(stamp):
        return "-"
    seconds = max(0.0, (now - pd.Timestamp(stamp).to_pydatetime()).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def clock(stamp: Any) -> str:
    if stamp is None or pd.isna(stamp):
        return "-"
    return pd.Timestamp(stamp).tz_convert("UTC").strftime("%H:%M:%S")


AXIS_FORMATS = {"raw": "%H:%M:%S", "minute": "%H:%M", "hour": "%d %b %H:%M"}


def line_chart(
    data: pd.DataFrame, band: pd.DataFrame, metric: str, title: str, limits: list[float], axis_format: str
) -> alt.LayerChart:
    """One line per chosen sensor over the whole fleet's band (lowest to highest, dashed mean),
    with the alert thresholds as dashed red lines."""
    x = alt.X("t:T", title="UTC", axis=alt.Axis(format=axis_format))
    layers: list[alt.Chart] = []
    if not band.empty:
        layers.append(
            alt.Chart(band)
            .mark_area(opacity=0.18, color="#7f7f7f")
            .encode(x=x, y=alt.Y(f"{metric}_min:Q", title=title, scale=alt.Scale(zero=False)), y2=f"{metric}_max:Q")
        )
        layers.append(alt.Chart(band).mark_line(color="#7f7f7f", strokeDash=[2, 2]).encode(x=x, y=alt.Y(f"{metric}:Q")))
    layers.append(
        alt.Chart(data)
        .mark_line(interpolate="monotone")
        .encode(
            x=x,
            y=alt.Y(f"{metric}:Q", title=title, scale=alt.Scale(zero=False)),
            color=alt.Color("sensor:N", title="sensor"),
            tooltip=["sensor:N", alt.Tooltip("t:T", format=axis_format), alt.Tooltip(f"{metric}:Q", format=".2f")],
        )
    )
    layers.append(
        alt.Chart(pd.DataFrame({"limit": limits})).mark_rule(color="#d62728", strokeDash=[6, 4]).encode(y="limit:Q")
    )
    return alt.LayerChart(layer=layers)


def alert_table(alerts: pd.DataFrame, extra: dict[str, pd.Series]) -> pd.DataFrame:
    """The columns every alert list shows, then ``extra``, indexed by the short sensor id."""
    columns: dict[str, pd.Series] = {
        "sensor": pd.Series(
            [
                f"partition {partition}" if is_storm(rule) else short(sensor)
                for sensor, rule, partition in zip(
                    alerts["sensor_id"], alerts["rule"], alerts["kafka_partition"], strict=True
                )
            ],
            index=alerts.index,
        ),
        "rule": alerts["rule"],
        "severity": alerts["severity"].map(lambda s: SEVERITY_MARK.get(s, s)),
        "opened (UTC)": alerts["opened_at"].map(clock),
        "peak": alerts["peak_value"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}"),
    }
    return pd.DataFrame({**columns, **extra}).set_index("sensor")


def render(rt: Runtime, window_name: str, chosen: list[str]) -> None:
    settings = rt.dashboard
    window = timedelta(seconds=WINDOWS[window_name])
    now = datetime.now(UTC)
    try:
        conn = rt.connection()
    except psycopg2.Error as exc:
        REFRESHES.labels("database_unavailable").inc()
        st.error(f"PostgreSQL unreachable at {rt.postgres.describe()}: {str(exc).strip()}")
        return
    broken = False
    try:
        latest = q.latest_per_sensor(conn, timedelta(hours=1), LATEST_SHOWN)
        heard = q.sensors_heard(conn, timedelta(hours=1))
        opened = q.open_alerts(conn, OPEN_ALERTS_SHOWN)
        open_count = len(opened) if len(opened) < OPEN_ALERTS_SHOWN else q.open_alert_count(conn)
        recent = q.recent_alerts(conn, timedelta(hours=24))
        flow = q.throughput(conn, settings.consumer_group)
        dead = q.dead_letters_by_reason(conn, window)
        positions = q.stored_positions(conn, settings.consumer_group)
        alerting = set(opened["sensor_id"]) if not opened.empty else set()
        if chosen:
            sensors = chosen
        else:  # open alerts first, then the sensors furthest from the fleet's mean, up to max_sensors
            own = sorted(s for s, rule in zip(opened["sensor_id"], opened["rule"], strict=True) if not is_storm(rule))
            ranked = [*own, *q.most_deviating(conn, timedelta(hours=1), settings.max_sensors)]
            sensors = list(dict.fromkeys(ranked))[: settings.max_sensors]
        source = q.source_for(window)
        bucket = q.bucket_for(window, source=source)
        data = q.series(conn, window, sensors, bucket)
        band = q.fleet_band(conn, window, bucket)
    except psycopg2.Error as exc:
        broken = True
        REFRESHES.labels("query_failed").inc()
        log.warning("query_failed", error=str(exc).strip())
        st.error(f"Query failed: {str(exc).strip()}")
        return
    finally:
        rt.release(conn, broken)
    ends = rt.end_offsets()
    REFRESHES.labels("ok").inc()

    # ------------------------------------------------------------------ headline
    lag: int | None = None
    if ends is not None and not positions.empty:
        stored = {int(p): int(o) for p, o in zip(positions["partition"], positions["next_offset"], strict=True)}
        lag = sum(max(0, end - stored.get(partition, 0)) for partition, end in ends.items())
    cols = st.columns(5)
    cols[0].metric(
        "Sensors reporting (1 min)",
        str(flow.sensors_reporting),
        help="Sensors with a reading in the last minute (≈: estimated from the fleet rollup, beyond 100,000 readings)",
    )
    cols[1].metric("Readings / s", f"{flow.readings_per_second:,.1f}", help="Over the last minute, by reading time")
    cols[2].metric(
        "Consumer lag",
        "n/a" if lag is None else f"{lag:,}",
        help=f"Messages in Kafka not yet stored by group {settings.consumer_group!r}",
    )
    cols[3].metric(
        "Dead letters", f"{int(dead['messages'].sum()) if not dead.empty else 0:,}", help=f"In the last {window_name}"
    )
    cols[4].metric("Open alerts", f"{open_count:,}")
    freshness = (
        "no batch stored yet"
        if flow.seconds_since_last_write is None
        else f"last batch stored {flow.seconds_since_last_write:.0f} s ago"
    )
    st.caption(
        f"Updated {now:%H:%M:%S} UTC · {freshness} · every {settings.refresh_seconds:g} s · {rt.postgres.describe()}"
    )

    # ------------------------------------------------------------------ charts
    st.subheader(f"Readings · last {window_name}")
    st.caption(
        f"{len(sensors)} sensors drawn ({'chosen' if chosen else 'open alerts first, then furthest from the mean'})"
        f" from {q.SOURCE_NAMES[source]}, one point per {q.bucket_for(window, source=source)}"
        f" · grey band: all {heard} sensors heard from, lowest to highest, dashed mean"
    )
    if data.empty:
        st.info("No readings in this window yet.")
    else:
        data = data.assign(sensor=data["sensor_id"].map(short), t=pd.to_datetime(data["t"], utc=True))
        band = band.assign(t=pd.to_datetime(band["t"], utc=True))
        axis = AXIS_FORMATS[source]
        left, right = st.columns(2)
        left.altair_chart(
            line_chart(data, band, "temperatura", "Temperatura (°C)", [settings.temperature_limit], axis),
            width="stretch",
        )
        right.altair_chart(
            line_chart(data, band, "umidade", "Umidade (%)", [settings.humidity_min, settings.humidity_max], axis),
            width="stretch",
        )

    # ------------------------------------------------------------------ alerts
    st.subheader(f"Open alerts ({open_count:,})")
    if opened.empty:
        st.success("No open alert.")
    else:
        storms = opened[opened["rule"].map(is_storm)]
        for partition, condition, started in zip(
            storms["kafka_partition"], storms["condition"], storms["started_at"], strict=True
        ):
            st.error(
                f"Silence storm on partition {partition}: {str(condition).removeprefix('storm: ')}"
                f" - since {clock(started)} UTC (one alert for all of them; see docs/ALERTS.md)"
            )
        if open_count > len(opened):
            st.caption(f"The {len(opened)} most severe and oldest of {open_count:,} shown.")
        st.table(
            alert_table(
                opened,
                {"for": opened["opened_at"].map(lambda s: ago(s, now)), "condition": opened["condition"]},
            )
        )
    st.subheader("Recently closed alerts (24 h)")
    if recent.empty:
        st.caption("None.")
    else:
        st.table(alert_table(recent, {"closed (UTC)": recent["closed_at"].map(clock)}))

    # ------------------------------------------------------------------ latest per sensor, health
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Latest reading per sensor")
        if latest.empty:
            st.caption("No sensor heard from in the last hour.")
        else:
            shown = latest.sort_values("timestamp", ascending=False)
            left.table(
                pd.DataFrame(
                    {
                        "sensor": shown["sensor_id"].map(short),
                        "at (UTC)": shown["timestamp"].map(clock),
                        "age": shown["timestamp"].map(lambda s: ago(s, now)),
                        "temperatura °C": shown["temperatura"].map(lambda v: f"{v:.2f}"),
                        "umidade %": shown["umidade"].map(lambda v: f"{v:.1f}"),
                        "status": shown["sensor_id"].map(lambda s: "ALERT" if s in alerting else "ok"),
                    }
                ).set_index("sensor")
            )
            if heard.sensors > len(shown):
                more = heard.sensors - len(shown)
                st.caption(f"{more:,} more sensors not shown." if heard.exact else f"About {more:,} more not shown.")
    with right:
        st.subheader("Pipeline health")
        topics = ", ".join(sorted(set(positions["topic"]))) if not positions.empty else "-"
        st.caption(f"Consumer group {settings.consumer_group!r} on {topics}: stored position vs Kafka's end")
        if positions.empty:
            st.caption(f"No stored positions for consumer group {settings.consumer_group!r} yet.")
        else:
            table = positions.assign(
                kafka_end=positions["partition"].map(lambda p: "-" if ends is None else ends.get(int(p), "-")),
                lag=positions.apply(
                    lambda r: "-" if ends is None else max(0, ends.get(int(r["partition"]), 0) - int(r["next_offset"])),
                    axis=1,
                ),
                updated=positions["updated_at"].map(lambda s: ago(s, now)),
                partition=positions["partition"].map(str),
            )[["partition", "next_offset", "kafka_end", "lag", "updated"]]
            st.table(table.set_index("partition"))
        st.markdown(f"**Dead letters · last {window_name}**")
        if dead.empty:
            st.caption("None.")
        else:
            st.table(dead.assign(latest=dead["latest"].map(lambda s: ago(s, now))).set_index("reason"))


# A refused password costs the next guess this long (a session's script runs one at a time).
REFUSED_LOGIN_DELAY_S = 1.0


def signed_in(settings: DashboardSettings) -> bool:
    """Whether this browser session may see the page: no password is configured, or it gave the
    right one. Until then only the sign-in form is drawn - not one query has run."""
    if settings.password is None or st.session_state.get("signed_in"):
        return True
    with st.form("sign-in"):
        st.subheader("iot-monitor: sign in")
        # bounded: a guess of megabytes is refused by the form, not compared
        given = st.text_input("Password", type="password", max_chars=MAX_PASSWORD_LENGTH)
        submitted = st.form_submit_button("Sign in")
    if submitted:
        expected = settings.password.get_secret_value().encode()
        if hmac.compare_digest(given.encode(), expected):
            LOGINS.labels("accepted").inc()
            log.info("login_accepted")
            st.session_state["signed_in"] = True
            st.rerun()
        LOGINS.labels("refused").inc()
        log.warning("login_refused")
        time.sleep(REFUSED_LOGIN_DELAY_S)
        st.error("Wrong password.")
    return False


def main() -> None:
    st.set_page_config(page_title="iot-monitor", layout="wide")
    rt = runtime()
    settings = rt.dashboard
    if not signed_in(settings):
        return
    st.title("iot-monitor")
    with st.sidebar:
        st.header("View")
        names = list(WINDOWS)
        window_name = st.selectbox("Window", names, index=names.index(settings.window))
        # the fleet may be a million sensors: the picker searches, it never lists them all
        wanted = st.text_input("Find sensors (id prefix)", max_chars=36, placeholder="e.g. 3f2a")
        previous = st.session_state.get("sensors", [])
        chosen = st.multiselect(
            "Sensors (empty: alerting first, then the others)",
            options=list(dict.fromkeys([*previous, *_matching_sensors(rt, wanted)])),
            format_func=short,
            key="sensors",
        )
        st.caption(f"Refreshes every {settings.refresh_seconds:g} s. Read-only role {rt.postgres.user!r}.")

    @st.fragment(run_every=timedelta(seconds=settings.refresh_seconds))
    def live() -> None:
        render(rt, window_name, chosen)

    live()


def _matching_sensors(rt: Runtime, prefix: str) -> list[str]:
    """At most SENSORS_FOUND sensors heard from today whose id starts with ``prefix``."""
    if q.sensor_id_range(prefix) is None:
        return []
    try:
        conn = rt.connection()
    except psycopg2.Error:
        return []
    broken = False
    try:
        return q.find_sensors(conn, prefix, limit=SENSORS_FOUND)
    except psycopg2.Error:
        broken = True
        return []
    finally:
        rt.release(conn, broken)


main()
