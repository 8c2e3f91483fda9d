"""The dashboard in a real headless Chromium, against live data from the real pipeline.

A producer spikes one sensor above 30 °C while a consumer stores readings and alerts; the
dashboard (as the read-only role) must show both charts with every sensor, the open alert in
its list, and - without a reload - the alert moving to "recently closed" once the sensor cools
down. The screenshot taken while the alert is open is .artifacts/dashboard.png (copy it to
docs/dashboard.png, shown in the README, when the page changes).

Needs /usr/bin/chromium (Debian's package; `.ci/run` installs it). Without it the module is
skipped, unless IOT_REQUIRE_BROWSER_TESTS=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg2.extensions
import pytest
import streamlit as st
from playwright.sync_api import expect, sync_playwright
from streamlit.testing.v1 import AppTest

import iot_dashboard
from iot_consumer.migrations import migrate
from iot_dashboard.metrics import LOGINS, QUERY_SECONDS
from tests.helpers import ARTIFACTS, Service, Stack, free_port, run_cli, scalar, send_raw, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's own probe runs it: without the networking switches Chromium keeps trying
# to reach Google's services, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ARTIFACTS / "dashboard.png"
PASSWORD = f"test-{uuid.uuid4().hex}"  # the page's sign-in password (DASHBOARD_PASSWORD)


def http_ok(url: str) -> bool:
    """True when the URL answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("IOT_REQUIRE_BROWSER_TESTS") == "1":
            pytest.fail(f"IOT_REQUIRE_BROWSER_TESTS=1 but there is no Chromium at {CHROMIUM}")
        pytest.skip("no Chromium (apt-get install chromium)")


