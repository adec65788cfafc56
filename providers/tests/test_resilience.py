"""Retries, timeouts, the circuit breaker and failover, around a scripted stand-in service.

The wire-protocol doubles exercise the same layer through the real SDKs in the providers'
own tests; here each failure is scripted precisely, per attempt.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache

from providers import registry
from providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ModelSpec,
    Provider,
    ProviderError,
    ProviderMisconfigured,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    StopReason,
    StreamEvent,
    TextDelta,
)
from providers.models import AIModel
from providers.registry import get_model
from providers.resilience import (
    CircuitBreaker,
    CircuitOpen,
    Failover,
    backoff_delay,
    resilient_stream,
)

pytestmark = pytest.mark.django_db


class Scripted(Provider):
    """Each call takes the next step of its model's script."""

    name = "scripted"
    scripts: dict[str, deque[Any]] = defaultdict(deque)
    calls: dict[str, int] = defaultdict(int)

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        key = self.spec.key
        type(self).calls[key] += 1
        step = self.scripts[key].popleft() if self.scripts[key] else "ok"
        if isinstance(step, ProviderError):
            raise step
        if step == "stall":
            time.sleep(1.0)
        yield TextDelta(f"{key} says hello")
        if step == "drop":
            raise ProviderUnavailable()
        if step == "stall-after-first":
            time.sleep(1.0)
        yield TextDelta(" world")
        yield Finish(StopReason.END_TURN)


@pytest.fixture(autouse=True)
def scripted(monkeypatch, settings) -> None:
    monkeypatch.setitem(registry.PROVIDERS, "scripted", Scripted)
    Scripted.scripts.clear()
    Scripted.calls.clear()
    cache.clear()
    settings.PROVIDER_MAX_ATTEMPTS = 3
    settings.PROVIDER_RETRY_BASE_SECONDS = 0.01
    settings.PROVIDER_RETRY_MAX_SECONDS = 2
    settings.PROVIDER_FIRST_TOKEN_TIMEOUT_SECONDS = 5
    settings.PROVIDER_IDLE_TIMEOUT_SECONDS = 5
    settings.PROVIDER_TOTAL_TIMEOUT_SECONDS = 30
    settings.CIRCUIT_FAILURE_THRESHOLD = 100
    settings.CIRCUIT_RESET_SECONDS = 30


@pytest.fixture
def primary() -> ModelSpec:
    backup = AIModel.objects.create(
        key="backup", display_name="Backup", provider="scripted", provider_model_id="b"
    )
    AIModel.objects.create(
        key="primary", display_name="Primary", provider="scripted", provider_model_id="p",
        fallback=backup,
    )  # fmt: skip
    return get_model("primary")


@pytest.fixture
def lonely() -> ModelSpec:
    AIModel.objects.create(
        key="lonely", display_name="Lonely", provider="scripted", provider_model_id="l"
    )
    return get_model("lonely")


def request_for(spec: ModelSpec) -> ChatRequest:
    return ChatRequest(spec.provider_model_id, "", [ChatMessage("user", "hi")], 100)


def run(spec: ModelSpec, **kwargs: Any) -> list[Any]:
    return list(resilient_stream(model=spec, build_request=request_for, **kwargs))


def text_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_a_retryable_failure_is_retried_then_answered(lonely) -> None:
    Scripted.scripts["lonely"].extend([ProviderUnavailable(), ProviderUnavailable()])
    assert text_of(run(lonely)) == "lonely says hello world"
    assert Scripted.calls["lonely"] == 3


def test_attempts_never_exceed_the_configured_number(lonely) -> None:
    Scripted.scripts["lonely"].extend([ProviderUnavailable()] * 10)
    with pytest.raises(ProviderUnavailable):
        run(lonely)
    assert Scripted.calls["lonely"] == 3


def test_retry_after_is_honoured(lonely) -> None:
    Scripted.scripts["lonely"].append(ProviderRateLimited(retry_after=0.5))
    started = time.monotonic()
    assert text_of(run(lonely)) == "lonely says hello world"
    assert time.monotonic() - started >= 0.5
    assert Scripted.calls["lonely"] == 2


def test_a_retry_after_longer_than_the_cap_is_not_waited_for(lonely, settings) -> None:
    settings.PROVIDER_RETRY_MAX_SECONDS = 1
    Scripted.scripts["lonely"].append(ProviderRateLimited(retry_after=120))
    started = time.monotonic()
    with pytest.raises(ProviderRateLimited):
        run(lonely)
    assert time.monotonic() - started < 1
    assert Scripted.calls["lonely"] == 1


