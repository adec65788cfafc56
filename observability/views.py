"""The Prometheus scrape endpoint, /metrics, and who may read it.

A scrape is let in when it presents `Authorization: Bearer <METRICS_TOKEN>` or comes from
an address in METRICS_ALLOWED_IPS (loopback by default). The address is the client's as the
rest of the product sees it (enterprise_ai.client_ip: the direct peer, or with
TRUSTED_PROXY_COUNT the address the trusted proxies forwarded), so a proxy on the same host
does not make /metrics public. Anything else gets 401 (a token is configured) or 403.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
from functools import cache
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder

from enterprise_ai.client_ip import client_ip
from enterprise_ai.logging import Throttled
from observability.collectors import ProductStateCollector

logger = logging.getLogger(__name__)
warn = Throttled(logger, seconds=60)

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")
_registered = threading.Lock()
_state_collector: ProductStateCollector | None = None


@cache
def _allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in settings.METRICS_ALLOWED_IPS)


def scrape_allowed(*, authorization: str, address: str | None) -> bool:
    """Whether a scrape with this Authorization header, from this address, may read metrics."""
    token = settings.METRICS_TOKEN
    scheme, _, given = authorization.partition(" ")
    if token and scheme.lower() == "bearer" and constant_time_compare(given.strip(), token):
        return True
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _allowed_networks())


def _forget_dead_processes(directory: str) -> None:
    """Drop the live-gauge files of processes that have exited (a SIGKILLed worker never
    says so), so that `livesum` gauges such as open sockets count live processes only."""
    for path in Path(directory).iterdir():
        match = _LIVE_GAUGE_FILE.match(path.name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:  # alive, another user's
            pass


def every_process() -> CollectorRegistry:
    """The metrics counted in processes: every process's on this host when they share
    PROMETHEUS_MULTIPROC_DIR, else this process's own (the default registry)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)
    return combined


def registry() -> CollectorRegistry:
    """What one scrape reports: `every_process()`, plus the state read at scrape time."""
    global _state_collector
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        _forget_dead_processes(directory)
        combined = every_process()
        combined.register(ProductStateCollector())
        return combined
    with _registered:
        if _state_collector is None:
            _state_collector = ProductStateCollector()
            REGISTRY.register(_state_collector)
    return REGISTRY


def metrics(request: HttpRequest) -> HttpResponse:
    address = client_ip(request)
    if not scrape_allowed(authorization=request.headers.get("Authorization", ""), address=address):
        warn.warning("metrics scrape refused from %s", address or "an unknown address")
        if settings.METRICS_TOKEN:
            response = JsonResponse(
                {
                    "error": "metrics_unauthorized",
                    "message": "Metrics need a bearer token (METRICS_TOKEN).",
                },
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return JsonResponse(
            {
                "error": "metrics_forbidden",
                "message": "Metrics may be read only from an address in METRICS_ALLOWED_IPS.",
            },
            status=403,
        )
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry()), content_type=content_type)
