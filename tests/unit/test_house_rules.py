"""Habits the README promises, checked so they stay true."""

from __future__ import annotations

import ast
import re
import subprocess
import tomllib
from pathlib import Path

from tests.helpers import REPO


def test_every_test_states_the_behaviour_it_pins() -> None:
    """Each test function has a docstring (the README promises it; reviewers read them)."""
    missing = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.name.startswith("test_"):
                continue
            if not ast.get_docstring(node):
                missing.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert missing == []


def test_services_depend_on_common_never_on_each_other() -> None:
    """Layering: producer, consumer, exporter and dashboard import iot_common and themselves,
    never another service; iot_common imports no service. Each service's own native part
    belongs to it alone: the consumer's decoder (consumer/fastpath, iot_fastpath), the
    producer's encoder (producer/fastpath, iot_producer_fastpath)."""
    services = {
        "producer": "iot_producer",
        "consumer": "iot_consumer",
        "exporter": "iot_exporter",
        "dashboard": "iot_dashboard",
    }
    packages = {**services, "common": "iot_common"}
    for folder, package in packages.items():
        native = {"consumer": {"iot_fastpath"}, "producer": {"iot_producer_fastpath"}}.get(folder, set())
        allowed = {package, "iot_common"} | native
        for path in (REPO / folder / "src").rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    root = name.split(".")[0]
                    if root.startswith("iot_"):
                        assert root in allowed, f"{path.relative_to(REPO)} imports {name}"


def test_git_tracks_no_build_output() -> None:
    """No build tree (Maven target/, Python build/, egg-info) is committed."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    offenders = [
        p for p in tracked.splitlines() if "/target/" in p or p.startswith(("build/", "dist/")) or ".egg-info/" in p
    ]
    assert offenders == []


def _locked(path: Path) -> dict[str, str]:
    """name → version of a hashed lock; every pin must carry its hashes."""
    pins: dict[str, str] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
    for block in blocks:
        match = re.match(r"([A-Za-z0-9_.-]+)==([^ \\;\n]+)", block)
        if match:
            assert "--hash=sha256:" in block, f"{path.name}: {match.group(0)} has no hash"
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    assert pins, path
    return pins


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[ \[(<>=!;]", r, maxsplit=1)[0].lower() for r in requirements}


SERVICES = ("producer", "consumer", "exporter", "dashboard")


def test_each_image_installs_exactly_its_own_locked_dependencies() -> None:
    """Per service: its Dockerfile installs its own hashed lock (--require-hashes), the lock
    holds every dependency its pyproject and common's chosen extras declare, and nothing a
    service does not import (the producer has no PostgreSQL driver, the exporter no Kafka client)."""
    common = tomllib.loads((REPO / "common" / "pyproject.toml").read_text())["project"]
    for service in SERVICES:
        project = tomllib.loads((REPO / service / "pyproject.toml").read_text())["project"]
        locked = _locked(REPO / service / "requirements.lock")
        (common_req,) = [r for r in project["dependencies"] if r.startswith("iot-common")]
        extras = re.findall(r"\[(.*)\]", common_req)[0].split(",")
        wanted = _requirement_names([r for r in project["dependencies"] if not r.startswith("iot-common")])
        wanted |= _requirement_names(common["dependencies"])
        for extra in extras:
            wanted |= _requirement_names(common["optional-dependencies"][extra])
        assert wanted <= locked.keys(), (service, wanted - locked.keys())
        dockerfile = (REPO / service / "Dockerfile").read_text()
        assert f"COPY {service}/requirements.lock" in dockerfile
        assert "--require-hashes --no-deps -r /src/requirements.lock" in dockerfile
        assert f"--no-deps ./common ./{service}" in dockerfile
    assert "psycopg2-binary" not in _locked(REPO / "producer" / "requirements.lock")
    assert "kafka-python" not in _locked(REPO / "exporter" / "requirements.lock")
    assert _locked(REPO / "consumer" / "requirements.lock")["kafka-python"] == "3.0.12"


def test_make_dev_installs_the_dev_lock() -> None:
    """`make dev` installs requirements-dev.lock with hashes checked, then our packages without
    dependencies: what a developer runs is what was locked."""
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements-dev.lock" in makefile
    locked = _locked(REPO / "requirements-dev.lock")
    assert {"pytest", "ruff", "mypy", "kafka-python", "psycopg2-binary", "streamlit", "openpyxl"} <= locked.keys()


def _import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module → the modules of ``package`` it imports (type-only imports included)."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith(package)}
        graph[module] = targets - {module}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if state.get(module) == 2:
            return None
        if state.get(module) == 1:
            return [*path[path.index(module) :], module]
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            found = visit(target)
            if found:
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        found = visit(module)
        if found:
            return found
    return None


def test_no_import_cycles_inside_a_package() -> None:
    """Within each package, modules import in one direction only (type-only imports included):
    the loop sits on top of positions/outages/decoding, which sit on the sink, and never back."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the detector works
    for folder in ("common", "producer", "consumer", "exporter", "dashboard"):
        package = "iot_" + folder
        cycle = _find_cycle(_import_graph(REPO / folder / "src", package))
        assert cycle is None, " -> ".join(cycle or [])


# The consumer's layers, lowest first: a module imports only from layers below its own (or its own
# subpackage). Decoding below batches, batches below the sink, the sink below the writer (the
# loop's only handle on it), the writer below the loop.
CONSUMER_LAYERS: tuple[tuple[str, ...], ...] = (
    ("readings", "gaps", "timers", "decompression"),
    ("summary",),
    ("decoding",),
    ("batch",),
    ("metrics",),
    ("alerts",),
    ("rollups",),
    ("migrations", "duplicates", "position_store"),
    ("sink",),
    ("writer",),
    ("housekeeping", "positions", "outages", "deadletters"),
    ("polling", "writing", "watching"),
    ("loop", "verify"),
    ("cli",),
)


def _consumer_layer(module: str) -> int:
    name = module.removeprefix("iot_consumer.").split(".")[0]
    for level, names in enumerate(CONSUMER_LAYERS):
        if name in names:
            return level
    raise AssertionError(f"{module}: not placed in CONSUMER_LAYERS (give every new module its layer)")


def test_the_consumer_imports_only_downward() -> None:
    """Inside the consumer nothing imports upward: decoding < batch < sink < loop < cli (the
    layers above). The named Reading lives in its own bottom module, so batch no longer reaches
    up into alerts for it."""
    graph = _import_graph(REPO / "consumer" / "src", "iot_consumer")
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module != "iot_consumer"
        for target in targets
        if target != "iot_consumer"
        and target.split(".")[1] != module.split(".")[1]
        and _consumer_layer(target) >= _consumer_layer(module)
    ]
    assert upward == []
