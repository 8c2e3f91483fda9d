"""Offline checks of everything that deploys iot-monitor (kind and Skaffold cannot run here).

- the Helm chart: lint and render with the defaults and every ci/*-values.yaml; every rendered
  object validated against the Kubernetes schemas (strict) or, for custom resources, the CRDs
  in tests/deploy/reference; then the behaviour the chart promises, asserted on the objects;
- k8s/: Strimzi 1.2.0 resources against the Strimzi CRDs, the rest against Kubernetes';
- docker-compose.yml against the Compose spec, skaffold.yaml against Skaffold's schema, and
  the cross-references between them (images, Dockerfiles, chart paths).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from iot_consumer.alerts.rules import parse_rules
from tests.helpers import GRAFANA_DASHBOARD, REPO, dashboard_queries, metric_families

CHART = REPO / "charts" / "iot-monitor"
VERSION = (REPO / "VERSION").read_text().strip()  # the images' default tag is the chart's appVersion
K8S_VERSION = "1.33.0"
REFERENCE = Path(__file__).resolve().parent / "reference"  # upstream CRDs and schemas, see its README
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
SERVICES = ("producer", "consumer", "exporter", "dashboard")


@cache
def helm() -> str:
    subprocess.run([str(REPO / "scripts" / "install-tools.sh")], check=True, timeout=1200)
    return str(REPO / ".tools" / "bin" / "helm")


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm(), "template", "iot-monitor", str(CHART), "--namespace", "iot", "--kube-version", K8S_VERSION, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_refused(*args: str) -> str:
    """helm template must refuse these values; returns its error output."""
    result = subprocess.run(
        [helm(), "template", "x", str(CHART), "--kube-version", K8S_VERSION, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0, "helm rendered values it should refuse"
    return result.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → openAPIV3Schema, from the reference CRDs."""
    schemas = {}
    for path in [*REFERENCE.glob("strimzi-1.2.0-crds/*.yaml"), *REFERENCE.glob("prometheus-operator-crds/*.yaml")]:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def _forbid_unknown_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """Like `kubectl --validate=strict`: objects with declared properties accept no others."""
    schema = dict(schema)
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern:
        # Go's regexp takes inline flags anywhere (PrometheusRule: '^(?i)(abort|warn)?$');
        # Python's only at the start.
        schema["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        if key in schema:
            schema[key] = {k: _forbid_unknown_fields(v) for k, v in schema[key].items()}
    if isinstance(schema.get("items"), dict):
        schema["items"] = _forbid_unknown_fields(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _forbid_unknown_fields(schema["additionalProperties"])
    return schema


def validate_object(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in crd_schemas():
        schema = _forbid_unknown_fields(crd_schemas()[key])
        schema["properties"] = {**schema.get("properties", {}), "metadata": {"type": "object"}}
        jsonschema.validate(doc, schema)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# ------------------------------------------------------------------------------- the chart
def test_chart_lints_strictly() -> None:
    """`helm lint --strict` passes with the defaults and with every ci/*-values.yaml."""
    for values in [None, *CI_VALUES]:
        args = ["lint", str(CHART), "--strict", "--kube-version", K8S_VERSION]
        if values:
            args += ["-f", str(values)]
        result = subprocess.run([helm(), *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_every_rendered_object_is_schema_valid(values: Path | None) -> None:
    """Defaults and each ci/*-values.yaml render objects valid for Kubernetes 1.33 (strict) and the CRDs."""
    docs = render(*(["-f", str(values)] if values else []))
    assert docs
    for doc in docs:
        validate_object(doc)


def test_defaults_wire_to_strimzi_and_bitnami_names() -> None:
    """Kafka bootstrap = <cluster>-kafka-bootstrap:9093 (Strimzi's tls listener) over SASL_SSL;
    each service logs in as its own role with its password from the chart's roles Secret, never
    from the ConfigMap (and only the migration Job uses the owner's, from the Bitnami chart's
    Secret); the producer, which never talks to PostgreSQL, needs no Secret to start."""
    docs = render()
    (config,) = by_kind(docs, "ConfigMap").values()
    data = config["data"]
    assert data["KAFKA_BOOTSTRAP_SERVERS"] == "iot-kafka-kafka-bootstrap:9093"
    assert data["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert data["POSTGRES_SSLMODE"] == "verify-full"
    assert data["KAFKA_TOPIC"] == "iot_sensores"
    assert data["POSTGRES_HOST"] == "postgresql"
    assert data["LOG_FORMAT"] == "json"
    assert not [k for k in data if "PASSWORD" in k]
    deployments = by_kind(docs, "Deployment")
    pods = {name: d["spec"]["template"]["spec"] for name, d in deployments.items()}
    pods["iot-monitor-exporter"] = by_kind(docs, "CronJob")["iot-monitor-exporter"]["spec"]["jobTemplate"]["spec"][
        "template"
    ]["spec"]
    for name, pod in pods.items():
        (container,) = pod["containers"]
        assert {"configMapRef": {"name": "iot-monitor"}} in container["envFrom"]
        password = [e for e in container.get("env", []) if e["name"] == "POSTGRES_PASSWORD"]
        if name == "iot-monitor-producer":
            assert password == []
            assert "postgresql" not in json.dumps(pod)
            continue
        component = name.removeprefix("iot-monitor-")
        user = [e["value"] for e in container["env"] if e["name"] == "POSTGRES_USER"]
        assert user == [f"iot_{component}"]
        assert password[0]["valueFrom"]["secretKeyRef"] == {
            "name": "iot-monitor-db-roles",
            "key": f"{component}-password",
        }
    assert "POSTGRES_USER" not in data  # no default role a service could fall back to


def test_each_service_talks_to_kafka_as_its_own_kafka_user() -> None:
    """The producer and the consumer log in as the KafkaUsers of k8s/kafka.yaml, each with the
    password from the Secret Strimzi's User Operator creates for it, and trust the cluster CA;
    the exporter, the dashboard (by default) and the migration Job get no Kafka credential, no
    CA and no Kafka settings they could use."""
    docs = render("--set", "dashboard.enabled=true")
    kafka_users = {d["metadata"]["name"] for d in yaml.safe_load_all((REPO / "k8s" / "kafka.yaml").read_text()) if d
                   and d["kind"] == "KafkaUser"}  # fmt: skip
    pods = {
        n.removeprefix("iot-monitor-"): d["spec"]["template"]["spec"] for n, d in by_kind(docs, "Deployment").items()
    }
    pods["exporter"] = by_kind(docs, "CronJob")["iot-monitor-exporter"]["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]
    pods["migrate"] = by_kind(docs, "Job")["iot-monitor-migrate"]["spec"]["template"]["spec"]
    for component, pod in pods.items():
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if component in ("producer", "consumer"):
            user = f"iot-{component}"
            assert user in kafka_users
            assert env["KAFKA_SASL_USERNAME"]["value"] == user
            assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": user, "key": "password"}
            assert env["KAFKA_SSL_CAFILE"]["value"] == "/etc/kafka-ca/ca.crt"
            assert volumes["kafka-ca"]["secret"]["secretName"] == "iot-kafka-cluster-ca-cert"
        else:
            assert not [name for name in env if name.startswith("KAFKA_SASL") or name == "KAFKA_SSL_CAFILE"], component
            assert "kafka-ca" not in volumes, component
    dashboard_env = {e["name"]: e.get("value") for e in pods["dashboard"]["containers"][0]["env"]}
    assert dashboard_env["DASHBOARD_LAG_FROM_KAFKA"] == "false"
    with_lag = render("--set", "dashboard.enabled=true", "--set", "dashboard.kafka.username=iot-dashboard")
    (container,) = by_kind(with_lag, "Deployment")["iot-monitor-dashboard"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DASHBOARD_LAG_FROM_KAFKA"]["value"] == "true"
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "iot-dashboard", "key": "password"}


def test_the_chart_refuses_insecure_transports_outside_a_development_install() -> None:
    """Kafka in clear text (PLAINTEXT, SASL_PLAINTEXT) and PostgreSQL sslmode disable, allow or
    prefer are refused with a message saying what to use instead, unless development=true;
    verify-full without a CA and SASL without a user are refused too."""
    for protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
        error = render_refused("--set", f"kafka.securityProtocol={protocol}")
        assert f"kafka.securityProtocol={protocol}" in error, error
        assert "development=true" in error, error
    for mode in ("disable", "allow", "prefer"):
        error = render_refused("--set", f"postgresql.sslmode={mode}")
        assert f"postgresql.sslmode={mode}" in error, error
        assert "verify-full" in error, error
    assert "caSecret" in render_refused("--set", "postgresql.caSecret=")
    assert "producer.kafka.username" in render_refused("--set", "producer.kafka.username=")
    development = render("-f", str(CHART / "ci" / "development-values.yaml"))
    (config,) = by_kind(development, "ConfigMap").values()
    assert (config["data"]["KAFKA_SECURITY_PROTOCOL"], config["data"]["POSTGRES_SSLMODE"]) == ("PLAINTEXT", "prefer")
    assert config["data"]["KAFKA_BOOTSTRAP_SERVERS"] == "iot-kafka-kafka-bootstrap:9092"


def test_a_migration_hook_creates_the_service_roles_before_every_install_and_upgrade() -> None:
    """The migration Job runs `iot-consumer migrate` as the owner (the Bitnami Secret), before
    install and upgrade (a Helm hook, weight 0), with each service role's password from the roles
    Secret - which is itself a hook (weight -10, so it exists first), generated with random
    passwords and kept (resource-policy keep). Without the Job the chart refuses to guess."""
    docs = render()
    (job,) = by_kind(docs, "Job").values()
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["POSTGRES_USER"] == "iot"
    assert env["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": "postgresql", "key": "password"}}
    for variable, key in (
        ("CONSUMER_DB_PASSWORD", "consumer-password"),
        ("EXPORTER_DB_PASSWORD", "exporter-password"),
        ("DASHBOARD_DB_PASSWORD", "dashboard-password"),
    ):
        assert env[variable] == {"secretKeyRef": {"name": "iot-monitor-db-roles", "key": key}}
    secret = by_kind(docs, "Secret")["iot-monitor-db-roles"]
    annotations = secret["metadata"]["annotations"]
    assert int(annotations["helm.sh/hook-weight"]) < int(hooks["helm.sh/hook-weight"])
    assert annotations["helm.sh/resource-policy"] == "keep"
    passwords = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert sorted(passwords) == ["consumer-password", "dashboard-password", "exporter-password"]
    assert all(len(p) == 32 and p.isalnum() for p in passwords.values())
    assert len(set(passwords.values())) == 3
    assert passwords != {
        key: base64.b64decode(value).decode()
        for key, value in by_kind(render(), "Secret")["iot-monitor-db-roles"]["data"].items()
    }, "generated afresh where none exists (kept where one does)"
    own = render("--set", "postgresql.serviceRoles.existingSecret=my-roles")
    assert "iot-monitor-db-roles" not in by_kind(own, "Secret")
    assert "name: my-roles" in yaml.safe_dump(by_kind(own, "Job"))
    refused = render_refused("--set", "migrations.enabled=false")
    assert "postgresql.serviceRoles.existingSecret" in refused


def test_pods_are_hardened_with_resources() -> None:
    """Non-root uid 10001, read-only root with a writable /tmp, no privilege escalation, all
    capabilities dropped, RuntimeDefault seccomp, requests and limits on every container."""
    docs = render()
    pods = [d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment").values()]
    pods.append(next(iter(by_kind(docs, "CronJob").values()))["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    assert len(pods) == 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]


def test_services_have_probes_and_metrics_ports() -> None:
    """Producer and consumer: liveness on /healthz, readiness on /readyz, port `metrics`
    exposed by a Service that selects exactly that component."""
    docs = render()
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    for component in ("producer", "consumer"):
        deployment = deployments[f"iot-monitor-{component}"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"iot-{component}:{VERSION}"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["ports"] == [{"name": "metrics", "containerPort": 8000, "protocol": "TCP"}]
        service = services[f"iot-monitor-{component}-metrics"]
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == component


def test_consumer_replicas_have_a_disruption_budget_and_never_exceed_partitions() -> None:
    """Two consumer replicas in one group with a PodDisruptionBudget and a grace period for the
    open transaction; more replicas than partitions is refused at render time."""
    docs = render()
    consumer = by_kind(docs, "Deployment")["iot-monitor-consumer"]
    assert consumer["spec"]["replicas"] == 2
    assert consumer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    assert consumer["spec"]["template"]["spec"]["containers"][0]["args"][:3] == ["run", "--group", "iot-consumer"]
    (pdb,) = by_kind(docs, "PodDisruptionBudget").values()
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == consumer["spec"]["selector"]["matchLabels"]
    assert "larger than kafka.partitions" in render_refused("--set", "consumer.replicaCount=7")


def test_consumer_applies_retention_and_the_chart_refuses_rollups_kept_shorter_than_data() -> None:
    """By default the consumer keeps 30 days of readings, 90 of minute rollups and 730 of hour
    rollups (dropping expired partitions hourly); rollups kept shorter than the data below them
    are refused at render time, naming both values."""
    args = by_kind(render(), "Deployment")["iot-monitor-consumer"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--retention-days") + 1] == "30"
    assert args[args.index("--minute-rollup-retention-days") + 1] == "90"
    assert args[args.index("--hour-rollup-retention-days") + 1] == "730"
    assert args[args.index("--housekeeping-interval") + 1] == "3600"
    refused = render_refused("--set", "consumer.retention.minuteRollupDays=7")
    assert "minuteRollupDays (7) keeps less than rawDays (30" in refused
    refused = render_refused("--set", "consumer.retention.hourRollupDays=60")
    assert "hourRollupDays (60) keeps less than minuteRollupDays (90" in refused


def test_exporter_is_a_forbid_cronjob_writing_to_a_kept_claim() -> None:
    """The exporter is a daily CronJob (UTC, never two at once, history kept for `kubectl logs`)
    writing to a claim that survives `helm uninstall`."""
    docs = render()
    cron = by_kind(docs, "CronJob")["iot-monitor-exporter"]["spec"]
    assert cron["schedule"] == "15 0 * * *"
    assert cron["timeZone"] == "Etc/UTC"
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["successfulJobsHistoryLimit"] == 3
    assert cron["failedJobsHistoryLimit"] == 3
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"][:3] == ["daily", "--out", "/exports"]
    assert {"name": "exports", "mountPath": "/exports"} in container["volumeMounts"]
    claim = next(v for v in pod["volumes"] if v["name"] == "exports")["persistentVolumeClaim"]["claimName"]
    pvc = by_kind(docs, "PersistentVolumeClaim")[claim]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert (
        claim
        == yaml.safe_load((REPO / "k8s" / "tools" / "pvc-reader.yaml").read_text())["spec"]["volumes"][0][
            "persistentVolumeClaim"
        ]["claimName"]
    )


def test_service_monitors_and_managed_kafka_values() -> None:
    """ci/monitoring-values: one ServiceMonitor per server; ci/managed-kafka-values: SASL
    password and CA from Secrets, registry prefix, no producer."""
    monitoring = render("-f", str(CHART / "ci" / "monitoring-values.yaml"))
    monitors = by_kind(monitoring, "ServiceMonitor")
    assert set(monitors) == {"iot-monitor-producer", "iot-monitor-consumer"}
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors.values())
    managed = render("-f", str(CHART / "ci" / "managed-kafka-values.yaml"))
    assert "iot-monitor-producer" not in by_kind(managed, "Deployment")
    consumer = by_kind(managed, "Deployment")["iot-monitor-consumer"]["spec"]["template"]["spec"]
    (container,) = consumer["containers"]
    assert container["image"] == f"registry.example.com/iot/iot-consumer:{VERSION}"
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKA_SASL_USERNAME"]["value"] == "iot-monitor"
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "iot-kafka-user", "key": "password"}
    assert env["KAFKA_SSL_CAFILE"]["value"] == "/etc/kafka-ca/ca.crt"
    (config,) = by_kind(managed, "ConfigMap").values()
    assert config["data"]["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["data"]["KAFKA_BOOTSTRAP_SERVERS"] == "b-1.kafka.example.com:9096,b-2.kafka.example.com:9096"
    assert {"name": "kafka-ca", "mountPath": "/etc/kafka-ca", "readOnly": True} in container["volumeMounts"]
    volumes = {v["name"]: v for v in consumer["volumes"]}
    assert volumes["kafka-ca"]["secret"]["secretName"] == "iot-kafka-ca"


def test_values_schema_rejects_bad_values() -> None:
    """values.schema.json refuses an unknown export format, dashboard window and topic name."""
    assert "formats" in render_refused("--set", "exporter.formats=pdf")
    assert "window" in render_refused("--set", "dashboard.window=1 week")
    assert "topic" in render_refused("--set", "consumer.alerts.topic=no spaces please")


def test_consumer_alerts_by_default_with_the_built_in_rules() -> None:
    """Alerts are on by default with the built-in rules; `consumer.alerts.enabled=false` turns them
    off; no PrometheusRule and no dashboard unless asked for."""
    docs = render()
    args = by_kind(docs, "Deployment")["iot-monitor-consumer"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-3:] == ["--alerts", "--alerts-topic", "iot_alertas"]
    assert "--alert-rules" not in args
    assert not by_kind(docs, "PrometheusRule")
    assert "iot-monitor-dashboard" not in by_kind(docs, "Deployment")
    no_alerts = render("--set", "consumer.alerts.enabled=false")
    args = by_kind(no_alerts, "Deployment")["iot-monitor-consumer"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-1] == "--no-alerts"


def test_alert_rules_dashboard_and_prometheus_rule_values() -> None:
    """ci/alerts-dashboard-values: the rules from values reach the consumer as a mounted file
    that our own parser accepts; the dashboard logs in as the read-only role, is hardened and
    probed on Streamlit's health endpoint; the PrometheusRule carries files/prometheus-rules.yaml."""
    docs = render("-f", str(CHART / "ci" / "alerts-dashboard-values.yaml"))
    config = by_kind(docs, "ConfigMap")["iot-monitor-alert-rules"]
    rules = parse_rules(config["data"]["rules.toml"], "chart")
    assert [r.name for r in rules.all] == ["temperatura_alta", "sensor_silencioso"]
    consumer = by_kind(docs, "Deployment")["iot-monitor-consumer"]["spec"]["template"]
    (container,) = consumer["spec"]["containers"]
    assert container["args"][-2:] == ["--alert-rules", "/etc/iot-monitor/alert-rules/rules.toml"]
    assert {"name": "alert-rules", "mountPath": "/etc/iot-monitor/alert-rules", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "alert-rules", "configMap": {"name": "iot-monitor-alert-rules"}} in consumer["spec"]["volumes"]
    assert "checksum/alert-rules" in consumer["metadata"]["annotations"]

    dashboard = by_kind(docs, "Deployment")["iot-monitor-dashboard"]["spec"]["template"]["spec"]
    (container,) = dashboard["containers"]
    assert container["image"] == f"iot-dashboard:{VERSION}"
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_USER"]["value"] == "iot_dashboard"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "iot-monitor-db-roles",
        "key": "dashboard-password",
    }
    assert env["DASHBOARD_WINDOW"]["value"] == "1 h"
    assert container["readinessProbe"]["httpGet"] == {"path": "/_stcore/health", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert env["HOME"]["value"] == "/tmp"
    assert dashboard["securityContext"]["runAsNonRoot"] is True
    service = by_kind(docs, "Service")["iot-monitor-dashboard"]
    assert {"name": "http", "port": 8501, "targetPort": "http", "protocol": "TCP"} in service["spec"]["ports"]

    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    shared = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["spec"] == shared


def test_pipeline_alert_rules_are_shared_with_compose_and_use_metrics_that_exist() -> None:
    """One rules file for the chart and Compose's Prometheus; every metric an expression
    names is one our services export (a typo would make an alert silently never fire)."""
    shared = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    rules = [rule for group in shared["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"IotConsumerLagHigh", "IotDeadLettersArriving", "IotExporterLastSuccessStale"} <= names
    sources = "\n".join(
        p.read_text()
        for package in ("consumer", "exporter", "producer", "dashboard")
        for p in (REPO / package).rglob("*.py")
    )
    for rule in rules:
        assert rule["labels"]["severity"]
        assert rule["annotations"]["summary"]
        for metric in set(re.findall(r"\biot_[a-z_]+", rule["expr"])):
            assert f'"{metric}"' in sources, f"{rule['alert']}: no service exports {metric}"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./charts/iot-monitor/files/prometheus-rules.yaml:/etc/prometheus/rules/iot-monitor.yaml:ro" in mounts
    prometheus = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yaml"]


# ------------------------------------------------------------------------------- k8s/
def test_strimzi_resources_match_the_crds() -> None:
    """Kafka + KafkaNodePool (KRaft, Kafka 4.3.1) + KafkaTopic iot-sensores → topic iot_sensores."""
    docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "kafka.yaml").read_text()) if d]
    for doc in docs:
        assert doc["apiVersion"] == "kafka.strimzi.io/v1"
        validate_object(doc)
    kinds = {d["kind"]: d for d in docs if d["kind"] != "KafkaTopic"}
    assert kinds["Kafka"]["spec"]["kafka"]["version"] == "4.3.1"
    assert kinds["KafkaNodePool"]["spec"]["roles"] == ["controller", "broker"]
    topics = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaTopic"}
    assert {name: (t["spec"]["topicName"], t["spec"]["partitions"]) for name, t in topics.items()} == {
        "iot-sensores": ("iot_sensores", 6),
        "iot-alertas": ("iot_alertas", 6),
    }
    cluster = kinds["Kafka"]["metadata"]["name"]
    # One client listener, TLS with SCRAM-SHA-512, and ACLs enforced.
    (listener,) = kinds["Kafka"]["spec"]["kafka"]["listeners"]
    assert (listener["port"], listener["tls"], listener["authentication"]) == (9093, True, {"type": "scram-sha-512"})
    assert kinds["Kafka"]["spec"]["kafka"]["authorization"] == {"type": "simple"}
    assert "userOperator" in kinds["Kafka"]["spec"]["entityOperator"]
    users = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "KafkaUser"}
    granted = {
        name: {(a["resource"]["type"], a["resource"]["name"], op) for a in spec["authorization"]["acls"] for op in a["operations"]}
        for name, spec in users.items()
    }  # fmt: skip
    assert granted == {
        "iot-producer": {("topic", "iot_sensores", "Write"), ("topic", "iot_sensores", "Describe")},
        "iot-consumer": {
            ("topic", "iot_sensores", "Read"), ("topic", "iot_sensores", "Describe"),
            ("group", "iot-consumer", "Read"), ("group", "iot-consumer", "Describe"),
            ("topic", "iot_alertas", "Write"), ("topic", "iot_alertas", "Describe"),
        },
    }  # fmt: skip
    defaults_all = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults_all["producer"]["kafka"]["username"] == "iot-producer"
    assert defaults_all["consumer"]["kafka"]["username"] == "iot-consumer"
    assert defaults_all["consumer"]["group"] == "iot-consumer"
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics.values()} == {cluster}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["kafka"]["clusterName"] == cluster
    assert defaults["kafka"]["partitions"] == topics["iot-sensores"]["spec"]["partitions"]
    assert defaults["consumer"]["alerts"]["topic"] == topics["iot-alertas"]["spec"]["topicName"]


def test_plain_manifests_are_valid_kubernetes() -> None:
    """The plain manifests in k8s/ are valid Kubernetes objects (strict schema)."""
    for path in (
        REPO / "k8s" / "namespace.yaml",
        REPO / "k8s" / "tools" / "pvc-reader.yaml",
    ):
        for doc in yaml.safe_load_all(path.read_text()):
            validate_object(doc)


def test_bitnami_values_pull_from_the_legacy_repository() -> None:
    """The Bitnami chart's default image no longer pulls (moved 2025-08): ours points at
    bitnamilegacy with the swap allowed, and its Secret/user match the chart's defaults."""
    values = yaml.safe_load((REPO / "k8s" / "postgresql-values.yaml").read_text())
    assert values["image"]["repository"] == "bitnamilegacy/postgresql"
    assert values["global"]["security"]["allowInsecureImages"] is True
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["postgresql"]
    assert values["auth"]["username"] == defaults["username"]
    assert values["auth"]["database"] == defaults["database"]
    # No committed password: the Bitnami chart generates them into its Secret.
    assert not {"password", "postgresPassword"} & set(values["auth"])
    # TLS with the chart's generated certificate, whose Secret (<release>-crt) is our CA's.
    assert values["tls"] == {"enabled": True, "autoGenerated": True}
    assert defaults["caSecret"] == "postgresql-crt"
    assert defaults["sslmode"] == "verify-full"


def test_kind_config_names_the_cluster() -> None:
    """k8s/kind-config.yaml creates the cluster `iot` (kube-context kind-iot, as the README says)."""
    config = yaml.safe_load((REPO / "k8s" / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == "iot"


# ------------------------------------------------------------------------------- compose and skaffold
def test_compose_file_matches_the_compose_spec() -> None:
    """docker-compose.yml is valid against the Compose spec; services start in dependency order,
    restart by themselves, keep PostgreSQL on a volume and build our four images from their Dockerfiles."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    # The spec names draft-07 by an https URL jsonschema does not map; say which draft it is.
    jsonschema.Draft7Validator(json.loads((REFERENCE / "schemas" / "compose-spec.json").read_text())).validate(compose)
    services = compose["services"]
    assert services["kafka"]["image"] == "${KAFKA_IMAGE:-apache/kafka:4.3.1}"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["consumer"]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    for name in ("consumer", "exporter", "dashboard"):  # each logs in as its own role, once migrate made it
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["environment"]["POSTGRES_USER"] == f"iot_{name}"
        assert services["migrate"]["environment"][f"{name.upper()}_DB_PASSWORD"].startswith("${")
    for name in (*SERVICES, "kafka", "postgres", "prometheus", "pushgateway"):
        assert services[name]["restart"] in ("always", "unless-stopped"), name
    assert services["migrate"]["restart"] == "no"  # one-shot
    assert any(v.startswith("postgres-data:") for v in services["postgres"]["volumes"])
    for service in SERVICES:
        assert services[service]["build"]["dockerfile"] == f"{service}/Dockerfile"
        assert (REPO / services[service]["build"]["dockerfile"]).is_file()
        assert services[service]["image"].split(":")[0] == f"iot-{service}"
    prometheus = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert {"iot-producer", "iot-consumer", "pushgateway"} <= jobs
    assert services["exporter"]["environment"]["PUSHGATEWAY_URL"] == "http://pushgateway:9091"


def test_skaffold_matches_its_schema_and_the_chart() -> None:
    """Four artifacts with existing Dockerfiles, injected into the chart's image values; the
    Strimzi and Bitnami charts pinned (skaffold-platform.yaml); our Kafka manifests and chart
    paths exist."""
    configs = [
        c
        for name in ("skaffold.yaml", "skaffold-platform.yaml")
        for c in yaml.safe_load_all((REPO / name).read_text())
        if c
    ]
    schema = json.loads((REFERENCE / "schemas" / "skaffold-v4beta14.json").read_text())
    for config in configs:
        jsonschema.validate({**config, "apiVersion": "skaffold/v4beta14"}, schema)
        assert config["apiVersion"] in ("skaffold/v4beta13", "skaffold/v4beta14")
    by_name = {c["metadata"]["name"]: c for c in configs}
    artifacts = by_name["iot-monitor"]["build"]["artifacts"]
    assert [a["image"] for a in artifacts] == [f"iot-{s}" for s in SERVICES]
    for artifact in artifacts:
        assert (REPO / artifact["context"] / artifact["docker"]["dockerfile"]).is_file()
    (release,) = by_name["iot-monitor"]["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for service in SERVICES:
        key = f"IMAGE_REPO_iot_{service}"
        assert release["setValueTemplates"][f"{service}.image.repository"] == "{{." + key + "}}"
        assert values[service]["image"]["repository"] == f"iot-{service}"
    platform = {r["name"]: r for r in by_name["platform"]["deploy"]["helm"]["releases"]}
    assert platform["strimzi"]["version"] == "1.2.0"
    assert platform["strimzi"]["remoteChart"] == "oci://quay.io/strimzi-helm/strimzi-kafka-operator"
    assert platform["postgresql"]["valuesFiles"] == ["k8s/postgresql-values.yaml"]
    for config in configs:
        for path in config.get("manifests", {}).get("rawYaml", []):
            assert (REPO / path).is_file()


def test_skaffold_dev_cleans_up_only_the_chart() -> None:
    """`skaffold dev` deletes on Ctrl-C all it deployed, at once: with Strimzi's operator in the
    same run, Kafka and KafkaTopics stay Terminating on their finalizers and the next run fails.
    So skaffold.yaml deploys only our chart; the platform is its own file, run once."""
    (app,) = [c for c in yaml.safe_load_all((REPO / "skaffold.yaml").read_text()) if c]
    assert app["metadata"]["name"] == "iot-monitor"
    assert "requires" not in app
    assert "manifests" not in app
    assert [r["name"] for r in app["deploy"]["helm"]["releases"]] == ["iot-monitor"]
    platform = [c for c in yaml.safe_load_all((REPO / "skaffold-platform.yaml").read_text()) if c]
    assert [c["metadata"]["name"] for c in platform] == ["namespace", "platform", "kafka"]
    readme = (REPO / "README.md").read_text()
    assert "skaffold run -f skaffold-platform.yaml" in readme


# ------------------------------------------------------------------------------- found at runtime
def test_compose_kafka_keeps_its_log_on_the_volume() -> None:
    """The broker's log directory is the mounted volume (apache/kafka's default is under /tmp):
    otherwise `down` + `up` restarts every topic at offset 0 under PostgreSQL's stored positions."""
    kafka = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"]}
    assert log_dirs in mounts
    assert mounts[log_dirs] == "kafka-data"
    assert kafka["environment"]["CLUSTER_ID"]  # the formatted volume is reused, not reformatted


def test_compose_third_party_images_can_be_stood_in_for() -> None:
    """Each image we do not build is a variable whose default is the upstream image, so a
    test (or an air-gapped site) can supply a compatible one without editing the file."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    expected = {
        "kafka": "${KAFKA_IMAGE:-apache/kafka:4.3.1}",
        "kafka-init": "${KAFKA_IMAGE:-apache/kafka:4.3.1}",
        "postgres": "${POSTGRES_IMAGE:-postgres:17}",
        "pushgateway": "${PUSHGATEWAY_IMAGE:-prom/pushgateway:v1.11.1}",
        "prometheus": "${PROMETHEUS_IMAGE:-prom/prometheus:v3.5.0}",
    }
    assert {name: services[name]["image"] for name in expected} == expected
    assert services["producer"]["environment"]["PRODUCER_SEED"] == "${PRODUCER_SEED:-1}"


def test_the_production_kafka_profile_survives_a_broker_down_without_losing_an_acknowledged_write() -> None:
    """k8s/kafka-production.yaml, valid against the Strimzi 1.2.0 CRDs: three KRaft nodes, every
    topic (internal ones too) replicated 3 times with min.insync.replicas 2, no unclean leader
    election, one broker down at a time (PodDisruptionBudget); the same listener, users, ACLs and
    topics as k8s/kafka.yaml, so the chart works against either."""
    production = [d for d in yaml.safe_load_all((REPO / "k8s" / "kafka-production.yaml").read_text()) if d]
    development = [d for d in yaml.safe_load_all((REPO / "k8s" / "kafka.yaml").read_text()) if d]
    for doc in production:
        assert doc["apiVersion"] == "kafka.strimzi.io/v1"
        validate_object(doc)
    (pool,) = [d for d in production if d["kind"] == "KafkaNodePool"]
    assert pool["spec"]["replicas"] == 3
    assert pool["spec"]["roles"] == ["controller", "broker"]
    (kafka,) = [d["spec"]["kafka"] for d in production if d["kind"] == "Kafka"]
    (dev_kafka,) = [d["spec"]["kafka"] for d in development if d["kind"] == "Kafka"]
    config = kafka["config"]
    assert config["min.insync.replicas"] == config["transaction.state.log.min.isr"] == 2
    assert config["default.replication.factor"] == config["offsets.topic.replication.factor"] == 3
    assert config["transaction.state.log.replication.factor"] == 3
    assert config["unclean.leader.election.enable"] is False
    assert kafka["template"]["podDisruptionBudget"] == {"maxUnavailable": 1}
    assert (kafka["version"], kafka["listeners"], kafka["authorization"]) == (
        dev_kafka["version"], dev_kafka["listeners"], dev_kafka["authorization"]
    )  # fmt: skip
    topics = {d["spec"]["topicName"]: d["spec"] for d in production if d["kind"] == "KafkaTopic"}
    dev_topics = {d["spec"]["topicName"]: d["spec"] for d in development if d["kind"] == "KafkaTopic"}
    assert topics.keys() == dev_topics.keys()
    for name, spec in topics.items():
        assert (spec["replicas"], spec["config"]["min.insync.replicas"]) == (3, 2), name
        assert spec["partitions"] == dev_topics[name]["partitions"]
        assert spec["config"]["retention.ms"] == dev_topics[name]["config"]["retention.ms"]
    users = [d for d in production if d["kind"] == "KafkaUser"]
    assert users == [d for d in development if d["kind"] == "KafkaUser"]


def test_strimzi_kafka_keeps_its_volume_when_the_cluster_is_deleted() -> None:
    """deleteClaim: false on every persistent volume of every KafkaNodePool (development and
    production profiles): re-creating the Kafka cluster must not hand PostgreSQL's stored
    positions an empty log."""
    pools = [
        d
        for manifest in ("kafka.yaml", "kafka-production.yaml")
        for d in yaml.safe_load_all((REPO / "k8s" / manifest).read_text())
        if d and d["kind"] == "KafkaNodePool"
    ]
    assert len(pools) == 2
    for pool in pools:
        storage = pool["spec"]["storage"]
        volumes = storage.get("volumes", [storage])
        for volume in volumes:
            if volume["type"] == "persistent-claim":
                assert volume["deleteClaim"] is False


def producer_args(*values: str) -> list[str]:
    docs = render(*values)
    pod = by_kind(docs, "Deployment")["iot-monitor-producer"]["spec"]["template"]["spec"]
    return list(pod["containers"][0]["args"])


def test_producer_simulates_the_same_sensors_after_every_rollout() -> None:
    """The producer gets a seed that is the same on every render of a release (so a rollout
    keeps its sensors), an explicit one when given; a second replica (the same sensors twice)
    is refused."""
    args = producer_args()
    seed = args[args.index("--seed") + 1]
    assert seed.isdigit()
    assert producer_args() == args
    assert producer_args("--set", "image.tag=new")[args.index("--seed") + 1] == seed
    assert producer_args("--set", "producer.seed=42")[args.index("--seed") + 1] == "42"
    assert "replicaCount" in render_refused("--set", "producer.replicaCount=2")


def test_a_postgres_ca_reaches_every_pod_that_talks_to_postgres() -> None:
    """sslmode verify-full needs the server's CA: postgresql.caSecret is mounted and named by
    PGSSLROOTCERT in the consumer, exporter and dashboard - not the producer; verify-* without
    a CA is refused at render time."""
    docs = render(
        "--set",
        "postgresql.sslmode=verify-full",
        "--set",
        "postgresql.caSecret=db-ca",
        "--set",
        "dashboard.enabled=true",
        "--set",
        "exporter.extraEnv[0].name=EXPORT_X",
        "--set",
        "exporter.extraEnv[0].value=one",
    )
    pods = {n: d["spec"]["template"]["spec"] for n, d in by_kind(docs, "Deployment").items()}
    pods["iot-monitor-exporter"] = by_kind(docs, "CronJob")["iot-monitor-exporter"]["spec"]["jobTemplate"]["spec"][
        "template"
    ]["spec"]
    for name, pod in pods.items():
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if name == "iot-monitor-producer":
            assert "PGSSLROOTCERT" not in env
            assert "postgres-ca" not in volumes
            continue
        assert env["PGSSLROOTCERT"]["value"] == "/etc/postgres-ca/ca.crt"
        assert volumes["postgres-ca"]["secret"]["secretName"] == "db-ca"
        assert {"name": "postgres-ca", "mountPath": "/etc/postgres-ca", "readOnly": True} in container["volumeMounts"]
    exporter_env = {e["name"]: e for e in pods["iot-monitor-exporter"]["containers"][0]["env"]}
    assert exporter_env["EXPORT_X"]["value"] == "one"
    assert "caSecret" in render_refused("--set", "postgresql.sslmode=verify-full", "--set", "postgresql.caSecret=")


def test_exporter_alerts_need_a_pushgateway() -> None:
    """Without a Pushgateway the exporter reports no last success: the PrometheusRule leaves
    out the exporter's alerts (they would fire for ever) and keeps every other rule."""
    shared = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    everything = {r["alert"] for g in shared["groups"] for r in g["rules"]}
    (rule,) = by_kind(render("--set", "prometheusRule.enabled=true"), "PrometheusRule").values()
    rendered = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert rendered == {a for a in everything if not a.startswith("IotExporter")}
    (rule,) = by_kind(
        render("--set", "prometheusRule.enabled=true", "--set", "exporter.pushgatewayUrl=http://pgw:9091"),
        "PrometheusRule",
    ).values()
    assert rule["spec"] == shared


def test_docs_named_by_deployment_files_exist() -> None:
    """Every docs/*.md a rule, a chart file or a manifest points a reader to is there."""
    files = [*CHART.rglob("*.yaml"), *CHART.rglob("*.tpl"), *(REPO / "k8s").glob("*.yaml"), REPO / "docker-compose.yml"]
    for path in files:
        for doc in re.findall(r"docs/[A-Za-z_.-]+\.md", path.read_text()):
            assert (REPO / doc).is_file(), f"{path.relative_to(REPO)} names {doc}"


# ------------------------------------------------------------------------------- network policies
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels; {} selects everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and labels.get(key) in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


@dataclass(frozen=True, eq=False)  # compared (and hashed) by identity: one pod, one object
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # named container ports


NAMESPACE_LABELS = {ns: {"kubernetes.io/metadata.name": ns} for ns in ("iot", "kube-system", "monitoring", "other")}


def _peer_matches(peer: dict[str, Any], pod: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # pods are matched by selectors here; ipBlocks are for traffic from outside
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], NAMESPACE_LABELS[pod.namespace]):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return _selects(peer.get("podSelector", {}), pod.labels)


def _port_matches(rule: dict[str, Any], port: int, target: Pod) -> bool:
    if "ports" not in rule:
        return True
    for allowed in rule["ports"]:
        value = allowed.get("port")
        named = isinstance(value, str) and target.ports.get(value) == port
        if (value is None or value == port or named) and allowed.get("protocol", "TCP") == "TCP":
            return True
    return False


def allowed(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    """NetworkPolicy semantics for one TCP connection: the source's egress and the target's
    ingress must both allow it, where some policy selects that pod for that direction."""

    def direction(pod: Pod, kind: str, peer_key: str, other: Pod, target_pod: Pod) -> bool:
        selecting = [
            p for p in policies
            if p["metadata"].get("namespace", "iot") == pod.namespace
            and _selects(p["spec"]["podSelector"], pod.labels) and kind in p["spec"]["policyTypes"]
        ]  # fmt: skip
        if not selecting:
            return True
        return any(
            _port_matches(rule, port, target_pod)
            and (peer_key not in rule or any(_peer_matches(peer, other, pod.namespace) for peer in rule[peer_key]))
            for policy in selecting
            for rule in policy["spec"].get(kind.lower(), [])
        )

    return direction(source, "Egress", "to", target, target) and direction(target, "Ingress", "from", source, target)


def _workload(component: str, **ports: int) -> Pod:
    labels = {"app.kubernetes.io/name": "iot-monitor", "app.kubernetes.io/instance": "iot-monitor",
              "app.kubernetes.io/component": component}  # fmt: skip
    return Pod("iot", labels, {"metrics": 8000, **ports})


def test_network_policies_let_each_pod_reach_only_what_its_service_uses() -> None:
    """On by default, one policy per workload. Judged connection by connection with the
    NetworkPolicy rules: the producer reaches DNS and Kafka's TLS port only; the consumer DNS,
    Kafka and PostgreSQL; the exporter and the migration PostgreSQL (and DNS); the dashboard
    PostgreSQL but not Kafka; a rogue pod in the namespace reaches none of our pods, and only
    the monitoring namespace scrapes /metrics; the page is open only to the allowed peers."""
    docs = render("--set", "dashboard.enabled=true")
    policies = list(by_kind(docs, "NetworkPolicy").values())
    assert {p["metadata"]["name"] for p in policies} == {
        f"iot-monitor-{c}" for c in ("producer", "consumer", "exporter", "dashboard", "migrate")
    }
    for policy in policies:
        validate_object(policy)
    producer, consumer = _workload("producer"), _workload("consumer")
    exporter, migrate = _workload("exporter"), _workload("migrate")
    dashboard = _workload("dashboard", http=8501)
    kafka = Pod("iot", {"strimzi.io/cluster": "iot-kafka", "strimzi.io/kind": "Kafka"})
    postgres = Pod("iot", {"app.kubernetes.io/name": "postgresql"})
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    rogue = Pod("iot", {"app": "rogue"})
    prometheus = Pod("monitoring", {"app": "prometheus"})
    client = Pod("iot", {"iot-monitor.io/dashboard-client": "true"})
    helm_test = _workload("test")  # templates/tests/pipeline.yaml
    elsewhere = Pod("other", {"iot-monitor.io/dashboard-client": "true"})
    expected = {
        (producer, dns, 53): True, (producer, kafka, 9093): True, (producer, kafka, 9092): False,
        (producer, postgres, 5432): False, (producer, rogue, 80): False,
        (consumer, kafka, 9093): True, (consumer, postgres, 5432): True, (consumer, dns, 53): True,
        (consumer, producer, 8000): False, (consumer, rogue, 443): False,
        (exporter, postgres, 5432): True, (exporter, kafka, 9093): False,
        (migrate, postgres, 5432): True, (migrate, kafka, 9093): False,
        (dashboard, postgres, 5432): True, (dashboard, kafka, 9093): False,
        (rogue, consumer, 8000): False, (rogue, producer, 8000): False, (rogue, dashboard, 8501): False,
        (prometheus, consumer, 8000): True, (prometheus, producer, 8000): True, (prometheus, dashboard, 8000): True,
        (prometheus, dashboard, 8501): False, (prometheus, consumer, 9999): False,
        (client, dashboard, 8501): True, (client, dashboard, 8000): False, (elsewhere, dashboard, 8501): False,
        (helm_test, consumer, 8000): True, (helm_test, producer, 8000): False,
        (rogue, postgres, 5432): True,  # the database's own policy is the Bitnami chart's (primary.networkPolicy)
    }  # fmt: skip
    judged = {key: allowed(policies, *key) for key in expected}
    assert judged == expected, {k: v for k, v in judged.items() if v != expected[k]}


def test_network_policy_peers_and_ports_follow_the_values() -> None:
    """Plaintext development Kafka opens 9092 instead of 9093; the exporter may push to its
    Pushgateway's port; custom peers replace the defaults; networkPolicy.enabled=false renders none."""
    plain = by_kind(render("-f", str(CHART / "ci" / "development-values.yaml"), "--set", "networkPolicy.enabled=true"),
                    "NetworkPolicy")  # fmt: skip
    ports = [r["ports"] for r in plain["iot-monitor-producer"]["spec"]["egress"]]
    assert [{"protocol": "TCP", "port": 9092}] in ports
    pushing = by_kind(render("--set", "exporter.pushgatewayUrl=http://pgw.monitoring:9091"), "NetworkPolicy")
    assert {"ports": [{"protocol": "TCP", "port": 9091}]} in pushing["iot-monitor-exporter"]["spec"]["egress"]
    custom = by_kind(
        render(
            "--set", "networkPolicy.kafka.to[0].ipBlock.cidr=10.0.0.0/8", "--set", "networkPolicy.kafka.ports={9096}"
        ),
        "NetworkPolicy",
    )
    assert {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "TCP", "port": 9096}]} in custom[
        "iot-monitor-consumer"
    ]["spec"]["egress"]
    assert not by_kind(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy")


# ------------------------------------------------------------------------------- the dashboard's door
def test_the_dashboard_asks_for_a_password_and_has_its_own_service() -> None:
    """On by default: the page's password from a generated Secret (kept on uninstall), the page's
    Service apart from its metrics Service, each with its own type; exposing the page beyond the
    cluster without the login is refused."""
    docs = render("--set", "dashboard.enabled=true", "--set", "dashboard.service.type=LoadBalancer")
    services = by_kind(docs, "Service")
    assert services["iot-monitor-dashboard"]["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in services["iot-monitor-dashboard"]["spec"]["ports"]] == ["http"]
    assert services["iot-monitor-dashboard-metrics"]["spec"]["type"] == "ClusterIP"
    secret = by_kind(docs, "Secret")["iot-monitor-dashboard-auth"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(base64.b64decode(secret["data"]["password"])) == 32
    (container,) = by_kind(docs, "Deployment")["iot-monitor-dashboard"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DASHBOARD_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "iot-monitor-dashboard-auth",
        "key": "password",
    }
    own = render("--set", "dashboard.enabled=true", "--set", "dashboard.auth.existingSecret=mine")
    assert "iot-monitor-dashboard-auth" not in by_kind(own, "Secret")
    error = render_refused(
        "--set", "dashboard.enabled=true", "--set", "dashboard.service.type=NodePort", "--set", "dashboard.auth.enabled=false"
    )  # fmt: skip
    assert "auth" in error
    open_inside = render("--set", "dashboard.enabled=true", "--set", "dashboard.auth.enabled=false")
    (container,) = by_kind(open_inside, "Deployment")["iot-monitor-dashboard"]["spec"]["template"]["spec"]["containers"]
    assert "DASHBOARD_PASSWORD" not in {e["name"] for e in container["env"]}


# ------------------------------------------------------------------------------- no committed secrets
SECRET_KEY = re.compile(r"(?i)(password|passwd|secret_?key|token)$")
# NAME=value or name: value with a literal value (not a ${reference}, $VAR, a Secret's key name or empty).
LITERAL_PASSWORD = re.compile(r"""(?i)\b[A-Z_]*PASS(WORD)?\b\s*[=:]\s*["']?(?![$"'{<\s%:?]|\.\.\.)([^\s"'`]{3,})""")
VARIABLE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # "password: DASHBOARD_PASSWORD in ..." names a variable
DEPLOYMENT_YAML = [
    *(REPO / "k8s").rglob("*.yaml"), CHART / "values.yaml", *CI_VALUES, REPO / "docker-compose.yml",
    *REPO.glob("skaffold*.yaml"), *(REPO / "tests" / "k8s").glob("*.yaml"),
]  # fmt: skip
SCRIPTS = [REPO / "Makefile", REPO / "stack" / "stack.sh", *(REPO / "scripts").glob("*.sh"), *(REPO / "docker").glob("*.sh"),
           REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / ".ci" / "run"]  # fmt: skip


def _literal_secrets(node: Any, where: str) -> list[str]:
    found = []
    if isinstance(node, dict):
        if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
            found.append(f"{where}: a Secret with its values committed")
        for key, value in node.items():
            if isinstance(value, str) and SECRET_KEY.search(str(key)) and value and not value.startswith("${"):
                found.append(f"{where}: {key}: {value!r}")
            found += _literal_secrets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += _literal_secrets(item, f"{where}[{index}]")
    return found


def test_no_password_is_committed_in_deployment_files_scripts_or_docs() -> None:
    """Development passwords are generated at install time (the Bitnami chart, the chart's own
    Secrets, scripts/dev-secrets.sh for Compose and the local stack, the k8s test harness): no
    manifest, values file, Compose file, script or document of the repository holds one."""
    found = []
    for path in DEPLOYMENT_YAML:
        for doc in yaml.safe_load_all(path.read_text()):
            found += _literal_secrets(doc, str(path.relative_to(REPO)))
    for path in SCRIPTS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = LITERAL_PASSWORD.search(line)
            if match and not VARIABLE_NAME.match(match.group(2)):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_rendered_secrets_appear_only_in_secrets_and_reach_pods_by_reference(values: Path | None) -> None:
    """Every value of a Secret the chart renders (the generated passwords) appears in no other
    object; every variable named *PASSWORD* in a pod comes from a secretKeyRef, and no ConfigMap
    carries one."""
    docs = render(*(["-f", str(values)] if values else []), "--set", "dashboard.enabled=true")
    secrets = by_kind(docs, "Secret")
    generated = [base64.b64decode(v).decode() for s in secrets.values() for v in s.get("data", {}).values()]
    assert generated, "the chart generates the roles' and the dashboard's passwords"
    others = json.dumps([d for d in docs if d["kind"] != "Secret"])
    assert [g for g in generated if g in others] == []

    def pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
        spec = doc.get("spec", {})
        template = spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
        return [template["spec"]] if "spec" in template else []

    for doc in docs:
        for pod in pods(doc):
            for container in pod["containers"] + pod.get("initContainers", []):
                for variable in container.get("env", []):
                    if "PASSWORD" in variable["name"]:
                        assert "secretKeyRef" in variable.get("valueFrom", {}), (doc["metadata"]["name"], variable)
        if doc["kind"] == "ConfigMap":
            assert not [k for k in doc.get("data", {}) if "PASSWORD" in k or "SECRET" in k], doc["metadata"]["name"]


def test_an_image_digest_pins_the_exact_image() -> None:
    """A service's image.digest renders repository@sha256:... (with the registry prefix, over any
    tag), the others keep their tags; a digest that is not sha256 is refused."""
    digest = "sha256:" + "ab" * 32
    docs = render("--set", f"consumer.image.digest={digest}", "--set", "image.registry=registry.example.com/iot",
                  "--set", "image.tag=1.2.3")  # fmt: skip
    images = {
        n: d["spec"]["template"]["spec"]["containers"][0]["image"] for n, d in by_kind(docs, "Deployment").items()
    }
    assert images["iot-monitor-consumer"] == f"registry.example.com/iot/iot-consumer@{digest}"
    assert images["iot-monitor-producer"] == "registry.example.com/iot/iot-producer:1.2.3"
    migrate = by_kind(docs, "Job")["iot-monitor-migrate"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert migrate == images["iot-monitor-consumer"]  # the migration runs the consumer's exact image
    assert "digest" in render_refused("--set", "consumer.image.digest=latest")


def test_the_chart_readme_is_generated_from_the_values() -> None:
    """charts/iot-monitor/README.md is what scripts/chart-readme.py makes of Chart.yaml and the
    `# --` comments of values.yaml (CI fails when it is stale); every such comment documents a
    key, and every documented key is in the table with its default."""
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart-readme.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    readme = (CHART / "README.md").read_text()
    text = (CHART / "values.yaml").read_text()
    comments = sum(1 for line in text.splitlines() if line.strip().startswith("# --"))
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    assert len(rows) == comments
    assert '| `consumer.kafka.username` | `"iot-consumer"` |' in readme
    assert '| `postgresql.sslmode` | `"verify-full"` |' in readme


# ------------------------------------------------------------------------------- the operators' view
def test_the_grafana_dashboard_ships_for_the_sidecar_and_queries_metrics_that_exist() -> None:
    """grafanaDashboard.enabled renders files/grafana-dashboard.json unchanged in a ConfigMap with
    the sidecar's label; its panels cover rates, lag, batch sizes, latency, dead letters, stalls,
    offset gaps, alerts, retention and table sizes; every metric they query is one a service
    exports (tests/k8s checks them on the running services' /metrics)."""
    config = by_kind(render("--set", "grafanaDashboard.enabled=true"), "ConfigMap")["iot-monitor-grafana-dashboard"]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["iot-monitor-pipeline.json"]) == json.loads(GRAFANA_DASHBOARD.read_text())
    assert "iot-monitor-grafana-dashboard" not in by_kind(render(), "ConfigMap")
    families = set().union(*(metric_families(q) for q in dashboard_queries()))
    for needed in ("iot_consumer_lag", "iot_consumer_batch_size", "iot_consumer_end_to_end_latency_seconds",
                   "iot_consumer_dead_letters_total", "iot_consumer_stalled_partitions", "iot_consumer_offset_gaps_total",
                   "iot_consumer_alerts_open", "iot_consumer_retention_partitions_dropped_total",
                   "iot_consumer_table_bytes", "iot_consumer_rows_inserted_total"):  # fmt: skip
        assert needed in families, needed
    sources = "\n".join(
        p.read_text()
        for package in ("consumer", "exporter", "producer", "dashboard")
        for p in (REPO / package).rglob("*.py")
    )
    assert [f for f in sorted(families) if f'"{f}"' not in sources] == []


def test_pod_monitors_scrape_every_server_pod() -> None:
    """podMonitor.enabled: a PodMonitor per pod kind that serves metrics (producer, consumer,
    dashboard), valid against the Prometheus Operator's CRD, on the pods' metrics port."""
    monitors = by_kind(render("--set", "podMonitor.enabled=true", "--set", "dashboard.enabled=true",
                              "--set", "podMonitor.labels.release=kube-prometheus-stack"), "PodMonitor")  # fmt: skip
    assert set(monitors) == {f"iot-monitor-{c}" for c in ("producer", "consumer", "dashboard")}
    for monitor in monitors.values():
        validate_object(monitor)
        assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
