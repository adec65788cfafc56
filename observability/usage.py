"""The usage dashboard's figures, read from the database (docs/operations.md).

Requests, errors and latency come from the assistant messages (each reply is one request to
a model: `time_to_first_token_ms` and `duration_ms` are stored when it ends); tokens and spend
come from the cost ledger. Nothing here needs Prometheus, so the embedded default has the
same dashboard as production.

Every figure is computed by the database, grouped by model or by time bucket: the dashboard
costs the same four queries on PostgreSQL (eleven on SQLite) whatever the number of rows,
and no row is loaded into Python except the few latest failed replies. A period's replies
are found by their own `created_at`, through the partial covering index `msg_usage_idx`
(assistant messages by creation time, with every column read here): on PostgreSQL the
figures come from index-only scans, never from the wide rows that hold the text.

Percentiles are nearest-rank: p95 is the smallest stored value that at least 95 % of the
values do not exceed (always a measured value, in whole milliseconds). PostgreSQL computes
them with `percentile_disc`; SQLite, which has no ordered-set aggregates, numbers the rows
with a window function and keeps the rows at the wanted ranks. Both give the same answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    Count,
    F,
    IntegerField,
    Q,
    QuerySet,
    Sum,
    Value,
    Window,
)
from django.db.models.functions import Coalesce, Collate, NullIf, RowNumber, Trunc
from django.utils import timezone

from conversations.models import Message
from costs.models import MICRO, CostEntry

UTC = dt.UTC
FRACTIONS = (50, 95)  # the percentiles shown, in percent
FAILED_SHOWN = 20  # the latest failed replies listed
# Sorting replies for the percentiles (PostgreSQL; set for the dashboard's own transaction
# only). A day's sort stays in memory; a week of a million replies by model spills about
# 36 MB to a temporary file. More is hardly faster, and at 128 MB the planner sorts the
# ledger's million rows too instead of hashing them, which is three times slower.
SORT_MEMORY = "64MB"


@dataclass(frozen=True)
class Period:
    key: str
    label: str
    span: dt.timedelta
    bucket: dt.timedelta
    trunc: str  # the Trunc kind that makes one bucket

    @property
    def buckets(self) -> int:
        return self.span // self.bucket

    @property
    def minutes(self) -> int:
        return int(self.span.total_seconds() // 60)


PERIODS: dict[str, Period] = {
    p.key: p
    for p in (
        Period("hour", "Last hour", dt.timedelta(hours=1), dt.timedelta(minutes=1), "minute"),
        Period("day", "Last 24 hours", dt.timedelta(days=1), dt.timedelta(hours=1), "hour"),
        Period("week", "Last 7 days", dt.timedelta(days=7), dt.timedelta(hours=1), "hour"),
    )
}
DEFAULT_PERIOD = "day"


def period_window(period: Period, *, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """(since, until): `period.span` ending with the bucket that holds `now` (UTC buckets)."""
    now = now.astimezone(UTC)
    epoch = dt.datetime(2000, 1, 1, tzinfo=UTC)
    until = epoch + ((now - epoch) // period.bucket + 1) * period.bucket
    return until - period.span, until


# --- Percentiles ------------------------------------------------------------------------------


class PercentileDisc(Aggregate):
    """PostgreSQL's `percentile_disc(fraction) WITHIN GROUP (ORDER BY expression)`."""

    function = "PERCENTILE_DISC"
    name = "PercentileDisc"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = IntegerField()

    def __init__(self, expression: Any, *, percent: int, **extra: Any) -> None:
        if not 0 < percent <= 100:
            raise ValueError(f"a percentile between 1 and 100, not {percent!r}")
        super().__init__(expression, fraction=f"{percent / 100:.2f}", **extra)


def ordered_set_aggregates() -> bool:
    """Whether the database computes percentiles as aggregates (PostgreSQL)."""
    return connection.vendor == "postgresql"


