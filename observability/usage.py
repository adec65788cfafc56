"""The usage dashboard's figures, read from the database (docs/operations.md).

Requests, errors and latency come from the assistant messages (each reply is one request to
a model: `time_to_first_token_ms` and `duration_ms` are stored when it ends); tokens and spend
come from the cost ledger. Nothing here needs Prometheus, so the embedded default has the
same dashboard as production.

Every figure is computed by the database, grouped by model or by time bucket: the dashboard
costs the same five queries on PostgreSQL (twelve on SQLite) whatever the number of rows,
and no row is loaded into Python except the few latest failed replies.

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
from django.db.models.functions import Coalesce, NullIf, RowNumber, Trunc
from django.utils import timezone

from conversations.models import Message
from costs.models import MICRO, CostEntry

UTC = dt.UTC
FRACTIONS = (50, 95)  # the percentiles shown, in percent
FAILED_SHOWN = 20  # the latest failed replies listed
# Message ids grow with `created_at` (both are assigned by the same INSERT, within a clock
# skew of seconds): a reply settled in the ledger this long before a period began was created
# before every message of the period. See `first_possible_id`.
ID_MARGIN = dt.timedelta(minutes=10)
# Sorting a week of replies for the percentiles: in memory rather than in temporary files
# (PostgreSQL; set for the dashboard's own transaction only).
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


def first_possible_id(*, since: dt.datetime) -> int:
    """A message id below which no message was created at or after `since` (0 if unknown).

    `conversations_message.created_at` has no index; its primary key has. The ledger's
    `created_at` is indexed: the message of the last ledger row written ID_MARGIN before
    `since` was created before it, so every message of the period has a greater id. One
    index look-up, and the period's messages are then read by primary-key range instead of
    scanning the whole table.
    """
    older = (
        CostEntry.objects.filter(created_at__lt=since - ID_MARGIN)
        .order_by("-created_at")
        .values_list("message_id", flat=True)
        .first()
    )
    return int(older or 0)


def replies(*, since: dt.datetime, until: dt.datetime, after_id: int = 0) -> QuerySet[Message]:
    """The requests of a period: assistant messages created in [since, until).

    `after_id` (from `first_possible_id`) narrows the rows read without changing the result.
    """
    return Message.objects.filter(
        pk__gt=after_id, role=Message.Role.ASSISTANT, created_at__gte=since, created_at__lt=until
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


def request_stats_sets(
    rows: QuerySet[Message], *, groups: Mapping[str, Any]
) -> dict[str, dict[Any, RequestStats]]:
    """`request_stats` per each of `groups` ({name: expression}) and in total (name "").

    On PostgreSQL, one query reads the rows once for every grouping (GROUPING SETS): the
    messages table is wide (it holds the text), so each pass over a period costs. Elsewhere,
    one `request_stats` per grouping.
    """
    if not ordered_set_aggregates():
        result = {name: request_stats(rows, group=group) for name, group in groups.items()}
        result[""] = request_stats(rows, group=None)
        return result
    names = list(groups)
    if not all(name.isidentifier() and name.islower() for name in names):
        raise ValueError(f"group names are SQL column names: {names!r}")
    columns = [f"usage_{name}" for name in names]
    inner: Any = rows.annotate(**dict(zip(columns, groups.values(), strict=True))).values(
        *columns, "status", "time_to_first_token_ms", "duration_ms"
    )
    inner_sql, inner_params = inner.query.sql_with_params()
    percentiles = []
    for value, condition in (
        ("time_to_first_token_ms", ""),
        ("duration_ms", " FILTER (WHERE r.status = %s)"),
    ):
        for percent in FRACTIONS:
            percentiles.append(
                f"PERCENTILE_DISC({percent / 100:.2f}) WITHIN GROUP (ORDER BY r.{value}){condition}"
            )
    complete, failed, cancelled = (
        Message.Status.COMPLETE, Message.Status.FAILED, Message.Status.CANCELLED,
    )  # fmt: skip
    # Only our own identifiers and the ORM's compiled SQL are formatted in; values are params.
    sql = (
        f"SELECT {', '.join(f'r.{c}' for c in columns)}, "  # noqa: S608 (see above)
        f"{', '.join(f'GROUPING(r.{c})' for c in columns)}, "
        "COUNT(*), COUNT(*) FILTER (WHERE r.status = %s), COUNT(*) FILTER (WHERE r.status = %s), "
        f"COUNT(*) FILTER (WHERE r.status = %s), {', '.join(percentiles)} "
        f"FROM ({inner_sql}) AS r "
        f"GROUP BY GROUPING SETS ({', '.join(f'(r.{c})' for c in columns)}, ())"
    )
    params = [complete, failed, cancelled, *[complete] * len(FRACTIONS), *inner_params]
    result = {name: {} for name in [*names, ""]}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for row in cursor.fetchall():
            keys, grouping = row[: len(names)], row[len(names) : 2 * len(names)]
            requests, done, failures, stopped, *measured = row[2 * len(names) :]
            stats = RequestStats(
                requests=int(requests),
                complete=int(done),
                failed=int(failures),
                cancelled=int(stopped),
                ttft=Latency(*measured[: len(FRACTIONS)]),
                duration=Latency(*measured[len(FRACTIONS) :]),
            )
            grouped = [name for name, flag in zip(names, grouping, strict=True) if not flag]
            if not grouped:
                result[""][""] = stats
            else:
                result[grouped[0]][keys[names.index(grouped[0])]] = stats
    result[""].setdefault("", RequestStats())
    return result


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
    """The newest failed replies among `rows` (by id: ids grow with creation time)."""
    failed = (
        rows.filter(status=Message.Status.FAILED)
        .order_by("-pk")
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
        rows = replies(since=since, until=until, after_id=first_possible_id(since=since))
        requests = request_stats_sets(rows, groups={"model": model_key(), "bucket": bucket})
        spend = spend_by(since=since, until=until, groups={"model": F("model"), "bucket": bucket})
        failed = latest_failed(rows)
    per_model_requests, total_requests = requests["model"], requests[""][""]
    per_bucket_requests = _by_start(requests["bucket"])
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