def test_the_dashboard_shows_live_charts_and_the_alert_as_it_opens_and_closes(
    stack: Stack,
    env: dict[str, str],
    alerts_topic: str,
    db: psycopg2.extensions.connection,
    tmp_path: Path,
) -> None:
    """In headless Chromium against the live pipeline: both charts list every sensor, the spike's
    alert appears as open (sensor, rule, severity) and then, without a reload, as recently closed;
    a week of backlog shows in the 7-day window (hourly rollups); with 1,000 sensors it draws
    twelve against the fleet's band; when those sensors fall silent together the page shows one
    storm per partition, not an alert per sensor; the page raises no error."""
    pipeline_env = {**env, "ALERTS_TOPIC": alerts_topic}
    consumer = Service(["iot-consumer", "run"], pipeline_env, tmp_path / "consumer.log")
    # 5 sensors, 4 readings/s each; the first reads ~33 °C from its 8th reading for 30 s.
    producer = Service(
        [
            "iot-producer",
            "--sensors",
            "5",
            "--interval",
            "0.25",
            "--count",
            str(5 * 240),
            "--seed",
            "21",
            "--temperature-max",
            "28",
            "--spike",
            "8:120",
        ],
        pipeline_env,
        tmp_path / "producer.log",
    )
    port = free_port()
    dashboard_env = {
        **env,
        **stack.role_env("iot_dashboard"),
        "DASHBOARD_PORT": str(port),
        "DASHBOARD_HOST": "127.0.0.1",
        "DASHBOARD_REFRESH_SECONDS": "1",
        "DASHBOARD_WINDOW": "5 min",
        "DASHBOARD_CONSUMER_GROUP": env["CONSUMER_GROUP"],
        "DASHBOARD_PASSWORD": PASSWORD,
    }
    dashboard = Service(["iot-dashboard"], dashboard_env, tmp_path / "dashboard.log")
    try:
        wait_until(lambda: scalar(db, "SELECT to_regclass('alertas') IS NOT NULL") is True, 60, "the schema")
        wait_until(lambda: scalar(db, "SELECT count(*) FROM alertas WHERE closed_at IS NULL") == 1, 60, "the alert")
        sensor = str(producer.event("producer_started")["spike"]["sensor_id"])
        short = sensor[:8]
        others = [
            row
            for row in (scalar(db, "SELECT array_agg(DISTINCT sensor_id::text) FROM sensores") or [])
            if row != sensor
        ]
        assert len(others) == 4

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1500})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
            # Nothing but the sign-in form until the password is given.
            password = page.get_by_label("Password", exact=True)
            expect(password).to_be_visible(timeout=60_000)
            expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(0)
            password.fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()

            # Both charts render, one line per sensor: the legend names every sensor.
            charts = page.locator('[data-testid="stVegaLiteChart"]')
            expect(charts).to_have_count(2, timeout=60_000)
            for index, axis in enumerate(("Temperatura (°C)", "Umidade (%)")):
                chart = charts.nth(index)
                expect(chart).to_contain_text(axis, timeout=30_000)
                for sensor_id in [sensor, *others]:
                    expect(chart).to_contain_text(sensor_id[:8])
                box = chart.bounding_box()
                assert box is not None
                assert box["width"] > 300
                assert box["height"] > 200

            # The open alert, in the list and in the headline.
            expect(page.get_by_text("Open alerts (1)")).to_be_visible(timeout=30_000)
            open_list = page.locator('[data-testid="stTable"]').first
            expect(open_list).to_contain_text(short)
            expect(open_list).to_contain_text("temperatura_alta")
            expect(open_list).to_contain_text("CRITICAL")
            expect(open_list).to_contain_text("temperatura > 30 for 5 s")
            latest = page.locator('[data-testid="stTable"]', has_text="temperatura °C")
            expect(latest).to_contain_text("ALERT")
            for sensor_id in others:
                expect(latest).to_contain_text(sensor_id[:8])
            page.wait_for_timeout(1500)  # let the charts finish their transition for the picture
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # No reload from here on: the page refreshes itself.
            wait_until(lambda: scalar(db, "SELECT count(*) FROM alertas WHERE closed_at IS NOT NULL") == 1, 90, "close")
            expect(page.get_by_text("Open alerts (0)")).to_be_visible(timeout=30_000)
            closed_list = page.locator('[data-testid="stTable"]', has_text="closed (UTC)")
            expect(closed_list).to_contain_text(short)
            expect(closed_list).to_contain_text("temperatura_alta")

            # A week of history (a gateway's backlog: one reading per sensor per hour). The 7-day
            # window draws it from the hourly rollups: every sensor, with the fleet's band.
            now = datetime.now(UTC)
            backlog = [
                (
                    sensor_id.encode(),
                    orjson.dumps(
                        {
                            "sensor_id": sensor_id,
                            "timestamp": (now - timedelta(hours=hours)).isoformat(),
                            "temperatura": 24.0 + index,
                            "umidade": 50.0,
                        }
                    ),
                )
                for index, sensor_id in enumerate([sensor, *others])
                for hours in range(25, 7 * 24)
            ]
            send_raw(stack.bootstrap, env["KAFKA_TOPIC"], backlog)
            week_old = "SELECT count(*) FROM sensores_hora WHERE bucket < now() - interval '1 day'"
            wait_until(lambda: scalar(db, week_old) == len(backlog), 60, "the week's backlog in the hourly rollup")
            page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').click()
            page.get_by_role("option", name="7 d").click()
            expect(page.get_by_text("from hourly rollups")).to_be_visible(timeout=30_000)
            expect(charts).to_have_count(2, timeout=30_000)
            for sensor_id in [sensor, *others]:
                expect(charts.nth(0)).to_contain_text(sensor_id[:8])
            page.screenshot(path=str(ARTIFACTS / "dashboard-7d.png"), full_page=True)

            # A fleet of 1,000: 995 more sensors report once. The page stays readable: twelve
            # lines at most (open alerts first, then furthest from the mean), the whole fleet as
            # the band, and "latest reading" capped at 50 with the rest counted.
            fleet = [str(uuid.uuid4()) for _ in range(995)]
            reported = datetime.now(UTC).isoformat()  # one gateway's batch: one instant for all
            send_raw(
                stack.bootstrap,
                env["KAFKA_TOPIC"],
                [
                    (
                        sensor_id.encode(),
                        orjson.dumps(
                            {
                                "sensor_id": sensor_id,
                                "timestamp": reported,
                                "temperatura": 24.0 + (i % 10) / 10,
                                "umidade": 50.0,
                            }
                        ),
                    )
                    for i, sensor_id in enumerate(fleet)
                ],
            )
            recent = "SELECT count(DISTINCT sensor_id) FROM sensores WHERE timestamp > now() - interval '10 minutes'"
            wait_until(lambda: scalar(db, recent) == 1000, 60, "1,000 sensors reporting")
            page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').click()
            page.get_by_role("option", name="1 h").click()
            expect(page.get_by_text("all 1,000 sensors heard from")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("12 sensors drawn")).to_be_visible()
            expect(page.get_by_text("950 more sensors not shown.")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "dashboard-1000-sensors.png"), full_page=True)

            # Then the 995 fall silent together (their gateway failed): a storm per partition
            # (~166 sensors each, over the default rule's 100 and a fifth of the partition), shown
            # as a banner and first in the open list - not 995 alerts for one failure.
            storms = "SELECT count(*) FROM alertas WHERE closed_at IS NULL AND rule = 'sensor_silencioso:storm'"
            wait_until(lambda: scalar(db, storms) == 6, 120, "a silence storm on each of the 6 partitions")
            own = "SELECT count(*) FROM alertas WHERE rule = 'sensor_silencioso' AND sensor_id = ANY(%s::uuid[])"
            assert scalar(db, own, (fleet,)) == 0
            banner = page.get_by_text("Silence storm on partition")
            expect(banner).to_have_count(6, timeout=30_000)
            expect(banner.first).to_contain_text("silent")
            expect(page.locator('[data-testid="stTable"]').first).to_contain_text("sensor_silencioso:storm")
            page.screenshot(path=str(ARTIFACTS / "dashboard-storm.png"), full_page=True)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert errors == []
            browser.close()
        assert SCREENSHOT.stat().st_size > 50_000
    finally:
        for service in (dashboard, producer, consumer):
            service.signal(signal.SIGTERM)
        assert dashboard.wait(30) in (0, -signal.SIGTERM)
        producer.wait(60)
        consumer.wait(60)


