"""`helm install iot-monitor` on a real Kubernetes cluster, for real.

tests/k8s/cluster.sh starts a single-node Kubernetes v1.37 (built from the Go module proxy by
tests/k8s/build-binaries.sh, cached in ~/.cache/iot-monitor) inside a network and mount namespace
of its own. Our four images (docker/build-images.sh) and the test-only Kafka and PostgreSQL
stand-ins (tests/compose/standins) are imported into the node's containerd; tests/k8s/platform.yaml
runs Kafka 4.3.1 and PostgreSQL as StatefulSets under the names Strimzi and Bitnami would give
them, secured as k8s/kafka.yaml and k8s/postgresql-values.yaml secure them (SASL_SSL with the
KafkaUsers' ACLs, PostgreSQL over TLS; tests/k8s/standin_operators.py plays the operators), so
the chart is installed with its defaults plus tests/k8s/values.yaml (image tag, dashboard on).
A pod in namespace "monitoring" stands for Prometheus. The tests run in file order against one
release and end with the teardown.

Needs root, a Docker daemon, containerd, runc, the CNI plugins and Go. Without them the module
is skipped, unless IOT_REQUIRE_K8S_TESTS=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import base64
import csv
import functools
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from tests.helpers import (
    REPO,
    argv_exposing,
    dashboard_queries,
    exposed_families,
    metric_families,
    require_docker,
    rule_queries,
    standin_images,
    wait_until,
)
from tests.k8s.readme import ReadmeShell, git_copy_of_checkout, kind_kubeconfig
from tests.k8s.skaffold_dev import SKAFFOLD, SkaffoldDev
from tests.k8s.standin_operators import LOCAL_BOOTSTRAP, Platform, kafka_users, manifest_stream

# The first test also builds the images (and, once per machine, Kubernetes itself: ~20 min).
pytestmark = [pytest.mark.k8s, pytest.mark.timeout(3600)]

CLUSTER = REPO / "tests" / "k8s" / "cluster.sh"
NAMESPACE = "iot"
RELEASE = "iot-monitor"
TAG = "dev"
UPGRADE_TAG = "dev-upgrade"
SERVICES = ("producer", "consumer", "exporter", "dashboard")
STANDINS = ("iot-monitor/standin-kafka:4.3.1", "iot-monitor/standin-postgres:15")
TOPICS = {"iot_sensores": 6, "iot_alertas": 3}
SENSORS = 20  # tests/k8s/values.yaml
MONITORING = "monitoring"  # where the chart's NetworkPolicies let scrapers (and, in the test values, the page) in
PROBE = "probe"  # a pod there: Prometheus's place, with our consumer image's Python
BACKFILLED = 120  # readings a "gateway" sends for yesterday, for the exporter's daily file
PVC_READER_IMAGE = "busybox:1.37"  # k8s/tools/pvc-reader.yaml's; the local base image stands in


def cluster(*args: str, timeout: float = 600, check: bool = True, stdin: str | None = None) -> str:
    """Run tests/k8s/cluster.sh; its stdout, or the failure with both streams."""
    env = {**os.environ, "HELM": str(REPO / ".tools" / "bin" / "helm")}
    result = subprocess.run(
        [str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout, input=stdin, env=env, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"cluster.sh {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def kubectl(*args: str, timeout: float = 300, check: bool = True, stdin: str | None = None) -> str:
    """kubectl in the test namespace, run inside the cluster's network namespace."""
    return cluster("kubectl", "-n", NAMESPACE, *args, timeout=timeout, check=check, stdin=stdin)


def helm(*args: str, timeout: float = 600) -> str:
    """helm (scripts/install-tools.sh) against the cluster, in the test namespace."""
    return cluster("helm", "--namespace", NAMESPACE, *args, timeout=timeout)


def psql(sql: str) -> str:
    """One SQL statement through psql in the PostgreSQL pod; unaligned, tuples only."""
    return kubectl("exec", "postgresql-0", "--", "psql", "-U", "iot", "-d", "iot", "-Atc", sql).strip()


def pods(component: str) -> list[dict[str, Any]]:
    """The release's running pods of one component."""
    out = kubectl(
        "get",
        "pods",
        "-l",
        f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}",
        "-o",
        "json",
    )
    return [p for p in json.loads(out)["items"] if p["metadata"].get("deletionTimestamp") is None]


def verify() -> dict[str, Any]:
    """`iot-consumer verify --json` inside a consumer pod: Kafka's offsets against the rows."""
    out = kubectl("exec", f"deploy/{RELEASE}-consumer", "--", "iot-consumer", "verify", "--json", check=False)
    return dict(json.loads(out[out.index("{") :]))


def http_get_from_monitoring(url: str) -> str:
    """GET a URL from the probe pod in namespace "monitoring", where Prometheus would scrape
    from: cluster DNS, the Service's ClusterIP, kube-proxy (and what the NetworkPolicies allow)."""
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    return cluster("kubectl", "-n", MONITORING, "exec", PROBE, "--", "python3", "-c", code)


def python_in(workload: str, code: str) -> Any:
    """Run Python in a pod of the release, with that service's own settings (its env); the last
    line it prints, as JSON."""
    out = kubectl("exec", f"deploy/{RELEASE}-{workload}", "--", "python3", "-c", code, timeout=180)
    return json.loads(out.strip().splitlines()[-1])


