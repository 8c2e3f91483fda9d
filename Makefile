# iot-monitor — the two commands: `make run` (stack + pipeline) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PACKAGES := common producer consumer exporter dashboard
PYPROJECTS := pyproject.toml $(foreach p,$(PACKAGES),$(p)/pyproject.toml) requirements-dev.lock

# Ports of the pipeline started by `make run` (each process serves /metrics, /healthz, /readyz).
PRODUCER_METRICS_PORT ?= 8001
CONSUMER_METRICS_PORT ?= 8002
DASHBOARD_METRICS_PORT ?= 8003
DASHBOARD_PORT ?= 8501
# `make run` starts an occasional anomaly episode (spike, stuck, missing) so alerts show up, with
# the same sensors on every run (a fixed seed): sensors of an earlier run do not stay "silent".
PRODUCER_ANOMALY_RATE ?= 0.002
PRODUCER_SEED ?= 1

.PHONY: help dev lock stack-up stack-down stack-status run dashboard test test-native test-compose test-skaffold test-k8s test-chaos test-chaos-cluster test-unit test-integration lint format typecheck bench bench-consumer bench-producer bench-alerts bench-codecs bench-dashboard bench-dashboard-fleet bench-rollups bench-exporter bench-fleet clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): $(PYPROJECTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s)" % sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=25.1"
	# Exactly the locked versions (hashes checked), then our packages on top, editable.
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps $(foreach p,$(PACKAGES),-e ./$(p))
	touch $@

