"""Fixed-window rate limits counted in Django's cache (Redis in production, memory embedded).

    decision = ratelimit.hit(f"login:{ip}", limit=20, window_seconds=60)
    if not decision.allowed:
        ...  # answer 429 with Retry-After: decision.retry_after

Each `hit` counts one event against `key` in the current window and says whether it is
within `limit`. Windows are aligned to multiples of `window_seconds` since the epoch, so
every process (and every web server sharing Redis) agrees on them; a window's counter is a
cache entry of its own, named after the window, that expires shortly after the window ends.

The count is atomic: `cache.add` creates the counter only if it is missing and `cache.incr`
increments it (Redis INCR), so concurrent hits from many processes never lose a count.
(Django's Redis `incr` checks that the key exists before INCR; the counter lives a second
longer than its window, so only an eviction can come between the two, and then at worst one
stale counter is left behind.)
Exactly one hit per key and window sees `count == limit + 1`: `Decision.first_refusal` tells
the caller that one, so a refusal can be logged or audited once per window instead of once
per request (a limiter must not become a way to flood the log it writes to).

A fixed window lets a client make up to 2 × limit hits around a window boundary; that is the
price of one cache entry and one round trip per hit, and is fine for abuse limits.

`ahit` is the same for async code (the chat socket).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.core.cache import BaseCache
from django.core.cache import cache as default_cache

KEY_PREFIX = "ratelimit"

Clock = Callable[[], float]


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit.

    `count` is the number of hits in the window so far, this one included. `retry_after` is
    the whole number of seconds (at least 1) until the window ends and hits are allowed
    again; 0 when this hit was allowed.
    """

    allowed: bool
    count: int
    limit: int
    retry_after: int
    first_refusal: bool


def _window(key: str, window_seconds: int, now: float) -> tuple[str, float]:
    start = math.floor(now / window_seconds) * window_seconds
    return f"{KEY_PREFIX}:{key}:{window_seconds}:{start}", start + window_seconds


def _decide(count: int, limit: int, window_end: float, now: float) -> Decision:
    allowed = count <= limit
    return Decision(
        allowed=allowed,
        count=count,
        limit=limit,
        retry_after=0 if allowed else max(1, math.ceil(window_end - now)),
        first_refusal=count == limit + 1,
    )


def _check(limit: int, window_seconds: int) -> None:
    if limit < 0:
        raise ValueError("limit must be 0 or more.")
    if window_seconds < 1:
        raise ValueError("window_seconds must be at least 1.")


def hit(
    key: str,
    *,
    limit: int,
    window_seconds: int,
    clock: Clock = time.time,
    cache: BaseCache | None = None,
) -> Decision:
    """Count one hit against `key`; allowed while at most `limit` hits fell in this window.

    `key` names what is limited ("login:203.0.113.5", "chat:user:42"); it must not contain
    spaces or control characters (memcached rules) and should be short. `clock` (seconds
    since the epoch) and `cache` are there for tests. Raises ValueError for a negative limit
    or a window under a second; cache errors (Redis down) propagate.
    """
    _check(limit, window_seconds)
    backend = cache if cache is not None else default_cache
    now = clock()
    cache_key, window_end = _window(key, window_seconds, now)
    # The entry outlives its window by a second so that a hit at the very end still finds it.
    backend.add(cache_key, 0, timeout=window_seconds + 1)
    try:
        count = backend.incr(cache_key)
    except ValueError:
        # Evicted (or expired) between add and incr: this hit starts the count again.
        backend.add(cache_key, 1, timeout=window_seconds + 1)
        count = 1
    return _decide(count, limit, window_end, now)


async def ahit(
    key: str,
    *,
    limit: int,
    window_seconds: int,
    clock: Clock = time.time,
    cache: BaseCache | None = None,
) -> Decision:
    """`hit` for async code: the same count, through the cache's async methods."""
    _check(limit, window_seconds)
    backend = cache if cache is not None else default_cache
    now = clock()
    cache_key, window_end = _window(key, window_seconds, now)
    await backend.aadd(cache_key, 0, timeout=window_seconds + 1)
    try:
        count = await backend.aincr(cache_key)
    except ValueError:
        await backend.aadd(cache_key, 1, timeout=window_seconds + 1)
        count = 1
    return _decide(count, limit, window_end, now)
