"""enterprise_ai.ratelimit: fixed windows counted in the cache, with a controllable clock."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.core.cache.backends.locmem import LocMemCache

from enterprise_ai import ratelimit


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache() -> LocMemCache:
    backend = LocMemCache("ratelimit-tests", {})
    backend.clear()
    return backend


def test_hits_up_to_the_limit_are_allowed_then_refused(cache: LocMemCache) -> None:
    clock = Clock(1_800_020.0)  # 20 s into a 60 s window that started at 1_800_000
    decisions = [
        ratelimit.hit("k", limit=3, window_seconds=60, clock=clock, cache=cache) for _ in range(5)
    ]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.count for d in decisions] == [1, 2, 3, 4, 5]
    assert [d.retry_after for d in decisions] == [0, 0, 0, 40, 40]
    assert [d.first_refusal for d in decisions] == [False, False, False, True, False]


def test_the_window_rolls_over(cache: LocMemCache) -> None:
    clock = Clock(1_800_059.5)
    for _ in range(2):
        ratelimit.hit("k", limit=2, window_seconds=60, clock=clock, cache=cache)
    refused = ratelimit.hit("k", limit=2, window_seconds=60, clock=clock, cache=cache)
    assert not refused.allowed and refused.retry_after == 1  # never 0 while refused

    clock.now = 1_800_060.0  # the next window
    allowed = ratelimit.hit("k", limit=2, window_seconds=60, clock=clock, cache=cache)
    assert allowed.allowed and allowed.count == 1 and allowed.retry_after == 0


def test_keys_are_counted_separately(cache: LocMemCache) -> None:
    clock = Clock(1_000_000.0)
    assert ratelimit.hit("a", limit=1, window_seconds=60, clock=clock, cache=cache).allowed
    assert not ratelimit.hit("a", limit=1, window_seconds=60, clock=clock, cache=cache).allowed
    assert ratelimit.hit("b", limit=1, window_seconds=60, clock=clock, cache=cache).allowed


def test_a_limit_of_zero_refuses_everything(cache: LocMemCache) -> None:
    decision = ratelimit.hit("k", limit=0, window_seconds=10, clock=Clock(5.0), cache=cache)
    assert not decision.allowed and decision.first_refusal and decision.retry_after == 5


def test_bad_arguments_are_refused(cache: LocMemCache) -> None:
    with pytest.raises(ValueError, match="limit"):
        ratelimit.hit("k", limit=-1, window_seconds=60, cache=cache)
    with pytest.raises(ValueError, match="window_seconds"):
        ratelimit.hit("k", limit=1, window_seconds=0, cache=cache)


def test_a_counter_evicted_between_add_and_incr_starts_again(cache: LocMemCache) -> None:
    class EvictingCache(LocMemCache):
        def add(self, key: str, value: object, timeout: object = None, version: object = None):
            added = super().add(key, value, timeout)  # type: ignore[arg-type]
            if value == 0:
                self.delete(key)  # evicted before the increment
            return added

    evicting = EvictingCache("ratelimit-evicting", {})
    decision = ratelimit.hit("k", limit=1, window_seconds=60, clock=Clock(0.0), cache=evicting)
    assert decision.allowed and decision.count == 1


def test_concurrent_hits_are_all_counted(cache: LocMemCache) -> None:
    clock = Clock(1_000_000.0)
    decisions: list[ratelimit.Decision] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            decision = ratelimit.hit("k", limit=100, window_seconds=60, clock=clock, cache=cache)
            with lock:
                decisions.append(decision)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(d.count for d in decisions) == list(range(1, 401))
    assert sum(d.allowed for d in decisions) == 100
    assert sum(d.first_refusal for d in decisions) == 1


def test_the_default_cache_is_djangos() -> None:
    from django.core.cache import cache as default_cache

    key = f"default-cache-test-{uuid.uuid4().hex}"
    first = ratelimit.hit(key, limit=1, window_seconds=3600, clock=Clock(1_800_000.0))
    second = ratelimit.hit(key, limit=1, window_seconds=3600, clock=Clock(1_800_000.0))
    assert (first.count, second.count) == (1, 2) and not second.allowed
    assert default_cache.get(f"ratelimit:{key}:3600:1800000") == 2


async def test_async_hits_share_the_count(cache: LocMemCache) -> None:
    clock = Clock(1_000_000.0)
    first = await ratelimit.ahit("k", limit=1, window_seconds=60, clock=clock, cache=cache)
    second = ratelimit.hit("k", limit=1, window_seconds=60, clock=clock, cache=cache)
    third = await ratelimit.ahit("k", limit=1, window_seconds=60, clock=clock, cache=cache)
    assert (first.count, second.count, third.count) == (1, 2, 3)
    assert first.allowed and not second.allowed and second.first_refusal
    assert not third.allowed and not third.first_refusal