# The consumer's native decoder (a C extension): rebuilt when its source changes.
FASTPATH := $(VENV)/.fastpath
$(FASTPATH): $(STAMP) consumer/fastpath/iot_fastpath.c $(wildcard consumer/fastpath/lib/*) consumer/fastpath/setup.py consumer/fastpath/pyproject.toml
	$(BIN)/python -m pip install -q --no-deps -e ./consumer/fastpath
	touch $@

# The producer's native record encoder (a C extension): rebuilt when its source changes.
PRODUCER_FASTPATH := $(VENV)/.producer-fastpath
$(PRODUCER_FASTPATH): $(STAMP) producer/fastpath/iot_producer_fastpath.c producer/fastpath/setup.py producer/fastpath/pyproject.toml
	$(BIN)/python -m pip install -q --no-deps -e ./producer/fastpath
	touch $@

dev: $(STAMP) $(FASTPATH) $(PRODUCER_FASTPATH) ## Create .venv with every package installed editable (and the C decoder and encoder built), plus pytest, ruff, mypy

lock: ## Regenerate the hashed dependency locks after changing a pyproject.toml (scripts/lock.sh)
	test -x $(BIN)/uv || $(MAKE) dev
	scripts/lock.sh

BROKERS ?= $(or $(KAFKA_BROKERS),1)
stack-up: ## Start Kafka 4.3.1 (localhost:9092, topic iot_sensores) and PostgreSQL (localhost:5432); BROKERS=3: three nodes, RF 3, min ISR 2
	KAFKA_BROKERS=$(BROKERS) stack/stack.sh up

stack-down: ## Stop Kafka and PostgreSQL (no process left behind)
	stack/stack.sh down

stack-status: ## Show what runs where, and where the logs are
	stack/stack.sh status

run: dev stack-up ## Start the stack, then producer + consumer in the foreground (Ctrl-C stops them)
	PRODUCER_ANOMALY_RATE=$(PRODUCER_ANOMALY_RATE) PRODUCER_SEED=$(PRODUCER_SEED) PRODUCER_METRICS_PORT=$(PRODUCER_METRICS_PORT) \
	  CONSUMER_METRICS_PORT=$(CONSUMER_METRICS_PORT) scripts/with-stack-secrets.sh scripts/run-pipeline.sh

dashboard: dev stack-up ## Live dashboard on http://localhost:8501 (read-only role, sign-in password DASHBOARD_PASSWORD in .stack/secrets.env)
	scripts/with-stack-secrets.sh $(BIN)/iot-consumer migrate
	@echo "dashboard: http://localhost:$(DASHBOARD_PORT)  sign-in password: DASHBOARD_PASSWORD in .stack/secrets.env"
	POSTGRES_USER=iot_dashboard METRICS_PORT=$(DASHBOARD_METRICS_PORT) DASHBOARD_PORT=$(DASHBOARD_PORT) \
	  scripts/with-stack-secrets.sh sh -c 'POSTGRES_PASSWORD=$$DASHBOARD_DB_PASSWORD exec $(BIN)/iot-dashboard'

lint: dev ## ruff check + format check + spelling
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/codespell

format: dev ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: dev ## mypy --strict on every package
	$(BIN)/mypy

test-unit: dev ## Unit tests only (no servers needed)
	scripts/pytest.sh tests/unit

test-integration: dev stack-up ## Integration tests against the local Kafka and PostgreSQL
	scripts/pytest.sh -m "integration and not chaos" tests

test: dev lint typecheck test-native stack-up ## Lint, types, the C units under sanitizers, unit, integration, a short chaos run, deployment, image, Compose, Kubernetes tests, chaos on three brokers
	scripts/pytest.sh -m "not chaos" tests
	@if [ "$$(id -u)" = 0 ] || [ "$${IOT_REQUIRE_CLUSTER_TESTS:-}" = 1 ]; then \
	  tests/harness/kafka_cluster.sh run scripts/pytest.sh -m "chaos and cluster" tests/chaos/test_cluster.py; \
	else echo "SKIPPED: the three-broker chaos test needs root (network namespaces): sudo make test-chaos-cluster"; fi

test-native: dev ## The native decoder under AddressSanitizer + UBSan: its C test driver, then the fuzz tests on a sanitizer build
	consumer/fastpath/tests/sanitize.sh

test-compose: dev stack-up ## docker compose up/down/up of docker-compose.yml for real (Docker daemon; stand-in images)
	scripts/pytest.sh -m compose tests/compose

test-skaffold: dev ## Skaffold v2.16.1 itself: diagnose and render of both files, then `skaffold dev` on the real single-node cluster of tests/k8s (root)
	scripts/pytest.sh -m skaffold tests/skaffold tests/k8s

test-k8s: dev stack-up ## helm install, the README's commands and skaffold dev on a real single-node Kubernetes in its own network namespace (root; builds k8s once, ~20 min)
	scripts/pytest.sh -m k8s tests/k8s

test-chaos: dev stack-up ## Faults for minutes: kill -9, SIGTERM, PostgreSQL and Kafka restarts (bench/results/chaos.md)
	scripts/pytest.sh -m "chaos and not cluster" tests/chaos

test-chaos-cluster: dev ## Three brokers in network namespaces: leader kill -9, a broker away 60 s, rolling restart, isolation (root, ~10 min; bench/results/chaos_cluster.md)
	tests/harness/kafka_cluster.sh run scripts/pytest.sh -m "chaos and cluster" tests/chaos/test_cluster.py

bench: dev stack-up ## All benchmarks side by side (~30 min): bench/results/ and docs/BENCHMARKS.md
	$(BIN)/python -m bench.run_all

bench-consumer: dev stack-up ## Consumer: native decoder, writer thread on/off, Python path; 1 vs 2 processes; medians
	$(BIN)/python -m bench.consumer_bench

bench-producer: dev stack-up ## Producer: native encoder 1 vs 2 processes, the send() reference, 100,000 sensors at 100,000/s for 60 s, profile
	$(BIN)/python -m bench.producer_bench

bench-latency: dev stack-up ## Where end-to-end latency goes at 10,000 readings/s: Kafka alone beside iot-consumer 1 and 2 processes, each batch's stages (bench/results/latency_profile.md)
	$(BIN)/python -m bench.latency_profile

bench-codecs: dev stack-up ## What each compression codec costs end to end (bench/results/codec_bench.md)
	$(BIN)/python -m bench.codec_bench

bench-dashboard: dev stack-up ## Every dashboard panel's query on 100M readings of 1,000 sensors (first run loads ~15 GB, ~25 min)
	$(BIN)/python -m bench.dashboard_bench

bench-dashboard-fleet: dev stack-up ## Every dashboard panel's query with 1,000,000 sensors: 24M readings over a day, each sensor once an hour, then retention (~20 min)
	$(BIN)/python -m bench.dashboard_bench --sensors 1000000 --readings 24000000 --days 1 --reload --measure-retention

bench-rollups: dev stack-up ## What the rollups cost the consumer per row, beside the COPY (bench/results/rollup_bench.md)
	$(BIN)/python -m bench.rollup_bench

bench-exporter: dev stack-up ## CSV/XLSX export speed beside the naive pandas way and the COPY limit (bench/results/exporter_bench.md)
	$(BIN)/python -m bench.exporter_bench

bench-alerts: dev stack-up ## What alert evaluation costs the consumer: alerts on vs --no-alerts (bench/results/alerts_bench.md)
	$(BIN)/python -m bench.alerts_bench

bench-fleet: dev stack-up ## The consumer by fleet size: 3,000,000 readings over 1,000 / 100,000 / 1,000,000 sensors, then silence (bench/results/fleet_bench.md)
	$(BIN)/python -m bench.fleet_bench

clean: ## Remove the virtualenv and caches (the stack's data stays in .stack/)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
