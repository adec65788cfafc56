"""Retries, timeouts, circuit breaking and failover around any provider, in one place.

Providers make exactly one attempt per call (their SDKs' retries are off). This module:

* **Timeouts** — the provider's stream runs on a helper thread and is read through a queue,
  so that the first-token, idle-between-chunks and total limits hold whatever the SDK does.
  The provider's own connect/read timeouts are the backstop that frees the connection.
* **Retries** — only while nothing has reached the user (no text, no tool call yet), only for
  retryable errors, at most PROVIDER_MAX_ATTEMPTS attempts per model, waiting with
  exponential backoff and full jitter, or as long as the service's Retry-After asks when it
  does (a wait longer than PROVIDER_RETRY_MAX_SECONDS is not waited: the model counts as
  unavailable).
* **Circuit breaker** — per model, state in the cache (Redis in production, so all workers
  share it): opens after CIRCUIT_FAILURE_THRESHOLD consecutive failures, lets one trial call
  through after CIRCUIT_RESET_SECONDS (half-open), closes on its success.
* **Failover** — when a model is unavailable (retries spent, circuit open, misconfigured), its
  configured fallback answers instead; a `Failover` event says so before its first token.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from django.conf import settings
from django.core.cache import cache

from observability import metrics
from providers.base import (
    ChatRequest,
    ModelSpec,
    ProviderError,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderTimeout,
    ProviderTimeouts,
    StreamEvent,
    TextDelta,
    ToolCall,
)
from providers.registry import UnknownModel, get_model, provider_for

logger = logging.getLogger(__name__)

MAX_FAILOVER_DEPTH = 3


class CircuitOpen(ProviderError):
    code = "provider_circuit_open"

    def __init__(self, model: ModelSpec) -> None:
        super().__init__(
            f"{model.display_name} is temporarily unavailable after repeated failures. "
            "Please try again in a little while.",
            retryable=False,
        )


@dataclass(frozen=True, slots=True)
class Failover:
    """The reply continues with `to_model` because `from_model` could not answer."""

    from_model: ModelSpec
    to_model: ModelSpec
    reason_code: str

    @property
    def notice(self) -> str:
        return (
            f"Answered by {self.to_model.display_name} because "
            f"{self.from_model.display_name} was unavailable."
        )


# --- Circuit breaker ----------------------------------------------------------------------


class CircuitBreaker:
    """Per-model breaker whose state lives in the cache, shared by every process."""

    def __init__(self, model_key: str) -> None:
        self.threshold = settings.CIRCUIT_FAILURE_THRESHOLD
        self.reset_seconds = settings.CIRCUIT_RESET_SECONDS
        self.model_key = model_key
        prefix = f"circuit:{model_key}"
        self._failures = f"{prefix}:failures"
        self._open_until = f"{prefix}:open_until"
        self._trial = f"{prefix}:trial"

    @property
    def state(self) -> str:
        open_until = cache.get(self._open_until)
        if open_until is None:
            return "closed"
        return "open" if time.time() < open_until else "half-open"

    def allow(self) -> bool:
        """Whether a call may be made now. In half-open state, one caller at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        return bool(cache.add(self._trial, True, timeout=max(1, round(self.reset_seconds))))

    def record_success(self) -> None:
        cache.delete_many([self._failures, self._open_until, self._trial])

    def record_failure(self) -> None:
        if self.state != "closed":  # the half-open trial failed: open again
            self._open()
            return
        cache.add(self._failures, 0, timeout=3600)
        try:
            failures = cache.incr(self._failures)
        except ValueError:  # expired between add and incr
            cache.set(self._failures, 1, timeout=3600)
            failures = 1
        if failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        metrics.circuit_opened(model=self.model_key)
        keep = round(self.reset_seconds) + 3600
        cache.set(self._open_until, time.time() + self.reset_seconds, timeout=keep)
        cache.delete_many([self._failures, self._trial])


# --- Timeouts -----------------------------------------------------------------------------

_EVENT, _ERROR, _END = "event", "error", "end"


def guarded_stream(
    events: Iterator[StreamEvent],
    *,
    first_token_timeout: float,
    idle_timeout: float,
    deadline: float,
) -> Iterator[StreamEvent]:
    """Yield `events`, raising ProviderTimeout when the first token, the next chunk or the
    whole reply (`deadline`, a time.monotonic() value) takes too long.

    The provider's iterator runs on a daemon thread that owns it: when the caller stops
    early or times out, the thread closes it after its next event, or when the provider's
    read timeout gives up on the connection.
    """
    channel: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
    abandoned = threading.Event()

    def pump() -> None:
        try:
            for event in events:
                channel.put((_EVENT, event))
                if abandoned.is_set():
                    break
        except BaseException as exc:  # handed to the reading thread
            channel.put((_ERROR, exc))
        else:
            channel.put((_END, None))
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    logger.warning("closing a provider stream failed: %s", type(exc).__name__)

    # The thread runs in a copy of the caller's context: what the SDK logs carries the
    # reply's request, conversation and message ids (observability/logcontext.py).
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(pump,), name="provider-stream", daemon=True).start()
    started = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderTimeout("The AI service took too long to finish its answer.")
            limit = idle_timeout if started else first_token_timeout
            try:
                kind, value = channel.get(timeout=min(limit, remaining))
            except queue.Empty:
                if remaining <= limit:
                    raise ProviderTimeout(
                        "The AI service took too long to finish its answer."
                    ) from None
                if started:
                    raise ProviderTimeout("The AI service stopped answering mid-reply.") from None
                raise ProviderTimeout("The AI service took too long to start answering.") from None
            if kind == _END:
                return
            if kind == _ERROR:
                raise cast(BaseException, value)
            event = cast(StreamEvent, value)
            if isinstance(event, (TextDelta, ToolCall)):
                started = True
            yield event
    finally:
        abandoned.set()


