"""The dashboard's Prometheus metrics, registered once per process.

They live in a module of their own, imported by the CLI before Streamlit starts: Streamlit
executes the page script (app.py) again for every browser session, and a metric defined there
would be registered a second time - and would not exist at all until someone opened the page.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

QUERY_SECONDS = Histogram(
    "iot_dashboard_query_duration_seconds",
    "Time of one dashboard query",
    ["panel"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REFRESHES = Counter("iot_dashboard_refreshes_total", "Dashboard data refreshes by outcome", ["outcome"])
LOGINS = Counter(
    "iot_dashboard_logins_total", "Sign-in attempts on the page by outcome (accepted, refused)", ["outcome"]
)