def test_bad_dashboard_settings_fail_at_start_with_the_variable_named(env: dict[str, str]) -> None:
    """A bad setting stops the dashboard at start (exit 2) with the variable and the rule it broke."""
    result = run_cli(["iot-dashboard"], {**env, "DASHBOARD_REFRESH_SECONDS": "0"})
    assert result.returncode == 2
    assert "DASHBOARD_REFRESH_SECONDS='0': Input should be greater than or equal to 1" in result.stderr


def test_the_dashboard_refuses_to_start_when_the_database_refuses_the_login(env: dict[str, str]) -> None:
    """A refused login stops the dashboard at start (exit 1), naming where it connected, never the password."""
    result = run_cli(
        ["iot-dashboard"], {**env, "POSTGRES_USER": "iot_dashboard", "POSTGRES_PASSWORD": f"wrong-{uuid.uuid4().hex}"}
    )
    assert result.returncode == 1
    assert "cannot connect to postgresql://iot_dashboard@" in result.stderr
    assert "wrong-" not in result.stderr


def test_metrics_answer_and_the_start_is_logged_before_anyone_opens_the_page(
    stack: Stack, env: dict[str, str], tmp_path: Path
) -> None:
    """As soon as the dashboard serves, /metrics answers with the dashboard's own metrics and the
    start is logged as JSON - before any browser session has run the page script (a Prometheus
    scrape must not find it down until someone looks)."""
    port, metrics_port = free_port(), free_port()
    dashboard_env = {
        **env,
        **stack.role_env("iot_dashboard"),
        "DASHBOARD_PORT": str(port),
        "DASHBOARD_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
    }
    dashboard = Service(["iot-dashboard"], dashboard_env, tmp_path / "dashboard.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/_stcore/health"), 60, "the page's health check")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert "iot_dashboard_query_duration_seconds" in body
        assert "iot_dashboard_refreshes_total" in body
        serving = dashboard.event("dashboard_serving")
        assert serving["address"] == f"http://127.0.0.1:{port}/"
        assert serving["metrics_port"] == metrics_port
        assert not [e for e in dashboard.events() if e.get("event") == "dashboard_started"], "no page was opened"
    finally:
        dashboard.signal(signal.SIGTERM)
        assert dashboard.wait(30) in (0, -signal.SIGTERM)


