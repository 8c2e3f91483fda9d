"""Skaffold v2.16.1 itself (built from the Go module proxy by scripts/install-tools.sh) on the
repository's skaffold.yaml and skaffold-platform.yaml: `skaffold diagnose` and `skaffold render`
pass, and what they produce is our chart with the images skaffold would build.

Where no registry is reachable, the base image python:3.11-slim is stood in for by the local
base image (tests/compose/standins), tagged under that name for the time of the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, require_docker, standin_images

pytestmark = [pytest.mark.skaffold, pytest.mark.timeout(3600)]

TOOLS = Path(os.environ.get("IOT_TOOLS_CACHE", Path.home() / ".cache" / "iot-monitor" / "bin"))
SKAFFOLD = TOOLS / "skaffold"
UPSTREAM_BASE = "python:3.11-slim"  # the Dockerfiles' default PYTHON_IMAGE


def skaffold(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SKAFFOLD), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def skaffold_env() -> Iterator[dict[str, str]]:
    """skaffold and helm built, the base image present under its upstream name."""
    require_docker("IOT_REQUIRE_SKAFFOLD_TESTS")
    subprocess.run([str(REPO / "scripts" / "install-tools.sh"), "skaffold"], check=True, timeout=3600)
    subprocess.run([str(REPO / "scripts" / "install-tools.sh"), "helm"], check=True, timeout=1200)
    base = standin_images()["PYTHON_IMAGE"]
    inspected = subprocess.run(["docker", "image", "inspect", UPSTREAM_BASE], capture_output=True, check=False)
    had_upstream = inspected.returncode == 0
    if not had_upstream:
        subprocess.run(["docker", "tag", base, UPSTREAM_BASE], check=True)
    try:
        yield {
            **os.environ,
            "PATH": f"{REPO / '.tools' / 'bin'}:{os.environ['PATH']}",
            "SKAFFOLD_UPDATE_CHECK": "false",
        }
    finally:
        if not had_upstream:
            subprocess.run(["docker", "rmi", UPSTREAM_BASE], capture_output=True, check=False)


def test_skaffold_is_the_version_our_files_declare_a_schema_of(skaffold_env: dict[str, str]) -> None:
    """The binary is v2.16.1, whose newest schema (skaffold/v4beta13) both files declare."""
    assert skaffold("version", env=skaffold_env).stdout.strip() == "v2.16.1"
    for name in ("skaffold.yaml", "skaffold-platform.yaml"):
        for config in yaml.safe_load_all((REPO / name).read_text()):
            assert config["apiVersion"] == "skaffold/v4beta13", name


@pytest.mark.parametrize("config", ["skaffold.yaml", "skaffold-platform.yaml"])
def test_skaffold_diagnose_passes(skaffold_env: dict[str, str], config: str) -> None:
    """`skaffold diagnose` reads each file, its artifacts' Docker contexts and dependencies."""
    result = skaffold("diagnose", "-f", config, env=skaffold_env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Configuration version: skaffold/v4beta13" in result.stdout


def test_skaffold_render_gives_our_chart_with_the_images_skaffold_builds(skaffold_env: dict[str, str]) -> None:
    """`skaffold render` (offline, tags only) runs helm on our chart with skaffold's image
    references: every workload runs the image of its own artifact, the dashboard is on, and the
    chart's secure defaults hold (SASL_SSL, verify-full, NetworkPolicies)."""
    result = skaffold("render", "-f", "skaffold.yaml", "--offline=true", "--digest-source=tag", env=skaffold_env)
    assert result.returncode == 0, result.stderr[-3000:]
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "CronJob", "Job", "NetworkPolicy", "ConfigMap", "Secret"} <= kinds
    images = {}
    for doc in docs:
        spec = doc.get("spec", {})
        template = spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
        for container in template.get("spec", {}).get("containers", []):
            images[doc["metadata"]["name"]] = container["image"]
    for service in ("producer", "consumer", "dashboard", "exporter"):
        assert images[f"iot-monitor-{service}"].startswith(f"iot-{service}:"), images
    assert images["iot-monitor-migrate"] == images["iot-monitor-consumer"]
    (config,) = (d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "iot-monitor")
    assert config["data"]["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["data"]["POSTGRES_SSLMODE"] == "verify-full"
