"""Metrics read when /metrics is scraped: state that lives in the database, Redis or the
broker, not in any one process.

Each source is read with a few bounded queries (their number does not grow with the data)
and short timeouts. A source that cannot be read is skipped for this scrape and reported as
`eai_metrics_source_up{source="…"} 0`, so that a dashboard shows a gap, never a stale value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, DecimalField, ExpressionWrapper, F, Max, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 2
CIRCUIT_STATES = {"closed": 0, "half-open": 1, "open": 2}


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


# --- Sources ------------------------------------------------------------------------------------


def replies_in_flight() -> Iterator[Metric]:
    from conversations.models import Message

    metric = _gauge(
        "eai_chat_replies_in_flight",
        "Replies being generated now, by status (pending: queued; streaming: on a worker).",
        ["status"],
    )
    counts = dict(
        Message.objects.filter(status__in=[Message.Status.PENDING, Message.Status.STREAMING])
        .values("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    for status in (Message.Status.PENDING, Message.Status.STREAMING):
        metric.add_metric([str(status)], counts.get(status, 0))
    yield metric


def circuit_states() -> Iterator[Metric]:
    from providers.models import AIModel
    from providers.resilience import CircuitBreaker

    metric = _gauge(
        "eai_provider_circuit_state",
        "Circuit breaker of each enabled model: 0 closed, 1 half-open (one trial call let "
        "through), 2 open (calls refused).",
        ["model"],
    )
    for key in AIModel.objects.filter(enabled=True).values_list("key", flat=True):
        metric.add_metric([key], CIRCUIT_STATES[CircuitBreaker(key).state])
    yield metric


def audit_state() -> Iterator[Metric]:
    from audit.models import AuditCheckpoint, AuditEvent
    from audit.selectors import verification_status

    now = time.time()
    age = _gauge(
        "eai_audit_last_checkpoint_age_seconds",
        "Seconds since the newest signed audit checkpoint; with none yet, since the oldest "
        "event (0 with no events).",
    )
    signed_at = (
        AuditCheckpoint.objects.order_by("-signed_at").values_list("signed_at", flat=True).first()
    )
    if signed_at is None:
        signed_at = (
            AuditEvent.objects.order_by("sequence").values_list("occurred_at", flat=True).first()
        )
    age.add_metric([], max(0.0, now - signed_at.timestamp()) if signed_at else 0.0)
    yield age

    # Read from the latest audit.chain_verified event, not from a gauge the verifying
    # process set: right whichever web process, worker or scheduler ran it.
    status = verification_status()
    if status.verified_at is not None:  # never verified: no sample (the alert uses absent())
        ok = _gauge(
            "eai_audit_last_verification_success",
            "1 when the latest verification of the audit chain found it intact, 0 when it "
            "found a problem.",
        )
        ok.add_metric([], 1 if status.ok else 0)
        yield ok
        when = _gauge(
            "eai_audit_last_verification_timestamp_seconds",
            "When the audit chain was last verified (Unix time), incrementally or in full.",
        )
        when.add_metric([], status.verified_at.timestamp())
        yield when
        head = _gauge(
            "eai_audit_last_verification_head_sequence",
            "The last event sequence the latest verification vouched for (when it failed: "
            "the last good one before the problem).",
        )
        head.add_metric([], status.head_sequence)
        yield head
        if status.duration_seconds is not None:
            duration = _gauge(
                "eai_audit_last_verification_duration_seconds",
                "How long the latest verification of the audit chain took.",
            )
            duration.add_metric([], status.duration_seconds)
            yield duration
        if status.last_full_at is not None:
            full = _gauge(
                "eai_audit_last_full_verification_timestamp_seconds",
                "When the audit chain was last verified in full, from event #1 (Unix time).",
            )
            full.add_metric([], status.last_full_at.timestamp())
            yield full
    overdue = _gauge(
        "eai_audit_verification_overdue",
        "1 when the latest verification is older than two intervals of its schedule "
        "(AUDIT_VERIFY_INTERVAL_SECONDS, or AUDIT_VERIFY_FULL_INTERVAL_SECONDS for the full "
        "run), or there never was one although events are that old; else 0.",
    )
    overdue.add_metric([], 1 if status.overdue else 0)
    yield overdue


def budget_state() -> Iterator[Metric]:
    from costs.models import Budget, BudgetWindow, Reservation
    from costs.services import period_bounds

    holds = Reservation.objects.filter(status=Reservation.Status.HELD).aggregate(
        n=Count("id"), amount=Sum("amount")
    )
    count = _gauge(
        "eai_budget_holds_outstanding",
        "Budget reservations held for replies not yet settled.",
    )
    count.add_metric([], holds["n"] or 0)
    yield count
    amount = _gauge(
        "eai_budget_holds_outstanding_amount",
        "The worst-case cost those reservations hold, in the ledger's currency.",
        ["currency"],
    )
    amount.add_metric([settings.COSTS_CURRENCY], float(holds["amount"] or Decimal(0)))
    yield amount

    # The fullest budget of each scope in its current period: (spent + reserved) / limit.
    used = ExpressionWrapper(
        (F("spent") + F("reserved")) / F("budget__limit_amount"),
        output_field=DecimalField(max_digits=24, decimal_places=6),
    )
    now = timezone.now()
    fullest: dict[str, float] = {}
    for period in Budget.Period.values:
        rows = (
            BudgetWindow.objects.filter(
                budget__enabled=True,
                budget__period=period,
                budget__limit_amount__gt=0,
                period_start=period_bounds(period, now)[0],
            )
            .values("budget__scope")
            .annotate(ratio=Max(used))
            .values_list("budget__scope", "ratio")
        )
        for scope, ratio in rows:
            fullest[scope] = max(fullest.get(scope, 0.0), float(ratio or 0))
    ratio = _gauge(
        "eai_budget_utilisation_max_ratio",
        "The fullest enabled budget of each scope (organisation, department, user) in its "
        "current period: (spent + reserved) / limit.",
        ["scope"],
    )
    for scope in Budget.Scope.values:
        ratio.add_metric([scope], fullest.get(scope, 0.0))
    yield ratio


def queue_length() -> Iterator[Metric]:
    """Tasks waiting in the `llm` queue: the broker's count on the production path, the
    in-process dispatcher's backlog in the embedded default."""
    metric = _gauge(
        "eai_llm_queue_length",
        "Reply tasks waiting to be picked up, by queue.",
        ["queue"],
    )
    if settings.TASK_DISPATCH != "celery":
        from enterprise_ai import dispatch

        metric.add_metric(["llm"], dispatch.backlog())
        yield metric
        return
    from enterprise_ai.celery import app

    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
        channel: Any = connection.default_channel
        for queue in ("llm", "default"):
            try:
                declared = channel.queue_declare(queue=queue, passive=True)
            except Exception:  # not declared yet (no worker has started): nothing waits
                if not connection.connected:
                    raise
                channel = connection.channel()
                metric.add_metric([queue], 0)
                continue
            metric.add_metric([queue], declared.message_count)
    yield metric