def test_the_page_script_runs_again_for_a_second_session(
    stack: Stack, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamlit executes app.py once per browser session: a second viewer (or a reload) runs it
    again in the same process, and that must not fail (e.g. by registering a metric twice)."""
    for name, value in {**env, **stack.role_env("iot_dashboard")}.items():
        monkeypatch.setenv(name, value)
    script = str(Path(iot_dashboard.__file__).with_name("app.py"))
    for session in (1, 2):
        app = AppTest.from_file(script, default_timeout=60).run()
        assert not app.exception, f"session {session}: {[e.value for e in app.exception]}"


def _query_count() -> float:
    """Queries the dashboard ran in this process, from its own histogram."""
    return sum(m.value for metric in QUERY_SECONDS.collect() for m in metric.samples if m.name.endswith("_count"))


def test_with_a_password_the_page_shows_only_the_sign_in_form_until_it_is_given(
    stack: Stack, env: dict[str, str], db: psycopg2.extensions.connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DASHBOARD_PASSWORD set: a new session sees the sign-in form and nothing else - no title,
    no data, not one query run; a wrong password is refused and counted; the right one shows the
    page, and the session stays signed in across re-runs."""
    for name, value in {
        **env,
        **stack.role_env("iot_dashboard"),
        "DASHBOARD_PASSWORD": PASSWORD,
    }.items():
        monkeypatch.setenv(name, value)
    script = str(Path(iot_dashboard.__file__).with_name("app.py"))
    migrate(db)  # the page's queries then succeed (and are counted) once signed in
    st.cache_resource.clear()  # the settings are read once per process: not another test's
    queries = _query_count()
    refused = LOGINS.labels("refused")._value.get()
    app = AppTest.from_file(script, default_timeout=60).run()
    assert not app.exception, [e.value for e in app.exception]
    assert [t.label for t in app.text_input] == ["Password"]
    assert not app.title
    assert _query_count() == queries

    app.text_input[0].input("not-the-password")
    app.button[0].click()
    app.run()
    assert [e.value for e in app.error] == ["Wrong password."]
    assert not app.title
    assert _query_count() == queries
    assert LOGINS.labels("refused")._value.get() == refused + 1

    app.text_input[0].input(PASSWORD)
    app.button[0].click()
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert [t.value for t in app.title] == ["iot-monitor"]
    assert _query_count() > queries
    app.run()  # a refresh of the same session
    assert [t.value for t in app.title] == ["iot-monitor"]
    assert [t.label for t in app.text_input] == ["Find sensors (id prefix)"]  # the sign-in form is gone


def test_a_dashboard_password_too_short_or_too_long_is_refused_at_start(env: dict[str, str]) -> None:
    """A password a guesser would find fast, or one longer than the sign-in field takes, stops the
    dashboard at start (exit 2), without echoing it."""
    result = run_cli(["iot-dashboard"], {**env, "DASHBOARD_PASSWORD": "hunter2"})
    assert result.returncode == 2
    assert "DASHBOARD_PASSWORD" in result.stderr
    assert "at least 12 characters" in result.stderr
    assert "hunter2" not in result.stderr
    too_long = run_cli(["iot-dashboard"], {**env, "DASHBOARD_PASSWORD": "x" * 257})
    assert too_long.returncode == 2
    assert "at most 256 characters" in too_long.stderr