def require_cluster_tools() -> None:
    """Skip (or fail under IOT_REQUIRE_K8S_TESTS=1) where a real node cannot run."""
    missing = [tool for tool in ("containerd", "runc", "nsenter", "unshare", "gcc") if shutil.which(tool) is None]
    problems = [f"missing: {', '.join(missing)}"] if missing else []
    if os.geteuid() != 0:
        problems.append("not root")
    if not Path("/usr/lib/cni/bridge").exists():
        problems.append("no CNI plugins (containernetworking-plugins)")
    if shutil.which("go") is None and not (Path.home() / ".cache" / "iot-monitor").exists():
        problems.append("no Go to build Kubernetes")
    if not problems:
        return
    if os.environ.get("IOT_REQUIRE_K8S_TESTS") == "1":
        pytest.fail(f"IOT_REQUIRE_K8S_TESTS=1 but the cluster cannot run: {'; '.join(problems)}")
    pytest.skip(f"cannot run a Kubernetes node here: {'; '.join(problems)} (CI runs these)")


@pytest.fixture(scope="module")
def images() -> list[str]:
    """Our four images and the two stand-ins, built by the project's own scripts."""
    require_docker("IOT_REQUIRE_K8S_TESTS")
    require_cluster_tools()
    subprocess.run([str(REPO / "scripts" / "install-tools.sh"), "helm"], check=True, timeout=3600, capture_output=True)
    BASE_IMAGES.update(standin_images())
    return [*STANDINS, *(f"iot-{service}:{TAG}" for service in SERVICES)]


# The stand-in base images our images were built on (PYTHON_IMAGE=...), for the upgrade's build.
BASE_IMAGES: dict[str, str] = {}


