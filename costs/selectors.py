"""Reads of prices and of one person's own spend: the model picker's prices and the
My usage page (/usage/). Everything here is scoped to the person asked about."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from costs.models import MICRO, Budget, CostEntry, ModelPrice
from costs.reports import costs_zone
from costs.services import BudgetStatus, budget_status_for, budgets_for, format_amount
from providers.models import AIModel

USAGE_DAYS = 30


# --- Prices in the model picker ---------------------------------------------------------------


def prices_now(keys: Iterable[str], *, now: dt.datetime | None = None) -> dict[str, ModelPrice]:
    """The price in force now for each of the models `keys` that has one, in one query."""
    now = now or timezone.now()
    keys = list(keys)
    if not keys:
        return {}
    found: dict[str, ModelPrice] = {}
    rows = (
        ModelPrice.objects.filter(model__key__in=keys, effective_from__lte=now)
        .select_related("model")
        .order_by("model__key", "-effective_from")
    )
    for price in rows:
        found.setdefault(price.model.key, price)
    return found


def price_text(price: ModelPrice | None) -> str:
    """ "3.00 USD per 1M input tokens, 15.00 USD per 1M output tokens", or no price."""
    if price is None:
        return "No price set: calls to it are not charged."
    return (
        f"{format_amount(price.input_per_million)} {price.currency} per 1M input tokens · "
        f"{format_amount(price.output_per_million)} {price.currency} per 1M output tokens"
    )


def model_choices(models: Iterable[Any]) -> list[tuple[Any, str]]:
    """(model spec, its price as text) for each model of the picker, in order."""
    models = list(models)
    prices = prices_now(model.key for model in models)
    return [(model, price_text(prices.get(model.key))) for model in models]


# --- My usage ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageLine:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_text(self) -> str:
        return format_amount(self.cost)

    def __add__(self, other: UsageLine) -> UsageLine:
        return UsageLine(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost=self.cost + other.cost,
        )


@dataclass(frozen=True)
class DayUsage:
    day: dt.date
    chat: UsageLine
    api: UsageLine

    @property
    def total(self) -> UsageLine:
        return self.chat + self.api


@dataclass(frozen=True)
class ModelLine:
    model: str
    name: str  # the catalogue's display name, or the key of a model no longer in it
    usage: UsageLine
    api_cost: Decimal  # the part of the cost paid through the person's API keys

    @property
    def api_cost_text(self) -> str:
        return format_amount(self.api_cost)


@dataclass(frozen=True)
class SourceLine:
    label: str  # "Chat" or the API key's name and prefix
    usage: UsageLine


@dataclass(frozen=True)
class BudgetLine:
    status: BudgetStatus
    applies_to: str  # "Your chats and API calls" or "API key …"

    @property
    def spent_text(self) -> str:
        return format_amount(self.status.spent)

    @property
    def limit_text(self) -> str:
        return format_amount(self.status.limit)

    @property
    def remaining_text(self) -> str:
        return format_amount(self.status.remaining)

    @property
    def used_percent(self) -> int:
        if self.status.limit <= 0:
            return 100
        return min(100, int(self.status.spent * 100 / self.status.limit))


@dataclass(frozen=True)
class PersonalUsage:
    since: dt.date
    until: dt.date  # inclusive
    currency: str
    days: list[DayUsage]
    total: UsageLine
    models: list[ModelLine]
    sources: list[SourceLine]
    budgets: list[BudgetLine] = field(default_factory=list)

    @property
    def active_days(self) -> list[DayUsage]:
        return [day for day in self.days if day.total.calls]


def _line(row: dict[str, Any]) -> UsageLine:
    return UsageLine(
        calls=int(row["calls"] or 0),
        input_tokens=int(row["input_sum"] or 0),
        output_tokens=int(row["output_sum"] or 0),
        cost=Decimal(row["cost_sum"] or 0).quantize(MICRO),
    )


_SUMS = {
    "calls": Count("id"),
    "input_sum": Sum("input_tokens"),
    "output_sum": Sum("output_tokens"),
    "cost_sum": Sum("cost"),
}


def personal_usage(
    *, user: Any, days: int = USAGE_DAYS, now: dt.datetime | None = None
) -> PersonalUsage:
    """`user`'s own spend and tokens over the last `days` calendar days (COSTS_TIME_ZONE,
    today included): per day (chat and API keys apart), per model, per source (the chat,
    each of their API keys), and their budgets now. Three aggregate queries over the ledger,
    always filtered by `user`; only entries in the ledger's currency are summed."""
    now = now or timezone.now()
    zone = costs_zone()
    today = now.astimezone(zone).date()
    first = today - dt.timedelta(days=days - 1)
    since = dt.datetime.combine(first, dt.time(), tzinfo=zone)
    entries: Any = CostEntry.objects.filter(
        user=user, created_at__gte=since, currency=settings.COSTS_CURRENCY
    ).order_by()
    via_key = Q(message__api_key__isnull=False)

    chat: dict[dt.date, UsageLine] = {}
    api: dict[dt.date, UsageLine] = {}
    by_day = (
        entries.annotate(day=TruncDate("created_at", tzinfo=zone))
        .values("day", "message__api_key_id")
        .annotate(**_SUMS)
    )
    for row in by_day:
        target = api if row["message__api_key_id"] else chat
        target[row["day"]] = target.get(row["day"], UsageLine()) + _line(row)
    day_lines = [
        DayUsage(
            day=first + dt.timedelta(days=i),
            chat=chat.get(first + dt.timedelta(days=i), UsageLine()),
            api=api.get(first + dt.timedelta(days=i), UsageLine()),
        )
        for i in range(days)
    ]

    rows = list(
        entries.values("model")
        .annotate(**_SUMS, api_cost=Sum("cost", filter=via_key))
        .order_by("-cost_sum", "model")
    )
    names = dict(
        AIModel.objects.filter(key__in=[row["model"] for row in rows]).values_list(
            "key", "display_name"
        )
    )
    models = [
        ModelLine(
            model=row["model"],
            name=names.get(row["model"], row["model"]),
            usage=_line(row),
            api_cost=Decimal(row["api_cost"] or 0).quantize(MICRO),
        )
        for row in rows
    ]

    sources = []
    for row in (
        entries.values("message__api_key_id", "message__api_key__name", "message__api_key__prefix")
        .annotate(**_SUMS)
        .order_by("-cost_sum")
    ):
        label = (
            f"API key {row['message__api_key__name']} ({row['message__api_key__prefix']}…)"
            if row["message__api_key_id"]
            else "Chat"
        )
        sources.append(SourceLine(label=label, usage=_line(row)))

    total = sum((line.usage for line in models), UsageLine())
    return PersonalUsage(
        since=first,
        until=today,
        currency=settings.COSTS_CURRENCY,
        days=day_lines,
        total=total,
        models=models,
        sources=sources,
        budgets=personal_budgets(user=user),
    )


