"""Test-only: the README's "Kubernetes" section, its commands read and run word for word.

`kubernetes_commands()` lists every command of the section's bash blocks; `differing_commands()`
the ones its table says the tests replace. `ReadmeShell` runs a command of that list - refusing
any other string - with bash inside the test node's network namespace, from a git copy of the
checkout, with kubectl, helm, skaffold and the kind stand-in (tests/k8s/shims) on PATH and a
kubeconfig named as kind names it. tests/deploy/test_readme_kubernetes.py checks that every
command is either run through it by tests/k8s or listed in the table.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.helpers import REPO

README = REPO / "README.md"
SECTION = "## Kubernetes"
DIFFERS_HEADING = "### What the tests run of this"
# The methods of ReadmeShell that take a README command as first argument (for the AST check).
RUNNERS = ("run", "follow", "background", "spawn")
KIND_CONTEXT = "kind-iot"  # what `kind create cluster --name iot` names its context and cluster


def _section() -> list[str]:
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(SECTION))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _normalise(command: str) -> str:
    return " ".join(command.split())


def kubernetes_commands() -> list[str]:
    """Every command in the section's ```bash blocks: continuation lines joined, trailing
    comments (after two spaces or more) dropped, whitespace collapsed."""
    commands: list[str] = []
    in_block = False
    pending = ""
    for line in _section():
        if line.startswith("```"):
            in_block = line.strip() == "```bash"
            continue
        if not in_block:
            continue
        text = re.sub(r"\s{2,}#.*$", "", line).rstrip()
        if not text or text.lstrip().startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        commands.append(_normalise(pending + text))
        pending = ""
    return commands


def differing_commands() -> list[str]:
    """The first column of the table "what the tests run instead"."""
    lines = _section()
    start = next(i for i, line in enumerate(lines) if line.startswith(DIFFERS_HEADING))
    found = []
    for line in lines[start:]:
        match = re.match(r"^\| `(.+?)` \|", line)
        if match:
            found.append(_normalise(match.group(1)))
    return found


def git_copy_of_checkout(destination: Path) -> Path:
    """The checkout's files as they are now (tracked and new, not ignored), committed in a
    repository of their own: Skaffold's default tagger reads git."""
    destination.mkdir(parents=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    files = [name for name in listed.decode().split("\0") if name and (REPO / name).is_file()]
    subprocess.run(["cp", "--parents", "-p", *files, str(destination)], cwd=REPO, check=True, capture_output=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=destination, check=True)
    return destination


def kind_kubeconfig(admin_kubeconfig: Path, destination: Path) -> Path:
    """The node's admin kubeconfig with its context and cluster renamed as kind names them."""
    config = yaml.safe_load(admin_kubeconfig.read_text())
    (cluster,) = config["clusters"]
    (context,) = config["contexts"]
    cluster["name"] = KIND_CONTEXT
    context["name"] = KIND_CONTEXT
    context["context"]["cluster"] = KIND_CONTEXT
    config["current-context"] = KIND_CONTEXT
    destination.write_text(yaml.safe_dump(config))
    destination.chmod(0o600)
    return destination


def require_readme_command(command: str) -> str:
    normalised = _normalise(command)
    if normalised not in kubernetes_commands():
        raise AssertionError(f"not a command of the README's Kubernetes section: {command!r}")
    return normalised


class ReadmeShell:
    """README commands run as a user types them, inside the test node's network namespace."""

    def __init__(self, holder_pid: str, env: dict[str, str], checkout: Path) -> None:
        self.holder_pid = holder_pid
        self.env = env
        self.checkout = checkout

    def argv(self, command: str) -> list[str]:
        # nsenter execs bash (no fork for --net alone): a signal to the process reaches bash.
        return ["nsenter", "-t", self.holder_pid, "--net", "--", "bash", "-eo", "pipefail", "-c", command]

    def run(self, command: str, *, append: str = "", timeout: float = 600) -> str:
        """Run to the end; its stdout. ``append``: arguments the tests add (README's table)."""
        line = require_readme_command(command) + append
        result = subprocess.run(
            self.argv(line),
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"`{line}` exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result.stdout

    def spawn(self, command: str) -> subprocess.Popen[str]:
        """Start it in the background, stdout and stderr merged into one pipe."""
        return subprocess.Popen(
            self.argv(require_readme_command(command)),
            cwd=self.checkout,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def follow(self, command: str, *, until: str, timeout: float = 120) -> str:
        """A command that follows (`logs -f`): its output up to and including the first line
        containing ``until``, then it is stopped."""
        with self.background(command, ready=until, timeout=timeout) as output:
            first = next(index for index, line in enumerate(output) if until in line)
            return "\n".join(output[: first + 1])

    @contextmanager
    def background(self, command: str, *, ready: str, timeout: float = 120) -> Iterator[list[str]]:
        """Running while the block runs, once a line containing ``ready`` is out; the lines it
        printed so far (the list grows)."""
        process = self.spawn(command)
        lines: list[str] = []
        seen = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                if ready in line:
                    seen.set()
            seen.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            if not seen.wait(timeout) or not any(ready in line for line in lines):
                raise AssertionError(f"no {ready!r} from `{command}` in {timeout:.0f}s:\n" + "\n".join(lines[-40:]))
            yield lines
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
            reader.join(timeout=30)

    def http_get(self, url: str, timeout: float = 30) -> str:
        """GET from inside the node's network namespace (where a port-forward listens)."""
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                ["nsenter", "-t", self.holder_pid, "--net", "--", "python3", "-c", code],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        if result.returncode != 0:
            raise AssertionError(f"GET {url} from the node failed:\n{result.stderr[-2000:]}")
        return result.stdout