def channel_layer_drops() -> Iterator[Metric]:
    """Messages the Redis channel layer dropped because a socket's channel was full
    (counted in Redis by enterprise_ai.channel_layers, for every process at once)."""
    if not settings.REDIS_URL:
        return
    from django.core.cache import cache

    from enterprise_ai.channel_layers import drops_key

    client = cache._cache.get_client(write=False)  # type: ignore[attr-defined]
    metric = CounterMetricFamily(
        "eai_channel_layer_dropped_messages",
        "Chat events dropped by the channel layer because a web process's channel was full.",
    )
    metric.add_metric([], int(client.get(drops_key()) or 0))
    yield metric


def workers() -> Iterator[Metric]:
    if settings.TASK_DISPATCH != "celery":
        return
    from observability import health

    metric = _gauge(
        "eai_workers_alive",
        "Celery worker processes whose heartbeat is current (observability/health.py).",
    )
    metric.add_metric([], health.workers_alive())
    yield metric


SOURCES: dict[str, Callable[[], Iterator[Metric]]] = {
    "replies": replies_in_flight,
    "circuits": circuit_states,
    "audit": audit_state,
    "budgets": budget_state,
    "queue": queue_length,
    "channel_layer": channel_layer_drops,
    "workers": workers,
}


class ProductStateCollector(Collector):
    """Reads every source above on each scrape."""

    def collect(self) -> Iterator[Metric]:
        up = _gauge(
            "eai_metrics_source_up",
            "1 when the source could be read for this scrape, 0 when it could not.",
            ["source"],
        )
        for name, source in SOURCES.items():
            try:
                metrics: list[Metric] = list(source())
            except Exception as exc:
                logger.warning("metrics source %s unreadable: %s", name, type(exc).__name__)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from metrics
        yield up

    def describe(self) -> Iterable[Any]:
        return []
