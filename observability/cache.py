"""Django's Redis cache, counted in django-prometheus's cache metrics.

django-prometheus ships an instrumented Redis backend for the django-redis package only;
this is the same instrumentation (gets, hits, misses, failures, backend="redis") around
Django's built-in backend, which the product uses.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django_prometheus.cache.metrics import (
    django_cache_get_fail_total,
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)

_MISSING = object()


class RedisCache(DjangoRedisCache):
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        django_cache_get_total.labels(backend="redis").inc()
        try:
            value = super().get(key, _MISSING, version=version)
        except Exception:
            django_cache_get_fail_total.labels(backend="redis").inc()
            raise
        if value is _MISSING:
            django_cache_misses_total.labels(backend="redis").inc()
            return default
        django_cache_hits_total.labels(backend="redis").inc()
        return value
