"""Django's cache backends, counted in django-prometheus's cache metrics.

django-prometheus ships instrumented backends, but its Redis one is for the django-redis
package and its local-memory one turns a stored falsy value (0, "") into the default. These
are the same counters (gets, hits, misses, failures by backend) around Django's own
backends, returning exactly what they return.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends import locmem, redis
from django_prometheus.cache.metrics import (
    django_cache_get_fail_total,
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)

_MISSING = object()


class _CountedGets:
    metrics_backend = ""

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        backend = self.metrics_backend
        django_cache_get_total.labels(backend=backend).inc()
        try:
            value = super().get(key, _MISSING, version=version)  # type: ignore[misc]
        except Exception:
            django_cache_get_fail_total.labels(backend=backend).inc()
            raise
        if value is _MISSING:
            django_cache_misses_total.labels(backend=backend).inc()
            return default
        django_cache_hits_total.labels(backend=backend).inc()
        return value


class RedisCache(_CountedGets, redis.RedisCache):
    metrics_backend = "redis"


class LocMemCache(_CountedGets, locmem.LocMemCache):
    metrics_backend = "locmem"