def personal_budgets(*, user: Any) -> list[BudgetLine]:
    """The budgets that apply to the person's calls (their own, their departments', the
    organisation's) and their API keys' own budgets, labelled: spent, limit, left, reset."""
    lines = [
        BudgetLine(status=status, applies_to=_scope_label(budget))
        for budget, status in _with_status(user, budgets_for(user))
    ]
    key_budgets = list(
        Budget.objects.filter(
            enabled=True,
            scope=Budget.Scope.API_KEY,
            api_key__owner=user,
            api_key__revoked_at__isnull=True,
        )
        .select_related("api_key")
        .order_by("id")
    )
    lines += [
        BudgetLine(
            status=status,
            applies_to=f"Calls with your API key {budget.api_key.name} ({budget.api_key.prefix}…)"
            if budget.api_key
            else "An API key",
        )
        for budget, status in _with_status(user, key_budgets)
    ]
    return lines


def _with_status(user: Any, budgets: list[Budget]) -> list[tuple[Budget, BudgetStatus]]:
    return list(zip(budgets, budget_status_for(user, budgets), strict=True))


def _scope_label(budget: Budget) -> str:
    if budget.scope == Budget.Scope.ORGANISATION:
        return "Everyone in the organisation (shared)"
    if budget.scope == Budget.Scope.DEPARTMENT:
        return "Your department (shared)"
    return "You: chats and API calls"