def test_backoff_is_exponential_with_full_jitter(settings) -> None:
    settings.PROVIDER_RETRY_BASE_SECONDS = 1
    settings.PROVIDER_RETRY_MAX_SECONDS = 5
    random.seed(7)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 5), (9, 5)]:
        delays = [backoff_delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # the whole range is used: full jitter
    assert backoff_delay(1, retry_after=3.5) == 3.5


def test_no_retry_once_a_token_has_been_sent(lonely) -> None:
    Scripted.scripts["lonely"].append("drop")
    events: list[Any] = []
    with pytest.raises(ProviderUnavailable):
        for event in resilient_stream(model=lonely, build_request=request_for):
            events.append(event)
    assert text_of(events) == "lonely says hello"
    assert Scripted.calls["lonely"] == 1


def test_a_rejected_request_is_neither_retried_nor_failed_over(primary) -> None:
    Scripted.scripts["primary"].append(ProviderRejected())
    with pytest.raises(ProviderRejected):
        run(primary)
    assert Scripted.calls == {"primary": 1}


def test_failover_to_the_fallback_is_announced_before_its_answer(primary) -> None:
    Scripted.scripts["primary"].extend([ProviderUnavailable()] * 3)
    events = run(primary)
    failover = events[0]
    assert isinstance(failover, Failover)
    assert failover.notice == "Answered by Backup because Primary was unavailable."
    assert failover.reason_code == "provider_unavailable"
    assert text_of(events) == "backup says hello world"
    assert Scripted.calls == {"primary": 3, "backup": 1}


def test_a_misconfigured_model_fails_over_at_once(primary) -> None:
    Scripted.scripts["primary"].append(ProviderMisconfigured())
    events = run(primary)
    assert isinstance(events[0], Failover) and text_of(events) == "backup says hello world"
    assert Scripted.calls["primary"] == 1


def test_the_circuit_opens_after_repeated_failures_and_recovers(lonely, settings) -> None:
    settings.CIRCUIT_FAILURE_THRESHOLD = 2
    settings.CIRCUIT_RESET_SECONDS = 0.3
    settings.PROVIDER_MAX_ATTEMPTS = 1
    Scripted.scripts["lonely"].extend([ProviderUnavailable(), ProviderUnavailable()])
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            run(lonely)
    assert CircuitBreaker("lonely").state == "open"

    with pytest.raises(CircuitOpen) as refused:
        run(lonely)
    assert Scripted.calls["lonely"] == 2, "an open circuit makes no call"
    assert "temporarily unavailable" in str(refused.value)

    time.sleep(0.35)
    assert CircuitBreaker("lonely").state == "half-open"
    assert text_of(run(lonely)) == "lonely says hello world"
    assert CircuitBreaker("lonely").state == "closed"


def test_a_failed_half_open_trial_opens_the_circuit_again(lonely, settings) -> None:
    settings.CIRCUIT_FAILURE_THRESHOLD = 1
    settings.CIRCUIT_RESET_SECONDS = 0.2
    settings.PROVIDER_MAX_ATTEMPTS = 1
    Scripted.scripts["lonely"].extend([ProviderUnavailable(), ProviderUnavailable()])
    with pytest.raises(ProviderUnavailable):
        run(lonely)
    time.sleep(0.25)
    with pytest.raises(ProviderUnavailable):
        run(lonely)
    assert CircuitBreaker("lonely").state == "open"


def test_an_open_circuit_fails_over(primary, settings) -> None:
    settings.CIRCUIT_FAILURE_THRESHOLD = 1
    settings.PROVIDER_MAX_ATTEMPTS = 1
    Scripted.scripts["primary"].append(ProviderUnavailable())
    run(primary)
    events = run(primary)
    assert isinstance(events[0], Failover) and events[0].reason_code == "provider_circuit_open"
    assert Scripted.calls == {"primary": 1, "backup": 2}


def test_first_token_timeout(lonely, settings) -> None:
    settings.PROVIDER_FIRST_TOKEN_TIMEOUT_SECONDS = 0.2
    settings.PROVIDER_MAX_ATTEMPTS = 1
    Scripted.scripts["lonely"].append("stall")
    with pytest.raises(ProviderTimeout, match="start answering"):
        run(lonely)


def test_idle_timeout_mid_reply_is_not_retried(lonely, settings) -> None:
    settings.PROVIDER_IDLE_TIMEOUT_SECONDS = 0.2
    Scripted.scripts["lonely"].append("stall-after-first")
    with pytest.raises(ProviderTimeout, match="mid-reply"):
        run(lonely)
    assert Scripted.calls["lonely"] == 1


def test_total_timeout(lonely, settings) -> None:
    settings.PROVIDER_TOTAL_TIMEOUT_SECONDS = 0.3
    settings.PROVIDER_MAX_ATTEMPTS = 1
    Scripted.scripts["lonely"].append("stall-after-first")
    with pytest.raises(ProviderTimeout, match="finish"):
        run(lonely)


def test_a_stop_during_backoff_ends_quietly(lonely, settings) -> None:
    Scripted.scripts["lonely"].append(ProviderRateLimited(retry_after=1.5))
    started = time.monotonic()
    assert run(lonely, should_stop=lambda: time.monotonic() - started > 0.2) == []
    assert Scripted.calls["lonely"] == 1
    assert time.monotonic() - started < 1.5
