"""Answers the probe and scrape endpoints before anything else runs.

Kubernetes probes and Prometheus address a pod by its IP over plain HTTP, so `/healthz`,
`/readyz` and `/metrics` must not depend on the Host header (ALLOWED_HOSTS), HTTPS redirects,
sessions or sign-in. They are answered here, first in the chain, and carry no user data:
`/metrics` has its own access check (observability/views.py).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from observability import health, views

PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": health.healthz,
    "/readyz": health.readyz,
    "/metrics": views.metrics,
}


class ProbeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is None:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            response = HttpResponse(status=405, content_type="text/plain")
            response["Allow"] = "GET, HEAD"
            return response
        response = probe(request)
        response["Cache-Control"] = "no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response
