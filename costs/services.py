"""Pricing, budget reservation before a call, and settlement after it (docs/costs.md).

Reserve, then settle:

1. `budget_reserve` (inside the send transaction, before anything reaches a provider) prices
   the call's maximum — estimated input tokens plus the model's max output tokens — and
   holds it against every budget that applies to the person (their own, their departments',
   the organisation's). Each budget's window row for the current period is locked
   (SELECT … FOR UPDATE, in id order so two calls never deadlock); a blocking budget that
   cannot hold it refuses the call with `BudgetExceeded`.
2. `ledger_settle` (inside the reply's finishing transaction) writes one `CostEntry` per
   provider call, replaces the held amounts with the actual cost, and reports the budgets
   whose warning threshold the spend just crossed.
3. `reservations_release_expired` (periodic) frees what crashed calls still hold.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.roles import ROLES
from audit.catalogue import AuditAction, AuditOutcome
from audit.services import audit_record
from costs.models import MICRO, Budget, BudgetWindow, CostEntry, ModelPrice, Reservation
from observability import metrics

MILLION = Decimal(1_000_000)


# --- Prices -----------------------------------------------------------------------------------


def price_at(model_key: str, when: dt.datetime) -> ModelPrice | None:
    """The price in force for a catalogue model at `when`, or None if it has none."""
    return (
        ModelPrice.objects.filter(model__key=model_key, effective_from__lte=when)
        .order_by("-effective_from")
        .first()
    )


def call_cost(
    price: ModelPrice | None, *, input_tokens: int, cached_input_tokens: int, output_tokens: int
) -> Decimal:
    """The cost of one call, rounded half-up to a micro-unit. Zero without a price.

    `input_tokens` counts every input token; the cached part is priced at the cached price
    (the input price when the model has none).
    """
    if price is None:
        return Decimal(0).quantize(MICRO)
    cached = min(max(cached_input_tokens, 0), max(input_tokens, 0))
    uncached = max(input_tokens, 0) - cached
    cached_price = (
        price.cached_input_per_million
        if price.cached_input_per_million is not None
        else price.input_per_million
    )
    total = (
        Decimal(uncached) * price.input_per_million
        + Decimal(cached) * cached_price
        + Decimal(max(output_tokens, 0)) * price.output_per_million
    ) / MILLION
    return total.quantize(MICRO, rounding=ROUND_HALF_UP)


# --- Periods ----------------------------------------------------------------------------------


def period_bounds(period: str, when: dt.datetime) -> tuple[dt.date, dt.datetime]:
    """(first day of the period containing `when`, the moment the next period starts).

    Calendar periods in COSTS_TIME_ZONE: days, weeks starting on Monday, months.
    """
    zone = zoneinfo.ZoneInfo(settings.COSTS_TIME_ZONE)
    local = when.astimezone(zone)
    today = local.date()
    if period == Budget.Period.DAILY:
        start, end = today, today + timedelta(days=1)
    elif period == Budget.Period.WEEKLY:
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=7)
    else:
        start = today.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    return start, dt.datetime.combine(end, dt.time(), tzinfo=zone)


# --- Who pays ---------------------------------------------------------------------------------


def department_of(user: Any) -> Any:
    """The person's department: their first group (by name) that is not a role."""
    return user.groups.exclude(name__in=ROLES).order_by("name").first()


def budgets_for(user: Any, api_key: Any = None) -> list[Budget]:
    """Every enabled budget that applies to the person, in id order (the lock order); with
    `api_key` (a call made with that key), the key's own budgets as well."""
    applies = (
        Q(scope=Budget.Scope.ORGANISATION)
        | Q(scope=Budget.Scope.DEPARTMENT, group__in=user.groups.all())
        | Q(scope=Budget.Scope.USER, user=user)
    )
    if api_key is not None:
        applies |= Q(scope=Budget.Scope.API_KEY, api_key=api_key)
    return list(Budget.objects.filter(enabled=True).filter(applies).order_by("id"))


