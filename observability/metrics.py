"""The product's own Prometheus metrics, defined once and named in Prometheus style.

Labels are low-cardinality by rule: model keys, provider names, outcomes, kinds from fixed
catalogues and department names — never user ids, conversation ids or free text. Every
metric is documented in docs/operations.md, and the alert rules and Grafana dashboard under
deploy/observability/ are checked against this module by a test.

Events that happen in a process are counted here, where they happen: with
PROMETHEUS_MULTIPROC_DIR set, each process writes its values to files in that directory and
any web process's /metrics adds them up (prometheus_client's multiprocess mode), so the
counts of every daphne process and Celery worker on a host reach one scrape. State that
lives in the database or in Redis (queue depth, budget holds, the audit checkpoint) is read
when /metrics is scraped instead (observability/collectors.py).

The helpers below never raise: a metric must not break the work it measures.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

logger = logging.getLogger(__name__)

# The `*_created` series (when each counter started) double the output for no use here.
disable_created_metrics()

# --- Chat turns -----------------------------------------------------------------------------

CHAT_TURNS = Counter(
    "eai_chat_turns_total",
    "Chat replies that ended, by the model asked for and how they ended "
    "(complete, cancelled, failed, interrupted).",
    ["model", "outcome"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "eai_chat_time_to_first_token_seconds",
    "From the message being accepted to the reply's first text, by the model that answered.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60),
)
REPLY_DURATION = Histogram(
    "eai_chat_reply_duration_seconds",
    "From the message being accepted to the reply being stored, by model and outcome.",
    ["model", "outcome"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
TOKENS = Counter(
    "eai_llm_tokens_total",
    "Tokens charged in the cost ledger, by model and direction (input, output).",
    ["model", "direction"],
)
COST = Counter(
    "eai_llm_cost_total",
    "Spend charged in the cost ledger, in the ledger's currency, by model and department.",
    ["model", "department", "currency"],
)
REPLIES_SWEPT = Counter(
    "eai_chat_replies_swept_total",
    "Replies failed as interrupted because their worker evidently died, by the state they "
    "were stuck in (pending: never picked up; streaming: heartbeat lost).",
    ["state"],
)

# --- Providers ------------------------------------------------------------------------------

PROVIDER_CALLS = Counter(
    "eai_provider_calls_total",
    "Calls to an AI service (one per attempt), by provider, model and outcome "
    "(ok, error, abandoned: stopped by the person or the reply before it ended).",
    ["provider", "model", "outcome"],
)
PROVIDER_ERRORS = Counter(
    "eai_provider_errors_total",
    "Failed calls and calls not made, by provider, model and error kind (the error's code, "
    "e.g. provider_timeout, provider_rate_limited, provider_circuit_open).",
    ["provider", "model", "kind"],
)
PROVIDER_RETRIES = Counter(
    "eai_provider_retries_total",
    "Calls repeated after a retryable error, by provider and model.",
    ["provider", "model"],
)
PROVIDER_FAILOVERS = Counter(
    "eai_provider_failovers_total",
    "Replies handed from a model that could not answer to its fallback.",
    ["from_model", "to_model"],
)
CIRCUIT_OPENED = Counter(
    "eai_provider_circuit_opened_total",
    "Times a model's circuit breaker opened after repeated failures.",
    ["model"],
)

# --- Refusals -------------------------------------------------------------------------------

REFUSALS = Counter(
    "eai_refusals_total",
    "Requests refused by governance, by reason (rate_limit, budget, guardrail, "
    "model_not_allowed, context_window), kind (the guardrail: pii, injection; else empty) "
    "and entry point (source: web, api, openai).",
    ["reason", "kind", "source"],
)

# --- Sockets and the channel layer ------------------------------------------------------------

WEBSOCKETS_OPEN = Gauge(
    "eai_websocket_connections_open",
    "Chat sockets open now (summed over the live processes).",
    multiprocess_mode="livesum",
)
WEBSOCKETS_OPENED = Counter(
    "eai_websocket_connections_total",
    "Chat sockets accepted.",
)
CHANNEL_SEND_FAILURES = Counter(
    "eai_channel_layer_send_failures_total",
    "Events the channel layer could not take (Redis unavailable or too slow); the sockets "
    "repair the gap from the stored reply.",
)

# --- Audit ----------------------------------------------------------------------------------

AUDIT_EVENTS = Counter(
    "eai_audit_events_total",
    "Audit events appended to the chain, by action (from the audit catalogue); an event "
    "rolled back with the change it records is counted too.",
    ["action"],
)
AUDIT_WRITE_SECONDS = Histogram(
    "eai_audit_write_seconds",
    "Time to append one audit event to the chain (lock, head, insert).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# Names of the metrics computed when /metrics is scraped (observability/collectors.py), so
# that the alert rules' check can see them without a database.
SCRAPE_TIME_METRICS = {
    "eai_llm_queue_length": "gauge",
    "eai_workers_alive": "gauge",
    "eai_chat_replies_in_flight": "gauge",
    "eai_provider_circuit_state": "gauge",
    "eai_channel_layer_dropped_messages_total": "counter",
    "eai_audit_last_checkpoint_age_seconds": "gauge",
    "eai_audit_last_verification_success": "gauge",
    "eai_audit_last_verification_timestamp_seconds": "gauge",
    "eai_audit_last_verification_head_sequence": "gauge",
    "eai_audit_last_verification_duration_seconds": "gauge",
    "eai_audit_last_full_verification_timestamp_seconds": "gauge",
    "eai_audit_verification_overdue": "gauge",
    "eai_budget_holds_outstanding": "gauge",
    "eai_budget_holds_outstanding_amount": "gauge",
    "eai_budget_utilisation_max_ratio": "gauge",
    "eai_metrics_source_up": "gauge",
}


def _safely(record: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            record(*args, **kwargs)
        except Exception as exc:  # pragma: no cover - metrics must not break the work
            logger.warning("metric not recorded (%s): %s", record.__name__, type(exc).__name__)

    wrapper.__name__ = record.__name__
    wrapper.__doc__ = record.__doc__
    return wrapper


@_safely
def reply_ended(reply: Any) -> None:
    """A reply was stored as ended (complete, cancelled, failed or interrupted)."""
    outcome = "interrupted" if reply.error_code == "interrupted" else str(reply.status)
    CHAT_TURNS.labels(model=reply.model, outcome=outcome).inc()
    answered_by = reply.answered_by or reply.model
    if reply.time_to_first_token_ms is not None:
        TIME_TO_FIRST_TOKEN.labels(model=answered_by).observe(reply.time_to_first_token_ms / 1000)
    if reply.duration_ms is not None:
        REPLY_DURATION.labels(model=answered_by, outcome=outcome).observe(reply.duration_ms / 1000)


@_safely
def ledger_charged(entries: list[Any], *, department: str) -> None:
    """Cost ledger rows were written (their transaction committed)."""
    for entry in entries:
        TOKENS.labels(model=entry.model, direction="input").inc(entry.input_tokens)
        TOKENS.labels(model=entry.model, direction="output").inc(entry.output_tokens)
        COST.labels(model=entry.model, department=department, currency=entry.currency).inc(
            float(entry.cost)
        )


@_safely
def replies_swept(state: str, count: int = 1) -> None:
    REPLIES_SWEPT.labels(state=state).inc(count)


@_safely
def provider_call(*, provider: str, model: str, outcome: str, error: str = "") -> None:
    """One call to a provider ended; `error` is the error's code when it failed."""
    PROVIDER_CALLS.labels(provider=provider, model=model, outcome=outcome).inc()
    if error:
        PROVIDER_ERRORS.labels(provider=provider, model=model, kind=error).inc()


