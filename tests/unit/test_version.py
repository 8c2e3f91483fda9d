"""The project's version has one source: VERSION."""

from __future__ import annotations

import re
import tomllib

import yaml

import iot_common
from tests.helpers import REPO


def test_the_version_is_written_from_one_place() -> None:
    """VERSION holds the project's version; every package and the chart carry that one
    (scripts/set-version.sh writes them), and the code asks the installed metadata for it."""
    version = (REPO / "VERSION").read_text().strip()
    projects = [
        "pyproject.toml",
        "common/pyproject.toml",
        "producer/pyproject.toml",
        "consumer/pyproject.toml",
        "consumer/fastpath/pyproject.toml",
        "producer/fastpath/pyproject.toml",
        "exporter/pyproject.toml",
        "dashboard/pyproject.toml",
    ]
    found = {path: tomllib.loads((REPO / path).read_text())["project"]["version"] for path in projects}
    chart = yaml.safe_load((REPO / "charts/iot-monitor/Chart.yaml").read_text())
    found["Chart.yaml version"] = chart["version"]
    found["Chart.yaml appVersion"] = chart["appVersion"]
    assert found == dict.fromkeys(found, version)
    assert iot_common.__version__ == version
    literal = re.compile(rf"[\"']{re.escape(version)}[\"']")
    in_code = [
        str(path.relative_to(REPO))
        for folder in ("common", "producer", "consumer", "exporter", "dashboard", "tests")
        for path in (REPO / folder).rglob("*.py")
        if literal.search(path.read_text(errors="replace"))
    ]
    assert in_code == []