def nearest_rank(percent: int, size: int) -> int:
    """The 1-based rank of the nearest-rank percentile among `size` sorted values."""
    return max(1, -(-percent * size // 100))


def _ranked_percentiles(
    rows: QuerySet[Any], *, value: str, group: Any | None
) -> dict[Any, dict[int, int]]:
    """{group key: {percent: value}} in one query, with window functions (any database).

    Rows whose `value` is NULL are left out, as `percentile_disc` leaves them out.
    """
    partition = [group] if group is not None else None
    # Any: django-stubs cannot follow annotations passed as **kwargs.
    ranked: Any = rows.filter(**{f"{value}__isnull": False}).annotate(
        usage_key=group if group is not None else Value(""),
        usage_rank=Window(RowNumber(), partition_by=partition, order_by=[F(value).asc()]),
        usage_size=Window(Count("pk"), partition_by=partition),
    )
    wanted = Q()
    for percent in FRACTIONS:
        # The nearest rank, ceil(percent × size / 100), in integer arithmetic.
        wanted |= Q(usage_rank=(F("usage_size") * percent + 99) / 100)
    result: dict[Any, dict[int, int]] = {}
    for key, rank, size, measured in ranked.filter(wanted).values_list(
        "usage_key", "usage_rank", "usage_size", value
    ):
        for percent in FRACTIONS:
            if rank == nearest_rank(percent, size):
                result.setdefault(key, {})[percent] = measured
    return result


# --- Request statistics (messages) ------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """p50 and p95 in milliseconds; None when nothing was measured."""

    p50: int | None = None
    p95: int | None = None


@dataclass(frozen=True)
class RequestStats:
    requests: int = 0
    complete: int = 0
    failed: int = 0
    cancelled: int = 0
    ttft: Latency = Latency()
    duration: Latency = Latency()

    @property
    def finished(self) -> int:
        return self.complete + self.failed + self.cancelled

    @property
    def in_flight(self) -> int:
        return self.requests - self.finished

    @property
    def error_rate(self) -> float | None:
        """Failed replies among those that ended, as a fraction; None when none ended."""
        return self.failed / self.finished if self.finished else None


def replies(*, since: dt.datetime, until: dt.datetime) -> QuerySet[Message]:
    """The requests of a period: assistant messages created in [since, until).

    Exactly the rows of the partial index `msg_usage_idx` (conversations.models) in that
    range, which also holds every column the dashboard aggregates: PostgreSQL reads the
    period from the index alone.
    """
    return Message.objects.filter(
        role=Message.Role.ASSISTANT, created_at__gte=since, created_at__lt=until
    ).order_by()


def model_key() -> Any:
    """The model that answered (after failover), else the one asked."""
    return Coalesce(NullIf(F("answered_by"), Value("")), F("model"))


def _count_aggregates() -> dict[str, Any]:
    aggregates: dict[str, Any] = {
        "requests": Count("pk"),
        "complete": Count("pk", filter=Q(status=Message.Status.COMPLETE)),
        "failed": Count("pk", filter=Q(status=Message.Status.FAILED)),
        "cancelled": Count("pk", filter=Q(status=Message.Status.CANCELLED)),
    }
    if ordered_set_aggregates():
        for percent in FRACTIONS:
            aggregates[f"ttft_{percent}"] = PercentileDisc(
                "time_to_first_token_ms", percent=percent
            )
            aggregates[f"duration_{percent}"] = PercentileDisc(
                "duration_ms", percent=percent, filter=Q(status=Message.Status.COMPLETE)
            )
    return aggregates


def request_stats(rows: QuerySet[Message], *, group: Any | None) -> dict[Any, RequestStats]:
    """Counts and latency percentiles of `rows`, per `group` (an expression) or in total.

    Time to first token counts every reply that received a first token (stopped and failed
    ones too); duration counts completed replies only. One query on PostgreSQL, three on
    SQLite. Without a group the result has one key, "".
    """
    aggregates = _count_aggregates()
    values: list[dict[str, Any]]
    if group is None:
        values = [{"usage_key": "", **rows.aggregate(**aggregates)}]
    else:
        grouped: Any = rows.annotate(usage_key=group).values("usage_key")
        values = list(grouped.annotate(**aggregates).order_by())
    if ordered_set_aggregates():
        ttft = {v["usage_key"]: {p: v[f"ttft_{p}"] for p in FRACTIONS} for v in values}
        duration = {v["usage_key"]: {p: v[f"duration_{p}"] for p in FRACTIONS} for v in values}
    else:
        ttft = _ranked_percentiles(rows, value="time_to_first_token_ms", group=group)
        duration = _ranked_percentiles(
            rows.filter(status=Message.Status.COMPLETE), value="duration_ms", group=group
        )
    stats = {}
    for v in values:
        key = v["usage_key"]
        stats[key] = RequestStats(
            requests=int(v["requests"]),
            complete=int(v["complete"]),
            failed=int(v["failed"]),
            cancelled=int(v["cancelled"]),
            ttft=Latency(*(ttft.get(key, {}).get(p) for p in FRACTIONS)),
            duration=Latency(*(duration.get(key, {}).get(p) for p in FRACTIONS)),
        )
    return stats


@dataclass(frozen=True)
class PeriodRequests:
    """`RequestStats` of a period: in total, per model and per bucket (by start, UTC)."""

    total: RequestStats
    per_model: dict[str, RequestStats]
    per_bucket: dict[dt.datetime, RequestStats]


def period_requests(
    rows: QuerySet[Message], *, since: dt.datetime, until: dt.datetime, period: Period
) -> PeriodRequests:
    """`request_stats` of `rows` (a period's `replies`) per model, per bucket and in total.

    On PostgreSQL, one query of two parts, both read from `msg_usage_idx` alone (index-only
    scans): the whole period grouped by model with ROLLUP for the total, then each bucket
    on its own (a LATERAL subquery per bucket start), so its percentiles sort only that
    bucket's replies and no row is sorted by bucket. Each part computes p50 and p95 of a
    column with one `percentile_disc(ARRAY[...])`, which sorts the values once. Elsewhere,
    one `request_stats` per grouping.
    """
    if not ordered_set_aggregates():
        bucket = Trunc("created_at", period.trunc, tzinfo=UTC)
        return PeriodRequests(
            total=request_stats(rows, group=None)[""],
            per_model=request_stats(rows, group=model_key()),
            per_bucket=_by_start(request_stats(rows, group=bucket)),
        )
    # Model keys compared byte by byte ("C"): the same groups, and a faster sort of a
    # period's replies by model than under the database's linguistic collation.
    inner: Any = rows.annotate(usage_model=Collate(model_key(), "C")).values(
        "usage_model", "status", "time_to_first_token_ms", "duration_ms", "created_at"
    )
    inner_sql, inner_params = inner.query.sql_with_params()
    fractions = ", ".join(f"{percent / 100:.2f}" for percent in FRACTIONS)
    # Counts, then p50 and p95 of time to first token (every reply that had one) and of
    # duration (completed replies only); the statuses are parameters.
    figures = (
        "COUNT(*), COUNT(*) FILTER (WHERE r.status = %s), "
        "COUNT(*) FILTER (WHERE r.status = %s), COUNT(*) FILTER (WHERE r.status = %s), "
        f"PERCENTILE_DISC(ARRAY[{fractions}]) WITHIN GROUP (ORDER BY r.time_to_first_token_ms), "
        f"PERCENTILE_DISC(ARRAY[{fractions}]) WITHIN GROUP (ORDER BY r.duration_ms) "
        "FILTER (WHERE r.status = %s)"
    )
    statuses = [
        Message.Status.COMPLETE, Message.Status.FAILED, Message.Status.CANCELLED,
        Message.Status.COMPLETE,
    ]  # fmt: skip
    # Only our own SQL and the ORM's compiled SQL are formatted in; values are params.
    sql = (
        "SELECT GROUPING(r.usage_model), r.usage_model, NULL::timestamptz, "  # noqa: S608
        f"{figures} FROM ({inner_sql}) AS r GROUP BY ROLLUP (r.usage_model) "
        "UNION ALL "
        "SELECT 2, NULL, b.bucket_start, s.* "
        "FROM generate_series(%s, %s, %s) AS b (bucket_start) "
        f"CROSS JOIN LATERAL (SELECT {figures} FROM ({inner_sql}) AS r "
        "WHERE r.created_at >= b.bucket_start AND r.created_at < b.bucket_start + %s) AS s"
    )
    params = [
        *statuses, *inner_params,
        since, until - period.bucket, period.bucket, *statuses, *inner_params, period.bucket,
    ]  # fmt: skip
    total = RequestStats()
    per_model: dict[str, RequestStats] = {}
    per_bucket: dict[dt.datetime, RequestStats] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for kind, model, start, *measured in cursor.fetchall():
            requests, done, failures, stopped, ttft, duration = measured
            stats = RequestStats(
                requests=int(requests),
                complete=int(done),
                failed=int(failures),
                cancelled=int(stopped),
                ttft=Latency(*(ttft or ())),  # NULL when nothing was measured
                duration=Latency(*(duration or ())),
            )
            if kind == 0:
                per_model[model] = stats
            elif kind == 1:
                total = stats
            elif stats.requests:  # a bucket; empty ones are left out, as when grouping
                per_bucket[_utc(start)] = stats
    return PeriodRequests(total=total, per_model=per_model, per_bucket=per_bucket)


# --- Tokens and spend (ledger) ----------------------------------------------------------------


@dataclass(frozen=True)
class Spend:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost=self.cost + other.cost,
        )


def spend_by(
    *, since: dt.datetime, until: dt.datetime, groups: Mapping[str, Any]
) -> dict[str, dict[Any, Spend]]:
    """Ledger calls, tokens and cost per each of `groups` ({name: expression}), one query.

    The entries are grouped by all the expressions at once (models × buckets lines at most)
    and the sums added up per expression here. As in the costs report, only entries in the
    ledger's currency are summed into the cost.
    """
    ours = Q(currency=settings.COSTS_CURRENCY)
    entries = CostEntry.objects.filter(created_at__gte=since, created_at__lt=until).order_by()
    aliases = {f"usage_{name}": expression for name, expression in groups.items()}
    # Any: django-stubs cannot follow annotations passed as **kwargs.
    grouped: Any = entries.annotate(**aliases).values(*aliases)
    result: dict[str, dict[Any, Spend]] = {name: {} for name in groups}
    for v in grouped.annotate(
        calls=Count("pk"),
        input_sum=Sum("input_tokens"),
        output_sum=Sum("output_tokens"),
        cost_sum=Sum("cost", filter=ours),
    ).order_by():
        spend = Spend(
            calls=int(v["calls"]),
            input_tokens=int(v["input_sum"] or 0),
            output_tokens=int(v["output_sum"] or 0),
            cost=Decimal(v["cost_sum"] or 0).quantize(MICRO),
        )
        for name in groups:
            lines = result[name]
            key = v[f"usage_{name}"]
            lines[key] = lines.get(key, Spend()) + spend
    return result


# --- The dashboard ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelUsage:
    """One model's line (or the total's, with model "")."""

    model: str
    requests: RequestStats
    spend: Spend
    minutes: int

    @property
    def requests_per_minute(self) -> float:
        return self.requests.requests / self.minutes if self.minutes else 0.0


@dataclass(frozen=True)
class Bucket:
    start: dt.datetime
    requests: RequestStats
    spend: Spend


@dataclass(frozen=True)
class FailedReply:
    pk: int
    public_id: str
    created_at: dt.datetime
    model: str
    error_code: str
    request_id: str
    duration_ms: int | None


@dataclass(frozen=True)
class UsageDashboard:
    period: Period
    since: dt.datetime
    until: dt.datetime
    currency: str
    total: ModelUsage
    per_model: list[ModelUsage]
    buckets: list[Bucket]
    failed: list[FailedReply]

    @property
    def is_empty(self) -> bool:
        return not self.total.requests.requests and not self.total.spend.calls


def _utc(value: Any) -> dt.datetime:
    """A bucket start as the database returned it, as an aware UTC datetime."""
    if isinstance(value, str):  # SQLite without converters
        value = dt.datetime.fromisoformat(value)
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _by_start(stats: Mapping[Any, Any]) -> dict[dt.datetime, Any]:
    return {_utc(key): value for key, value in stats.items() if key is not None}


def latest_failed(rows: QuerySet[Message], *, limit: int = FAILED_SHOWN) -> list[FailedReply]:
    """The newest failed replies among `rows` (newest first; by id between equal times).

    PostgreSQL walks `msg_usage_idx` backwards from the period's end, checks the status in
    the index and fetches only the failed rows it returns.
    """
    failed = (
        rows.filter(status=Message.Status.FAILED)
        .order_by("-created_at", "-pk")
        .values_list(
            "pk", "public_id", "created_at", "model", "answered_by", "error_code",
            "request_id", "duration_ms",
        )[:limit]
    )  # fmt: skip
    return [
        FailedReply(
            pk=pk,
            public_id=str(public_id),
            created_at=created_at,
            model=answered_by or model,
            error_code=error_code or "unknown",
            request_id=request_id,
            duration_ms=duration_ms,
        )
        for pk, public_id, created_at, model, answered_by, error_code, request_id, duration_ms
        in failed
    ]  # fmt: skip


def usage_dashboard(*, period: Period, now: dt.datetime | None = None) -> UsageDashboard:
    """Everything the dashboard shows for `period`, in a fixed number of queries."""
    since, until = period_window(period, now=now or timezone.now())
    bucket = Trunc("created_at", period.trunc, tzinfo=UTC)
    with transaction.atomic():
        if ordered_set_aggregates():
            # For this transaction only: sorts in memory, and no JIT compilation, which the
            # planner would start for a week of rows and which costs more than it saves.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)",
                    [SORT_MEMORY],
                )
        rows = replies(since=since, until=until)
        requests = period_requests(rows, since=since, until=until, period=period)
        spend = spend_by(since=since, until=until, groups={"model": F("model"), "bucket": bucket})
        failed = latest_failed(rows)
    per_model_requests, total_requests = requests.per_model, requests.total
    per_bucket_requests = requests.per_bucket
    per_model_spend, per_bucket_spend = spend["model"], _by_start(spend["bucket"])

    minutes = period.minutes
    models = sorted(
        set(per_model_requests) | set(per_model_spend),
        key=lambda key: (
            -per_model_requests.get(key, RequestStats()).requests,
            -per_model_spend.get(key, Spend()).cost,
            key,
        ),
    )
    per_model = [
        ModelUsage(
            model=key,
            requests=per_model_requests.get(key, RequestStats()),
            spend=per_model_spend.get(key, Spend()),
            minutes=minutes,
        )
        for key in models
    ]
    total_spend = sum((line.spend for line in per_model), start=Spend())
    starts = [since + i * period.bucket for i in range(period.buckets)]
    buckets = [
        Bucket(
            start=start,
            requests=per_bucket_requests.get(start, RequestStats()),
            spend=per_bucket_spend.get(start, Spend()),
        )
        for start in starts
    ]
    return UsageDashboard(
        period=period,
        since=since,
        until=until,
        currency=settings.COSTS_CURRENCY,
        total=ModelUsage(model="", requests=total_requests, spend=total_spend, minutes=minutes),
        per_model=per_model,
        buckets=buckets,
        failed=failed,
    )