@_safely
def provider_not_called(*, provider: str, model: str, kind: str) -> None:
    """A call was not made (the model's circuit is open)."""
    PROVIDER_ERRORS.labels(provider=provider, model=model, kind=kind).inc()


@_safely
def provider_retry(*, provider: str, model: str) -> None:
    PROVIDER_RETRIES.labels(provider=provider, model=model).inc()


@_safely
def provider_failover(*, from_model: str, to_model: str) -> None:
    PROVIDER_FAILOVERS.labels(from_model=from_model, to_model=to_model).inc()


@_safely
def circuit_opened(*, model: str) -> None:
    CIRCUIT_OPENED.labels(model=model).inc()


# The chat errors that are governance refusals, and the reason each is counted under.
REFUSAL_REASONS = {
    "rate_limited": "rate_limit",
    "budget_exceeded": "budget",
    "model_unavailable": "model_not_allowed",
    "too_large": "context_window",
}


@_safely
def refusal(*, reason: str, kind: str = "", source: str = "web") -> None:
    REFUSALS.labels(reason=reason, kind=kind, source=source).inc()


@_safely
def websocket_opened() -> None:
    WEBSOCKETS_OPENED.inc()
    WEBSOCKETS_OPEN.inc()


@_safely
def websocket_closed() -> None:
    WEBSOCKETS_OPEN.dec()


@_safely
def channel_send_failed() -> None:
    CHANNEL_SEND_FAILURES.inc()


@_safely
def audit_written(*, action: str, seconds: float) -> None:
    AUDIT_EVENTS.labels(action=action).inc()
    AUDIT_WRITE_SECONDS.observe(seconds)
