"""One small HTTP server per process: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process's main loop is alive (liveness).
``/readyz`` answers 200 only when the check the service supplies says it can do its work
(e.g. Kafka and PostgreSQL reachable) and 503 with the reason otherwise (readiness).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from iot_common.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Health:
    """The answer of a health check: ok, and why not."""

    ok: bool
    detail: str = ""


HealthCheck = Callable[[], Health]


def always_ok() -> Health:
    return Health(True)


class ObservabilityServer:
    """Serves metrics and health endpoints from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: HealthCheck = always_ok,
        liveness: HealthCheck = always_ok,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._readiness = readiness
        self._liveness = liveness
        self._registry = registry
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    check = server._liveness if path == "/healthz" else server._readiness
                    try:
                        health = check()
                    except Exception as exc:  # noqa: BLE001 - a failing check means "not healthy", not a 500
                        health = Health(False, f"check failed: {exc}")
                    body = orjson.dumps({"ok": health.ok, "detail": health.detail})
                    self._send(200 if health.ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # probes every few seconds would drown the service's own logs

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="observability-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        return int(self._httpd.server_address[1])

    def start(self) -> ObservabilityServer:
        self._thread.start()
        log.info("observability_server_started", port=self.port, paths=["/metrics", "/healthz", "/readyz"])
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def start_observability_server(
    host: str, port: int, *, readiness: HealthCheck = always_ok, liveness: HealthCheck = always_ok
) -> ObservabilityServer | None:
    """Start the server unless ``port`` is -1 (disabled)."""
    if port < 0:
        return None
    return ObservabilityServer(host, port, readiness=readiness, liveness=liveness).start()