# --- Retries and failover ---------------------------------------------------------------


def backoff_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: Retry-After when the service gave one,
    else full jitter: uniform(0, min(cap, base * 2 ** (attempt - 1)))."""
    if retry_after is not None:
        return max(0.0, retry_after)
    ceiling = min(
        settings.PROVIDER_RETRY_MAX_SECONDS,
        settings.PROVIDER_RETRY_BASE_SECONDS * 2 ** (attempt - 1),
    )
    return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography


def failover_chain(model: ModelSpec) -> list[ModelSpec]:
    """The model, then its fallback, and so on: enabled models only, no repeats."""
    chain = [model]
    seen = {model.key}
    current = model
    while current.fallback and current.fallback not in seen and len(chain) <= MAX_FAILOVER_DEPTH:
        try:
            current = get_model(current.fallback)
        except UnknownModel:
            break
        chain.append(current)
        seen.add(current.key)
    return chain


def provider_timeouts() -> ProviderTimeouts:
    wait = max(
        settings.PROVIDER_FIRST_TOKEN_TIMEOUT_SECONDS, settings.PROVIDER_IDLE_TIMEOUT_SECONDS
    )
    return ProviderTimeouts(connect=settings.PROVIDER_CONNECT_TIMEOUT_SECONDS, read=wait + 5)


def _sleep(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep in short steps; False as soon as a stop is requested."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if should_stop():
            return False
        time.sleep(min(0.1, left))
    return not should_stop()


def resilient_stream(
    *,
    model: ModelSpec,
    build_request: Callable[[ModelSpec], ChatRequest],
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[StreamEvent | Failover]:
    """Stream a reply from `model`, retrying and failing over as described above.

    `build_request(spec)` makes the request for whichever model is tried (windows differ).
    Ends early without error when `should_stop()` turns true during a wait. Raises the last
    ProviderError when no model in the chain could answer, or any error after the first
    token (the user has seen part of the reply; it is not started again).
    """
    chain = failover_chain(model)
    last_error: ProviderError | None = None
    for index, spec in enumerate(chain):
        if index > 0:
            metrics.provider_failover(from_model=chain[index - 1].key, to_model=spec.key)
            yield Failover(chain[index - 1], spec, last_error.code if last_error else "unavailable")
        breaker = CircuitBreaker(spec.key)
        for attempt in range(1, settings.PROVIDER_MAX_ATTEMPTS + 1):
            if not breaker.allow():
                last_error = CircuitOpen(spec)
                metrics.provider_not_called(
                    provider=spec.provider, model=spec.key, kind=last_error.code
                )
                break
            if attempt > 1:
                metrics.provider_retry(provider=spec.provider, model=spec.key)
            started = False
            # How the call ended, for eai_provider_calls_total; "abandoned" when the caller
            # stops reading (a stop, or an error of its own) before the stream ends.
            call_outcome, call_error = "abandoned", ""
            try:
                events = provider_for(spec, timeouts=provider_timeouts()).stream(
                    build_request(spec)
                )
                for event in guarded_stream(
                    events,
                    first_token_timeout=settings.PROVIDER_FIRST_TOKEN_TIMEOUT_SECONDS,
                    idle_timeout=settings.PROVIDER_IDLE_TIMEOUT_SECONDS,
                    deadline=time.monotonic() + settings.PROVIDER_TOTAL_TIMEOUT_SECONDS,
                ):
                    if isinstance(event, (TextDelta, ToolCall)):
                        started = True
                    yield event
            except ProviderRejected as exc:
                call_outcome, call_error = "error", exc.code
                raise  # the request itself is refused: another attempt or model won't help
            except ProviderError as exc:
                call_outcome, call_error = "error", exc.code
                breaker.record_failure()
                logger.warning("model %s attempt %d failed: %s", spec.key, attempt, exc.code)
                if started:
                    raise
                last_error = exc
                if isinstance(exc, ProviderMisconfigured) or not exc.retryable:
                    break
                if attempt == settings.PROVIDER_MAX_ATTEMPTS:
                    break
                delay = backoff_delay(attempt, getattr(exc, "retry_after", None))
                if delay > settings.PROVIDER_RETRY_MAX_SECONDS:
                    break
                if not _sleep(delay, should_stop):
                    return
                continue
            else:
                call_outcome = "ok"
            finally:
                metrics.provider_call(
                    provider=spec.provider, model=spec.key, outcome=call_outcome, error=call_error
                )
            breaker.record_success()
            return
    raise last_error or ProviderError("No model could answer.", retryable=False)
