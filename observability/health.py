"""Liveness and readiness probes."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. Says nothing about the database or the workers."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok", "checks": {}})