def _locked_window(budget: Budget, when: dt.datetime) -> BudgetWindow:
    start, _ = period_bounds(budget.period, when)
    windows = BudgetWindow.objects.select_for_update()
    # Lock the period's row; it exists for every call but the period's first, which
    # creates it (a concurrent creator is not an error) and then locks it. Reading first
    # saves an INSERT ... ON CONFLICT round trip on every reservation and settlement.
    try:
        return windows.get(budget=budget, period_start=start)
    except BudgetWindow.DoesNotExist:
        pass
    BudgetWindow.objects.bulk_create(
        [BudgetWindow(budget=budget, period_start=start)], ignore_conflicts=True
    )
    return windows.get(budget=budget, period_start=start)


# --- Reserve ----------------------------------------------------------------------------------


class BudgetExceeded(Exception):
    """A call was refused before reaching a provider. `reason` is for the person."""

    def __init__(self, reason: str, *, details: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


@dataclass(frozen=True)
class Estimate:
    amount: Decimal
    tokens: int
    priced: bool


def estimate_max(
    *, model: Any, input_tokens: int, when: dt.datetime, max_output_tokens: int | None = None
) -> Estimate:
    """The most a call can cost: its estimated input plus its most output tokens (the
    model's maximum, or the caller's lower cap)."""
    output = model.max_output_tokens
    if max_output_tokens is not None:
        output = min(output, max_output_tokens)
    price = price_at(model.key, when)
    amount = call_cost(
        price, input_tokens=input_tokens, cached_input_tokens=0, output_tokens=output
    )
    return Estimate(amount=amount, tokens=input_tokens + output, priced=price is not None)


def format_amount(amount: Decimal) -> str:
    """An amount for people: cents, or as many decimals (up to six) as a small amount needs."""
    cents = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if cents == amount or abs(amount) >= 1:
        return str(cents)
    return f"{amount.quantize(MICRO).normalize():f}"


def _money(amount: Decimal) -> str:
    return f"{format_amount(amount)} {settings.COSTS_CURRENCY}"


def _resets(reset_at: dt.datetime) -> str:
    return reset_at.strftime("%Y-%m-%d %H:%M %Z")


def _worst_case(estimate: Estimate, *, input_tokens: int) -> str:
    """How the amount held for a call is worked out, for the person refused."""
    output_tokens = max(estimate.tokens - input_tokens, 0)
    return (
        "Before a call starts, its worst case is reserved: the whole conversation sent as "
        f"input (about {input_tokens:,} tokens) plus the longest reply the model may write "
        f"({output_tokens:,} tokens), at the model's price. For this request that is "
        f"{_money(estimate.amount)}; what the reply really costs is charged when it ends and "
        "the rest is released."
    )


def _output_that_fits(
    *, left: Decimal, tokens_left: int | None, input_tokens: int, price: ModelPrice | None
) -> int:
    """The longest reply (output tokens) that would fit in what is left, 0 if none would."""
    if price is None:
        fits = None
    else:
        room = left - Decimal(input_tokens) * price.input_per_million / MILLION
        if room <= 0:
            return 0
        fits = (
            None
            if price.output_per_million <= 0
            else int(room * MILLION / price.output_per_million)
        )
    if tokens_left is not None:
        by_tokens = max(tokens_left - input_tokens, 0)
        fits = by_tokens if fits is None else min(fits, by_tokens)
    return max(fits or 0, 0)


def _budget_refusal(
    *,
    budget: Budget,
    window: BudgetWindow,
    estimate: Estimate,
    input_tokens: int,
    price: ModelPrice | None,
    reset_at: dt.datetime,
) -> str:
    """Why a blocking budget refuses a call: what is reserved, what is left, what would fit."""
    used = window.spent + window.reserved
    left = max(budget.limit_amount - used, Decimal(0))
    tokens_left = (
        None
        if budget.limit_tokens is None
        else max(budget.limit_tokens - window.spent_tokens - window.reserved_tokens, 0)
    )
    held = (
        f" and {_money(window.reserved)} is held by replies in progress" if window.reserved else ""
    )
    fits = _output_that_fits(
        left=left, tokens_left=tokens_left, input_tokens=input_tokens, price=price
    )
    if left <= 0 or tokens_left == 0:
        would_fit = "Nothing is left in this budget: wait for the reset or ask an administrator."
    elif fits > 0:
        would_fit = (
            f"What would fit: a shorter conversation or message, a model with a lower price, "
            f"or a reply capped at {fits:,} output tokens (the API's max_tokens)."
        )
    else:
        would_fit = (
            "Even the conversation alone costs more than is left: start a new conversation, "
            "pick a model with a lower price, or wait for the reset."
        )
    tokens_note = ""
    if tokens_left is not None and budget.limit_tokens is not None:
        tokens_note = f" ({tokens_left:,} of its {budget.limit_tokens:,} tokens)"
    return (
        f"The {budget.name} budget ({budget.get_period_display().lower()}) does not allow this "
        f"request. {_worst_case(estimate, input_tokens=input_tokens)} Of this budget's "
        f"{_money(budget.limit_amount)}, {_money(window.spent)} is used{held}, so "
        f"{_money(left)} is left{tokens_note}. {would_fit} It resets on {_resets(reset_at)}."
    )


def budget_reserve(
    *,
    user: Any,
    reply: Any,
    model: Any,
    input_tokens: int,
    max_output_tokens: int | None = None,
    api_key: Any = None,
) -> list[str]:
    """Hold the call's maximum cost against every budget that applies; return alert notes.

    The maximum is the estimated input plus `max_output_tokens` (the caller's own cap on
    the reply, never above the model's) or the model's maximum output. `api_key`: the call
    is made with that key, so its own budgets apply too.

    Call inside the transaction that creates `reply`. Raises BudgetExceeded (nothing held)
    when the per-call maximum (COSTS_MAX_REQUEST_COST) or any blocking budget would be
    exceeded. Alert-only budgets that would be exceeded let the call through; they are
    audited, and their names are returned.
    """
    now = timezone.now()
    estimate = estimate_max(
        model=model, input_tokens=input_tokens, when=now, max_output_tokens=max_output_tokens
    )
    cap = settings.COSTS_MAX_REQUEST_COST
    if cap and estimate.amount > cap:
        raise BudgetExceeded(
            f"{_worst_case(estimate, input_tokens=input_tokens)} That is more than the "
            f"{_money(cap)} allowed for a single request. What would fit: a shorter "
            "conversation or message, or a model with a lower price.",
            details={"limit": "per_request", "estimate": str(estimate.amount), "cap": str(cap)},
        )
    alerts: list[str] = []
    expires_at = now + timedelta(
        seconds=settings.CHAT_REPLY_MAX_SECONDS + settings.COSTS_RESERVATION_GRACE_SECONDS
    )
    for budget in budgets_for(user, api_key):
        window = _locked_window(budget, now)
        over_amount = window.spent + window.reserved + estimate.amount > budget.limit_amount
        over_tokens = budget.limit_tokens is not None and (
            window.spent_tokens + window.reserved_tokens + estimate.tokens > budget.limit_tokens
        )
        if over_amount or over_tokens:
            _, reset_at = period_bounds(budget.period, now)
            details = {
                "budget": budget.pk,
                "budget_name": budget.name,
                "scope": budget.scope,
                "period_start": str(window.period_start),
                "spent": str(window.spent),
                "reserved": str(window.reserved),
                "estimate": str(estimate.amount),
                "limit": str(budget.limit_amount),
                "tokens": over_tokens,
            }
            if budget.action == Budget.Action.BLOCK:
                raise BudgetExceeded(
                    _budget_refusal(
                        budget=budget,
                        window=window,
                        estimate=estimate,
                        input_tokens=input_tokens,
                        price=price_at(model.key, now),
                        reset_at=reset_at,
                    ),
                    details=details,
                )
            audit_record(
                action=AuditAction.BUDGET_ALERT,
                actor=user,
                target=budget,
                outcome=AuditOutcome.SUCCESS,
                details=details,
            )
            alerts.append(budget.name)
        Reservation.objects.create(
            window=window,
            message=reply,
            amount=estimate.amount,
            tokens=estimate.tokens,
            expires_at=expires_at,
        )
        BudgetWindow.objects.filter(pk=window.pk).update(
            reserved=F("reserved") + estimate.amount,
            reserved_tokens=F("reserved_tokens") + estimate.tokens,
        )
    return alerts


# --- Settle -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallUsage:
    """What one provider call consumed (estimated when the provider reported nothing)."""

    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    estimated: bool = False


@dataclass
class Settlement:
    cost: Decimal = Decimal(0)
    estimated: bool = False
    warnings: list[str] = field(default_factory=list)


def ledger_settle(*, reply: Any, calls: Sequence[CallUsage], outcome: str) -> Settlement:
    """Write one ledger entry per call and settle the reply's reservations. Idempotent.

    Call inside the transaction that stores the reply's outcome. Calls with no tokens at all
    (refused before sending) are not charged. A second settlement of the same reply writes
    nothing and changes no budget. Returns the total cost and the budgets whose warning
    threshold this spend crossed (audited once per budget and period).
    """
    now = timezone.now()
    result = Settlement()
    if CostEntry.objects.filter(message=reply).exists():
        return result  # already settled: a redelivered task charges nothing twice
    conversation = reply.conversation
    user = conversation.owner
    department = department_of(user)
    entries = []
    for index, call in enumerate(calls):
        if call.input_tokens <= 0 and call.output_tokens <= 0:
            continue
        price = price_at(call.model, now)
        cost = call_cost(
            price,
            input_tokens=call.input_tokens,
            cached_input_tokens=call.cached_input_tokens,
            output_tokens=call.output_tokens,
        )
        entries.append(
            CostEntry(
                idempotency_key=f"{reply.public_id}:{index}",
                created_at=now,
                user=user,
                department=department,
                conversation=conversation,
                message=reply,
                call_index=index,
                model=call.model,
                provider=call.provider,
                input_tokens=call.input_tokens,
                cached_input_tokens=call.cached_input_tokens,
                output_tokens=call.output_tokens,
                cost=cost,
                currency=settings.COSTS_CURRENCY,
                estimated=call.estimated,
                priced=price is not None,
                outcome=outcome,
                request_id=reply.request_id,
            )
        )
        result.cost += cost
        result.estimated = result.estimated or call.estimated
    CostEntry.objects.bulk_create(entries)
    if entries:
        transaction.on_commit(
            partial(
                metrics.ledger_charged, entries, department=department.name if department else ""
            )
        )
    tokens = sum(e.input_tokens + e.output_tokens for e in entries)

    # Lock the reply's holds before any window, the order the expiry job uses too: a hold
    # released meanwhile is then seen as released, and the two never deadlock.
    held = {
        r.window_id: r
        for r in Reservation.objects.select_for_update()
        .filter(message=reply, status=Reservation.Status.HELD)
        .order_by("id")
    }
    # The budgets that apply to this call: the owner's, and the key's own if it was asked
    # for with one (the same set budget_reserve held against).
    budgets = {b.pk: b for b in budgets_for(user, reply.api_key_id)}
    windows = {}
    for budget in budgets.values():
        window = _locked_window(budget, now)
        windows[window.pk] = (budget, window)
    for window_id in held:
        if window_id not in windows:
            locked = (
                BudgetWindow.objects.select_for_update().select_related("budget").get(pk=window_id)
            )
            windows[window_id] = (locked.budget, locked)
    for window_id, (budget, window) in sorted(windows.items()):
        reservation = held.get(window_id)
        current = window.period_start == period_bounds(budget.period, now)[0]
        updates: dict[str, Any] = {}
        if reservation is not None:
            updates["reserved"] = F("reserved") - reservation.amount
            updates["reserved_tokens"] = F("reserved_tokens") - reservation.tokens
        if current and budget.pk in budgets:
            updates["spent"] = F("spent") + result.cost
            updates["spent_tokens"] = F("spent_tokens") + tokens
            spent_after = window.spent + result.cost
            threshold = budget.limit_amount * budget.warn_percent / 100
            if not window.warned and budget.limit_amount and spent_after >= threshold:
                updates["warned"] = True
                result.warnings.append(
                    f"You have used {min(100, round(spent_after * 100 / budget.limit_amount))}% "
                    f"of the {budget.name} budget for this period."
                )
                audit_record(
                    action=AuditAction.BUDGET_WARNING,
                    actor=user,
                    target=budget,
                    details={
                        "budget_name": budget.name,
                        "period_start": str(window.period_start),
                        "spent": str(spent_after),
                        "limit": str(budget.limit_amount),
                        "warn_percent": budget.warn_percent,
                    },
                )
        if updates:
            BudgetWindow.objects.filter(pk=window.pk).update(**updates)
    Reservation.objects.filter(message=reply, status=Reservation.Status.HELD).update(
        status=Reservation.Status.SETTLED
    )
    return result


def reservations_release_expired(*, now: dt.datetime | None = None) -> int:
    """Release what crashed calls still hold (past their expiry). Returns how many."""
    now = now or timezone.now()
    released = 0
    expired = Reservation.objects.filter(status=Reservation.Status.HELD, expires_at__lt=now)
    for reservation_id in expired.values_list("id", flat=True)[:1000]:
        with transaction.atomic():
            reservation = (
                Reservation.objects.select_for_update()
                .filter(pk=reservation_id, status=Reservation.Status.HELD)
                .first()
            )
            if reservation is None:
                continue
            BudgetWindow.objects.select_for_update().filter(pk=reservation.window_id).update(
                reserved=F("reserved") - reservation.amount,
                reserved_tokens=F("reserved_tokens") - reservation.tokens,
            )
            reservation.status = Reservation.Status.EXPIRED
            reservation.save(update_fields=["status"])
            released += 1
    return released


@dataclass(frozen=True)
class BudgetUsage:
    """A budget's current period: what is spent and held, and what is left."""

    period_start: dt.date
    spent: Decimal
    reserved: Decimal

    @property
    def used(self) -> Decimal:
        return self.spent + self.reserved


def budget_usage(
    *, budgets: Iterable[Budget], now: dt.datetime | None = None
) -> dict[int, BudgetUsage]:
    """The current period's usage of each budget, by budget id, in one query.

    A budget with no window yet for its current period (no call this period) is reported
    with nothing spent.
    """
    now = now or timezone.now()
    starts: dict[int, dt.date] = {}
    condition = Q()
    by_period: dict[str, list[int]] = {}
    for budget in budgets:
        by_period.setdefault(budget.period, []).append(budget.pk)
    for period, ids in by_period.items():
        start, _ = period_bounds(period, now)
        starts.update(dict.fromkeys(ids, start))
        condition |= Q(budget_id__in=ids, period_start=start)
    if not starts:
        return {}
    usage = {
        budget_id: BudgetUsage(period_start=start, spent=Decimal(0), reserved=Decimal(0))
        for budget_id, start in starts.items()
    }
    windows = BudgetWindow.objects.filter(condition).values_list(
        "budget_id", "period_start", "spent", "reserved"
    )
    for budget_id, start, spent, reserved in windows:
        usage[budget_id] = BudgetUsage(
            period_start=start,
            spent=Decimal(spent).quantize(MICRO),
            reserved=Decimal(reserved).quantize(MICRO),
        )
    return usage


# --- What a person sees -----------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    name: str
    period: str
    spent: Decimal
    limit: Decimal
    remaining: Decimal
    resets_at: dt.datetime
    blocking: bool


def budget_status_for(
    user: Any, budgets: Iterable[Budget] | None = None, *, api_key: Any = None
) -> list[BudgetStatus]:
    """The person's budgets for the current period (with `api_key`, the key's own too):
    what is left and when it resets."""
    now = timezone.now()
    budgets = list(budgets if budgets is not None else budgets_for(user, api_key))
    usage = budget_usage(budgets=budgets, now=now)
    statuses = []
    for budget in budgets:
        _, reset_at = period_bounds(budget.period, now)
        used = usage[budget.pk].used
        statuses.append(
            BudgetStatus(
                name=budget.name,
                period=budget.get_period_display(),
                spent=used,
                limit=budget.limit_amount,
                remaining=max(Decimal(0), budget.limit_amount - used),
                resets_at=reset_at,
                blocking=budget.action == Budget.Action.BLOCK,
            )
        )
    return statuses