def build_changed_images(tag: str, mark: str) -> None:
    """Our four images built again by docker/build-images.sh, from a copy of this checkout in
    which the consumer's and the producer's code differ: each logs ``upgrade_build`` with
    ``mark`` when it starts (a new release, not the old images under a new tag)."""
    with tempfile.TemporaryDirectory(prefix="iot-upgrade-") as tmp:
        root = Path(tmp)
        for folder in ("common", "producer", "consumer", "exporter", "dashboard", "docker"):
            shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "build"))
        shutil.copy(REPO / ".dockerignore", root / ".dockerignore")
        line = f'\nimport sys as _sys\n_sys.stderr.write(\'{{"event": "upgrade_build", "mark": "{mark}"}}\\n\')\n'
        for cli in ("consumer/src/iot_consumer/cli.py", "producer/src/iot_producer/cli.py"):
            with (root / cli).open("a") as source:
                source.write(line)
        subprocess.run(
            [str(root / "docker" / "build-images.sh"), tag],
            check=True,
            env={**os.environ, **BASE_IMAGES},
            timeout=1800,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def node(images: list[str]) -> Iterator[None]:
    """A Ready node with the images imported; torn down completely afterwards."""
    cluster("down", timeout=120)  # a previous run killed half-way
    cluster("up", timeout=3600)
    try:
        # Our four images reach the node as the README loads them into kind (the platform).
        cluster("import", *STANDINS, timeout=1200)
        had_reader_image = docker_has(PVC_READER_IMAGE)
        if not had_reader_image:
            subprocess.run(["docker", "tag", BASE_IMAGES["PYTHON_IMAGE"], PVC_READER_IMAGE], check=True)
        try:
            cluster("import", PVC_READER_IMAGE, timeout=600)
        finally:
            if not had_reader_image:
                subprocess.run(["docker", "rmi", PVC_READER_IMAGE], capture_output=True, check=False)
        yield
    finally:
        cluster("down", timeout=120)


def docker_has(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def readme(node: None, tmp_path_factory: pytest.TempPathFactory) -> ReadmeShell:
    """The README's Kubernetes commands, run as a kind user runs them (tests/k8s/readme.py):
    from a git copy of the checkout, against the node through a kubeconfig named as kind's."""
    work = tmp_path_factory.mktemp("readme")
    environment = dict(line.split("=", 1) for line in cluster("env").split())
    kubeconfig = kind_kubeconfig(Path(environment["IOT_K8S_KUBECONFIG"]), work / "kubeconfig")
    path = [
        REPO / "tests" / "k8s" / "shims",
        Path(environment["IOT_K8S_BIN"]),
        REPO / ".tools" / "bin",
        SKAFFOLD.parent,
    ]
    env = {
        **os.environ,
        "PATH": os.pathsep.join([*map(str, path), os.environ["PATH"]]),
        "KUBECONFIG": str(kubeconfig),
        "SKAFFOLD_UPDATE_CHECK": "false",
        "PYTHON_IMAGE": BASE_IMAGES["PYTHON_IMAGE"],  # no python:3.11-slim from a registry here
    }
    return ReadmeShell(environment["IOT_K8S_HOLDER_PID"], env, git_copy_of_checkout(work / "checkout"))


@pytest.fixture(scope="module")
def platform(node: None, readme: ReadmeShell) -> Platform:
    """Kafka and PostgreSQL Ready with TLS, the topics created (Strimzi's KafkaTopics on the
    user's path), the KafkaUsers of k8s/kafka.yaml with their Secrets and ACLs; a probe pod in
    namespace "monitoring"."""
    readme.run("kubectl apply -f k8s/namespace.yaml")
    readme.run("for s in producer consumer exporter dashboard; do kind load docker-image iot-$s:dev --name iot; done")
    cluster("kubectl", "create", "namespace", MONITORING)
    users = kafka_users(REPO / "k8s" / "kafka.yaml")
    generated, secrets = Platform.secrets(users)
    kubectl("apply", "-f", "-", stdin=manifest_stream(secrets))
    kubectl("apply", "-f", str(REPO / "tests" / "k8s" / "platform.yaml"))
    cluster(
        "kubectl", "-n", MONITORING, "run", PROBE, f"--image=iot-consumer:{TAG}", "--image-pull-policy=IfNotPresent",
        "--restart=Never", "--command", "--", "sleep", "infinity",
    )  # fmt: skip
    for statefulset in ("iot-kafka", "postgresql"):
        kubectl("rollout", "status", f"statefulset/{statefulset}", "--timeout=240s", timeout=300)
    generated.apply_users(kubectl, users)
    for topic, partitions in TOPICS.items():
        kubectl(
            "exec",
            "iot-kafka-0",
            "--",
            "/opt/kafka/bin/kafka-topics.sh",
            "--bootstrap-server",
            LOCAL_BOOTSTRAP,
            "--create",
            "--if-not-exists",
            "--topic",
            topic,
            "--partitions",
            str(partitions),
            "--replication-factor",
            "1",
            timeout=120,
        )
    cluster("kubectl", "-n", MONITORING, "wait", "--for=condition=Ready", f"pod/{PROBE}", "--timeout=120s", timeout=150)
    return generated


@pytest.fixture(scope="module")
def release(platform: Platform, readme: ReadmeShell) -> None:
    """The README's `helm install iot-monitor`, with the test values, waited for."""
    readme.run(
        "helm install iot-monitor charts/iot-monitor -n iot --set image.tag=dev --set dashboard.enabled=true",
        append=" -f tests/k8s/values.yaml --wait --timeout 5m",
    )


def test_every_pod_becomes_ready_through_its_probes(release: None, readme: ReadmeShell) -> None:
    """Each Deployment of the release reaches its replica count Ready, judged by the kubelet
    running the chart's own readiness probes (/readyz, Streamlit's health); `kubectl get pods`
    shows them Running."""
    listed = readme.run("kubectl -n iot get pods")
    for component in ("producer", "consumer", "dashboard"):
        assert any(f"{RELEASE}-{component}-" in line and "Running" in line for line in listed.splitlines()), listed
    deployments = json.loads(kubectl("get", "deployments", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"))
    names = {d["metadata"]["name"]: d for d in deployments["items"]}
    assert set(names) == {f"{RELEASE}-{s}" for s in ("producer", "consumer", "dashboard")}
    for name, deployment in names.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert "readinessProbe" in container, name
        assert "livenessProbe" in container, name
        assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"], name
    assert len(pods("consumer")) == 2
    for pod in pods("consumer") + pods("producer") + pods("dashboard"):
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"]
        assert ready == "True", pod["metadata"]["name"]


def test_readings_arrive_in_postgres(release: None) -> None:
    """The simulated sensors' readings travel producer → Kafka → consumers → `sensores`."""
    wait_until(
        lambda: int(psql("SELECT count(*) FROM sensores")) >= 200, timeout=120, what="200 rows in sensores", interval=2
    )
    assert int(psql("SELECT count(DISTINCT sensor_id) FROM sensores")) == SENSORS


def test_helm_test_finds_the_consumers_ready_and_rows_arriving(release: None, readme: ReadmeShell) -> None:
    """`helm test` runs the chart's test pod (templates/tests/pipeline.yaml): through the
    NetworkPolicy that lets it in, the consumers answer /readyz 200 and one of them stores
    more rows while it watches."""
    out = readme.run("helm -n iot test iot-monitor --logs")
    assert "Phase:          Succeeded" in out, out
    assert "consumer ready" in out, out
    assert "rows arriving" in out, out


def test_two_consumer_replicas_share_the_partitions_without_duplicates(release: None) -> None:
    """The two replicas of one group own disjoint halves of the six partitions, and every
    Kafka message is stored exactly once (`iot-consumer verify`, and by (partition, offset))."""
    owned: list[set[int]] = []
    for pod in pods("consumer"):
        logs = kubectl("logs", pod["metadata"]["name"])
        synced = [json.loads(line) for line in logs.splitlines() if '"partitions_synced"' in line]
        assert synced, f"{pod['metadata']['name']} logged no partitions_synced"
        owned.append(set(synced[-1]["partitions"]))
    assert all(owned)
    assert owned[0].isdisjoint(owned[1])
    assert owned[0] | owned[1] == set(range(TOPICS["iot_sensores"]))
    result = verify()
    assert result["consistent"], result
    assert (result["missing"], result["duplicates"]) == (0, 0)
    assert psql("SELECT count(*) - count(DISTINCT (kafka_partition, kafka_offset)) FROM sensores") == "0"


def test_services_log_in_as_their_own_roles_made_by_the_migration_hook(release: None) -> None:
    """The chart's migration Job (a pre-install hook, as the owner) created the service roles and
    set their generated passwords: the consumers' sessions are iot_consumer's, the dashboard's
    iot_dashboard's; with its password from the chart's Secret, iot_consumer can read the
    offsets but cannot DELETE, TRUNCATE or DROP readings."""
    wait_until(
        lambda: psql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'iot-consumer:%'") != "0",
        60,
        "consumer sessions",
    )
    roles = psql(
        "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity WHERE application_name LIKE 'iot-consumer:%'"
    )
    assert roles == "iot_consumer"
    secret = json.loads(kubectl("get", "secret", f"{RELEASE}-db-roles", "-o", "json"))
    password = base64.b64decode(secret["data"]["consumer-password"]).decode()

    def as_consumer(statement: str) -> subprocess.CompletedProcess[str]:
        # the password on stdin, never in an argv (ours, kubectl's or the pod's)
        login = "read -r PGPASSWORD; export PGPASSWORD; exec psql -h 127.0.0.1 -U iot_consumer -d iot"
        return subprocess.run(
            [str(CLUSTER), "kubectl", "-n", NAMESPACE, "exec", "-i", "postgresql-0", "--", "sh", "-c",
             f"{login} -v ON_ERROR_STOP=1 -Atc '{statement}'"],
            input=password + "\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    allowed = as_consumer("SELECT count(kafka_offset) FROM sensores")
    assert allowed.returncode == 0, allowed.stderr
    for statement in ("DELETE FROM sensores", "TRUNCATE sensores", "DROP TABLE sensores"):
        refused = as_consumer(statement)
        assert refused.returncode != 0
        assert "permission denied" in refused.stderr or "must be owner" in refused.stderr, refused.stderr
    # The Job also made consumer.retention the database's: the consumers' hourly round (run at
    # start) may drop what expired, instead of failing on every install.
    policy = psql(
        "SELECT string_agg(relation::text || '=' || keep_days, ',' ORDER BY relation::text) FROM retention_policy"
    )
    assert policy == "sensores=30,sensores_hora=730,sensores_minuto=90"
    consumers = [pod["metadata"]["name"] for pod in pods("consumer")]
    wait_until(
        lambda: any(logged(name, '"event":"retention_applied"') for name in consumers),
        timeout=60,
        what="the consumers' first retention round (one replica holds it)",
        interval=2,
    )
    assert not [name for name in consumers if logged(name, '"retention_failed"')]


# Run in a pod with that service's own Kafka settings: each attempt's outcome, by name.
KAFKA_ATTEMPTS = """
import json
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from iot_common.settings import KafkaSettings, load_settings
options = load_settings(KafkaSettings).client_options()
options["bootstrap_timeout_ms"] = 10_000
outcomes = {}
def attempt(name, action):
    try:
        outcomes[name] = action()
    except Exception as exc:
        outcomes[name] = type(exc).__name__
def send(topic, **changes):
    producer = KafkaProducer(acks="all", max_block_ms=15_000, **{**options, **changes})
    try:
        producer.send(topic, b'{"probe": true}').get(timeout=20)
        return "allowed"
    finally:
        producer.close(timeout=5)
def read(topic, group=None):
    consumer = KafkaConsumer(group_id=group, enable_auto_commit=False, **options)
    try:
        if group:
            consumer.subscribe([topic])
        else:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            consumer.seek_to_beginning(partition)
        for _ in range(5):
            if consumer.poll(timeout_ms=3_000):
                return "allowed"
        return "nothing"
    finally:
        consumer.close()
def metadata(**changes):
    consumer = KafkaConsumer(**{**options, **changes})
    try:
        return "allowed" if consumer.topics() is not None else "nothing"
    finally:
        consumer.close()
"""


def test_each_kafka_user_may_do_only_what_its_service_does(release: None, platform: Platform) -> None:
    """The broker serves only SASL_SSL and enforces the ACLs of k8s/kafka.yaml's KafkaUsers: the
    producer's credential cannot read readings (alone or in the consumers' group) nor publish
    alert events; the consumer's cannot write readings; a wrong password and a plaintext client
    are turned away, while the same pod's own credential connects."""
    producer = python_in(
        "producer",
        KAFKA_ATTEMPTS
        + """
attempt("own_credential", lambda: metadata())
attempt("read_readings", lambda: read("iot_sensores"))
attempt("read_in_group", lambda: read("iot_sensores", "iot-consumer"))
attempt("publish_alerts", lambda: send("iot_alertas"))
attempt("wrong_password", lambda: metadata(sasl_plain_password="not-" + options["sasl_plain_password"]))
attempt("plaintext", lambda: metadata(security_protocol="PLAINTEXT"))
print(json.dumps(outcomes))
""",
    )
    assert producer["own_credential"] == "allowed", producer
    assert producer["read_readings"] == "TopicAuthorizationFailedError", producer
    assert producer["read_in_group"] == "GroupAuthorizationFailedError", producer
    assert producer["publish_alerts"] == "TopicAuthorizationFailedError", producer
    assert producer["wrong_password"] != "allowed", producer
    assert producer["plaintext"] != "allowed", producer
    consumer = python_in(
        "consumer",
        KAFKA_ATTEMPTS
        + """
attempt("write_readings", lambda: send("iot_sensores"))
print(json.dumps(outcomes))
""",
    )
    assert consumer["write_readings"] == "TopicAuthorizationFailedError", consumer
    assert set(platform.kafka_passwords) == {"iot-producer", "iot-consumer"}


def test_the_consumers_reach_postgresql_over_verified_tls(release: None) -> None:
    """With the chart's defaults (sslmode verify-full, the CA from Secret postgresql-crt, the
    server's certificate for Service "postgresql") every session of the consumers is encrypted:
    pg_stat_ssl says so for each of them."""
    config = json.loads(kubectl("get", "configmap", RELEASE, "-o", "jsonpath={.data}"))
    assert config["POSTGRES_SSLMODE"] == "verify-full"
    encrypted = psql(
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'iot_consumer'"
    ).split()
    assert encrypted, "no session of iot_consumer"
    assert set(encrypted) == {"t"}, encrypted


def test_no_password_shows_in_any_process_argv_on_the_node(release: None, platform: Platform) -> None:
    """The KafkaUsers' and PostgreSQL's passwords (generated by the harness, as the operators
    would), the service roles' and the dashboard's (generated by the chart) reach the pods as
    Secrets, never in an argv: no process on the node - kubelet, containerd, the pods' own -
    shows one in its command line."""
    secrets = [*platform.kafka_passwords.values(), platform.postgres_password]
    for name in (f"{RELEASE}-db-roles", f"{RELEASE}-dashboard-auth"):
        data = json.loads(kubectl("get", "secret", name, "-o", "jsonpath={.data}"))
        secrets += [base64.b64decode(value).decode() for value in data.values()]
    assert len(secrets) == 7
    assert argv_exposing(secrets) == []


# From inside a pod: can it open a TCP connection? "open", or why not.
CONNECT = """
import json, socket, sys
outcomes = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=4).close()
        outcomes[target] = "open"
    except OSError as exc:
        outcomes[target] = type(exc).__name__
print(json.dumps(outcomes))
"""


def connections_from(pod: str, *targets: str, namespace: str = NAMESPACE) -> dict[str, str]:
    out = cluster("kubectl", "-n", namespace, "exec", pod, "--", "python3", "-c", CONNECT, *targets, timeout=120)
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_network_policies_are_enforced_on_the_node(release: None) -> None:
    """The chart's NetworkPolicies, enforced by the node's policy firewall (kube-router):
    a rogue pod in the release's namespace reaches Kafka and PostgreSQL (whose policies are not
    ours) but none of our pods - no metrics, no page; from the monitoring namespace the metrics
    answer; the producer cannot reach PostgreSQL nor the dashboard Kafka, while the consumer
    reaches both."""
    metrics = f"{RELEASE}-consumer-metrics:8000"
    page = f"{RELEASE}-dashboard:8501"
    kafka, postgres = "iot-kafka-kafka-bootstrap:9093", "postgresql:5432"
    cluster(
        "kubectl", "-n", NAMESPACE, "run", "rogue", f"--image=iot-consumer:{TAG}", "--image-pull-policy=IfNotPresent",
        "--restart=Never", "--labels=app=rogue", "--command", "--", "sleep", "infinity",
    )  # fmt: skip
    try:
        kubectl("wait", "--for=condition=Ready", "pod/rogue", "--timeout=120s", timeout=150)
        rogue = connections_from("rogue", kafka, postgres, metrics, page)
        assert rogue[kafka] == rogue[postgres] == "open", rogue  # the network itself works
        assert rogue[metrics] != "open", rogue
        assert rogue[page] != "open", rogue
    finally:
        kubectl("delete", "pod", "rogue", "--wait=false", check=False)
    watcher = connections_from(PROBE, f"{RELEASE}-consumer-metrics.{NAMESPACE}:8000", namespace=MONITORING)
    assert list(watcher.values()) == ["open"], watcher
    producer = connections_from(pods("producer")[0]["metadata"]["name"], kafka, postgres)
    assert producer[kafka] == "open", producer
    assert producer[postgres] != "open", producer
    dashboard = connections_from(pods("dashboard")[0]["metadata"]["name"], postgres, kafka)
    assert dashboard[postgres] == "open", dashboard
    assert dashboard[kafka] != "open", dashboard
    consumer = pods("consumer")[0]["metadata"]["name"]
    assert connections_from(consumer, kafka, postgres) == {kafka: "open", postgres: "open"}


def test_kubectl_logs_show_json_lines(release: None, readme: ReadmeShell) -> None:
    """`kubectl logs` of every service prints one JSON object per line, with event, level,
    service and a UTC timestamp; the README's `logs -f` of the producer and of both consumers
    (prefixed by pod) follow them."""
    followed = readme.follow("kubectl -n iot logs -f deploy/iot-monitor-producer", until='"service":"iot-producer"')
    assert json.loads(followed.splitlines()[-1])["service"] == "iot-producer"
    followed = readme.follow(
        "kubectl -n iot logs -f -l app.kubernetes.io/component=consumer --prefix", until='"service":"iot-consumer"'
    )
    prefix, _, entry = followed.splitlines()[-1].partition(" ")
    assert prefix.startswith(f"[pod/{RELEASE}-consumer-"), prefix
    assert json.loads(entry)["service"] == "iot-consumer"
    for component in ("producer", "consumer", "dashboard"):
        lines = [line for line in kubectl("logs", f"deploy/{RELEASE}-{component}", "--tail=40").splitlines() if line]
        assert lines, component
        structured = [json.loads(line) for line in lines if line.startswith("{")]
        assert structured, f"no JSON line in {component}'s logs"
        for entry in structured:
            assert {"event", "level", "service", "timestamp"} <= entry.keys(), entry
            assert entry["timestamp"].endswith("Z")
        if component != "dashboard":  # Streamlit prints its own banner lines before ours
            assert len(structured) == len(lines), f"{component} logged lines that are not JSON"


def test_readme_port_forwards_reach_the_consumers_and_the_signed_in_page(release: None, readme: ReadmeShell) -> None:
    """The README's port-forwards: the consumers' /metrics and /readyz on localhost:8000, the
    dashboard on localhost:8501, and the password its command prints is the one that signs in."""
    with readme.background(
        "kubectl -n iot port-forward svc/iot-monitor-consumer-metrics 8000", ready="Forwarding from"
    ):
        assert "iot_consumer_rows_inserted_total" in readme.http_get("http://127.0.0.1:8000/metrics")
        assert readme.http_get("http://127.0.0.1:8000/readyz").strip()
    password = readme.run(
        "kubectl -n iot get secret iot-monitor-dashboard-auth -o jsonpath='{.data.password}' | base64 -d"
    )
    assert len(password) >= 12
    with readme.background("kubectl -n iot port-forward svc/iot-monitor-dashboard 8501", ready="Forwarding from"):
        assert readme.http_get("http://127.0.0.1:8501/_stcore/health").strip() == "ok"
    expected = base64.b64decode(
        kubectl("get", "secret", f"{RELEASE}-dashboard-auth", "-o", "jsonpath={.data.password}")
    ).decode()
    assert password == expected


def test_metrics_answer_through_the_services(release: None) -> None:
    """/metrics of the producer and consumer, and the dashboard's page and metrics, answer by
    Service name from the monitoring namespace (cluster DNS, ClusterIP, kube-proxy); the page and
    its metrics are two Services."""
    service = RELEASE
    producer = http_get_from_monitoring(f"http://{service}-producer-metrics.{NAMESPACE}:8000/metrics")
    assert "iot_producer_" in producer
    consumer = http_get_from_monitoring(f"http://{service}-consumer-metrics.{NAMESPACE}:8000/metrics")
    assert "iot_consumer_rows_inserted_total" in consumer
    assert http_get_from_monitoring(f"http://{service}-dashboard.{NAMESPACE}:8501/_stcore/health").strip() == "ok"
    assert "<html" in http_get_from_monitoring(f"http://{service}-dashboard.{NAMESPACE}:8501/").lower()
    metrics = http_get_from_monitoring(f"http://{service}-dashboard-metrics.{NAMESPACE}:8000/metrics")
    assert "iot_dashboard_logins_total" in metrics
    # Every metric the Grafana dashboard and the alert rules query is on a running service's
    # /metrics (the exporter's reach Prometheus through the Pushgateway: checked in its source).
    exposed = exposed_families(producer) | exposed_families(consumer) | exposed_families(metrics)
    queried = set().union(*(metric_families(q) for q in dashboard_queries() + rule_queries()))
    assert sorted(f for f in queried if not f.startswith("iot_exporter_") and f not in exposed) == []
    ports = json.loads(kubectl("get", "service", f"{RELEASE}-dashboard", "-o", "jsonpath={.spec.ports}"))
    assert [p["name"] for p in ports] == ["http"]


def exports_dir() -> Path:
    """The host directory behind the exporter's claim (the harness's hostPath volumes)."""
    volume = kubectl("get", "pvc", f"{RELEASE}-exporter-files", "-o", "jsonpath={.spec.volumeName}")
    path = cluster("kubectl", "get", "pv", volume, "-o", "jsonpath={.spec.hostPath.path}")
    return Path(path)


def test_exporter_job_from_the_cronjob_writes_csv_and_xlsx_on_the_claim(release: None, readme: ReadmeShell) -> None:
    """The README's `kubectl create job --from=cronjob/iot-monitor-exporter export-now` exports
    yesterday (UTC) to the claim: sensores_<day>.csv and .xlsx with every reading of that day,
    both readable; k8s/tools/pvc-reader.yaml copies them out with `kubectl cp`."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    start = datetime(yesterday.year, yesterday.month, yesterday.day, 12, tzinfo=UTC)
    # A gateway that was offline sends yesterday's readings late (kafka-python in the producer pod).
    send = (
        "import json, uuid, datetime as d; from kafka import KafkaProducer\n"
        "from iot_common.settings import KafkaSettings, load_settings\n"
        "p = KafkaProducer(acks='all', **load_settings(KafkaSettings).client_options())\n"
        f"start = d.datetime.fromisoformat({start.isoformat()!r}); sensor = str(uuid.UUID(int=7))\n"
        f"for i in range({BACKFILLED}):\n"
        "    reading = {'sensor_id': sensor, 'timestamp': (start + d.timedelta(seconds=i)).isoformat(),"
        " 'temperatura': 25.0, 'umidade': 50.0}\n"
        "    p.send('iot_sensores', json.dumps(reading).encode())\n"
        "p.flush()\n"
    )
    kubectl("exec", f"deploy/{RELEASE}-producer", "--", "python3", "-c", send)
    day_rows = f"SELECT count(*) FROM sensores WHERE timestamp >= '{yesterday}' AND timestamp < '{yesterday}'::date + 1"
    wait_until(lambda: int(psql(day_rows)) == BACKFILLED, timeout=60, what="yesterday's readings stored", interval=2)

    readme.run("kubectl -n iot create job --from=cronjob/iot-monitor-exporter export-now")
    readme.run("kubectl -n iot wait job/export-now --for=condition=complete --timeout=300s")
    assert '"daily_finished"' in readme.run("kubectl -n iot logs job/export-now")
    directory = exports_dir()
    readme.run("kubectl -n iot apply -f k8s/tools/pvc-reader.yaml")
    readme.run("kubectl -n iot wait pod/pvc-reader --for=condition=Ready --timeout=120s")
    readme.run("kubectl -n iot cp pvc-reader:/exports ./exports")
    readme.run("kubectl -n iot delete -f k8s/tools/pvc-reader.yaml")
    copied = readme.checkout / "exports"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in directory.iterdir())
    assert (copied / f"sensores_{yesterday}.csv").read_bytes() == (directory / f"sensores_{yesterday}.csv").read_bytes()
    with (directory / f"sensores_{yesterday}.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == BACKFILLED
    assert rows[0]["timestamp"].startswith(f"{yesterday}T12:00:00")
    book = openpyxl.load_workbook(directory / f"sensores_{yesterday}.xlsx", read_only=True)
    assert book.active is not None
    sheet_rows = list(book.active.iter_rows(values_only=True))
    assert len(sheet_rows) == BACKFILLED + 1  # header + readings
    assert sheet_rows[0][:3] == ("sensor_id", "timestamp (UTC)", "temperatura (°C)")
    assert isinstance(sheet_rows[1][1], datetime)  # a date-time cell, not text


def _image_of(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["image"])


def test_helm_upgrade_to_new_code_rolls_the_consumers_with_nothing_lost_or_duplicated(
    release: None, images: list[str]
) -> None:
    """`helm upgrade --set image.tag=<new>` to images built from changed code replaces both
    consumer pods (and the producer) while readings keep flowing; the new pods run the new code
    (its marker is in their logs) and afterwards `iot-consumer verify` finds 0 missing and 0
    duplicated."""
    mark = uuid.uuid4().hex
    build_changed_images(UPGRADE_TAG, mark)
    cluster("import", *(f"iot-{service}:{UPGRADE_TAG}" for service in SERVICES), timeout=1200)
    before = {p["metadata"]["name"] for p in pods("consumer")}
    rows_before = int(psql("SELECT count(*) FROM sensores"))

    helm(
        "upgrade",
        RELEASE,
        str(REPO / "charts" / "iot-monitor"),
        "--reuse-values",
        "--set",
        f"image.tag={UPGRADE_TAG}",
        "--wait",
        "--timeout",
        "5m",
    )
    kubectl("rollout", "status", f"deployment/{RELEASE}-consumer", "--timeout=180s", timeout=200)

    after = pods("consumer")
    assert len(after) == 2
    assert before.isdisjoint(p["metadata"]["name"] for p in after), "the consumers were not replaced"
    assert all(_image_of(p).endswith(f":{UPGRADE_TAG}") for p in after + pods("producer"))
    for pod in after + pods("producer"):
        assert mark in kubectl("logs", pod["metadata"]["name"]), f"{pod['metadata']['name']} runs the old code"
    wait_until(
        lambda: int(psql("SELECT count(*) FROM sensores")) > rows_before + 200,
        timeout=120,
        what="readings stored after the upgrade",
        interval=2,
    )
    result = verify()
    assert result["consistent"], result
    assert (result["missing"], result["duplicates"]) == (0, 0)
    assert psql("SELECT count(*) - count(DISTINCT (kafka_partition, kafka_offset)) FROM sensores") == "0"


def test_helm_uninstall_keeps_the_exports_claim(release: None, readme: ReadmeShell) -> None:
    """`helm uninstall` removes the workloads but keeps the exports claim and its files
    (helm.sh/resource-policy: keep): a re-install finds last month's exports."""
    directory = exports_dir()
    files = sorted(p.name for p in directory.iterdir())
    assert any(name.endswith(".csv") for name in files)
    readme.run("helm -n iot uninstall iot-monitor", append=" --wait --timeout 3m")
    assert kubectl("get", "deployments", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").strip() == ""
    claim = json.loads(kubectl("get", "pvc", f"{RELEASE}-exporter-files", "-o", "json"))
    assert claim["status"]["phase"] == "Bound"
    assert sorted(p.name for p in directory.iterdir()) == files


def deployment_pods() -> dict[str, tuple[str, str]]:
    """Each running pod of the release: name -> (component, image)."""
    out = json.loads(kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"))
    return {
        p["metadata"]["name"]: (p["metadata"]["labels"].get("app.kubernetes.io/component", ""), _image_of(p))
        for p in out["items"]
        if p["metadata"].get("deletionTimestamp") is None and p["status"].get("phase") == "Running"
    }


def logged(pod: str, text: str) -> bool:
    return text in kubectl("logs", pod)


def claim_size() -> str | None:
    """The exports claim's requested size, if there is one."""
    out = kubectl("get", "pvc", "-o", "json")
    for claim in json.loads(out)["items"]:
        if claim["metadata"]["name"] == f"{RELEASE}-exporter-files":
            return str(claim["spec"]["resources"]["requests"]["storage"])
    return None


def stored_rows() -> int:
    return int(psql("SELECT count(*) FROM sensores"))


@pytest.mark.skaffold
@pytest.mark.timeout(5400)  # alone (make test-skaffold) it also bears the cluster's and images' set-up
def test_skaffold_dev_builds_deploys_redeploys_only_what_changed_and_cleans_up(
    platform: Platform, readme: ReadmeShell, tmp_path: Path
) -> None:
    """The README's `skaffold dev`, with the repository's skaffold.yaml, as a kind user runs it:
    the four images built by the local Docker daemon and loaded into the node (`kind load`), the
    chart installed, readings flowing; an edit to the consumer's source rebuilds and redeploys
    the consumer alone, whose new pods run the new code, with nothing lost or stored twice;
    Ctrl-C uninstalls the chart and keeps the exports claim; a second `skaffold dev` starts
    clean on what the first left."""
    subprocess.run([str(REPO / "scripts" / "install-tools.sh"), "skaffold"], check=True, timeout=3600)
    # After the helm tests: the claim kept by `helm uninstall`, at the test values' size - not
    # skaffold.yaml's (the chart's default). The chart adopts it as it is (a resize would fail).
    kept_size = claim_size()
    log = tmp_path / "skaffold-dev.log"
    first = SkaffoldDev(readme.spawn("skaffold dev"), log)
    try:
        first.wait_for(r"Watching for changes", timeout=1500)
        output = first.output()
        for service in SERVICES:
            assert f"Building [iot-{service}]" in output or f"iot-{service}: Found" in output, output[-4000:]
        if kept_size is not None:
            assert claim_size() == kept_size
        # Running from images under Skaffold's tags, which only `kind load` put on the node.
        deployed = {image for _, image in deployment_pods().values()}
        assert all(not image.endswith(f":{TAG}") for image in deployed), deployed
        wait_until(lambda: stored_rows() >= 100, timeout=180, what="rows from the skaffold deployment", interval=2)
        before = deployment_pods()
        assert {component for component, _ in before.values()} >= {"producer", "consumer", "dashboard"}

        mark = uuid.uuid4().hex
        with (readme.checkout / "consumer" / "src" / "iot_consumer" / "cli.py").open("a") as source:
            source.write(
                f'\nimport sys as _sys\n_sys.stderr.write(\'{{"event": "skaffold_edit", "mark": "{mark}"}}\\n\')\n'
            )
        edited_at = len(first.lines)
        first.wait_for(r"Building \[iot-consumer\]", start=edited_at, timeout=300)
        first.wait_for(r"Watching for changes", start=edited_at, timeout=900)
        rebuilt = first.output(edited_at)
        assert [s for s in SERVICES if f"Building [iot-{s}]" in rebuilt] == ["consumer"], rebuilt[-4000:]
        kubectl("rollout", "status", f"deployment/{RELEASE}-consumer", "--timeout=180s", timeout=200)
        after = deployment_pods()
        new_consumers = [name for name, (component, _) in after.items() if component == "consumer"]
        assert new_consumers
        assert set(new_consumers).isdisjoint(before), "the consumers were not redeployed"
        for name in new_consumers:
            wait_until(functools.partial(logged, name, mark), timeout=60, what=f"{name} running the edit", interval=2)
        unchanged = {name: pod for name, pod in before.items() if pod[0] in ("producer", "dashboard")}
        assert {name: after.get(name) for name in unchanged} == unchanged, "only the consumer may be redeployed"
        rows = stored_rows()
        wait_until(lambda: stored_rows() > rows + 100, timeout=180, what="rows stored after the redeploy", interval=2)
        result = verify()
        assert result["consistent"], result
        assert (result["missing"], result["duplicates"]) == (0, 0)

        assert first.interrupt() == 0, first.output()[-4000:]
        assert "Cleaning up" in first.output()
        left = kubectl("get", "deployments,cronjobs", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name")
        assert left.strip() == ""
        assert RELEASE not in helm("list", "-q").split()
        claim = json.loads(kubectl("get", "pvc", f"{RELEASE}-exporter-files", "-o", "json"))
        assert claim["status"]["phase"] == "Bound"

        rows = stored_rows()
        second = SkaffoldDev(readme.spawn("skaffold dev"), log)
        try:
            second.wait_for(r"Watching for changes", timeout=900)
            wait_until(lambda: stored_rows() > rows + 100, timeout=180, what="rows from the second skaffold dev")
            result = verify()
            assert (result["consistent"], result["missing"], result["duplicates"]) == (True, 0, 0), result
            assert second.interrupt() == 0, second.output()[-4000:]
        finally:
            second.kill()
        assert kubectl("get", "deployments", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").strip() == ""
    finally:
        first.kill()


def test_teardown_leaves_nothing_behind_and_the_next_cluster_starts(node: None) -> None:
    """`cluster.sh down` leaves no process, cgroup, mount, interface, iptables rule or state
    directory; a second cluster started right after becomes Ready and goes away as cleanly."""
    cluster("down", timeout=120)
    assert cluster("leftovers", check=False) == ""
    cluster("up", timeout=600)
    assert "Ready" in cluster("kubectl", "get", "node", "iot-node")
    cluster("down", timeout=120)
    leftovers = subprocess.run([str(CLUSTER), "leftovers"], capture_output=True, text=True, check=False)
    assert leftovers.returncode == 0, leftovers.stdout
