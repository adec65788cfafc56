"""A worker's own /metrics, for a Celery worker on a host without a web process.

Where web and worker processes share a host (and PROMETHEUS_MULTIPROC_DIR), a web
process's /metrics already reports the worker's counts. A worker elsewhere (its own
Kubernetes pod, say) serves them itself on WORKER_METRICS_PORT, with the same access rules
as /metrics (observability/views.py). Started when the worker is ready.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.conf import settings
from prometheus_client.exposition import choose_encoder

from observability.views import every_process, scrape_allowed

logger = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server_version = "enterprise-ai-worker-metrics"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, b'{"error":"not_found"}', "application/json")
            return
        if not scrape_allowed(
            authorization=self.headers.get("Authorization", ""), address=self.client_address[0]
        ):
            self._answer(403, b'{"error":"metrics_forbidden"}', "application/json")
            return
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._answer(200, encoder(every_process()), content_type)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not worth a log line each


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - scraped by IP
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    logger.info("worker metrics served on port %d", port)
    return server


_started = threading.Lock()
_server: ThreadingHTTPServer | None = None


def start_from_settings() -> None:
    """Serve on WORKER_METRICS_PORT once per process, when it is set."""
    global _server
    port = settings.WORKER_METRICS_PORT
    if not port:
        return
    with _started:
        if _server is None:
            _server = serve(port)
