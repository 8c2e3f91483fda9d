"""The README's "Kubernetes" section is what the tests run.

Every command of its bash blocks is either run word for word by tests/k8s (through
`readme.run/follow/background/spawn("...")`, tests/k8s/readme.py) or listed in its table of what
the tests run instead - no third kind, and the table names only commands the section has.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO
from tests.k8s.readme import RUNNERS, differing_commands, kubernetes_commands


def commands_run_by_the_k8s_tests(*, with_additions: bool = False) -> dict[str, list[str]]:
    """README commands passed to the ReadmeShell (a fixture named ``readme``) in tests/k8s:
    command -> where; word for word, or (``with_additions``) with arguments appended."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests" / "k8s").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            if not (isinstance(target, ast.Name) and target.id == "readme" and node.func.attr in RUNNERS):
                continue
            if any(keyword.arg == "append" for keyword in node.keywords) != with_additions:
                continue
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant), f"{path.name}:{node.lineno}: a README command must be a literal"
            assert isinstance(first.value, str)
            found.setdefault(" ".join(first.value.split()), []).append(f"{Path(path).name}:{node.lineno}")
    return found


def test_the_section_has_the_kind_users_steps() -> None:
    """kind, the platform, `skaffold dev`, `helm install iot-monitor`, `kubectl logs` and a
    CronJob run by hand are all there."""
    commands = kubernetes_commands()
    for expected in (
        "kind create cluster --config k8s/kind-config.yaml",
        "skaffold run -f skaffold-platform.yaml",
        "skaffold dev",
        "helm install iot-monitor charts/iot-monitor -n iot --set image.tag=dev --set dashboard.enabled=true",
        "kubectl -n iot logs -f deploy/iot-monitor-producer",
        "kubectl -n iot create job --from=cronjob/iot-monitor-exporter export-now",
    ):
        assert expected in commands, expected


def test_every_command_of_the_section_is_run_by_the_tests_or_listed_as_differing() -> None:
    """A command is run word for word by tests/k8s, or run with arguments added, or replaced -
    and then the table says so; the table names only commands the section has."""
    commands = kubernetes_commands()
    run = commands_run_by_the_k8s_tests()
    added_to = commands_run_by_the_k8s_tests(with_additions=True)
    differing = differing_commands()
    assert sorted(c for c in commands if c not in run and c not in differing) == []
    # The table says what the tests add where they add arguments; no contradiction, nothing stale.
    assert sorted(c for c in added_to if c not in differing) == []
    assert sorted(set(run) & set(differing)) == []
    assert sorted(c for c in differing if c not in commands) == []
    assert sorted(c for c in {**run, **added_to} if c not in commands) == []


def test_most_of_the_section_runs_word_for_word() -> None:
    """Only what needs kind itself or Strimzi's and Bitnami's images is replaced: 17 commands
    run as they are written today (this count may only grow), `skaffold dev` among them."""
    commands = set(kubernetes_commands())
    run = set(commands_run_by_the_k8s_tests())
    assert len(run & commands) >= 17, sorted(commands - run)
    assert "skaffold dev" in run
